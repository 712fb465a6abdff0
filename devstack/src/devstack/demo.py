"""`coinstream demo`: a short scripted live stream against a running stack (`make run`), printed with rich.

Two fans buy coins and send gifts to a creator's live stream, which has a goal that the gifts reach; a fan gifts one
of the creator's videos; the creator's stream meets a rival's in a one-minute match that the creator wins; the
creator's diamonds settle through NATS, and the creator withdraws 2,000 of them through the sandbox payout provider.
Every run uses fresh account ids, so runs never collide and the stack's data from earlier runs is left alone."""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from coinstream.gifts.v1 import gifts_pb2, gifts_pb2_grpc
from coinstream.payouts.v1 import payouts_pb2
from coinstream.type.v1 import money_pb2
from coinstream.wallet.v1 import wallet_pb2
from google.protobuf.duration_pb2 import Duration
from rich.console import Console
from rich.table import Table

from coinstream.client import Addresses, CallError, Clients, Metadata, connect, signed_metadata
from services.runtime.auth import ROLE_ADMIN, ROLE_SERVICE
from services.runtime.probe import health_status

CALL_TIMEOUT_SECONDS = 10.0
SETTLEMENT_WAIT_SECONDS = 10.0
PAYOUT_WAIT_SECONDS = 30.0
POLL_INTERVAL_SECONDS = 0.5
TOKEN_TTL_SECONDS = 900
DEFAULT_WITHDRAWAL_DIAMONDS = 2_000
DEFAULT_MATCH_SECONDS = 60
# How long after its end a match may take to be finished before the demo gives up on it.
MATCH_FINISH_GRACE_SECONDS = 15.0
GOAL_TARGET_COINS = 2_000
GOAL_DESCRIPTION = "New microphone 🎤"

# (fan index, gift id, quantity). About 2,900 coins in total, so the creator can withdraw the 2,000-diamond
# minimum; the lion is beyond either fan's coins on purpose, to show a refusal.
GIFT_PLAN = (
    (0, "rose", 10),
    (0, "rose", 5),  # within 10 s of the first: a combo (×2)
    (1, "finger_heart", 4),
    (0, "doughnut", 5),
    (1, "hand_hearts", 3),
    (0, "corgi", 3),
    (1, "disco_ball", 1),
    (0, "money_gun", 1),
    (1, "lion", 1),
)
# (fan index, package id): 1,321 + 5% bonus + 330 for the first fan, 1,321 + bonus for the second.
PURCHASE_PLAN = ((0, "coins_1321"), (0, "coins_330"), (1, "coins_1321"))
# With what the stream gifts leave them: the second fan gifts the creator's video, then each fan supports a side of
# the match (fan index, gift id, quantity, whether for the creator rather than the rival) — the creator wins.
VIDEO_GIFT = (1, "finger_heart", 2)
MATCH_PLAN = ((0, "doughnut", 2, True), (1, "finger_heart", 3, False))

Response = TypeVar("Response")


class DemoError(Exception):
    """A step failed; the message says which and why."""


class CallFailed(DemoError):
    """An RPC failed; error is the server's answer as the contract describes it."""

    def __init__(self, rpc_name: str, error: CallError) -> None:
        super().__init__(f"{rpc_name} failed: {error.describe()}")
        self.error = error

    @property
    def refused(self) -> bool:
        """The server refused this request (a rule, not a fault of the stack): the demo shows why and carries on."""
        return self.error.code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)


def run_demo(
    addresses: Addresses,
    secret: str,
    console: Console,
    *,
    withdrawal_diamonds: int = DEFAULT_WITHDRAWAL_DIAMONDS,
    match_seconds: float = DEFAULT_MATCH_SECONDS,
) -> None:
    """The scripted live stream against the stack at addresses, its calls signed with secret."""
    check_stack_is_up(addresses)
    with connect(addresses) as clients:
        LiveStreamDemo(
            clients, secret, console, withdrawal_diamonds=withdrawal_diamonds, match_seconds=match_seconds
        ).run()


