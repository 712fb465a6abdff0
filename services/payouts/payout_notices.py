"""What payout providers report later, through their webhooks (rails/): a payout paid, failed, or given back after it
was paid. Each notice is recorded by its own id in the same transaction as its effect, so a provider's retry or a
replay takes effect once; the webhook answers 2xx only after that commit (services/runtime/http_ingress.py)."""

from __future__ import annotations

from enum import Enum

import structlog

from services.payouts import domain
from services.payouts.payout_worker import finish, give_back
from services.payouts.ports import PayoutResult, PayoutsStore, PayoutState

log = structlog.get_logger()


class NoticeOutcome(Enum):
    APPLIED = "applied"  # the withdrawal moved
    DUPLICATE = "duplicate"  # this notice was recorded before: nothing more
    NO_EFFECT = "no_effect"  # recorded; nothing to do (already so, another provider's, an unknown withdrawal)


async def apply_payout_notice(store: PayoutsStore, notice: domain.PayoutNotice) -> NoticeOutcome:
    async with store.transaction() as tx:
        if not await tx.admit_payout_notification(notice):
            return NoticeOutcome.DUPLICATE
        if notice.outcome is None or not notice.withdrawal_id:
            return NoticeOutcome.NO_EFFECT
        withdrawal = await tx.lock_withdrawal(notice.withdrawal_id)
        if withdrawal is None or withdrawal.payout_provider != notice.payout_provider:
            log.warning("payout_notice_for_no_withdrawal_of_ours", provider=notice.payout_provider, kind=notice.kind)
            return NoticeOutcome.NO_EFFECT
        transition = domain.transition_for(withdrawal.status, notice.outcome)
        if transition is None:
            return NoticeOutcome.NO_EFFECT
        reason = notice.reason or f"{notice.payout_provider}: {notice.kind}"
        if transition is domain.Transition.RETURN:
            await give_back(tx, withdrawal, reason)
        else:
            paid = transition is domain.Transition.PAY
            result = PayoutResult(
                PayoutState.PAID if paid else PayoutState.FAILED,
                withdrawal.provider_reference or notice.provider_reference or withdrawal.withdrawal_id,
                "" if paid else reason,
            )
            await finish(
                tx, withdrawal, result, domain.WithdrawalStatus.PAID if paid else domain.WithdrawalStatus.FAILED
            )
    log.info(
        "payout_notice_applied",
        provider=notice.payout_provider,
        kind=notice.kind,
        withdrawal_id=notice.withdrawal_id,
        transition=transition.value,
    )
    return NoticeOutcome.APPLIED
