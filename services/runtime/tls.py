"""TLS material built from the PEM files that settings name: gRPC server and channel credentials, and an
ssl.SSLContext for NATS. Every file is read and checked here, at start-up, so that a missing, unreadable or
mismatched file stops the process with an error naming the setting to fix — not a handshake failing later, far from
its cause. PostgreSQL needs nothing here: asyncpg builds its TLS from the database URL (database.tls_mode).

Files are read once: a rotated certificate is used after a restart (a rolling restart of the pods)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

import grpc
from pydantic_settings import SettingsConfigDict

if TYPE_CHECKING:  # config reads the database URL's TLS mode, and the database module reads files through here
    from services.runtime.config import RuntimeSettings


class TlsSettingError(ValueError):
    """A TLS file that cannot be used; the message names the setting that points at it."""


class _EncryptedKey(Exception):
    pass


@dataclass(frozen=True)
class PemFile:
    """A PEM file and the setting that named it (for errors)."""

    setting: str
    path: str

    def read(self) -> bytes:
        try:
            return Path(self.path).read_bytes()
        except OSError as error:
            raise TlsSettingError(f"{self.setting}: cannot read {self.path!r}: {error.strerror or error}") from None


class FileSettings(Protocol):
    """Settings whose fields name files: BaseSettings, whose env_prefix gives each field's environment variable."""

    model_config: ClassVar[SettingsConfigDict]


def setting_file(settings: FileSettings, field: str) -> PemFile | None:
    """The file a settings field names (None when the field is empty), with its environment variable."""
    path = getattr(settings, field)
    if not path:
        return None
    prefix = settings.model_config.get("env_prefix", "")
    return PemFile(f"{prefix}{field}".upper(), path)


def grpc_server_credentials(settings: RuntimeSettings) -> grpc.ServerCredentials | None:
    """COINSTREAM_GRPC_TLS_*: None when the port is plaintext (development)."""
    if not settings.grpc_tls_enabled:
        return None
    cert, key = setting_file(settings, "grpc_tls_cert_file"), setting_file(settings, "grpc_tls_key_file")
    assert cert is not None and key is not None
    return server_credentials(cert, key, setting_file(settings, "grpc_tls_client_ca_file"))


def nats_urls_are_tls(nats_url: str) -> bool:
    """Every server of COINSTREAM_NATS_URL (one, or a cluster's, comma-separated) given as tls://."""
    urls = [url.strip() for url in nats_url.split(",") if url.strip()]
    return bool(urls) and all(url.startswith("tls://") for url in urls)


class NatsTlsSettings(FileSettings, Protocol):
    """What nats_ssl_context reads: the services' settings (RuntimeSettings) and reconcile's both have it."""

    nats_url: str
    nats_tls_ca_file: str
    nats_tls_cert_file: str
    nats_tls_key_file: str


def nats_ssl_context(settings: NatsTlsSettings) -> ssl.SSLContext | None:
    """COINSTREAM_NATS_TLS_* (the services' settings, or reconcile's); tls:// URLs alone: the system's CAs; None:
    plaintext."""
    if not (settings.nats_tls_ca_file or settings.nats_tls_cert_file):
        return client_ssl_context(None) if nats_urls_are_tls(settings.nats_url) else None
    return client_ssl_context(
        setting_file(settings, "nats_tls_ca_file"),
        setting_file(settings, "nats_tls_cert_file"),
        setting_file(settings, "nats_tls_key_file"),
    )


def server_credentials(cert: PemFile, key: PemFile, client_ca: PemFile | None = None) -> grpc.ServerCredentials:
    """A port serving TLS only; with a client CA, mutual TLS: a client without a certificate signed by that CA fails
    the handshake (require_client_auth), before any RPC or token is looked at."""
    cert_pem, key_pem = _checked_pair(cert, key)
    ca_pem = _checked_ca(client_ca) if client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=ca_pem is not None
    )


def channel_credentials(
    ca: PemFile, cert: PemFile | None = None, key: PemFile | None = None
) -> grpc.ChannelCredentials:
    """A client channel trusting only `ca` for the server's certificate; with cert and key it presents its own
    certificate too (mutual TLS)."""
    ca_pem = _checked_ca(ca)
    cert_pem, key_pem = _checked_pair(cert, key) if cert is not None and key is not None else (None, None)
    return grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem)


def client_ssl_context(ca: PemFile | None, cert: PemFile | None = None, key: PemFile | None = None) -> ssl.SSLContext:
    """For a client of NATS: verifies the server's certificate and host name against `ca` (the system's CAs when
    None); with cert and key, presents a client certificate (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca is not None:
        # Only the configured CA: a certificate some public CA issued for the same name is not enough.
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=_checked_ca(ca).decode())
    if cert is not None and key is not None:
        _checked_pair(cert, key)
        context.load_cert_chain(cert.path, key.path, password=_refuse_encrypted_key)
    return context


def http_ssl_context(settings: RuntimeSettings) -> ssl.SSLContext | None:
    """COINSTREAM_HTTP_TLS_*: the HTTPS of the providers' port; None when it is plaintext."""
    cert, key = setting_file(settings, "http_tls_cert_file"), setting_file(settings, "http_tls_key_file")
    if cert is None or key is None:
        return None
    _checked_pair(cert, key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # what App Transport Security (Apple's notifications) requires
    context.load_cert_chain(cert.path, key.path, password=_refuse_encrypted_key)
    return context


def _checked_pair(cert: PemFile | None, key: PemFile | None) -> tuple[bytes, bytes]:
    """Both files read, and checked (by OpenSSL) to be a certificate and the private key that matches it."""
    assert cert is not None and key is not None
    cert_pem, key_pem = cert.read(), key.read()
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert.path, key.path, password=_refuse_encrypted_key)
    except _EncryptedKey:
        raise TlsSettingError(
            f"{key.setting}: {key.path!r} is encrypted; give the key unencrypted (from a secret volume, readable by "
            "this process only): a service has nobody to type a passphrase"
        ) from None
    except ssl.SSLError as error:
        raise TlsSettingError(
            f"{cert.setting} and {key.setting} are not a PEM certificate and its matching private key "
            f"({cert.path!r}, {key.path!r}): {error.reason or error}"
        ) from None
    return cert_pem, key_pem


def _checked_ca(ca: PemFile) -> bytes:
    """The file read, and checked to hold at least one PEM certificate."""
    ca_pem = ca.read()
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=ca_pem.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as error:
        raise TlsSettingError(f"{ca.setting}: {ca.path!r} holds no PEM CA certificate: {error}") from None
    return ca_pem


def _refuse_encrypted_key() -> bytes:
    """Called by OpenSSL for an encrypted key only (it would otherwise prompt on the terminal for a passphrase)."""
    raise _EncryptedKey