def check_stack_is_up(addresses: Addresses) -> None:
    down = {
        name: status
        for name, address in addresses.by_service().items()
        if (status := health_status(address)) != "SERVING"
    }
    if down:
        details = ", ".join(f"{name} at {addresses.by_service()[name]}: {status}" for name, status in down.items())
        raise DemoError(f"the stack is not ready ({details}). Start it with `make run` in another terminal.")


def format_money(money: money_pb2.Money) -> str:
    whole, cents = divmod(money.amount_minor, 100)
    return f"${whole:,}.{cents:02d}" if money.currency_code == "USD" else f"{whole:,}.{cents:02d} {money.currency_code}"


class GiftFeedWatcher:
    """Watches the stream's live gift feed (WatchStreamGifts) in a thread, as an overlay would."""

    def __init__(self, stub: gifts_pb2_grpc.GiftServiceStub, stream_id: str, metadata: Metadata) -> None:
        self.events: list[gifts_pb2.GiftEvent] = []
        # Besides gifts, the feed shows the stream's match (scores, result) and goal (progress) as they change.
        self.match_updates: list[gifts_pb2.Match] = []
        self.goal_updates: list[gifts_pb2.StreamGoal] = []
        self.error = ""
        self._call = stub.WatchStreamGifts(
            gifts_pb2.WatchStreamGiftsRequest(stream_id=stream_id, include_match_and_goal_updates=True),
            metadata=metadata,
        )
        self._call.initial_metadata()  # the server sends headers once the watcher is registered
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self._call:
                if response.HasField("event"):
                    self.events.append(response.event)
                elif response.HasField("match"):
                    self.match_updates.append(response.match)
                elif response.HasField("goal"):
                    self.goal_updates.append(response.goal)
        except grpc.RpcError as error:
            self.error = CallError.of(error).describe()

    def finish(self, timeout_seconds: float) -> None:
        """The feed ends by itself when the stream ends; cancel it if that takes too long."""
        self._thread.join(timeout_seconds)
        if self._thread.is_alive():
            self._call.cancel()
            self._thread.join(1.0)


