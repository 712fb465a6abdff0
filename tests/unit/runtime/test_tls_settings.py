"""The TLS settings and services/runtime/tls.py: pairs checked at start-up, files checked and named when they cannot
be used, and the credentials and SSL contexts built from them doing what they claim — against in-process gRPC and
TLS servers with certificates from a throwaway CA (trustme)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from nats.aio.client import Client as NatsClient
from pydantic import ValidationError

from services.gifts.config import GiftsSettings
from services.gifts.wallet_client import WalletTls, wallet_channel
from services.runtime import database, messaging, tls
from services.runtime.config import RuntimeSettings
from services.runtime.nats_login import NatsLogin
from services.runtime.tls import PemFile, TlsSettingError


class _Settings(RuntimeSettings):
    @property
    def service_name(self) -> str:
        return "unit"


@dataclass(frozen=True)
class Party:
    """A certificate, its key and the CA that signed it, as files."""

    ca: Path
    cert: Path
    key: Path

    def pem(self, name: str) -> PemFile:
        return PemFile(f"TEST_{name.upper()}", str(getattr(self, name)))


def issue(directory: Path, ca: trustme.CA, *names: str) -> Party:
    directory.mkdir(parents=True, exist_ok=True)
    issued = ca.issue_cert(*names)
    party = Party(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(party.ca))
    issued.cert_chain_pems[0].write_to_path(str(party.cert))
    issued.private_key_pem.write_to_path(str(party.key))
    return party


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Party]:
    root = tmp_path_factory.mktemp("pki")
    ca, foreign_ca = trustme.CA(), trustme.CA()
    return {
        "server": issue(root / "server", ca, "127.0.0.1", "localhost"),
        "client": issue(root / "client", ca, "client"),
        "wallet_named": issue(root / "wallet_named", ca, "wallet.internal"),  # no IP address in it
        "foreign": issue(root / "foreign", foreign_ca, "127.0.0.1", "client"),
    }


# ---------------------------------------------------------------- settings


def test_tls_is_off_by_default() -> None:
    settings = _Settings()
    assert (settings.grpc_tls_enabled, settings.grpc_mutual_tls_enabled, settings.nats_tls_enabled) == (
        False,
        False,
        False,
    )
    assert settings.grpc_health_port == 0
    assert tls.grpc_server_credentials(settings) is None and tls.nats_ssl_context(settings) is None
    assert GiftsSettings().wallet_tls_enabled is False


@pytest.mark.parametrize(
    ("configured", "named"),
    [
        ({"grpc_tls_cert_file": "c.pem"}, "COINSTREAM_GRPC_TLS_CERT_FILE is set but COINSTREAM_GRPC_TLS_KEY_FILE"),
        ({"grpc_tls_key_file": "k.pem"}, "COINSTREAM_GRPC_TLS_KEY_FILE is set but COINSTREAM_GRPC_TLS_CERT_FILE"),
        ({"grpc_tls_client_ca_file": "ca.pem"}, "COINSTREAM_GRPC_TLS_CLIENT_CA_FILE is set but"),
        ({"nats_tls_cert_file": "c.pem"}, "COINSTREAM_NATS_TLS_CERT_FILE is set but COINSTREAM_NATS_TLS_KEY_FILE"),
        ({"nats_tls_key_file": "k.pem"}, "COINSTREAM_NATS_TLS_KEY_FILE is set but COINSTREAM_NATS_TLS_CERT_FILE"),
    ],
)
def test_half_configured_tls_is_a_start_up_error_naming_the_setting(configured: dict[str, str], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        # pydantic-settings' __init__ has typed options of its own (_env_file, _case_sensitive…) a **dict could fill.
        _Settings(**configured)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("configured", "named"),
    [
        ({"gifts_wallet_tls_cert_file": "c.pem", "gifts_wallet_tls_ca_file": "ca.pem"}, "WALLET_TLS_KEY_FILE is not"),
        ({"gifts_wallet_tls_cert_file": "c.pem", "gifts_wallet_tls_key_file": "k.pem"}, "WALLET_TLS_CA_FILE is not"),
        ({"gifts_wallet_tls_server_name": "wallet"}, "COINSTREAM_GIFTS_WALLET_TLS_SERVER_NAME is set but"),
    ],
)
def test_half_configured_tls_to_the_wallet_is_a_start_up_error(configured: dict[str, str], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        # pydantic-settings' __init__ has typed options of its own (_env_file, _case_sensitive…) a **dict could fill.
        GiftsSettings(**configured)  # type: ignore[arg-type]


def test_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COINSTREAM_GRPC_TLS_CERT_FILE", "/etc/coinstream/tls.crt")
    with pytest.raises(ValidationError, match="COINSTREAM_GRPC_TLS_KEY_FILE is not"):
        _Settings()
    monkeypatch.setenv("COINSTREAM_GRPC_TLS_KEY_FILE", "/etc/coinstream/tls.key")
    monkeypatch.setenv("COINSTREAM_GRPC_TLS_CLIENT_CA_FILE", "/etc/coinstream/ca.crt")
    settings = _Settings()
    assert settings.grpc_tls_enabled and settings.grpc_mutual_tls_enabled


def test_nats_tls_is_enabled_by_a_ca_or_by_tls_urls() -> None:
    assert _Settings(nats_tls_ca_file="ca.pem").nats_tls_enabled
    assert _Settings(nats_url="tls://nats-0:4222, tls://nats-1:4222").nats_tls_enabled
    assert not _Settings(nats_url="tls://nats-0:4222,nats://nats-1:4222").nats_tls_enabled  # one node in plaintext


# ---------------------------------------------------------------- files that cannot be used


def test_a_missing_file_is_named_by_its_setting(pki: dict[str, Party], tmp_path: Path) -> None:
    settings = _Settings(
        grpc_tls_cert_file=str(pki["server"].cert),
        grpc_tls_key_file=str(pki["server"].key),
        grpc_tls_client_ca_file=str(tmp_path / "absent.pem"),
    )
    with pytest.raises(TlsSettingError, match="COINSTREAM_GRPC_TLS_CLIENT_CA_FILE: cannot read .*absent.pem"):
        tls.grpc_server_credentials(settings)
    with pytest.raises(TlsSettingError, match="COINSTREAM_NATS_TLS_CA_FILE: cannot read"):
        tls.nats_ssl_context(_Settings(nats_tls_ca_file=str(tmp_path / "absent.pem")))


def test_a_key_of_another_certificate_is_refused(pki: dict[str, Party]) -> None:
    with pytest.raises(TlsSettingError, match="TEST_CERT and TEST_KEY are not .* matching private key"):
        tls.server_credentials(pki["server"].pem("cert"), PemFile("TEST_KEY", str(pki["client"].key)))


def test_an_encrypted_key_is_refused_rather_than_prompting(pki: dict[str, Party], tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pki["server"].key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    with pytest.raises(TlsSettingError, match="TEST_KEY: .* is encrypted"):
        tls.server_credentials(pki["server"].pem("cert"), PemFile("TEST_KEY", str(encrypted)))


def test_a_ca_file_without_a_certificate_is_refused(pki: dict[str, Party]) -> None:
    with pytest.raises(TlsSettingError, match="TEST_CA: .* holds no PEM CA certificate"):
        tls.channel_credentials(PemFile("TEST_CA", str(pki["server"].key)))


# ---------------------------------------------------------------- credentials that do what they claim


@asynccontextmanager
async def health_server(credentials: grpc.ServerCredentials) -> AsyncIterator[int]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def status_through(channel: grpc.aio.Channel) -> int | grpc.StatusCode:
    """SERVING, or the code of the failed call (UNAVAILABLE when the handshake fails)."""
    async with channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return reply.status


async def test_mutual_tls_serves_a_client_certificate_from_the_ca_and_no_other(pki: dict[str, Party]) -> None:
    server, client, foreign = pki["server"], pki["client"], pki["foreign"]
    credentials = tls.server_credentials(server.pem("cert"), server.pem("key"), server.pem("ca"))
    async with health_server(credentials) as port:
        address = f"127.0.0.1:{port}"

        def channel(ca: PemFile, cert: PemFile | None = None, key: PemFile | None = None) -> grpc.aio.Channel:
            return grpc.aio.secure_channel(address, tls.channel_credentials(ca, cert, key))

        assert await status_through(channel(server.pem("ca"), client.pem("cert"), client.pem("key"))) == (
            health_pb2.HealthCheckResponse.SERVING
        )
        for refused in (
            channel(server.pem("ca")),  # no client certificate
            channel(server.pem("ca"), foreign.pem("cert"), foreign.pem("key")),  # signed by another CA
            channel(foreign.pem("ca"), client.pem("cert"), client.pem("key")),  # the server cannot be verified
            grpc.aio.insecure_channel(address),  # plaintext
        ):
            assert await status_through(refused) == grpc.StatusCode.UNAVAILABLE


async def test_the_wallet_channel_checks_the_configured_server_name(pki: dict[str, Party]) -> None:
    wallet, client = pki["wallet_named"], pki["client"]
    credentials = tls.server_credentials(wallet.pem("cert"), wallet.pem("key"), wallet.pem("ca"))
    async with health_server(credentials) as port:
        address = f"127.0.0.1:{port}"  # the certificate names wallet.internal, not this address
        client_credentials = tls.channel_credentials(wallet.pem("ca"), client.pem("cert"), client.pem("key"))
        named = wallet_channel(address, WalletTls(client_credentials, server_name="wallet.internal"))
        assert await status_through(named) == health_pb2.HealthCheckResponse.SERVING
        unnamed = wallet_channel(address, WalletTls(client_credentials))
        assert await status_through(unnamed) == grpc.StatusCode.UNAVAILABLE
        misnamed = wallet_channel(address, WalletTls(client_credentials, server_name="payouts.internal"))
        assert await status_through(misnamed) == grpc.StatusCode.UNAVAILABLE


async def handshake(client_context: ssl.SSLContext, server: Party, client_ca: Path | None = None) -> None:
    """A TLS handshake with a server on loopback; raises what the client's side raised."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(server.cert, server.key)
    if client_ca is not None:
        server_context.load_verify_locations(client_ca)
        server_context.verify_mode = ssl.CERT_REQUIRED

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok\n")
        writer.close()

    listener = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
    port = listener.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context)
        assert await reader.readline() == b"ok\n"
        writer.close()
    finally:
        listener.close()


