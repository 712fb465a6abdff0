from __future__ import annotations

from devstack.demo import withdrawal_amount


def test_demo_withdraws_whole_cents_within_what_is_available() -> None:
    assert withdrawal_amount(2000, 2877, 2000, 500) == 2000
    assert withdrawal_amount(2500, 2301, 2000, 500) == 2300  # capped by what is there, rounded to whole cents
    assert withdrawal_amount(2000, 1999, 2000, 500) is None
    assert withdrawal_amount(2000, 2001, 2000, 300) == 2000  # 1000 // gcd(1000, 300) = 10
