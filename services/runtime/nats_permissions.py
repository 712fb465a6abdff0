"""Who may do what on NATS: one user per service that uses NATS, and one for operators, each with an explicit list
of the subjects it may publish to and subscribe to (everything else is refused: deny by default), rendered as the
`authorization { users = [...] }` block of a nats-server configuration.

Without it anyone reaching NATS could publish a GiftSent for any creator — payouts credits it as withdrawable
diamonds — or delete the GIFTS stream with every unsettled gift in it. With it only gifts (its outbox relay) and an
operator (replaying a dead letter) may publish gift events, only the wallet may publish wallet events (reversals,
freezes), only payouts may take them from their consumers, and nobody may delete or purge a stream.

The lists name the JetStream API calls the services really make (nats-py 2.x subjects; see messaging.py,
settlement.py, dead_letters.py, gifts/feed.py): a new call needs a rule here, and the integration tests, which run
every service with its own user, fail until it has one. Pure data and a renderer: devstack writes the block into
its nats-server configuration; `coinstream nats-config` prints it for an operator's."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from services.runtime.messaging import (
    DEAD_LETTER_EVENTS,
    DEAD_LETTERS_STREAM,
    GIFT_EVENTS,
    GIFT_FEED_SUBJECTS,
    GIFTS_STREAM,
    PAYOUT_EVENTS,
    PAYOUTS_STREAM,
    SETTLEMENT_CONSUMER,
    WALLET_EVENTS,
    WALLET_EVENTS_CONSUMER,
    WALLET_STREAM,
)
from services.runtime.nats_login import NatsLogin

WALLET_USER = "wallet"
GIFTS_USER = "gifts"
PAYOUTS_USER = "payouts"
OPERATOR_USER = "operator"


def inboxes(user: str) -> str:
    """Replies to a user's requests (JetStream API answers, publish acks, pulled messages): its own inboxes only."""
    return f"{NatsLogin(user).inbox_prefix}.>"


JS_API = "$JS.API"

# Refused to every user, whatever its allow list says (deny wins over allow in nats-server). Each would destroy
# money owed to creators: the streams' messages, a single unsettled GiftSent, or — GIFTS keeps a message only while
# a consumer is interested in it — the settlement consumer along with every event it has not settled yet.
NOBODY_MAY_PUBLISH: tuple[str, ...] = (
    f"{JS_API}.STREAM.DELETE.>",
    f"{JS_API}.STREAM.PURGE.>",
    f"{JS_API}.STREAM.MSG.DELETE.{GIFTS_STREAM}",
    f"{JS_API}.CONSUMER.DELETE.{GIFTS_STREAM}.{SETTLEMENT_CONSUMER}",
    # Likewise a reversal not yet applied is diamonds owed back, a freeze a withdrawal to refuse.
    f"{JS_API}.STREAM.MSG.DELETE.{WALLET_STREAM}",
    f"{JS_API}.CONSUMER.DELETE.{WALLET_STREAM}.{WALLET_EVENTS_CONSUMER}",
)


def _declare_stream(stream: str) -> tuple[str, ...]:
    """messaging._ensure_stream: looks the stream up, creates it when missing, brings it to this release's config."""
    return (f"{JS_API}.STREAM.INFO.{stream}", f"{JS_API}.STREAM.CREATE.{stream}", f"{JS_API}.STREAM.UPDATE.{stream}")


# messaging.ensure_settlement_consumer (gifts and payouts): consumer info, and a create when it is missing (nats-py
# creates a durable-only config through the DURABLE.CREATE subject).
_DECLARE_SETTLEMENT_CONSUMER = (
    f"{JS_API}.CONSUMER.INFO.{GIFTS_STREAM}.{SETTLEMENT_CONSUMER}",
    f"{JS_API}.CONSUMER.DURABLE.CREATE.{GIFTS_STREAM}.{SETTLEMENT_CONSUMER}",
)


# messaging.ensure_wallet_events_consumer (wallet and payouts), as for settlement.
_DECLARE_WALLET_EVENTS_CONSUMER = (
    f"{JS_API}.CONSUMER.INFO.{WALLET_STREAM}.{WALLET_EVENTS_CONSUMER}",
    f"{JS_API}.CONSUMER.DURABLE.CREATE.{WALLET_STREAM}.{WALLET_EVENTS_CONSUMER}",
)


