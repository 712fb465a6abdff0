"""The user and password a process logs in to NATS with (COINSTREAM_NATS_USER, COINSTREAM_NATS_PASSWORD or
COINSTREAM_NATS_PASSWORD_FILE); each user's rights are in nats_permissions.py. No user: anonymous, for a development
server without authorization."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

USER_SETTING = "COINSTREAM_NATS_USER"
PASSWORD_SETTING = "COINSTREAM_NATS_PASSWORD"
PASSWORD_FILE_SETTING = "COINSTREAM_NATS_PASSWORD_FILE"
DEFAULT_INBOX_PREFIX = "_INBOX"  # nats-py's


class NatsLoginError(Exception):
    """A NATS login that is configured wrongly; the message names the setting to fix."""


@dataclass(frozen=True)
class NatsLogin:
    user: str = ""
    password: str = field(default="", repr=False)  # never in a repr, hence never in a log line or traceback

    @property
    def anonymous(self) -> bool:
        return not self.user

    @property
    def inbox_prefix(self) -> str:
        """Where replies to this user's requests come (JetStream answers, pulled messages): a prefix of its own, so
        that a user may subscribe to its replies only, not to every other client's (nats_permissions.py)."""
        return DEFAULT_INBOX_PREFIX if self.anonymous else f"{DEFAULT_INBOX_PREFIX}_{self.user}"

    def connect_options(self) -> dict[str, str]:
        """Keyword arguments for nats-py's connect: none when anonymous."""
        if self.anonymous:
            return {}
        return {"user": self.user, "password": self.password, "inbox_prefix": self.inbox_prefix}


ANONYMOUS = NatsLogin()


def read_nats_login(user: str, password: SecretStr, password_file: str) -> NatsLogin:
    """The login the settings describe. The password file, when set, wins over the password: it is how a Kubernetes
    Secret mounted as a file reaches the process, and it is read now (at connect), not when settings are parsed."""
    if not user:
        if password.get_secret_value() or password_file:
            raise NatsLoginError(
                f"{USER_SETTING} is required when {PASSWORD_SETTING} or {PASSWORD_FILE_SETTING} is set"
            )
        return ANONYMOUS
    secret = _read_password_file(password_file) if password_file else password.get_secret_value()
    if not secret:
        raise NatsLoginError(
            f"{USER_SETTING} is {user!r} but neither {PASSWORD_SETTING} nor {PASSWORD_FILE_SETTING} is set"
        )
    return NatsLogin(user, secret)


def _read_password_file(path: str) -> str:
    try:
        # A Secret's file often ends with a newline an editor or `echo` added; it is not part of the password.
        secret = Path(path).read_text(encoding="utf-8").strip("\r\n")
    except OSError as error:
        reason = error.strerror or repr(error)
        raise NatsLoginError(f"{PASSWORD_FILE_SETTING}={path}: cannot read it ({reason})") from None
    except UnicodeDecodeError:
        # The decoder's message would quote the offending bytes, i.e. part of the password.
        raise NatsLoginError(f"{PASSWORD_FILE_SETTING}={path}: not UTF-8 text") from None
    if not secret:
        raise NatsLoginError(f"{PASSWORD_FILE_SETTING}={path}: the file is empty")
    return secret
