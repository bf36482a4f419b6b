"""Hot reload as an administrator does it: SIGHUP to a running `tlsgate run`, or renewed
certificate files on disk and `reload_certificates_interval`.

Each test writes a config and certificates (trustme, one CA, so a client trusts old and new)
into `tmp_path`, starts the real daemon with a JSON log, changes files, signals it, and checks
what clients see: which certificate a handshake presents (by SHA-256 fingerprint), which ports
accept, and that a session open across the reload completes its mail transaction.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.conftest import CertFiles
from tests.e2e.test_daemon import (
    PROMPT_SECONDS,
    START_TIMEOUT_SECONDS,
    Daemon,
    StartDaemon,
    Wire,
    backend_address,
)
from tests.helpers.gateway import SMTP_BACKEND, Gateway, running_gateway

Listener = Mapping[str, object]


@pytest.fixture(scope="module")
def backend(cert_files: CertFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The legacy SMTP backend (the in-process tlsgate in front of it goes unused)."""
    with running_gateway(
        [{"name": "unused", "protocol": "smtp", "tls": "none", "backend": SMTP_BACKEND}],
        **cert_files.gateway_files(),
        source=tmp_path_factory.mktemp("reload") / "unused.toml",
    ) as running:
        yield running


@pytest.fixture
def start_daemon() -> Iterator[StartDaemon]:
    started: list[Daemon] = []

    def start(config: Path) -> Daemon:
        daemon = Daemon(config)
        started.append(daemon)
        daemon.wait_ready()
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@dataclass
class Site:
    """One tlsgate installation in `tmp_path`: its config file and its certificate files."""

    directory: Path
    ca: trustme.CA
    backend: str
    client: ssl.SSLContext
    cert_file: Path = field(init=False)
    key_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.cert_file = self.directory / "cert.pem"
        self.key_file = self.directory / "key.pem"

    @property
    def config_file(self) -> Path:
        return self.directory / "tlsgate.toml"

    def install_certificate(self) -> str:
        """Issue a fresh certificate and put it in place as an ACME client does (write aside,
        rename over); returns its SHA-256 fingerprint."""
        leaf = self.ca.issue_cert("localhost", "127.0.0.1")
        write_pair(leaf, self.cert_file, self.key_file)
        return fingerprint_of(leaf)

    def write_config(
        self,
        listeners: Sequence[Listener],
        *,
        certificates: Sequence[tuple[Path, Path]] = (),
        top: str = "",
    ) -> Path:
        """A config with the given listeners (all in front of the SMTP backend) and
        certificates, as (cert, key) file pairs; by default the one `install_certificate`
        writes."""
        pairs = certificates or [(self.cert_file, self.key_file)]
        entries = "".join(f'\n[[certificate]]\ncert = "{c}"\nkey = "{k}"\n' for c, k in pairs)
        tables = "".join(
            "\n[[listener]]\n"
            + "".join(f"{key} = {_toml(value)}\n" for key, value in spec.items())
            + f'backend = "{self.backend}"\n'
            for spec in listeners
        )
        self.config_file.write_text(
            f"""\
{top}
[log]
format = "json"
{entries}{tables}"""
        )
        return self.config_file

    def smtps(self, port: int) -> Wire:
        """An SMTPS session, handshaked and greeted."""
        wire = Wire(port)
        wire.sock = self.client.wrap_socket(wire.sock, server_hostname="localhost")
        assert wire.reply().startswith(b"220 ")
        return wire


def write_pair(leaf: trustme.LeafCert, cert: Path, key: Path) -> None:
    """Put a certificate and its key in place as an ACME client does: write aside, rename."""
    for target, blob in (
        (cert, b"".join(pem.bytes() for pem in leaf.cert_chain_pems)),
        (key, leaf.private_key_pem.bytes()),
    ):
        aside = target.with_suffix(".new")
        aside.write_bytes(blob)
        aside.chmod(0o600)
        os.replace(aside, target)


def fingerprint_of(leaf: trustme.LeafCert) -> str:
    der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    return hashlib.sha256(der).hexdigest()


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