async def test_the_nats_context_trusts_the_configured_ca_only_and_checks_the_host(pki: dict[str, Party]) -> None:
    server, client, foreign = pki["server"], pki["client"], pki["foreign"]
    context = tls.client_ssl_context(server.pem("ca"), client.pem("cert"), client.pem("key"))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    await handshake(context, server, client_ca=server.ca)  # mutual TLS

    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(tls.client_ssl_context(foreign.pem("ca")), server)
    with pytest.raises(ssl.SSLCertVerificationError):  # the right CA, but a certificate for another name
        await handshake(tls.client_ssl_context(server.pem("ca")), pki["wallet_named"])


def test_nats_settings_build_a_context_with_the_client_certificate(pki: dict[str, Party]) -> None:
    client = pki["client"]
    settings = _Settings(
        nats_tls_ca_file=str(client.ca), nats_tls_cert_file=str(client.cert), nats_tls_key_file=str(client.key)
    )
    context = tls.nats_ssl_context(settings)
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED


# ---------------------------------------------------------------- PostgreSQL: the URL carries it


def test_tls_mode_reads_the_sslmode_of_a_database_url() -> None:
    assert database.tls_mode("postgresql://postgres@db:5432/coinstream_wallet") == ""
    assert database.tls_mode("postgresql://u:p@db/w?sslmode=verify-full&sslrootcert=/ca.pem") == "verify-full"
    assert database.tls_mode("postgresql://db/w?sslmode=require&application_name=x") == "require"


