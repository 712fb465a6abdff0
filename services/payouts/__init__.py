"""Payouts service: gifts settled into creator diamonds, a double-entry diamond ledger and withdrawals."""