@dataclass(frozen=True)
class Permissions:
    """Subjects a user may publish to and subscribe to; NOBODY_MAY_PUBLISH is denied on top."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    why: str  # a comment in the rendered configuration


USERS: dict[str, Permissions] = {
    WALLET_USER: Permissions(
        publish=(
            WALLET_EVENTS,  # the outbox relay: PurchaseReversed, AccountStatusChanged
            *_declare_stream(WALLET_STREAM),
            *_DECLARE_WALLET_EVENTS_CONSUMER,  # WALLET drops events nobody is interested in: payouts' comes first
        ),
        subscribe=(inboxes(WALLET_USER),),
        why="the wallet service: publishes wallet events, declares WALLET and payouts' consumer of it",
    ),
    GIFTS_USER: Permissions(
        publish=(
            GIFT_EVENTS,  # the outbox relay: GiftSent and StreamEnded
            *_declare_stream(GIFTS_STREAM),
            *_DECLARE_SETTLEMENT_CONSUMER,  # GIFTS drops events nobody is interested in: the settler comes first
        ),
        subscribe=(
            inboxes(GIFTS_USER),
            GIFT_FEED_SUBJECTS,  # the live gift feed: a core-NATS subscription to its own events
        ),
        why="the gifts service: publishes gift events, declares GIFTS and the settlement consumer",
    ),
    PAYOUTS_USER: Permissions(
        publish=(
            *_declare_stream(GIFTS_STREAM),
            *_declare_stream(DEAD_LETTERS_STREAM),
            *_DECLARE_SETTLEMENT_CONSUMER,
            # Pulls batches from the settlement consumer and acks, naks or terminates each message.
            f"{JS_API}.CONSUMER.MSG.NEXT.{GIFTS_STREAM}.{SETTLEMENT_CONSUMER}",
            f"$JS.ACK.{GIFTS_STREAM}.{SETTLEMENT_CONSUMER}.>",
            DEAD_LETTER_EVENTS,  # copies of events settlement cannot process
            # The periodic reconciliation reads the dead letters (dead_letters.list_dead_letters).
            f"{JS_API}.STREAM.MSG.GET.{DEAD_LETTERS_STREAM}",
            # Tells other backends of clawbacks (its outbox relay) in its own stream.
            PAYOUT_EVENTS,
            *_declare_stream(PAYOUTS_STREAM),
            # Applies the wallet's reversals and freezes from its consumer.
            *_declare_stream(WALLET_STREAM),
            *_DECLARE_WALLET_EVENTS_CONSUMER,
            f"{JS_API}.CONSUMER.MSG.NEXT.{WALLET_STREAM}.{WALLET_EVENTS_CONSUMER}",
            f"$JS.ACK.{WALLET_STREAM}.{WALLET_EVENTS_CONSUMER}.>",
        ),
        subscribe=(inboxes(PAYOUTS_USER),),
        why="the payouts service: settles GiftSent and applies wallet events from its consumers, dead-letters what it"
        " cannot, publishes payouts events; never publishes a gift or wallet event",
    ),
    OPERATOR_USER: Permissions(
        # `coinstream dead-letters list|replay` (a replay publishes the GiftSent again and deletes the dead letter),
        # `coinstream reconcile`, the nats CLI and the tests: everything but destroying what is owed.
        publish=(">",),
        subscribe=(">",),
        why="people and tools: coinstream dead-letters, coinstream reconcile, the test suite",
    ),
}

SERVICE_USERS: dict[str, str] = {"wallet": WALLET_USER, "gifts": GIFTS_USER, "payouts": PAYOUTS_USER}

# What the renderer writes as a password: plain characters only, so a value never needs escaping in the
# configuration (generated passwords are URL-safe base64; a nats-server variable reference starts with "$").
_SAFE_PASSWORD = re.compile(r"[A-Za-z0-9_.~+/=-]{16,}")
_ENVIRONMENT_VARIABLE = re.compile(r"[A-Z_][A-Z0-9_]*")


class UnsafePasswordError(ValueError):
    pass


def literal_password(password: str) -> str:
    """A password written into the configuration as it is (devstack's generated ones)."""
    if not _SAFE_PASSWORD.fullmatch(password):
        raise UnsafePasswordError(
            "a NATS password must be 16 or more characters from A-Z a-z 0-9 _ . ~ + / = - (e.g. secrets.token_urlsafe)"
        )
    return f'"{password}"'


def password_from_environment(variable: str) -> str:
    """A reference nats-server resolves from its own environment when it loads the configuration, so the file holds
    no secret (compose and Kubernetes give the server the passwords as environment variables)."""
    if not _ENVIRONMENT_VARIABLE.fullmatch(variable):
        raise ValueError(f"not an environment variable name: {variable!r}")
    return f"${variable}"


def environment_variable_for(user: str) -> str:
    return f"NATS_{user.upper()}_PASSWORD"


def render_authorization(passwords: Mapping[str, str]) -> str:
    """The nats-server `authorization` block for every user in USERS. passwords: per user, a value from
    literal_password or password_from_environment."""
    missing = sorted(set(USERS) - set(passwords))
    if missing:
        raise ValueError(f"no password for the NATS user(s) {missing}")
    lines = [
        "# Rendered from services/runtime/nats_permissions.py (coinstream nats-config); edit it there.",
        "# Deny by default: each user may publish and subscribe only to what it lists.",
        "authorization {",
        "  users = [",
    ]
    for user, permissions in USERS.items():
        lines += _render_user(user, passwords[user], permissions)
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def _render_user(user: str, password: str, permissions: Permissions) -> list[str]:
    return [
        f"    # {permissions.why}",
        "    {",
        f'      user: "{user}"',
        f"      password: {password}",
        "      permissions: {",
        "        publish: {",
        *_subject_list("allow", permissions.publish),
        *_subject_list("deny", NOBODY_MAY_PUBLISH),
        "        }",
        "        subscribe: {",
        *_subject_list("allow", permissions.subscribe),
        "        }",
        "      }",
        "    }",
    ]


def _subject_list(name: str, subjects: tuple[str, ...]) -> list[str]:
    return [f"          {name}: [", *(f'            "{subject}",' for subject in subjects), "          ]"]


def may_publish(user: str, subject: str) -> bool:
    """nats-server's decision for a publish by user, for the unit tests and for reading the table: allowed by a
    rule and denied by none."""
    permissions = USERS.get(user)
    if permissions is None:
        return False
    allowed = any(subject_matches(rule, subject) for rule in permissions.publish)
    return allowed and not any(subject_matches(rule, subject) for rule in NOBODY_MAY_PUBLISH)


def subject_matches(rule: str, subject: str) -> bool:
    """NATS wildcards: `*` is one token, a final `>` one or more."""
    rule_tokens, subject_tokens = rule.split("."), subject.split(".")
    for index, token in enumerate(rule_tokens):
        if token == ">":
            return len(subject_tokens) > index
        if index >= len(subject_tokens) or token not in ("*", subject_tokens[index]):
            return False
    return len(rule_tokens) == len(subject_tokens)
