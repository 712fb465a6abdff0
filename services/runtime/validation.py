"""Input checks shared by every service. A Validator collects every violation so the caller sees them all at once."""

from __future__ import annotations

import re

from services.runtime.errors import FieldViolation, invalid_argument

IDENTIFIER_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
# Control characters, C0 and C1 (NUL above all, which PostgreSQL refuses in text), are never meaningful in our fields.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Display text (stream titles, gift names, reasons) is shown to other people and must read as what it is: no
# bidirectional overrides, embeddings or isolates (they reorder what follows: "Trojan Source"), no invisible
# characters (zero-width space and non-joiner, word joiner, invisible operators, BOM, directional marks, soft hyphen,
# combining grapheme joiner, Mongolian vowel separator, the deprecated format controls, interlinear annotation,
# musical formatting). The zero-width joiner is allowed between emoji, whose family and profession sequences need it.
REORDERING_OR_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u180e\u200b\u200c\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff"
    "\ufff9-\ufffb\U0001d173-\U0001d17a]"
)
ZERO_WIDTH_JOINER = "\u200d"


class Validator:
    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def fail(self, field: str, description: str) -> None:
        self.violations.append(FieldViolation(field, description))

    def request_id(self, value: str, field: str = "request_id") -> None:
        if not REQUEST_ID_PATTERN.fullmatch(value):
            self.fail(field, "must be 1-128 characters of [A-Za-z0-9_.:-]")

    def identifier(self, value: str, field: str) -> None:
        if not IDENTIFIER_PATTERN.fullmatch(value):
            self.fail(field, "must be 1-64 characters of [A-Za-z0-9_-]")

    def opaque_id(self, value: str, field: str) -> None:
        """Server-made ids: we only bound them, so a typo gets NOT_FOUND rather than a lecture on formats."""
        if not 1 <= len(value) <= 128:
            self.fail(field, "must be 1-128 characters")
        elif CONTROL_CHARACTERS.search(value):
            self.fail(field, "must not contain control characters")

    def text(self, value: str, field: str, *, max_length: int, required: bool = True) -> None:
        """Display text: bounded, no control, reordering or invisible characters; emoji welcome."""
        if required and not value.strip():
            self.fail(field, "is required")
        elif len(value) > max_length:
            self.fail(field, f"must be at most {max_length} characters")
        elif CONTROL_CHARACTERS.search(value):
            self.fail(field, "must not contain control characters")
        elif REORDERING_OR_INVISIBLE.search(value) or not _joiners_between_emoji(value):
            self.fail(field, "must not contain invisible or text-reordering characters")

    def int_range(self, value: int, field: str, *, minimum: int, maximum: int) -> None:
        if not minimum <= value <= maximum:
            self.fail(field, f"must be between {minimum} and {maximum}")

    def raise_if_invalid(self) -> None:
        if self.violations:
            raise invalid_argument(self.violations)


def _joiners_between_emoji(value: str) -> bool:
    return all(
        0 < index < len(value) - 1 and _is_emoji_part(value[index - 1]) and _is_emoji_part(value[index + 1])
        for index, character in enumerate(value)
        if character == ZERO_WIDTH_JOINER
    )


def _is_emoji_part(character: str) -> bool:
    """Pictographs, symbols and their modifiers: what an emoji sequence joins (roughly; text is what we guard)."""
    code = ord(character)
    return code >= 0x1F000 or 0x2190 <= code <= 0x2BFF or code == 0xFE0F


def page_size(validator: Validator, value: int, *, default: int = 50, maximum: int = 100) -> int:
    """0 means the default; anything outside 0..maximum is refused rather than silently clamped."""
    validator.int_range(value, "page_size", minimum=0, maximum=maximum)
    return value or default
