"""The NATS permission model (services/runtime/nats_permissions.py) and logins (nats_login.py), without a server:
who may publish what, the rendered authorization block, the password settings and the stack's generated passwords.
tests/integration/test_nats_auth.py checks the same rules against a real nats-server."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from coinstream.testing.nats_credentials import ROUTE_USER, NatsCredentials
from devstack.cli import app
from services.runtime.messaging import (
    ACCOUNT_STATUS_CHANGED_SUBJECT,
    GIFT_FEED_SUBJECTS,
    PURCHASE_REVERSED_SUBJECT,
    STREAM_ENDED_SUBJECT,
)
from services.runtime.nats_login import ANONYMOUS, NatsLogin, NatsLoginError, read_nats_login
from services.runtime.nats_permissions import (
    GIFTS_USER,
    NOBODY_MAY_PUBLISH,
    OPERATOR_USER,
    PAYOUTS_USER,
    SERVICE_USERS,
    USERS,
    WALLET_USER,
    UnsafePasswordError,
    environment_variable_for,
    literal_password,
    may_publish,
    password_from_environment,
    render_authorization,
    subject_matches,
)

GIFT_SENT = "gifts.v1.gift_sent"
DESTRUCTIVE = (
    "$JS.API.STREAM.DELETE.GIFTS",
    "$JS.API.STREAM.DELETE.DEAD_LETTERS",
    "$JS.API.STREAM.PURGE.GIFTS",
    "$JS.API.STREAM.PURGE.DEAD_LETTERS",
    "$JS.API.STREAM.MSG.DELETE.GIFTS",
    "$JS.API.CONSUMER.DELETE.GIFTS.payouts-settlement",
    "$JS.API.STREAM.DELETE.WALLET",
    "$JS.API.STREAM.PURGE.WALLET",
    "$JS.API.STREAM.MSG.DELETE.WALLET",
    "$JS.API.CONSUMER.DELETE.WALLET.payouts-wallet-events",
)
WALLET_EVENTS = (PURCHASE_REVERSED_SUBJECT, ACCOUNT_STATUS_CHANGED_SUBJECT)
REPO_ROOT = Path(__file__).resolve().parents[3]


def test_subject_wildcards_match_as_nats_server_matches_them() -> None:
    assert subject_matches("gifts.>", GIFT_SENT)
    assert not subject_matches("gifts.>", "gifts")
    assert subject_matches("gifts.v1.*", GIFT_SENT)
    assert not subject_matches("gifts.v1.*", "gifts.v1.gift_sent.extra")
    assert subject_matches(">", "$JS.API.STREAM.DELETE.GIFTS")
    assert not subject_matches("$JS.API.STREAM.INFO.GIFTS", "$JS.API.STREAM.INFO.GIFTS2")


@pytest.mark.parametrize("user", sorted(USERS))
def test_every_user_is_denied_deleting_or_purging_what_is_owed(user: str) -> None:
    assert not any(may_publish(user, subject) for subject in DESTRUCTIVE)


def test_only_gifts_and_the_operator_may_publish_gift_events() -> None:
    publishers = {user for user in USERS if may_publish(user, GIFT_SENT)}
    assert publishers == {GIFTS_USER, OPERATOR_USER}
    assert not may_publish(WALLET_USER, GIFT_SENT)  # the wallet has a user, but not this right
    assert not may_publish(PAYOUTS_USER, "gifts.v1.stream_ended")
    assert not may_publish("nobody", GIFT_SENT)  # no such user: deny by default


def test_only_the_wallet_and_the_operator_may_publish_wallet_events() -> None:
    """A PurchaseReversed claws diamonds back and an AccountStatusChanged freezes withdrawals: payouts applies them,
    so nobody but their source may forge one."""
    for subject in WALLET_EVENTS:
        assert {user for user in USERS if may_publish(user, subject)} == {WALLET_USER, OPERATOR_USER}, subject
    assert not may_publish(GIFTS_USER, "wallet.v1.anything")


def test_the_wallet_publishes_its_events_and_declares_its_stream_and_payouts_consumer_only() -> None:
    for subject in (
        *WALLET_EVENTS,
        "$JS.API.STREAM.INFO.WALLET",
        "$JS.API.STREAM.CREATE.WALLET",
        "$JS.API.STREAM.UPDATE.WALLET",
        "$JS.API.CONSUMER.INFO.WALLET.payouts-wallet-events",
        "$JS.API.CONSUMER.DURABLE.CREATE.WALLET.payouts-wallet-events",
    ):
        assert may_publish(WALLET_USER, subject), subject
    for subject in (
        GIFT_SENT,
        STREAM_ENDED_SUBJECT,
        "dead_letters.v1.gift_sent",
        # payouts' work: taking the events from its consumer and acking them.
        "$JS.API.CONSUMER.MSG.NEXT.WALLET.payouts-wallet-events",
        "$JS.ACK.WALLET.payouts-wallet-events.1.7.7.1795996321646763356.0",
        "$JS.API.CONSUMER.DELETE.WALLET.payouts-wallet-events",
        "$JS.API.STREAM.MSG.DELETE.WALLET",
        "$JS.API.STREAM.MSG.GET.WALLET",
        # Nothing of GIFTS or DEAD_LETTERS.
        "$JS.API.STREAM.INFO.GIFTS",
        "$JS.API.STREAM.CREATE.DEAD_LETTERS",
        "$JS.API.CONSUMER.INFO.GIFTS.payouts-settlement",
        "$JS.API.CONSUMER.CREATE.WALLET",  # a consumer of its own on WALLET
    ):
        assert not may_publish(WALLET_USER, subject), subject
    assert USERS[WALLET_USER].subscribe == ("_INBOX_wallet.>",)  # its own replies, nothing else


def test_only_payouts_and_the_operator_may_consume_and_ack_wallet_events() -> None:
    for subject in (
        "$JS.API.CONSUMER.MSG.NEXT.WALLET.payouts-wallet-events",
        "$JS.ACK.WALLET.payouts-wallet-events.1.7.7.1795996321646763356.0",
    ):
        assert {user for user in USERS if may_publish(user, subject)} == {PAYOUTS_USER, OPERATOR_USER}, subject
    for subject in WALLET_EVENTS:
        assert not may_publish(PAYOUTS_USER, subject), subject  # it applies them, never makes one
    # payouts declares WALLET and its consumer too, as it does GIFTS and settlement.
    assert may_publish(PAYOUTS_USER, "$JS.API.STREAM.INFO.WALLET")
    assert may_publish(PAYOUTS_USER, "$JS.API.CONSUMER.DURABLE.CREATE.WALLET.payouts-wallet-events")
    assert not may_publish(PAYOUTS_USER, "$JS.ACK.WALLET.test-audit.1.7.7.1795996321646763356.0")


def test_only_payouts_and_the_operator_may_consume_settle_and_dead_letter() -> None:
    for subject in (
        "$JS.API.CONSUMER.MSG.NEXT.GIFTS.payouts-settlement",
        "$JS.ACK.GIFTS.payouts-settlement.1.7.7.1795996321646763356.0",
        "dead_letters.v1.gift_sent",
        "$JS.API.STREAM.MSG.GET.DEAD_LETTERS",
    ):
        assert {user for user in USERS if may_publish(user, subject)} == {PAYOUTS_USER, OPERATOR_USER}, subject
    # Acks are per consumer: payouts cannot ack (and so drop) another consumer's messages.
    assert not may_publish(PAYOUTS_USER, "$JS.ACK.GIFTS.test-audit.1.7.7.1795996321646763356.0")


def test_gifts_may_subscribe_to_what_its_live_feed_subscribes_to() -> None:
    """The rule is written out in the runtime (which must not import a service); this keeps it in step."""
    assert GIFT_FEED_SUBJECTS in USERS[GIFTS_USER].subscribe
    assert subject_matches(GIFT_FEED_SUBJECTS, STREAM_ENDED_SUBJECT) and subject_matches(GIFT_FEED_SUBJECTS, GIFT_SENT)


def test_services_cannot_reshape_what_they_do_not_own() -> None:
    for user in (WALLET_USER, GIFTS_USER, PAYOUTS_USER):
        assert not may_publish(user, "$JS.API.CONSUMER.CREATE.GIFTS")  # a consumer of their own on GIFTS
        assert not may_publish(user, "$JS.API.CONSUMER.CREATE.WALLET")
        assert not may_publish(user, "$JS.API.STREAM.CREATE.OTHER")
    for user in (WALLET_USER, GIFTS_USER):
        assert not may_publish(user, "$JS.API.STREAM.UPDATE.DEAD_LETTERS")
    assert not may_publish(GIFTS_USER, "$JS.API.STREAM.UPDATE.WALLET")
    assert not may_publish(WALLET_USER, "$JS.API.STREAM.UPDATE.GIFTS")


def test_allow_lists_are_explicit_and_every_service_user_exists() -> None:
    for permissions in USERS.values():
        assert permissions.publish and permissions.subscribe
    for user in (WALLET_USER, GIFTS_USER, PAYOUTS_USER):
        assert ">" not in USERS[user].publish and ">" not in USERS[user].subscribe
    assert set(SERVICE_USERS.values()) <= set(USERS)
    # Every service is a NATS client, each with a user of its own (no shared password).
    assert SERVICE_USERS == {"wallet": WALLET_USER, "gifts": GIFTS_USER, "payouts": PAYOUTS_USER}
    assert set(USERS) == {*SERVICE_USERS.values(), OPERATOR_USER}


def test_the_rendered_block_lists_every_user_with_the_denials() -> None:
    block = render_authorization({user: literal_password(f"{user}-password-0123456789") for user in USERS})
    assert block.count("user: ") == len(USERS)
    for user in USERS:
        assert f'user: "{user}"' in block and f'password: "{user}-password-0123456789"' in block
    assert block.count("deny: [") == len(USERS)
    for subject in NOBODY_MAY_PUBLISH:
        assert block.count(f'"{subject}"') == len(USERS)
    assert "no_auth_user" not in block  # an anonymous client is never someone


def test_rendering_needs_a_password_per_user_and_refuses_unsafe_ones() -> None:
    with pytest.raises(ValueError, match="no password for the NATS user"):
        render_authorization({GIFTS_USER: literal_password("x" * 20)})
    for unsafe in ('with"quote-0123456789', "short", "$VARIABLE-0123456789", "new\nline-0123456789"):
        with pytest.raises(UnsafePasswordError) as refused:
            literal_password(unsafe)
        assert unsafe not in str(refused.value)
    assert password_from_environment(environment_variable_for(PAYOUTS_USER)) == "$NATS_PAYOUTS_PASSWORD"
    with pytest.raises(ValueError):
        password_from_environment("not a variable")


def test_the_compose_nats_config_holds_exactly_the_rendered_block() -> None:
    """deploy/nats.conf carries the block rendered with environment references; it must not drift from the model."""
    rendered = render_authorization({user: password_from_environment(environment_variable_for(user)) for user in USERS})
    assert rendered in (REPO_ROOT / "deploy" / "nats.conf").read_text()


def test_nats_config_command_prints_the_block(tmp_path: Path) -> None:
    runner = CliRunner()
    from_environment = runner.invoke(app, ["nats-config", "--password-env"])
    assert from_environment.exit_code == 0, from_environment.output
    assert "password: $NATS_OPERATOR_PASSWORD" in from_environment.output
    for user in USERS:
        (tmp_path / user).write_text(f"{user}-secret-from-a-file-0123\n")
    from_files = runner.invoke(app, ["nats-config", "--passwords-dir", str(tmp_path)])
    assert from_files.exit_code == 0, from_files.output
    assert 'password: "gifts-secret-from-a-file-0123"' in from_files.output
    (tmp_path / PAYOUTS_USER).write_text("short\n")
    unsafe = runner.invoke(app, ["nats-config", "--passwords-dir", str(tmp_path)])
    assert unsafe.exit_code != 0 and "short" not in unsafe.output.replace("shorter", "")
    assert runner.invoke(app, ["nats-config"]).exit_code != 0  # one source of passwords or the other


def test_no_user_is_anonymous_and_a_password_needs_a_user() -> None:
    assert read_nats_login("", SecretStr(""), "") is ANONYMOUS
    assert ANONYMOUS.connect_options() == {}
    with pytest.raises(NatsLoginError, match="COINSTREAM_NATS_USER is required"):
        read_nats_login("", SecretStr("secret-0123456789"), "")
    with pytest.raises(NatsLoginError, match="neither COINSTREAM_NATS_PASSWORD nor COINSTREAM_NATS_PASSWORD_FILE"):
        read_nats_login(GIFTS_USER, SecretStr(""), "")


def test_the_password_file_wins_and_is_read_without_its_newline(tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("from-the-file\n")
    login = read_nats_login(GIFTS_USER, SecretStr("from-the-environment"), str(password_file))
    assert login == NatsLogin(GIFTS_USER, "from-the-file")
    assert "from-the-file" not in repr(login)  # so never in a log line or a traceback's locals
    assert login.connect_options() == {"user": GIFTS_USER, "password": "from-the-file", "inbox_prefix": "_INBOX_gifts"}
    assert read_nats_login(GIFTS_USER, SecretStr("from-the-environment"), "").password == "from-the-environment"


def test_an_unreadable_password_file_is_an_error_naming_the_setting(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(NatsLoginError, match=re.escape(f"COINSTREAM_NATS_PASSWORD_FILE={missing}: cannot read it")):
        read_nats_login(GIFTS_USER, SecretStr(""), str(missing))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(NatsLoginError, match="the file is empty"):
        read_nats_login(GIFTS_USER, SecretStr(""), str(empty))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xffsecret")
    with pytest.raises(NatsLoginError, match="not UTF-8") as refused:
        read_nats_login(GIFTS_USER, SecretStr(""), str(binary))
    assert "secret" not in str(refused.value).replace(str(binary), "")


def test_a_stacks_passwords_are_generated_once_private_and_kept(tmp_path: Path) -> None:
    directory = tmp_path / "nats-credentials"
    first = NatsCredentials.load_or_generate(directory)
    assert set(first.passwords) == {*USERS, ROUTE_USER}
    assert len(set(first.passwords.values())) == len(first.passwords)  # each its own
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for user in first.passwords:
        assert stat.S_IMODE(first.password_file(user).stat().st_mode) == 0o600
        literal_password(first.passwords[user])  # renderable as they are
    assert NatsCredentials.load_or_generate(directory).passwords == first.passwords  # a restart keeps them
    for service, user in SERVICE_USERS.items():
        assert first.service_environment(service) == {
            "COINSTREAM_NATS_USER": user,
            "COINSTREAM_NATS_PASSWORD_FILE": str(directory / user),
        }
    assert first.service_environment("reconcile") == {}  # not a service with a user
    assert first.operator.user == OPERATOR_USER
    assert all(password not in repr(first) for password in first.passwords.values())
    route = first.cluster_authorization()
    assert f'user: "{ROUTE_USER}"' in route and first.passwords[ROUTE_USER] in route
