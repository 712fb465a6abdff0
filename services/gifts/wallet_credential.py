"""The bearer token gifts sends with its calls to the wallet. In production it is given one (a token file, reread
when it changes so a rotated token is used without a restart, or a fixed token); with a shared HS256 secret in
development it mints its own.

The wallet scopes request_ids by the caller's subject, and a pending gift's spend is retried under the same
request_id for as long as it takes: a token for another subject would make those retries new spends. So every
token must carry the expected subject (COINSTREAM_GIFTS_WALLET_SUBJECT); one that does not is refused and the
previous token kept."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import structlog

from services.runtime.auth import ROLE_SERVICE, mint_token
from services.runtime.errors import AppError, unavailable

log = structlog.get_logger()

MINTED_TOKEN_TTL_SECONDS = 3600
# Re-mint at half the lifetime: far from expiry even with clock skew or a slow call in flight.
MINTED_TOKEN_REFRESH_SECONDS = MINTED_TOKEN_TTL_SECONDS / 2
# A token file is looked at (one stat) at most this often: a rotation is picked up within a second.
TOKEN_FILE_CHECK_SECONDS = 1.0
MAX_TOKEN_BYTES = 16 * 1024


class ServiceToken:
    def __init__(self, subject: str, *, token: str = "", token_file: str = "", auth_secret: str = "") -> None:
        self._subject = subject
        self._token = token
        self._token_file = Path(token_file) if token_file else None
        self._auth_secret = auth_secret
        self._file_version: tuple[int, int] | None = None
        self._checked_at = float("-inf")
        self._minted_at = float("-inf")
        if self._token:
            try:
                self._token = self._with_expected_subject(self._token, "COINSTREAM_GIFTS_WALLET_TOKEN")
            except AppError as error:
                raise ValueError(error.message) from None  # a start-up error: the setting is wrong

    def authorization(self) -> str:
        if self._token_file is not None:
            self._reread_file_if_changed(self._token_file)
        elif self._auth_secret and self._minted_at + MINTED_TOKEN_REFRESH_SECONDS < time.monotonic():
            self._mint()
        if not self._token:
            raise unavailable("WALLET_CREDENTIAL_MISSING", "no usable token for calls to the wallet yet")
        return f"Bearer {self._token}"

    def _mint(self) -> None:
        self._token = mint_token(self._auth_secret, self._subject, [ROLE_SERVICE], ttl_seconds=MINTED_TOKEN_TTL_SECONDS)
        self._minted_at = time.monotonic()

    def _reread_file_if_changed(self, path: Path) -> None:
        now = time.monotonic()
        if now - self._checked_at < TOKEN_FILE_CHECK_SECONDS:
            return
        self._checked_at = now
        try:
            stat = path.stat()
            if (stat.st_mtime_ns, stat.st_size) == self._file_version:
                return
            token = path.read_bytes()[:MAX_TOKEN_BYTES].decode().strip()
            self._token = self._with_expected_subject(token, "COINSTREAM_GIFTS_WALLET_TOKEN_FILE")
            self._file_version = (stat.st_mtime_ns, stat.st_size)
            log.info("wallet_token_loaded", path=str(path))
        except (OSError, UnicodeDecodeError, AppError) as error:
            # A file caught half-written, or replaced by a bad token: keep the previous one and look again later.
            log.warning(
                "wallet_token_unusable", path=str(path), error=_describe(error), keeping_previous=bool(self._token)
            )

    def _with_expected_subject(self, token: str, setting: str) -> str:
        try:
            subject = jwt.decode(token, options={"verify_signature": False}).get("sub")
        except jwt.PyJWTError:
            raise unavailable("WALLET_CREDENTIAL_INVALID", f"{setting} does not hold a JWT") from None
        if subject != self._subject:
            raise unavailable(
                "WALLET_CREDENTIAL_INVALID",
                f"{setting} holds a token for subject {subject!r}, not COINSTREAM_GIFTS_WALLET_SUBJECT"
                f" {self._subject!r} (pending gifts' spends are keyed under that subject)",
            )
        return token


def _describe(error: Exception) -> str:
    return error.message if isinstance(error, AppError) else type(error).__name__
