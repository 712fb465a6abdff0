"""The load generator: a process of its own (spawned, never forked: the parent has gRPC objects) running uvloop and
grpc.aio clients over several channels. The benchmark sends it one command at a time over a pipe; it answers with
the outcome and timing of every call, so that all arithmetic happens outside the measured window."""

from __future__ import annotations

import asyncio
import gc
import itertools
import multiprocessing
import random
import struct
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import grpc
import uvloop
from coinstream.gifts.v1 import gifts_pb2, gifts_pb2_grpc
from coinstream.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from bench import baselines

# Separate TCP connections per target: one HTTP/2 connection would serialise every call on one socket.
CHANNELS_PER_TARGET = 4
# A safety net rather than a client policy: overloaded calls should end in a refusal long before this.
CALL_TIMEOUT_SECONDS = 30.0
SETUP_IN_FLIGHT = 200
SETUP_ATTEMPTS = 5
FAN_PACKAGE = "coins_16500"
MIXED_PACKAGE = "coins_65"
PAYMENT_TOKEN = "tok_ok_bench"
# The gifts service's COINSTREAM_GIFTS_STREAM_MAX_IN_FLIGHT default: a SendGifts window above it only queues.
SEND_GIFTS_MAX_IN_FLIGHT = 256
OK = "OK"
# Records use the monotonic clock at full resolution: uvloop's loop.time() is in whole milliseconds and cached per
# iteration of the loop, too coarse for calls that take about a millisecond.
now = time.monotonic


# -- commands ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    fans: int
    creators: int


@dataclass(frozen=True)
class ClosedLoop:
    """`concurrency` callers, each sending its next call as soon as the previous one ends."""

    workload: str  # gift, hot, mixed or echo
    concurrency: int
    seconds: float
    echo_address: str = ""


@dataclass(frozen=True)
class StreamLoop:
    """`streams` bidirectional streams, each keeping `window` messages outstanding: a new one is sent as soon as an
    answer comes back (answers may come out of order; they are matched by request_id or the echo payload's id)."""

    workload: str  # gift (SendGifts, gifts picked as the uniform workload's) or echo (the bare streaming echo)
    streams: int
    window: int
    seconds: float
    echo_address: str = ""


@dataclass(frozen=True)
class Phase:
    label: str
    rate: float  # calls per second
    seconds: float


@dataclass(frozen=True)
class OpenLoop:
    """Calls sent on a Poisson schedule whether or not earlier ones finished; latency counts from the scheduled
    moment, so a slow system (or a late generator) cannot hide queueing by slowing the offered load."""

    workload: str
    phases: tuple[Phase, ...]


@dataclass(frozen=True)
class PrepareDebits:
    dsn: str
    accounts: int


@dataclass(frozen=True)
class GuardedDebits:
    dsn: str
    connections: int
    seconds: float


# A call's record: kind, scheduled moment, moment sent, moment ended (loop clock, seconds), outcome (OK or
# "<status code>" or "<status code>/<ErrorInfo reason>").
Record = tuple[str, float, float, float, str]


@dataclass
class Run:
    started: float
    ended: float
    records: list[Record] = field(default_factory=list)
    # Open loop: (label, start, end, offered rate) of each phase, on the records' clock.
    phases: list[tuple[str, float, float, float]] = field(default_factory=list)


@dataclass
class Failed:
    """What a command raised, sent back instead of a result so the benchmark can stop with the traceback."""

    traceback: str


# -- the parent's handle ---------------------------------------------------------------------------------------


