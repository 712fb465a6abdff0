"""Secrets read from files (a Kubernetes Secret mounted as a file), named by a setting: read at start, never logged,
never echoed in an error (the message names the setting and the path only)."""

from __future__ import annotations

from pathlib import Path


class RailSettingError(Exception):
    """A rail's setting that is missing or unreadable; the message names the environment variable to fix."""


def read_secret_file(setting: str, path: str) -> str:
    if not path:
        raise RailSettingError(f"{setting} is unset")
    try:
        # A Secret's file often ends with a newline an editor or `echo` added; it is not part of the secret.
        secret = Path(path).read_text(encoding="utf-8").strip("\r\n")
    except OSError as error:
        raise RailSettingError(f"{setting}={path}: cannot read it ({error.strerror or type(error).__name__})") from None
    except UnicodeDecodeError:
        raise RailSettingError(f"{setting}={path}: not UTF-8 text") from None  # the decoder would quote the bytes
    if not secret:
        raise RailSettingError(f"{setting}={path}: the file is empty")
    return secret


def missing_files(settings: dict[str, str]) -> list[str]:
    """Production's problems with secret files: each unset one, by its environment variable."""
    return [
        f"{setting} is unset: the payout provider cannot authenticate" for setting, path in settings.items() if not path
    ]