def test_the_database_urls_tls_files_are_checked_naming_the_setting(pki: dict[str, Party], tmp_path: Path) -> None:
    setting = "COINSTREAM_WALLET_DATABASE_URL"
    good = f"postgresql://db/w?sslmode=verify-full&sslrootcert={pki['server'].ca}"
    database.check_tls(good, setting)
    database.check_tls("postgresql://db/w", setting)
    with pytest.raises(TlsSettingError, match=r"COINSTREAM_WALLET_DATABASE_URL \(sslkey\): cannot read"):
        database.check_tls(f"{good}&sslcert={pki['client'].cert}&sslkey={tmp_path / 'absent.key'}", setting)
    with pytest.raises(TlsSettingError, match="COINSTREAM_WALLET_DATABASE_URL: sslmode='verify_full' is not one of"):
        database.check_tls("postgresql://db/w?sslmode=verify_full", setting)


async def test_a_plaintext_impostor_never_sees_the_nats_login() -> None:
    """With TLS configured, the client starts TLS before reading the server's greeting: a man in the middle that
    answers as a plaintext NATS (INFO without tls_required) gets a TLS ClientHello, never the password."""
    received = bytearray()

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'INFO {"server_id":"impostor","version":"2.11.0","max_payload":1048576,"auth_required":true}\r\n')
        await writer.drain()
        received.extend(await reader.read(65536))
        writer.close()

    server = await asyncio.start_server(impostor, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = NatsClient()
    login = NatsLogin("gifts", "a-secret-nats-password")
    connecting = asyncio.ensure_future(
        messaging.connect(client, f"nats://127.0.0.1:{port}", "test", login, tls=tls.client_ssl_context(None))
    )
    await asyncio.sleep(1.0)
    connecting.cancel()
    await asyncio.gather(connecting, return_exceptions=True)
    await client.close()
    server.close()
    assert received, "the client never wrote"
    assert b"a-secret-nats-password" not in received and b"CONNECT" not in received
    assert received[0] == 0x16  # a TLS handshake record
