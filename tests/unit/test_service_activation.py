"""Socket activation: the pure matching rule (CONTRACT.md) and reading systemd's variables."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

import pytest

from tlsgate.config.model import Endpoint, ListenerConfig, Protocol, TlsMode
from tlsgate.service.activation import (
    SD_LISTEN_FDS_START,
    ActivationError,
    inherited_sockets,
    listen_fds,
)
from tlsgate.service.socket_match import InheritedSocket, match_sockets


def listener(name: str, listen: str) -> ListenerConfig:
    host, _, port = listen.rpartition(":")
    return ListenerConfig(
        name=name,
        listen=Endpoint(host.strip("[]"), int(port)),
        protocol=Protocol.SMTP,
        tls=TlsMode.STARTTLS,
        backend=(Endpoint("127.0.0.1", 2525),),
    )


LISTENERS = [
    listener("smtp", "0.0.0.0:25"),
    listener("submission", "0.0.0.0:587"),
    listener("submissions", "[::]:465"),
    listener("local", "localhost:2587"),  # a host name: no one address to match
]


def inherited(fd: int, name: str | None, host: str, port: int) -> InheritedSocket:
    return InheritedSocket(fd, name, (host, port))


# ---- matching: pure ------------------------------------------------------------------------


def test_distinct_names_match_listeners_whatever_the_sockets_are_bound_to() -> None:
    sockets = [
        inherited(3, "submission", "192.0.2.1", 10587),
        inherited(4, "smtp", "192.0.2.1", 10025),
        inherited(5, "local", "127.0.0.1", 2587),
    ]
    assert match_sockets(sockets, LISTENERS) == {"submission": (3,), "smtp": (4,), "local": (5,)}


def test_a_shared_name_falls_back_to_the_bound_address() -> None:
    # tlsgate.socket: one unit, so one FileDescriptorName for every socket.
    sockets = [
        inherited(3, "tlsgate.socket", "0.0.0.0", 587),
        inherited(4, "tlsgate.socket", "::", 465),
        inherited(5, "tlsgate.socket", "0.0.0.0", 25),
    ]
    assert match_sockets(sockets, LISTENERS) == {
        "submission": (3,),
        "submissions": (4,),
        "smtp": (5,),
    }


def test_a_shared_name_that_is_a_listener_name_still_matches_by_address() -> None:
    # Not distinct, so the name says nothing: port 587 must not go to "smtp".
    sockets = [inherited(3, "smtp", "0.0.0.0", 25), inherited(4, "smtp", "0.0.0.0", 587)]
    assert match_sockets(sockets, LISTENERS) == {"smtp": (3,), "submission": (4,)}


def test_without_names_sockets_match_by_address() -> None:
    sockets = [inherited(3, None, "0.0.0.0", 25), inherited(4, None, "0.0.0.0", 587)]
    assert match_sockets(sockets, LISTENERS) == {"smtp": (3,), "submission": (4,)}


def test_a_unique_name_that_names_no_listener_falls_back_to_the_address() -> None:
    # A one-socket tlsgate.socket: its name is unique but is the unit's, not a listener's.
    sockets = [inherited(3, "tlsgate.socket", "0.0.0.0", 25)]
    assert match_sockets(sockets, LISTENERS) == {"smtp": (3,)}


def test_units_of_both_kinds_at_once() -> None:
    sockets = [
        inherited(3, "tlsgate.socket", "0.0.0.0", 25),
        inherited(4, "tlsgate.socket", "::", 465),
        inherited(5, "submission", "::", 587),  # tlsgate-submission.socket
    ]
    assert match_sockets(sockets, LISTENERS) == {
        "smtp": (3,),
        "submissions": (4,),
        "submission": (5,),
    }


def test_an_address_matches_whatever_its_spelling() -> None:
    listeners = [listener("v6", "[0:0::1]:587")]
    assert match_sockets([inherited(3, None, "::1", 587)], listeners) == {"v6": (3,)}


def test_a_listener_without_an_inherited_socket_is_left_to_bind_itself() -> None:
    assert match_sockets([inherited(3, "smtp", "0.0.0.0", 25)], LISTENERS) == {"smtp": (3,)}
    assert match_sockets([], LISTENERS) == {}


def test_an_inherited_socket_matching_no_listener_is_an_error_naming_it() -> None:
    sockets = [
        inherited(3, "tlsgate.socket", "0.0.0.0", 25),
        inherited(4, "tlsgate.socket", "0.0.0.0", 110),
    ]
    with pytest.raises(ActivationError) as caught:
        match_sockets(sockets, LISTENERS)
    assert caught.value.problems == (
        "inherited socket fd 4 (0.0.0.0:110, FileDescriptorName=tlsgate.socket): no listener "
        "has that name or that address; give its unit FileDescriptorName=LISTENER, or make "
        "its ListenStream= a listener's `listen`",
    )


def test_dual_stack_wildcard_is_not_the_ipv4_wildcard() -> None:
    # ListenStream=587 binds [::]:587; a config saying 0.0.0.0:587 asked for another socket.
    with pytest.raises(ActivationError, match=r"fd 3 \(\[::\]:587\)"):
        match_sockets([inherited(3, None, "::", 587)], LISTENERS)


def test_a_port_zero_listener_matches_no_address() -> None:
    with pytest.raises(ActivationError):
        match_sockets([inherited(3, None, "127.0.0.1", 40000)], [listener("any", "127.0.0.1:0")])


def test_a_socket_that_is_not_listening_tcp_is_an_error_even_if_named() -> None:
    with pytest.raises(ActivationError) as caught:
        match_sockets([InheritedSocket(3, "smtp", None)], LISTENERS)
    assert caught.value.problems == (
        "inherited socket fd 3 (not a listening TCP socket, FileDescriptorName=smtp): "
        "tlsgate serves TCP listeners only",
    )


def test_every_problem_is_reported() -> None:
    sockets = [inherited(3, None, "0.0.0.0", 1), InheritedSocket(4, None, None)]
    with pytest.raises(ActivationError) as caught:
        match_sockets(sockets, LISTENERS)
    assert len(caught.value.problems) == 2


# ---- the environment -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "passed"),
    [
        ({"LISTEN_PID": "42", "LISTEN_FDS": "2"}, [(3, None), (4, None)]),
        (
            {"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "smtp:submission"},
            [(3, "smtp"), (4, "submission")],
        ),
        ({"LISTEN_PID": "43", "LISTEN_FDS": "2"}, []),  # for another process
        ({"LISTEN_FDS": "2"}, []),  # no LISTEN_PID: sd_listen_fds ignores them too
        ({"LISTEN_PID": "42", "LISTEN_FDS": "0", "LISTEN_FDNAMES": ""}, []),
        ({}, []),
    ],
)
def test_listen_fds(environ: dict[str, str], passed: list[tuple[int, str | None]]) -> None:
    assert listen_fds(environ, pid=42) == passed


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"LISTEN_PID": "42", "LISTEN_FDS": "two"}, "LISTEN_FDS: expected a number"),
        ({"LISTEN_PID": "42"}, "LISTEN_FDS: expected a number"),
        (
            {"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "smtp"},
            "LISTEN_FDNAMES: expected 2 names, got 1",
        ),
    ],
)
def test_malformed_variables_for_this_process_are_an_error(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ActivationError, match=message):
        listen_fds(environ, pid=42)


@pytest.fixture
def fd3_listening() -> Iterator[int]:
    """A listening socket at fd 3, where systemd puts the first one; the fd 3 of the test
    process, if any, is set aside meanwhile."""
    saved = _dup_if_open(SD_LISTEN_FDS_START)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        os.dup2(sock.fileno(), SD_LISTEN_FDS_START, inheritable=True)
        port = sock.getsockname()[1]
    try:
        yield int(port)
    finally:
        _restore(SD_LISTEN_FDS_START, saved)


def _dup_if_open(fd: int) -> int | None:
    try:
        return os.dup(fd)
    except OSError:
        return None


def _restore(fd: int, saved: int | None) -> None:
    if saved is None:
        with contextlib.suppress(OSError):  # taken and closed by the code under test
            os.close(fd)
    else:
        os.dup2(saved, fd)
        os.close(saved)


def test_inherited_sockets_are_adopted_and_the_variables_removed(fd3_listening: int) -> None:
    environ = {
        "LISTEN_PID": str(os.getpid()),
        "LISTEN_FDS": "1",
        "LISTEN_FDNAMES": "tlsgate.socket",
        "PATH": "/bin",
    }
    taken = inherited_sockets([listener("smtp", f"127.0.0.1:{fd3_listening}")], environ)
    try:
        assert list(taken) == ["smtp"]
        [sock] = taken["smtp"]
        assert sock.fileno() == SD_LISTEN_FDS_START
        assert sock.getsockname() == ("127.0.0.1", fd3_listening)
        assert not sock.get_inheritable()  # a child the daemon might start must not get it
        assert environ == {"PATH": "/bin"}
    finally:
        for group in taken.values():
            for sock in group:
                sock.detach()  # the fixture closes fd 3


def test_an_unmatched_inherited_socket_is_closed_with_the_error(fd3_listening: int) -> None:
    environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"}
    with pytest.raises(ActivationError, match=f"127.0.0.1:{fd3_listening}"):
        inherited_sockets([listener("smtp", "127.0.0.1:1")], environ)
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(SD_LISTEN_FDS_START)
    assert environ == {}


def test_variables_for_another_process_are_removed_and_ignored() -> None:
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "smtp"}
    assert inherited_sockets(LISTENERS, environ) == {}
    assert environ == {}