SMTPS: Listener = {"name": "smtps", "listen": "127.0.0.1:0", "protocol": "smtp", "tls": "implicit"}
SUBMISSION: Listener = {
    "name": "submission",
    "listen": "127.0.0.1:0",
    "protocol": "smtp",
    "tls": "starttls",
}


@pytest.fixture
def site(tmp_path: Path, cert_files: CertFiles, backend: Gateway) -> Site:
    return Site(tmp_path, cert_files.ca, backend_address(backend), cert_files.client_context())


# ---- helpers on the daemon's log ----------------------------------------------------------


def named(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    return [event for event in daemon.events() if event.get("event") == name]


def wait_for_nth(
    daemon: Daemon, name: str, count: int, timeout: float = START_TIMEOUT_SECONDS
) -> dict[str, Any]:
    """The `count`-th event called `name` (1-based), waiting for it within `timeout`."""
    deadline = time.monotonic() + timeout
    while len(found := named(daemon, name)) < count:
        assert daemon.process.poll() is None, f"exited: {daemon.stderr()}"
        assert time.monotonic() < deadline, f"no {name!r} #{count}: {daemon.stderr()}"
        time.sleep(0.02)
    return found[count - 1]


def reload(daemon: Daemon) -> dict[str, Any]:
    """SIGHUP, and the reload's outcome: its `config_reloaded` or `config_reload_failed`."""
    before = len(named(daemon, "config_reloaded")) + len(named(daemon, "config_reload_failed"))
    daemon.signal(signal.SIGHUP)
    deadline = time.monotonic() + PROMPT_SECONDS
    while True:
        outcomes = [
            event
            for event in daemon.events()
            if event.get("event") in {"config_reloaded", "config_reload_failed"}
        ]
        if len(outcomes) > before:
            return outcomes[before]
        assert daemon.process.poll() is None, f"exited: {daemon.stderr()}"
        assert time.monotonic() < deadline, f"no reload outcome: {daemon.stderr()}"
        time.sleep(0.02)


def port_of(daemon: Daemon, listener: str) -> int:
    """The port `listener` listens on now (its latest `listening` event)."""
    addresses = [e["address"] for e in named(daemon, "listening") if e["listener"] == listener]
    return int(addresses[-1].rsplit(":", 1)[1])


def fingerprint(wire: Wire) -> str:
    assert isinstance(wire.sock, ssl.SSLSocket)
    der = wire.sock.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def send_mail(wire: Wire, sender: str) -> None:
    assert wire.smtp(f"MAIL FROM:<{sender}>".encode()).startswith(b"250")
    assert wire.smtp(b"RCPT TO:<demo@localhost>").startswith(b"250")
    assert wire.smtp(b"DATA").startswith(b"354")
    assert wire.smtp(b"Subject: reload\r\n\r\nacross a reload\r\n.").startswith(b"250")
    assert wire.smtp(b"QUIT").startswith(b"221")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=PROMPT_SECONDS).close()
    except ConnectionRefusedError:
        return True
    return False


# ---- SIGHUP -------------------------------------------------------------------------------


def test_sighup_serves_a_replaced_certificate_while_an_open_session_completes(
    site: Site, start_daemon: StartDaemon, backend: Gateway
) -> None:
    old = site.install_certificate()
    daemon = start_daemon(site.write_config([SMTPS]))
    messages = len(backend.store.messages)
    with site.smtps(daemon.port("smtps")) as before:
        assert before.smtp(b"EHLO before.test").startswith(b"250")
        new = site.install_certificate()
        reloaded = reload(daemon)
        assert reloaded["event"] == "config_reloaded"
        assert (reloaded["added"], reloaded["removed"], reloaded["kept"]) == (0, 0, 1)
        send_mail(before, "before@reload")
        assert fingerprint(before) == old
    with site.smtps(daemon.port("smtps")) as after:
        assert fingerprint(after) == new
        assert after.smtp(b"EHLO after.test").startswith(b"250")
        send_mail(after, "after@reload")
    assert new != old
    delivered = [m.mail_from for m in backend.store.messages[messages:]]
    assert delivered == ["before@reload", "after@reload"]


