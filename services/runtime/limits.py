"""Limits (and a convention) more than one service must agree on. A value one side accepts and the other refuses
leaves money stuck between them — a gift the wallet charged that settlement will not credit — so each is defined
here, once, and every side reads it."""

from __future__ import annotations

# The gift catalog: the dearest price and the largest quantity of one SendGift.
MAX_GIFT_COIN_PRICE = 1_000_000
MAX_GIFT_QUANTITY = 10_000

# The most coins one gift can cost: the wallet spends up to it, settlement credits up to it (10^10, far from int64
# overflow even summed over a creator's lifetime of such gifts).
MAX_GIFT_COINS = MAX_GIFT_COIN_PRICE * MAX_GIFT_QUANTITY

# The largest value a PostgreSQL bigint holds: ids and positions from callers (page tokens) beyond it are forged.
MAX_INT64 = 2**63 - 1

# A gift's wallet spend has the request_id and the reference "gift:<gift_transaction_id>" (gifts makes it); the wallet
# reads the reference to trace a reversed purchase's coins to the gift, whose diamonds payouts then claws back.
GIFT_SPEND_PREFIX = "gift:"
