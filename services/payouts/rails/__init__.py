"""The real payout rails beside the sandbox (payout_provider.py): Stripe Connect and PayPal Payouts, each a
PayoutProvider (ports.py) with its settings (an env prefix of its own) and its webhook on payouts' HTTP port."""