def test_sighup_with_a_syntax_error_logs_the_problem_and_keeps_serving(
    site: Site, start_daemon: StartDaemon
) -> None:
    old = site.install_certificate()
    daemon = start_daemon(site.write_config([SMTPS]))
    site.install_certificate()
    site.config_file.write_text(site.config_file.read_text() + "\n[[listener]\n")
    failed = reload(daemon)
    assert failed["event"] == "config_reload_failed"
    assert failed["level"] == "error"
    assert len(failed["problems"]) == 1
    assert failed["problems"][0].startswith(f"{site.config_file}: ")
    assert "expected valid TOML, got a syntax error" in failed["problems"][0]
    with site.smtps(daemon.port("smtps")) as wire:
        assert fingerprint(wire) == old  # nothing of the refused reload took effect
        assert wire.smtp(b"EHLO still.test").startswith(b"250")


def test_sighup_naming_a_missing_certificate_logs_the_problem_and_keeps_serving(
    site: Site, start_daemon: StartDaemon
) -> None:
    old = site.install_certificate()
    daemon = start_daemon(site.write_config([SMTPS]))
    missing = site.directory / "renewed" / "cert.pem"
    site.write_config([SMTPS, SUBMISSION], certificates=[(missing, site.key_file)])
    failed = reload(daemon)
    assert failed["event"] == "config_reload_failed"
    assert failed["problems"] == [
        f'{site.config_file}: certificate[0].cert: expected a readable file, got "{missing}" '
        "(No such file or directory)"
    ]
    assert named(daemon, "listening") == named(daemon, "listening")[:1]  # no listener added
    with site.smtps(daemon.port("smtps")) as wire:
        assert fingerprint(wire) == old


def test_sighup_adding_a_listener_starts_accepting_on_its_port(
    site: Site, start_daemon: StartDaemon
) -> None:
    site.install_certificate()
    daemon = start_daemon(site.write_config([SMTPS]))
    site.write_config([SMTPS, SUBMISSION])
    reloaded = reload(daemon)
    assert reloaded["event"] == "config_reloaded"
    assert (reloaded["added"], reloaded["removed"], reloaded["changed"]) == (1, 0, 0)
    with Wire(port_of(daemon, "submission")) as wire:
        assert wire.reply().startswith(b"220 ")
        wire.start_tls(site.client)
        assert wire.smtp(b"EHLO added.test").startswith(b"250")
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert port_of(daemon, "smtps") == daemon.port("smtps")  # the kept listener was not rebound


def test_sighup_removing_a_listener_refuses_its_port_while_its_session_completes(
    site: Site, start_daemon: StartDaemon, backend: Gateway
) -> None:
    site.install_certificate()
    daemon = start_daemon(site.write_config([SUBMISSION, SMTPS]))
    submission = port_of(daemon, "submission")
    with Wire(submission) as open_session:
        assert open_session.reply().startswith(b"220 ")
        open_session.start_tls(site.client)
        assert open_session.smtp(b"EHLO leaving.test").startswith(b"250")
        site.write_config([SMTPS])
        reloaded = reload(daemon)
        assert (reloaded["added"], reloaded["removed"], reloaded["kept"]) == (0, 1, 1)
        assert named(daemon, "listener_stopped")[0]["listener"] == "submission"
        assert refused(submission)
        send_mail(open_session, "removed@listener")
    assert backend.store.messages[-1].mail_from == "removed@listener"
    with site.smtps(port_of(daemon, "smtps")) as wire:
        assert wire.smtp(b"EHLO kept.test").startswith(b"250")


def test_sighup_changing_a_listener_keeps_its_port_and_applies_to_new_sessions_only(
    site: Site, start_daemon: StartDaemon
) -> None:
    site.install_certificate()
    daemon = start_daemon(site.write_config([SUBMISSION]))
    port = daemon.port("submission")
    with Wire(port) as before:
        assert before.reply().startswith(b"220 ")
        assert before.smtp(b"EHLO before.test").startswith(b"250")
        site.write_config([{**SUBMISSION, "require_tls": True}])
        reloaded = reload(daemon)
        assert (reloaded["changed"], reloaded["kept"]) == (1, 0)
        with Wire(port) as after:
            assert after.reply().startswith(b"220 ")
            assert after.smtp(b"EHLO after.test").startswith(b"250")
            assert after.smtp(b"MAIL FROM:<plain@x>").startswith(b"530")  # require_tls now
        # The session accepted before the reload keeps the settings it started with.
        assert before.smtp(b"MAIL FROM:<plain@x>").startswith(b"250")
        assert before.smtp(b"QUIT").startswith(b"221")
    assert named(daemon, "listener_stopped") == []
    assert [e["listener"] for e in named(daemon, "listening")] == ["submission"]