@dataclass
class LiveStreamDemo:
    clients: Clients
    secret: str
    console: Console
    withdrawal_diamonds: int = DEFAULT_WITHDRAWAL_DIAMONDS
    match_seconds: float = DEFAULT_MATCH_SECONDS
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    stream_id: str = ""
    rival_stream_id: str = ""
    # Gifts to the creator (stream, video, match) that went through: settlement is done when payouts counts as many.
    gifts_to_creator: int = 0
    _request_numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.creator = f"demo-creator-{self.run_id}"
        self.rival = f"demo-rival-{self.run_id}"
        self.fans = [f"demo-fan1-{self.run_id}", f"demo-fan2-{self.run_id}"]
        # A trusted backend acts for the users; KYC is a compliance decision, so it goes through an admin token.
        self.service = signed_metadata(self.secret, "coinstream-demo", ROLE_SERVICE, ttl_seconds=TOKEN_TTL_SECONDS)
        self.admin = signed_metadata(self.secret, "coinstream-demo-admin", ROLE_ADMIN, ttl_seconds=TOKEN_TTL_SECONDS)

    # -- plumbing --------------------------------------------------------------------------------------------

    def request_id(self, label: str) -> str:
        """Unique per request and readable in the services' logs, e.g. demo:3fa2c1:07:gift-corgi."""
        return f"demo:{self.run_id}:{next(self._request_numbers):02d}:{label}"

    def call(self, rpc: Callable[..., Response], request: Any, *, admin: bool = False) -> Response:
        try:
            return rpc(request, metadata=self.admin if admin else self.service, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            rpc_name = type(request).__name__.removesuffix("Request")  # the contract names FooRequest after Foo
            raise CallFailed(rpc_name, CallError.of(error)) from None

    def gift_request(
        self, label: str, fan_index: int, gift_id: str, quantity: int, **target: str
    ) -> gifts_pb2.SendGiftRequest:
        """A fan's gift to a stream (stream_id=…) or to a video (video_id=…)."""
        return gifts_pb2.SendGiftRequest(
            request_id=self.request_id(f"{label}-{gift_id}"),
            sender_id=self.fans[fan_index],
            gift_id=gift_id,
            quantity=quantity,
            **target,
        )

    def step(self, number: int, title: str) -> None:
        self.console.rule(f"[bold]{number}. {title}", align="left")

    def done(self, message: str) -> None:
        self.console.print(f"[green]✓[/] {message}")

    # -- the scenario ----------------------------------------------------------------------------------------

    def run(self) -> None:
        self.console.print(f"Demo run [bold]{self.run_id}[/]: creator {self.creator}, fans {', '.join(self.fans)}")
        self.create_accounts()
        self.verify_creator()
        self.buy_coins()
        self.go_live()
        self.feed = GiftFeedWatcher(self.clients.gifts, self.stream_id, self.service)
        try:
            self.set_goal()
            self.send_gifts()
            self.show_stream_summary()
            self.show_leaderboard()
            self.gift_a_video()
            self.run_match()
            self.wait_for_settlement()
            self.withdraw()
        except DemoError:
            self.end_stream_quietly()
            raise
        self.end_stream()
        self.show_feed()
        self.show_balances("Final balances")

    def create_accounts(self) -> None:
        self.step(1, "Accounts")
        for account_id in [self.creator, self.rival, *self.fans]:
            request = wallet_pb2.UpsertAccountRequest(
                request_id=self.request_id("upsert-account"),
                account_id=account_id,
                adult_verified=True,
                country_code="US",
            )
            account = self.call(self.clients.wallet.UpsertAccount, request).account
            self.done(
                f"{account.account_id}: adult_verified={account.adult_verified}, "
                f"country {account.country_code}, {wallet_pb2.AccountStatus.Name(account.status)}"
            )

    def verify_creator(self) -> None:
        self.step(2, "Creator KYC and payout destination (admin token)")
        request = payouts_pb2.UpdateCreatorProfileRequest(
            request_id=self.request_id("creator-profile"),
            creator_id=self.creator,
            kyc_verified=True,
            payout_destination=f"sandbox:ok-{self.creator}",
        )
        profile = self.call(self.clients.payouts.UpdateCreatorProfile, request, admin=True).profile
        self.done(f"{profile.creator_id}: kyc_verified={profile.kyc_verified}, pays to {profile.payout_destination}")

    def buy_coins(self) -> None:
        self.step(3, "Fans buy coins (sandbox payment token tok_ok_demo)")
        table = Table("fan", "package", "coins", "bonus", "balance after")
        for fan_index, package_id in PURCHASE_PLAN:
            request = wallet_pb2.PurchaseCoinsRequest(
                request_id=self.request_id(f"purchase-{package_id}"),
                account_id=self.fans[fan_index],
                package_id=package_id,
                payment_token="tok_ok_demo",
            )
            response = self.call(self.clients.wallet.PurchaseCoins, request)
            purchase = response.purchase
            table.add_row(
                self.fans[fan_index],
                purchase.package_id,
                f"{purchase.coins:,}",
                f"{purchase.bonus_coins:,}",
                f"{response.balance.coins:,}",
            )
        self.console.print(table)

    def go_live(self) -> None:
        self.step(4, "Creator goes live and sets a goal")
        request = gifts_pb2.StartLiveStreamRequest(
            request_id=self.request_id("start-stream"), creator_id=self.creator, title=f"coinstream demo {self.run_id}"
        )
        stream = self.call(self.clients.gifts.StartLiveStream, request).stream
        self.stream_id = stream.stream_id
        self.done(f'stream {stream.stream_id} "{stream.title}" is {gifts_pb2.StreamStatus.Name(stream.status)}')

    def send_gifts(self) -> None:
        self.step(5, "Fans send gifts")
        catalog = {
            gift.gift_id: gift for gift in self.call(self.clients.gifts.ListGifts, gifts_pb2.ListGiftsRequest()).gifts
        }
        table = Table("sender", "gift", "qty", "coins", "paid / bonus", "combo", "sender balance after", "outcome")
        last_sent: tuple[gifts_pb2.SendGiftRequest, gifts_pb2.SendGiftResponse] | None = None
        for fan_index, gift_id, quantity in GIFT_PLAN:
            if gift_id not in catalog:
                table.add_row(self.fans[fan_index], gift_id, str(quantity), "", "", "", "", "[yellow]not in catalog[/]")
                continue
            request = self.gift_request("gift", fan_index, gift_id, quantity, stream_id=self.stream_id)
            response = self.send_one_gift(request, catalog[gift_id], table)
            if response is not None:
                last_sent = (request, response)
        self.console.print(table)
        if last_sent is not None:
            self.replay_gift(*last_sent)

    def send_one_gift(
        self, request: gifts_pb2.SendGiftRequest, gift: gifts_pb2.Gift, table: Table
    ) -> gifts_pb2.SendGiftResponse | None:
        """Sends a gift and adds its row; a refusal (e.g. too few coins) is shown, not fatal."""
        price = f"{gift.coin_price * request.quantity:,}"
        try:
            response = self.call(self.clients.gifts.SendGift, request)
        except CallFailed as failed:
            if not failed.refused:
                raise
            table.add_row(
                request.sender_id,
                gift.name,
                str(request.quantity),
                price,
                "",
                "",
                "",
                f"[yellow]refused: {failed.error.reason}[/]",
            )
            return None
        self.gifts_to_creator += 1
        table.add_row(
            request.sender_id,
            gift.name,
            str(request.quantity),
            f"{response.gift.coins:,}",
            self.last_split(request.sender_id, response.gift.gift_transaction_id),
            f"×{response.gift.combo_count}",
            f"{response.sender_balance_coins:,}",
            "[green]sent[/]",
        )
        return response

    def replay_gift(self, request: gifts_pb2.SendGiftRequest, original: gifts_pb2.SendGiftResponse) -> None:
        """A client retry after a lost response: the same request_id must return the same gift, charged once."""
        balance_before = self.coins_of(request.sender_id)
        replayed = self.call(self.clients.gifts.SendGift, request)
        balance_after = self.coins_of(request.sender_id)
        if replayed.gift.gift_transaction_id != original.gift.gift_transaction_id or balance_after != balance_before:
            raise DemoError(
                f"replaying request {request.request_id} was not idempotent: gift "
                f"{replayed.gift.gift_transaction_id} (first {original.gift.gift_transaction_id}), "
                f"coins {balance_before:,} → {balance_after:,}"
            )
        self.done(
            f"replayed request_id {request.request_id}: same gift {replayed.gift.gift_transaction_id}, "
            f"balance unchanged at {balance_after:,} coins (idempotent)"
        )

    def set_goal(self) -> None:
        request = gifts_pb2.SetStreamGoalRequest(
            request_id=self.request_id("goal"),
            stream_id=self.stream_id,
            target_coins=GOAL_TARGET_COINS,
            description=GOAL_DESCRIPTION,
        )
        goal = self.call(self.clients.gifts.SetStreamGoal, request).goal
        self.done(f'goal {goal.goal_id}: "{goal.description}", {goal.target_coins:,} coins')

    def show_stream_summary(self) -> None:
        self.step(6, "Stream summary")
        summary = self.call(
            self.clients.gifts.GetStreamSummary, gifts_pb2.GetStreamSummaryRequest(stream_id=self.stream_id)
        ).summary
        table = Table("top gifter", "coins", title=f"{summary.gift_count} gifts, {summary.total_coins:,} coins")
        for gifter in summary.top_gifters:
            table.add_row(gifter.account_id, f"{gifter.coins:,}")
        self.console.print(table)
        goal = summary.goal
        reached = (
            f"reached at {goal.reached_at.ToDatetime():%H:%M:%S} UTC" if goal.HasField("reached_at") else "not reached"
        )
        self.done(f'goal "{goal.description}": {goal.progress_coins:,} of {goal.target_coins:,} coins, {reached}')

    def gift_a_video(self) -> None:
        self.step(7, "A fan gifts the creator's video")
        request = gifts_pb2.UpsertVideoRequest(
            request_id=self.request_id("video"),
            video_id=f"demo-video-{self.run_id}",
            creator_id=self.creator,
            gifts_enabled=True,
        )
        video = self.call(self.clients.gifts.UpsertVideo, request).video
        self.done(f"video {video.video_id} of {video.creator_id} takes gifts")
        fan_index, gift_id, quantity = VIDEO_GIFT
        gift_request = self.gift_request("video-gift", fan_index, gift_id, quantity, video_id=video.video_id)
        gift = self.call(self.clients.gifts.SendGift, gift_request).gift
        self.gifts_to_creator += 1
        summary = self.call(
            self.clients.gifts.GetVideoSummary, gifts_pb2.GetVideoSummaryRequest(video_id=video.video_id)
        ).summary
        self.done(
            f"{gift.sender_id} sent {gift.gift_id}×{gift.quantity} ({gift.coins} coins) to the video: "
            f"{summary.gift_count} gift(s), {summary.total_coins:,} coins"
        )

    def run_match(self) -> None:
        self.step(8, f"A {self.match_seconds:g}-second match against a rival's stream")
        start = gifts_pb2.StartLiveStreamRequest(
            request_id=self.request_id("rival-stream"), creator_id=self.rival, title=f"rival {self.run_id}"
        )
        self.rival_stream_id = self.call(self.clients.gifts.StartLiveStream, start).stream.stream_id
        duration = Duration()
        duration.FromMilliseconds(int(self.match_seconds * 1000))
        request = gifts_pb2.StartMatchRequest(
            request_id=self.request_id("match"), stream_ids=[self.stream_id, self.rival_stream_id], duration=duration
        )
        match = self.call(self.clients.gifts.StartMatch, request).match
        self.done(f"match {match.match_id} until {match.ends_at.ToDatetime():%H:%M:%S} UTC")
        for fan_index, gift_id, quantity, for_creator in MATCH_PLAN:
            stream_id = self.stream_id if for_creator else self.rival_stream_id
            gift_request = self.gift_request("match-gift", fan_index, gift_id, quantity, stream_id=stream_id)
            gift = self.call(self.clients.gifts.SendGift, gift_request).gift
            if for_creator:
                self.gifts_to_creator += 1
            self.done(f"{gift.sender_id} sent {gift.gift_id}×{gift.quantity} to {gift.recipient_id}")
        self.show_match(self.wait_for_match(match))

    def wait_for_match(self, match: gifts_pb2.Match) -> gifts_pb2.GetMatchResponse:
        """The match once the service finished it by itself, at its end."""
        self.console.print(f"waiting for the end of the match ({self.match_seconds:g} s)…")
        deadline = time.monotonic() + self.match_seconds + MATCH_FINISH_GRACE_SECONDS
        request = gifts_pb2.GetMatchRequest(match_id=match.match_id)
        while (
            reply := self.call(self.clients.gifts.GetMatch, request)
        ).match.status != gifts_pb2.MATCH_STATUS_FINISHED:
            if time.monotonic() > deadline:
                raise DemoError(
                    f"match {match.match_id} was not finished {MATCH_FINISH_GRACE_SECONDS:.0f} s after its end"
                )
            time.sleep(POLL_INTERVAL_SECONDS)
        return reply

    def show_match(self, reply: gifts_pb2.GetMatchResponse) -> None:
        creators = {side.stream_id: side.creator_id for side in reply.match.sides}
        table = Table("side", "score (coins)", "top supporters", title=f"match {reply.match.match_id} finished")
        for side in reply.match.sides:
            supporters = [s for s in reply.top_supporters if s.stream_id == side.stream_id]
            table.add_row(
                side.creator_id, f"{side.score_coins:,}", ", ".join(f"{s.account_id} ({s.coins})" for s in supporters)
            )
        self.console.print(table)
        winners = ", ".join(creators[stream_id] for stream_id in reply.match.winner_stream_ids)
        self.done(f"winner: {winners}")

    def wait_for_settlement(self) -> None:
        self.step(9, "Diamonds settle (gifts.v1.gift_sent → payouts-settlement)")
        self.console.print(f"waiting for payouts to settle the creator's {self.gifts_to_creator} gifts…")
        deadline = time.monotonic() + SETTLEMENT_WAIT_SECONDS
        while (settled := self.settled_gifts()) < self.gifts_to_creator and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL_SECONDS)
        if settled < self.gifts_to_creator:
            self.console.print(
                f"[yellow]only {settled} of {self.gifts_to_creator} gifts settled after "
                f"{SETTLEMENT_WAIT_SECONDS:.0f} s; continuing with what is there[/]"
            )
        else:
            rates = self.call(self.clients.payouts.GetRates, payouts_pb2.GetRatesRequest()).rates
            self.done(
                f"{settled} gifts settled: {self.earnings().lifetime_diamonds:,} diamonds at "
                f"{rates.diamonds_per_coin_numerator}/{rates.diamonds_per_coin_denominator} diamond per coin"
            )
        self.show_balances("Balances after the gifts")

    def settled_gifts(self) -> int:
        """How many of the creator's gifts payouts has credited, as its statement (ListEarnings) counts them."""
        request = payouts_pb2.ListEarningsRequest(
            creator_id=self.creator, group_by=payouts_pb2.EARNINGS_GROUP_BY_DAY, page_size=100
        )
        return sum(row.gift_count for row in self.call(self.clients.payouts.ListEarnings, request).rows)

    def withdraw(self) -> None:
        self.step(10, "Creator withdraws")
        request = payouts_pb2.RequestWithdrawalRequest(
            request_id=self.request_id("withdrawal"), creator_id=self.creator, diamonds=self.withdrawal_diamonds
        )
        try:
            withdrawal = self.call(self.clients.payouts.RequestWithdrawal, request).withdrawal
        except CallFailed as failed:
            if not failed.refused:
                raise
            # Payouts owns the rules (minimum, available diamonds, daily cap, whole minor units) and names the one
            # that applies.
            self.console.print(
                f"[yellow]payouts refused {self.withdrawal_diamonds:,} diamonds: {failed.error.reason}: "
                f"{failed.error.message}; no payout this time[/]"
            )
            return
        self.done(
            f"withdrawal {withdrawal.withdrawal_id}: {withdrawal.diamonds:,} diamonds → "
            f"{format_money(withdrawal.payout)}, {payouts_pb2.WithdrawalStatus.Name(withdrawal.status)}"
        )
        self.wait_for_payout(withdrawal.withdrawal_id)

    def wait_for_payout(self, withdrawal_id: str) -> None:
        request = payouts_pb2.GetWithdrawalRequest(withdrawal_id=withdrawal_id)
        deadline = time.monotonic() + PAYOUT_WAIT_SECONDS
        while (
            withdrawal := self.call(self.clients.payouts.GetWithdrawal, request).withdrawal
        ).status == payouts_pb2.WITHDRAWAL_STATUS_PENDING and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL_SECONDS)
        status = payouts_pb2.WithdrawalStatus.Name(withdrawal.status)
        if withdrawal.status == payouts_pb2.WITHDRAWAL_STATUS_PAID:
            self.done(f"withdrawal {withdrawal_id} is {status}: {format_money(withdrawal.payout)} sent to the sandbox")
        elif withdrawal.status == payouts_pb2.WITHDRAWAL_STATUS_PENDING:
            raise DemoError(f"withdrawal {withdrawal_id} still PENDING after {PAYOUT_WAIT_SECONDS:.0f} s")
        else:
            raise DemoError(f"withdrawal {withdrawal_id} ended {status}: {withdrawal.failure_reason or 'no reason'}")

    def last_split(self, account_id: str, gift_transaction_id: str) -> str:
        """How the gift was paid: the wallet spends bonus coins first (its spend's reference names the gift)."""
        request = wallet_pb2.ListTransactionsRequest(account_id=account_id, page_size=5)
        for transaction in self.call(self.clients.wallet.ListTransactions, request).transactions:
            if transaction.reference.endswith(gift_transaction_id):
                return f"{-transaction.paid_coins_delta:,} / {-transaction.bonus_coins_delta:,}"
        return "?"

    def show_leaderboard(self) -> None:
        request = gifts_pb2.GetLeaderboardRequest(
            creator_id=self.creator, period=gifts_pb2.LEADERBOARD_PERIOD_DAY, page_size=10
        )
        entries = self.call(self.clients.gifts.GetLeaderboard, request).entries
        table = Table("rank", "gifter", "coins", title=f"Today's leaderboard of {self.creator}")
        for entry in entries:
            table.add_row(str(entry.rank), entry.account_id, f"{entry.coins:,}")
        self.console.print(table)

    def show_feed(self) -> None:
        self.feed.finish(timeout_seconds=5.0)
        if self.feed.error:
            self.console.print(f"[yellow]live gift feed ended with {self.feed.error}[/]")
        gifts = ", ".join(f"{e.gift.gift_id}×{e.gift.quantity}" for e in self.feed.events)
        self.done(f"the live gift feed (WatchStreamGifts) showed {len(self.feed.events)} gifts as they happened:")
        self.console.print(f"  {gifts}")
        progress = " → ".join(f"{goal.progress_coins:,}" for goal in self.feed.goal_updates)
        self.done(f"…the goal's progress in coins: {progress}")
        scores = " → ".join(
            ":".join(str(side.score_coins) for side in match.sides) for match in self.feed.match_updates
        )
        self.done(f"…and the match's scores ({self.creator}:{self.rival}): {scores}")

    def end_stream_quietly(self) -> None:
        """After a failure: don't leave a stream live, but don't hide the original error behind a second one."""
        for stream_id in filter(None, [self.stream_id, self.rival_stream_id]):
            with suppress(DemoError):
                self.call(
                    self.clients.gifts.EndLiveStream,
                    gifts_pb2.EndLiveStreamRequest(request_id=self.request_id("end-stream"), stream_id=stream_id),
                )

    def end_stream(self) -> None:
        self.step(11, "Creators end their streams")
        for stream_id in filter(None, [self.stream_id, self.rival_stream_id]):
            request = gifts_pb2.EndLiveStreamRequest(request_id=self.request_id("end-stream"), stream_id=stream_id)
            stream = self.call(self.clients.gifts.EndLiveStream, request).stream
            self.done(f"stream {stream.stream_id} is {gifts_pb2.StreamStatus.Name(stream.status)}")

    # -- balances --------------------------------------------------------------------------------------------

    def balance_of(self, account_id: str) -> wallet_pb2.Balance:
        request = wallet_pb2.GetBalanceRequest(account_id=account_id)
        return self.call(self.clients.wallet.GetBalance, request).balance

    def coins_of(self, account_id: str) -> int:
        request = wallet_pb2.GetBalanceRequest(account_id=account_id)
        return self.call(self.clients.wallet.GetBalance, request).balance.coins

    def earnings(self) -> payouts_pb2.Earnings:
        request = payouts_pb2.GetEarningsRequest(creator_id=self.creator)
        return self.call(self.clients.payouts.GetEarnings, request).earnings

    def show_balances(self, title: str) -> None:
        table = Table("account", "coins", "paid / bonus", "available ◆", "reserved ◆", "lifetime ◆", title=title)
        for fan in self.fans:
            balance = self.balance_of(fan)
            table.add_row(fan, f"{balance.coins:,}", f"{balance.paid_coins:,} / {balance.bonus_coins:,}", "", "", "")
        earnings = self.earnings()
        table.add_row(
            self.creator,
            f"{self.coins_of(self.creator):,}",
            "",
            f"{earnings.available_diamonds:,}",
            f"{earnings.reserved_diamonds:,}",
            f"{earnings.lifetime_diamonds:,}",
        )
        self.console.print(table)
