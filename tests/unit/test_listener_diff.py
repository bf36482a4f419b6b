"""`diff_listeners`: which sockets a reload keeps, opens and closes (pure)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from tlsgate.config.model import Endpoint, ListenerConfig, Protocol, TlsMode
from tlsgate.net.listener_diff import ListenerDiff, diff_listeners

BACKEND = (Endpoint("127.0.0.1", 2525),)


def listener(name: str, port: int, **changes: object) -> ListenerConfig:
    base = ListenerConfig(
        name=name,
        listen=Endpoint("127.0.0.1", port),
        protocol=Protocol.SMTP,
        tls=TlsMode.STARTTLS,
        backend=BACKEND,
    )
    return replace(base, **changes)  # type: ignore[arg-type]  # test-chosen fields


SMTP = listener("smtp", 25)
SUBMISSION = listener("submission", 587)
SMTPS = listener("smtps", 465)


def test_identical_configs_keep_every_listener() -> None:
    diff = diff_listeners([SMTP, SUBMISSION], [SMTP, SUBMISSION])
    assert diff == ListenerDiff(kept=(SMTP, SUBMISSION))
    assert diff.counts() == {"added": 0, "removed": 0, "changed": 0, "kept": 2}


def test_a_listener_only_in_the_new_config_is_started() -> None:
    diff = diff_listeners([SMTP], [SMTP, SUBMISSION])
    assert diff == ListenerDiff(to_start=(SUBMISSION,), kept=(SMTP,))
    assert diff.counts()["added"] == 1


def test_a_listener_only_in_the_old_config_is_stopped() -> None:
    diff = diff_listeners([SMTP, SUBMISSION], [SUBMISSION])
    assert diff == ListenerDiff(to_stop=(SMTP,), kept=(SUBMISSION,))
    assert diff.counts()["removed"] == 1


def test_changed_settings_on_the_same_address_update_the_listener_in_place() -> None:
    stricter = replace(SUBMISSION, require_tls=True, idle_timeout=60.0)
    diff = diff_listeners([SUBMISSION], [stricter])
    assert diff == ListenerDiff(to_update=((SUBMISSION, stricter),))
    assert diff.counts() == {"added": 0, "removed": 0, "changed": 1, "kept": 0}


def test_a_changed_tls_mode_is_an_update_not_a_rebind() -> None:
    implicit = replace(SMTPS, tls=TlsMode.IMPLICIT)
    assert diff_listeners([SMTPS], [implicit]).to_update == ((SMTPS, implicit),)


def test_a_moved_listener_binds_its_new_address_and_closes_the_old() -> None:
    moved = replace(SUBMISSION, listen=Endpoint("127.0.0.1", 1587))
    diff = diff_listeners([SUBMISSION], [moved])
    assert diff == ListenerDiff(to_stop=(SUBMISSION,), to_start=(moved,))
    assert diff.counts() == {"added": 0, "removed": 0, "changed": 1, "kept": 0}


def test_a_renamed_listener_keeps_its_socket() -> None:
    renamed = replace(SUBMISSION, name="msa")
    diff = diff_listeners([SUBMISSION], [renamed])
    assert diff == ListenerDiff(to_update=((SUBMISSION, renamed),))
    assert diff.counts() == {"added": 1, "removed": 1, "changed": 0, "kept": 0}


def test_two_listeners_swapping_addresses_keep_both_sockets() -> None:
    # Binding first would fail: each new address is still held by the other old listener.
    smtp_on_587 = replace(SMTP, listen=SUBMISSION.listen)
    submission_on_25 = replace(SUBMISSION, listen=SMTP.listen)
    diff = diff_listeners([SMTP, SUBMISSION], [smtp_on_587, submission_on_25])
    assert diff.to_start == diff.to_stop == ()
    assert set(diff.to_update) == {(SUBMISSION, smtp_on_587), (SMTP, submission_on_25)}


def test_port_zero_never_matches_another_listeners_address() -> None:
    # Port 0 asks for a fresh port: "127.0.0.1:0" left by one listener is not a socket to reuse.
    old = listener("old", 0)
    new = listener("new", 0)
    assert diff_listeners([old], [new]) == ListenerDiff(to_stop=(old,), to_start=(new,))


def test_port_zero_with_the_same_name_keeps_its_socket() -> None:
    old = listener("ephemeral", 0)
    new = replace(old, idle_timeout=1.0)
    assert diff_listeners([old], [new]) == ListenerDiff(to_update=((old, new),))


def test_to_start_follows_the_new_config_order() -> None:
    diff = diff_listeners([], [SUBMISSION, SMTPS, SMTP])
    assert diff.to_start == (SUBMISSION, SMTPS, SMTP)


def test_everything_at_once() -> None:
    moved = replace(SMTPS, listen=Endpoint("127.0.0.1", 10465))
    changed = replace(SMTP, require_tls=True)
    pop3s = listener("pop3s", 995, protocol=Protocol.POP3, tls=TlsMode.IMPLICIT)
    diff = diff_listeners([SMTP, SUBMISSION, SMTPS], [changed, moved, pop3s])
    assert diff == ListenerDiff(
        to_stop=(SUBMISSION, SMTPS),
        to_start=(moved, pop3s),
        to_update=((SMTP, changed),),
    )
    assert diff.counts() == {"added": 1, "removed": 1, "changed": 2, "kept": 0}


_names = st.sampled_from(["a", "b", "c", "d", "e"])
_ports = st.sampled_from([0, 25, 465, 587])
_listeners = st.builds(
    lambda name, port, strict: listener(name, port, require_tls=strict),
    _names,
    _ports,
    st.booleans(),
)


def _unique(items: list[ListenerConfig]) -> list[ListenerConfig]:
    """Names and non-zero ports unique, as the loader guarantees."""
    names: set[str] = set()
    ports: set[int] = set()
    unique: list[ListenerConfig] = []
    for item in items:
        port = item.listen.port
        if item.name in names or (port and port in ports):
            continue
        names.add(item.name)
        ports.add(port)
        unique.append(item)
    return unique


@given(st.lists(_listeners, max_size=5).map(_unique), st.lists(_listeners, max_size=5).map(_unique))
def test_every_listener_lands_in_exactly_one_place(
    old: list[ListenerConfig], new: list[ListenerConfig]
) -> None:
    diff = diff_listeners(old, new)
    olds = [*diff.to_stop, *diff.kept, *(before for before, _ in diff.to_update)]
    news = [*diff.to_start, *diff.kept, *(after for _, after in diff.to_update)]
    assert sorted(olds, key=repr) == sorted(old, key=repr)
    assert sorted(news, key=repr) == sorted(new, key=repr)
    # A kept socket is never asked to serve a different address.
    assert all(before.listen == after.listen for before, after in diff.to_update)
    # Binding new sockets before closing old ones never collides on an address.
    stopping = {item.listen for item in diff.to_stop if item.listen.port}
    starting = {item.listen for item in diff.to_start if item.listen.port}
    assert not stopping & starting
    assert all(before != after for before, after in diff.to_update)