class LoadGenerator:
    def __init__(self, wallet_address: str, gifts_address: str, token: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child_end = context.Pipe()
        self.process = context.Process(
            target=worker_main,
            args=(child_end, wallet_address, gifts_address, token),
            name="bench-load",
            daemon=True,
        )
        self.process.start()
        child_end.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def run(self, command: object) -> Any:
        self._pipe.send(command)
        result = self._pipe.recv()
        if isinstance(result, Failed):
            raise RuntimeError(f"the load generator failed:\n{result.traceback}")
        return result

    def close(self) -> None:
        if self.process.is_alive():
            self._pipe.send(None)
            self.process.join(30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()


# -- the child -------------------------------------------------------------------------------------------------


def worker_main(pipe: Connection, wallet_address: str, gifts_address: str, token: str) -> None:
    _settle_garbage_collection()
    uvloop.run(_serve(pipe, wallet_address, gifts_address, token))


# The services' setting (services/runtime/server.py): the generator allocates a task, a call and a record per call,
# and with the default threshold it collected its youngest generation hundreds of times a second and scanned every
# module object (~57 ms) at each full collection, latency it then charged to the services.
GC_YOUNGEST_THRESHOLD = 20_000


def _settle_garbage_collection() -> None:
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNGEST_THRESHOLD, middle, oldest)


async def _serve(pipe: Connection, wallet_address: str, gifts_address: str, token: str) -> None:
    loop = asyncio.get_running_loop()
    clients = Clients(wallet_address, gifts_address, token)
    world = World()
    try:
        while (command := await loop.run_in_executor(None, pipe.recv)) is not None:
            try:
                result: object = await execute(command, clients, world)
            except Exception:
                result = Failed(traceback.format_exc())
            pipe.send(result)
    finally:
        await clients.close()


async def execute(command: object, clients: Clients, world: World) -> object:
    match command:
        case Setup():
            return await set_up(clients, world, command)
        case ClosedLoop():
            return await closed_loop(Workload(command.workload, clients, world, command.echo_address), command)
        case OpenLoop():
            return await open_loop(Workload(command.workload, clients, world), command)
        case StreamLoop():
            return await stream_loop(Workload(command.workload, clients, world), clients, command)
        case PrepareDebits():
            return await baselines.prepare_debits(command.dsn, command.accounts)
        case GuardedDebits():
            return await guarded_debits(command)
    raise ValueError(f"unknown command {command!r}")


class Clients:
    def __init__(self, wallet_address: str, gifts_address: str, token: str) -> None:
        self.metadata = (("authorization", f"Bearer {token}"),)
        self._channels: list[grpc.aio.Channel] = []
        self._wallets = itertools.cycle([wallet_pb2_grpc.WalletServiceStub(c) for c in self._open(wallet_address)])
        self._gifts = itertools.cycle([gifts_pb2_grpc.GiftServiceStub(c) for c in self._open(gifts_address)])
        self._echoes: dict[str, itertools.cycle[grpc.aio.UnaryUnaryMultiCallable]] = {}
        self._stream_echoes: dict[str, itertools.cycle[grpc.aio.StreamStreamMultiCallable]] = {}

    def _open(self, address: str) -> list[grpc.aio.Channel]:
        # A local subchannel pool each, or channels with equal arguments would share one connection.
        channels = [
            grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(CHANNELS_PER_TARGET)
        ]
        self._channels += channels
        return channels

    @property
    def wallet(self) -> wallet_pb2_grpc.WalletServiceStub:
        return next(self._wallets)

    @property
    def gifts(self) -> gifts_pb2_grpc.GiftServiceStub:
        return next(self._gifts)

    def echo(self, address: str) -> grpc.aio.UnaryUnaryMultiCallable:
        if address not in self._echoes:
            self._echoes[address] = itertools.cycle(
                [channel.unary_unary(baselines.ECHO_METHOD) for channel in self._open(address)]
            )
        return next(self._echoes[address])

    def stream_echo(self, address: str) -> grpc.aio.StreamStreamMultiCallable:
        if address not in self._stream_echoes:
            self._stream_echoes[address] = itertools.cycle(
                [channel.stream_stream(baselines.STREAM_ECHO_METHOD) for channel in self._open(address)]
            )
        return next(self._stream_echoes[address])

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


@dataclass
class World:
    """The accounts and live streams that setup created."""

    fans: list[str] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)


