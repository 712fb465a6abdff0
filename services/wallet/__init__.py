"""Wallet service: coin accounts and their double-entry ledger."""
