"""The payouts use cases wired to the in-memory store and a scripted payout provider, and what every test checks
afterwards: the balances the use cases keep agree with the ledger's postings. Commands are built from the RPCs'
requests through convert.py, as the servicer builds them, so a request's key (its fingerprint) is the real one."""

from __future__ import annotations

from dataclasses import dataclass, field

from coinstream.payouts.v1 import payouts_pb2 as p

from services.payouts import convert, domain
from services.payouts.maturity import MaturityWorker
from services.payouts.payout_worker import PayoutWorker
from services.payouts.service import PayoutsService
from services.payouts.settlement import Settlement
from tests.fakes.payouts import FakePayoutsStore, ScriptedPayoutProvider

POLICY = domain.WithdrawalPolicy(
    minimum_diamonds=2000, daily_cap_diamonds=200_000, value_per_1000_minor=500, currency_code="USD"
)
CHECK_INTERVAL_SECONDS = 5.0


@dataclass
class Payouts:
    store: FakePayoutsStore = field(default_factory=FakePayoutsStore)
    provider: ScriptedPayoutProvider = field(default_factory=ScriptedPayoutProvider)
    hold_seconds: int = 0

    def __post_init__(self) -> None:
        self.service = PayoutsService(self.store, POLICY, self.provider, provider_timeout_seconds=1.0)
        self.settlement = Settlement(self.store, hold_seconds=self.hold_seconds)
        self.maturity = MaturityWorker(self.store, batch_size=100)
        self.worker = PayoutWorker(
            self.store,
            self.provider,
            batch_size=10,
            check_interval_seconds=CHECK_INTERVAL_SECONDS,
            provider_timeout_seconds=1.0,
        )

    async def start(self, numerator: int = 1, denominator: int = 1) -> Payouts:
        await self.service.adopt_configured_rate(numerator, denominator)
        return self

    async def gifts(self, creator_id: str, *coins: int, prefix: str = "gtx") -> int:
        """Settles one batch of gifts to creator_id (ids prefix_<n>, n counting from the store's inbox size)."""
        first = len(self.store.state.inbox)
        gifts = [
            domain.GiftToSettle(f"{prefix}_{first + n}", creator_id, "st_1", gift_coins)
            for n, gift_coins in enumerate(coins)
        ]
        return await self.settlement.settle(gifts)

    async def verified(self, creator_id: str, destination: str = "bank:alice") -> None:
        request = p.UpdateCreatorProfileRequest(
            request_id=f"profile-{creator_id}", creator_id=creator_id, kyc_verified=True, payout_destination=destination
        )
        await self.service.update_profile(convert.update_profile(request))

    async def withdraw(self, creator_id: str, diamonds: int, request_id: str = "") -> domain.WithdrawalView:
        request_id = request_id or f"wd-{creator_id}-{len(self.store.state.keys)}"
        request = p.RequestWithdrawalRequest(request_id=request_id, creator_id=creator_id, diamonds=diamonds)
        return await self.service.request_withdrawal(convert.withdraw(request))

    async def cancel(self, withdrawal_id: str, request_id: str = "") -> domain.WithdrawalView:
        request_id = request_id or f"cancel-{len(self.store.state.keys)}"
        request = p.CancelWithdrawalRequest(request_id=request_id, withdrawal_id=withdrawal_id)
        return await self.service.cancel_withdrawal(convert.cancel_withdrawal(request))

    def balances(self, creator_id: str) -> tuple[int, int, int]:
        """(available, reserved, pending) diamonds."""
        balances = self.store.balances_of(creator_id)
        return balances.available_diamonds, balances.reserved_diamonds, balances.pending_diamonds


def assert_ledger_agrees(store: FakePayoutsStore) -> None:
    """Each creator's balances are what the ledger's postings to their accounts add up to; diamonds in the system
    accounts are the other side; lifetime is every diamond ever credited."""
    for creator_id, balances in store.state.balances.items():
        assert (
            store.account_balance(domain.available_account(creator_id)),
            store.account_balance(domain.reserved_account(creator_id)),
            store.account_balance(domain.pending_account(creator_id)),
            -store.account_balance(domain.debt_account(creator_id)),
        ) == (
            balances.available_diamonds,
            balances.reserved_diamonds,
            balances.pending_diamonds,
            balances.debt_diamonds,
        ), creator_id
        credited = sum(c.credit.diamonds for c in store.state.credits.values() if c.credit.creator_id == creator_id)
        assert balances.lifetime_diamonds == credited, creator_id
        # credited − clawed back − withdrawn − reserved − pending = available − debt
        withdrawn = sum(
            w.withdrawal.diamonds
            for w in store.state.withdrawals.values()
            if w.withdrawal.creator_id == creator_id and w.withdrawal.status is domain.WithdrawalStatus.PAID
        )
        assert (
            credited
            - balances.clawed_back_diamonds
            - withdrawn
            - balances.reserved_diamonds
            - balances.pending_diamonds
            == balances.available_diamonds - balances.debt_diamonds
        ), creator_id
        assert balances.debt_diamonds == 0 or balances.available_diamonds == 0, f"{creator_id} in debt with diamonds"
    assert sum(delta for _, _, delta in store.state.postings) == 0