# Outcomes already read, by (code, the status details' bytes): under overload the generator reads a thousand identical
# refusals a second, and parsing each one's details again was CPU the services were short of on the same machine.
_OUTCOMES: dict[tuple[grpc.StatusCode, bytes | None], str] = {}
_MAX_OUTCOMES = 1_000


def outcome_of(error: grpc.aio.AioRpcError) -> str:
    """The status code, with the contract's ErrorInfo reason when the error carries one."""
    details = next((v for k, v in error.trailing_metadata() or () if k == "grpc-status-details-bin"), None)
    key = (error.code(), details if isinstance(details, bytes) else None)
    outcome = _OUTCOMES.get(key)
    if outcome is None:
        try:
            status = rpc_status.from_call(error)
        except ValueError:
            status = None
        outcome = _with_reason(error.code().name, status)
        if len(_OUTCOMES) < _MAX_OUTCOMES:
            _OUTCOMES[key] = outcome
    return outcome


STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def outcome_of_status(status: status_pb2.Status) -> str:
    """The same outcome for a refusal carried in a message (a SendGifts answer's `error`)."""
    return _with_reason(STATUS_NAMES.get(status.code, str(status.code)), status)


def _with_reason(code: str, status: status_pb2.Status | None) -> str:
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return f"{code}/{info.reason}"
    return code


async def attempt(call: Awaitable[object]) -> str:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return outcome_of(error)
    return OK


# -- setup -----------------------------------------------------------------------------------------------------


async def set_up(clients: Clients, world: World, command: Setup) -> dict[str, int]:
    """Funded adult fans and adult creators with a live stream each, many calls in flight."""
    fans = [f"bench-fan-{i:05d}" for i in range(command.fans)]
    creators = [f"bench-creator-{i:03d}" for i in range(command.creators)]
    world.fans = fans
    world.streams = await _in_flight(SETUP_IN_FLIGHT, [_stream_for(clients, c) for c in creators])
    await _in_flight(SETUP_IN_FLIGHT, [_funded_fan(clients, f) for f in fans])
    return {"fans": len(world.fans), "streams": len(world.streams)}


async def _in_flight(limit: int, jobs: list[Awaitable[str | None]]) -> list[str]:
    gate = asyncio.Semaphore(limit)

    async def gated(job: Awaitable[str | None]) -> str | None:
        async with gate:
            return await job

    return [r for r in await asyncio.gather(*(gated(job) for job in jobs)) if r is not None]


async def _funded_fan(clients: Clients, fan: str) -> None:
    await _upsert_adult(clients, fan)
    request = wallet_pb2.PurchaseCoinsRequest(
        request_id=new_request_id(), account_id=fan, package_id=FAN_PACKAGE, payment_token=PAYMENT_TOKEN
    )
    await _retrying(lambda: clients.wallet.PurchaseCoins(request, metadata=clients.metadata))


async def _stream_for(clients: Clients, creator: str) -> str:
    await _upsert_adult(clients, creator)
    request = gifts_pb2.StartLiveStreamRequest(request_id=new_request_id(), creator_id=creator, title="bench")
    reply = await _retrying(lambda: clients.gifts.StartLiveStream(request, metadata=clients.metadata))
    return str(reply.stream.stream_id)


async def _upsert_adult(clients: Clients, account_id: str) -> None:
    request = wallet_pb2.UpsertAccountRequest(
        request_id=new_request_id(), account_id=account_id, adult_verified=True, country_code="US"
    )
    await _retrying(lambda: clients.wallet.UpsertAccount(request, metadata=clients.metadata))