def test_sighup_with_a_port_in_use_refuses_the_whole_reload(
    site: Site, start_daemon: StartDaemon
) -> None:
    old = site.install_certificate()
    daemon = start_daemon(site.write_config([SMTPS]))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        site.install_certificate()
        site.write_config([SMTPS, {**SUBMISSION, "listen": f"127.0.0.1:{taken}"}])
        failed = reload(daemon)
    assert failed["event"] == "config_reload_failed"
    assert len(failed["problems"]) == 1
    assert "'submission'" in failed["problems"][0]
    assert "in use" in failed["problems"][0]
    with site.smtps(daemon.port("smtps")) as wire:
        assert fingerprint(wire) == old  # the certificate change was refused with the rest


def test_sighup_applies_a_new_log_level(site: Site, start_daemon: StartDaemon) -> None:
    site.install_certificate()
    daemon = start_daemon(site.write_config([SMTPS]))
    # At level "warning" the reload's own `config_reloaded` is not logged either, so the test
    # learns that the reload is done from a listener it adds on a port chosen here.
    port = free_port()
    site.write_config([SMTPS, {**SUBMISSION, "listen": f"127.0.0.1:{port}"}])
    site.config_file.write_text(
        site.config_file.read_text().replace(
            'format = "json"', 'format = "json"\nlevel = "warning"'
        )
    )
    daemon.signal(signal.SIGHUP)
    deadline = time.monotonic() + PROMPT_SECONDS
    while refused(port):
        assert time.monotonic() < deadline, daemon.stderr()
        time.sleep(0.02)
    with site.smtps(daemon.port("smtps")) as wire:
        assert wire.smtp(b"QUIT").startswith(b"221")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    # Sessions, the SIGTERM, the drain: all info events, none logged after the reload.
    events = daemon.events()
    sighup = events.index(named(daemon, "signal")[0])
    assert events[sighup]["signal"] == "SIGHUP"
    assert events[sighup + 1 :] == []


def test_sighup_during_a_drain_is_ignored(site: Site, start_daemon: StartDaemon) -> None:
    site.install_certificate()
    daemon = start_daemon(site.write_config([SMTPS], top="shutdown_timeout = 30"))
    with site.smtps(daemon.port("smtps")) as wire:
        daemon.signal(signal.SIGTERM)
        daemon.wait_for_event("draining")
        daemon.signal(signal.SIGHUP)
        ignored = daemon.wait_for_event("reload_ignored", timeout=PROMPT_SECONDS)
        assert ignored["reason"] == "draining"
        assert wire.smtp(b"QUIT").startswith(b"221")
    assert daemon.wait() == 0, daemon.stderr()
    assert named(daemon, "config_reloaded") == named(daemon, "config_reload_failed") == []


# ---- reload_certificates_interval ---------------------------------------------------------


def test_reload_certificates_interval_picks_up_a_replaced_certificate_without_a_signal(
    site: Site, start_daemon: StartDaemon
) -> None:
    old = site.install_certificate()
    daemon = start_daemon(site.write_config([SMTPS], top="reload_certificates_interval = 0.1"))
    with site.smtps(daemon.port("smtps")) as before:
        new = site.install_certificate()
        wait_for_nth(daemon, "certificates_reloaded", 1, timeout=PROMPT_SECONDS)
        assert before.smtp(b"EHLO before.test").startswith(b"250")
        assert fingerprint(before) == old
    with site.smtps(daemon.port("smtps")) as after:
        assert fingerprint(after) == new
    # One renewal, one reload: unchanged files are not reloaded on every poll.
    time.sleep(0.5)
    assert len(named(daemon, "certificates_reloaded")) == 1
    assert named(daemon, "config_reload_failed") == []