async def _retrying(call: Callable[[], Awaitable[Any]]) -> Any:
    """Setup retries transient refusals with the same request (so the same request_id): idempotent by contract."""
    for attempt_number in range(1, SETUP_ATTEMPTS + 1):
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            transient = error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
            if not transient or attempt_number == SETUP_ATTEMPTS:
                raise
            await asyncio.sleep(0.2 * attempt_number)


def new_request_id() -> str:
    return str(uuid.uuid4())


# -- workloads -------------------------------------------------------------------------------------------------


class Workload:
    """Picks the next call of a workload: its kind and the call itself (not yet awaited)."""

    def __init__(self, name: str, clients: Clients, world: World, echo_address: str = "") -> None:
        if name != "echo" and not (world.fans and world.streams):
            raise RuntimeError("run Setup before a gift workload")
        self.name = name
        self._clients = clients
        self._world = world
        self._echo_address = echo_address
        self._random = random.Random(name)
        self._echo_payload = bytes(64)  # about a SendGiftRequest's size

    def next_call(self) -> tuple[str, Awaitable[object]]:
        if self.name == "echo":
            return "echo", self._echo()
        if self.name == "hot":
            return "gift", self._gift(self._world.streams[0])
        if self.name == "mixed":
            draw = self._random.random()
            if draw >= 0.9:
                return "purchase", self._purchase()
            if draw >= 0.8:
                return "balance", self._balance()
        return "gift", self._gift(self._random.choice(self._world.streams))

    def _fan(self) -> str:
        return self._random.choice(self._world.fans)

    def next_gift_request(self) -> gifts_pb2.SendGiftRequest:
        """The request next_call would send as a gift (uniform or hot), for a SendGifts stream."""
        stream_id = self._world.streams[0] if self.name == "hot" else self._random.choice(self._world.streams)
        return self._gift_request(stream_id)

    def _gift_request(self, stream_id: str) -> gifts_pb2.SendGiftRequest:
        return gifts_pb2.SendGiftRequest(
            request_id=new_request_id(), sender_id=self._fan(), stream_id=stream_id, gift_id="rose", quantity=1
        )

    def _gift(self, stream_id: str) -> Awaitable[object]:
        request = self._gift_request(stream_id)
        return self._clients.gifts.SendGift(request, metadata=self._clients.metadata, timeout=CALL_TIMEOUT_SECONDS)

    def _balance(self) -> Awaitable[object]:
        request = wallet_pb2.GetBalanceRequest(account_id=self._fan())
        return self._clients.wallet.GetBalance(request, metadata=self._clients.metadata, timeout=CALL_TIMEOUT_SECONDS)

    def _purchase(self) -> Awaitable[object]:
        request = wallet_pb2.PurchaseCoinsRequest(
            request_id=new_request_id(), account_id=self._fan(), package_id=MIXED_PACKAGE, payment_token=PAYMENT_TOKEN
        )
        return self._clients.wallet.PurchaseCoins(
            request, metadata=self._clients.metadata, timeout=CALL_TIMEOUT_SECONDS
        )

    def _echo(self) -> Awaitable[object]:
        echo = self._clients.echo(self._echo_address)
        return echo(self._echo_payload, metadata=self._clients.metadata, timeout=CALL_TIMEOUT_SECONDS)


# -- loops -----------------------------------------------------------------------------------------------------


async def closed_loop(workload: Workload, command: ClosedLoop) -> Run:
    run = Run(started=now(), ended=0.0)
    stop_at = run.started + command.seconds

    async def caller() -> None:
        while (sent := now()) < stop_at:
            kind, call = workload.next_call()
            outcome = await attempt(call)
            run.records.append((kind, sent, sent, now(), outcome))

    await asyncio.gather(*(caller() for _ in range(command.concurrency)))
    run.ended = now()
    return run


async def open_loop(workload: Workload, command: OpenLoop) -> Run:
    schedule = random.Random(f"{workload.name}-schedule")
    run = Run(started=now(), ended=0.0)
    in_flight: set[asyncio.Task[None]] = set()

    async def one(kind: str, call: Awaitable[object], scheduled: float, sent: float) -> None:
        outcome = await attempt(call)
        run.records.append((kind, scheduled, sent, now(), outcome))

    phase_start = run.started
    for phase in command.phases:
        phase_end = phase_start + phase.seconds
        due = phase_start + schedule.expovariate(phase.rate)
        while due < phase_end:
            if (wait := due - now()) > 0:
                await asyncio.sleep(wait)
            sent = now()
            kind, call = workload.next_call()
            task = asyncio.create_task(one(kind, call, due, sent))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            due += schedule.expovariate(phase.rate)
        run.phases.append((phase.label, phase_start, phase_end, phase.rate))
        phase_start = phase_end
    if (wait := phase_start - now()) > 0:
        await asyncio.sleep(wait)
    await asyncio.gather(*in_flight)  # the stragglers belong to the run: their latency is the point
    run.ended = now()
    return run


async def stream_loop(workload: Workload, clients: Clients, command: StreamLoop) -> Run:
    """Closed loops over streams: each stream's writer sends while fewer than `window` of its messages await their
    answer; its reader matches each answer to its message and frees a slot. A message's latency is from its write to
    its answer. Writers stop at the deadline and half-close; the answers still due belong to the run."""
    if workload.name == "gift" and command.window > SEND_GIFTS_MAX_IN_FLIGHT:
        raise ValueError(f"a SendGifts window above {SEND_GIFTS_MAX_IN_FLIGHT} only queues in the server")
    run = Run(started=now(), ended=0.0)
    stop_at = run.started + command.seconds
    echo = workload.name == "echo"
    kind = "echo" if echo else "gift"
    ids = itertools.count()

    def next_message() -> tuple[str | int, object]:
        if echo:
            key = next(ids)
            return key, struct.pack(">Q", key) + bytes(56)  # 64 bytes, about a SendGiftRequest's size
        request = workload.next_gift_request()
        return request.request_id, request

    def answer_of(response: Any) -> tuple[str | int, str]:
        if echo:
            return struct.unpack_from(">Q", response)[0], OK
        if response.WhichOneof("outcome") == "gift":
            return response.request_id, OK
        return response.request_id, outcome_of_status(response.error)

    async def one_stream() -> None:
        if echo:
            call = clients.stream_echo(command.echo_address)(
                metadata=clients.metadata, timeout=command.seconds + CALL_TIMEOUT_SECONDS
            )
        else:
            call = clients.gifts.SendGifts(metadata=clients.metadata, timeout=command.seconds + CALL_TIMEOUT_SECONDS)
        slots = asyncio.Semaphore(command.window)
        pending: dict[str | int, float] = {}

        async def writer() -> None:
            try:
                while True:
                    await slots.acquire()
                    if (sent := now()) >= stop_at:
                        break
                    key, message = next_message()
                    pending[key] = sent
                    await call.write(message)
                await call.done_writing()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                return  # the call ended: the reader records what it took with it

        writing = asyncio.create_task(writer())
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                key, outcome = answer_of(response)
                sent = pending.pop(key)
                run.records.append((kind, sent, sent, now(), outcome))
                slots.release()
            lost = "LOST"  # the stream ended OK with messages unanswered: a broken contract, counted as an error
        except grpc.aio.AioRpcError as error:
            lost = f"STREAM_{outcome_of(error)}"
        finally:
            writing.cancel()
            await asyncio.gather(writing, return_exceptions=True)
        ended = now()
        run.records.extend((kind, sent, sent, ended, lost) for sent in pending.values())

    await asyncio.gather(*(one_stream() for _ in range(command.streams)))
    run.ended = now()
    return run


async def guarded_debits(command: GuardedDebits) -> Run:
    run = Run(started=now(), ended=0.0)
    await baselines.guarded_debits(command.dsn, command.connections, command.seconds, run.records, now)
    run.ended = now()
    return run