def test_reload_certificates_interval_keeps_the_old_certificate_when_the_new_is_broken(
    site: Site, start_daemon: StartDaemon
) -> None:
    old = site.install_certificate()
    daemon = start_daemon(site.write_config([SMTPS], top="reload_certificates_interval = 0.1"))
    site.cert_file.write_text("not a certificate\n")
    failed = wait_for_nth(daemon, "config_reload_failed", 1, timeout=PROMPT_SECONDS)
    assert failed["trigger"] == "certificate_files_changed"
    assert "certificate[0].cert" in failed["problems"][0]
    with site.smtps(daemon.port("smtps")) as wire:
        assert fingerprint(wire) == old
    new = site.install_certificate()  # the renewal done right this time
    wait_for_nth(daemon, "certificates_reloaded", 1, timeout=PROMPT_SECONDS)
    with site.smtps(daemon.port("smtps")) as wire:
        assert fingerprint(wire) == new
    assert len(named(daemon, "config_reload_failed")) == 1  # reported once, not every poll


# ---- validity boundaries ------------------------------------------------------------------


def test_a_renewal_that_becomes_valid_later_is_served_from_that_moment(
    site: Site, start_daemon: StartDaemon
) -> None:
    # Renewals overlap: the new certificate, issued ahead, waits for its not_before. Nothing
    # changes on disk then, and no interval is set: the snapshot's own `next_change` drives it.
    now = datetime.now(UTC).replace(microsecond=0)
    current = site.ca.issue_cert("localhost", not_after=now + timedelta(days=100))
    renewal = site.ca.issue_cert(
        "localhost", not_before=now + timedelta(seconds=4), not_after=now + timedelta(days=400)
    )
    pairs = []
    for index, leaf in enumerate((current, renewal)):
        pairs.append((site.directory / f"cert{index}.pem", site.directory / f"key{index}.pem"))
        write_pair(leaf, *pairs[-1])
    daemon = start_daemon(site.write_config([SMTPS], certificates=pairs))
    with site.smtps(daemon.port("smtps")) as before:
        assert fingerprint(before) == fingerprint_of(current)
    reloaded = wait_for_nth(daemon, "certificates_reloaded", 1, timeout=10 * PROMPT_SECONDS)
    assert reloaded["trigger"] == "certificate_validity_changed"
    with site.smtps(daemon.port("smtps")) as after:
        assert fingerprint(after) == fingerprint_of(renewal)


def _smtps_resuming(
    site: Site, port: int, session: ssl.SSLSession | None
) -> tuple[bool, ssl.SSLSession | None]:
    """An SMTPS session offering `session` for resumption: (resumed?, the new ticket)."""
    with Wire(port) as wire:
        sock = site.client.wrap_socket(wire.sock, server_hostname="localhost", session=session)
        wire.sock = sock
        assert wire.reply().startswith(b"220 ")  # TLS 1.3 tickets arrive with the first data
        return bool(sock.session_reused), sock.session


def test_ticket_keys_rotate_on_their_interval_and_old_tickets_fall_back_to_a_full_handshake(
    site: Site, start_daemon: StartDaemon
) -> None:
    site.install_certificate()
    daemon = start_daemon(site.write_config([SMTPS], top="ticket_key_rotation_interval = 1"))
    port = daemon.port("smtps")
    _, ticket = _smtps_resuming(site, port, None)
    resumed, _ = _smtps_resuming(site, port, ticket)
    assert resumed  # tickets work while their keys are current
    rotation = wait_for_nth(daemon, "certificates_reloaded", 1, timeout=PROMPT_SECONDS)
    assert rotation["trigger"] == "ticket_key_rotation"
    resumed, fresh = _smtps_resuming(site, port, ticket)
    assert not resumed  # CONTRACT.md: a ticket from before the rotation gets a full handshake
    resumed, _ = _smtps_resuming(site, port, fresh)
    assert resumed or len(named(daemon, "certificates_reloaded")) > 1  # unless rotated again
