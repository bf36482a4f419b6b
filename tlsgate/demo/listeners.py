"""The demo's listener table, the config file it writes, and the text it prints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tlsgate.demo.legacy import DEMO_USERS


@dataclass(frozen=True, slots=True)
class DemoListener:
    name: str
    usual_port: int  # the port this listener would have in production
    demo_port: int  # the high loopback port the demo tries first
    protocol: str  # "smtp" | "pop3": also which legacy backend it fronts
    tls: str  # a TlsMode value
    what: str  # one line for the table


LISTENERS = (
    DemoListener("smtps", 465, 10465, "smtp", "implicit", "SMTPS, TLS from the first byte"),
    DemoListener("submission", 587, 10587, "smtp", "starttls", "STARTTLS; AUTH only after TLS"),
    DemoListener("smtp-auto", 25, 10025, "smtp", "auto", "implicit TLS or STARTTLS, one port"),
    DemoListener("pop3s", 995, 10995, "pop3", "implicit", "POP3S, TLS from the first byte"),
    DemoListener("pop3", 110, 10110, "pop3", "starttls", "STLS; USER/PASS only after TLS"),
)

_CONFIG_HEAD = """\
# Written by `tlsgate demo`; tlsgate loaded it with the same loader as `tlsgate run -c`.
# Relative paths resolve against this file's directory.
shutdown_timeout = 2.0

[log]
format = "console"
level = "{log_level}"

[[certificate]]
cert = "{cert}"          # self-signed for localhost, 127.0.0.1 and ::1
key = "{key}"
"""

_CONFIG_LISTENER = """
[[listener]]                # {usual_port} in production: {what}
name = "{name}"
listen = "127.0.0.1:{port}"
protocol = "{protocol}"
tls = "{tls}"
backend = "127.0.0.1:{backend}"   # the legacy plaintext {protocol_upper} server
"""


def render_config(
    *, cert: str, key: str, ports: dict[str, int], backends: dict[str, int], log_level: str
) -> str:
    """The demo's TOML config: every listener, in front of the legacy backends."""
    text = _CONFIG_HEAD.format(log_level=log_level, cert=cert, key=key)
    for listener in LISTENERS:
        text += _CONFIG_LISTENER.format(
            usual_port=listener.usual_port,
            what=listener.what,
            name=listener.name,
            port=ports[listener.name],
            protocol=listener.protocol,
            protocol_upper=listener.protocol.upper(),
            tls=listener.tls,
            backend=backends[listener.protocol],
        )
        if listener.tls == "starttls":
            text += "auth_requires_tls = true    # the default, spelled out\n"
    return text


def _commands(ports: dict[str, int], cert: Path, message: Path) -> list[str]:
    user, password = next(iter(DEMO_USERS.items()))
    smtps, submission, auto = ports["smtps"], ports["submission"], ports["smtp-auto"]
    pop3s, pop3 = ports["pop3s"], ports["pop3"]
    mail = f"--mail-from you@example.com --mail-rcpt {user}@localhost -T {message}"
    swaks = f"swaks --to {user}@localhost --from you@example.com --tls-verify --tls-ca-path {cert}"
    return [
        "# Talk SMTP yourself (type EHLO me, then QUIT); -crlf sends the CRLF SMTP expects:",
        f"openssl s_client -brief -crlf -connect 127.0.0.1:{smtps} -CAfile {cert}",
        f"openssl s_client -brief -crlf -starttls smtp -connect 127.0.0.1:{submission}"
        f" -CAfile {cert}",
        "# POP3 with STLS (then: USER demo, PASS demo-password, LIST, RETR 1, QUIT):",
        f"openssl s_client -brief -crlf -starttls pop3 -connect 127.0.0.1:{pop3} -CAfile {cert}",
        "# Send mail with swaks: submission with STARTTLS + AUTH, then SMTPS:",
        f"{swaks} --server 127.0.0.1:{submission} --tls --auth-user {user}"
        f" --auth-password {password}",
        f"{swaks} --server 127.0.0.1:{smtps} --tls-on-connect",
        "# Send mail with curl: STARTTLS on the auto port, then SMTPS with AUTH:",
        f"curl --ssl-reqd --cacert {cert} smtp://127.0.0.1:{auto} {mail}",
        f"curl --cacert {cert} --user {user}:{password} smtps://127.0.0.1:{smtps} {mail}",
        "# Read message 1 back with curl: POP3S, then POP3 with STLS:",
        f"curl --cacert {cert} pop3s://{user}:{password}@127.0.0.1:{pop3s}/1",
        f"curl --ssl-reqd --cacert {cert} pop3://{user}:{password}@127.0.0.1:{pop3}/1",
    ]


def announcement(
    ports: dict[str, int], config: Path, cert: Path, message: Path, backends: tuple[int, int]
) -> str:
    """What the interactive demo prints once everything listens."""
    user, password = next(iter(DEMO_USERS.items()))
    smtp_port, pop3_port = backends
    rows = [
        f"  {lst.name:<11} {lst.usual_port:>5}   127.0.0.1:{ports[lst.name]:<6} "
        f"{lst.protocol:<5} {lst.tls:<9} {lst.what}"
        for lst in LISTENERS
    ]
    lines = [
        "tlsgate demo: a legacy plaintext mail server with tlsgate in front of it.",
        "",
        f"  legacy backend  SMTP 127.0.0.1:{smtp_port}, POP3 127.0.0.1:{pop3_port} (no TLS)",
        f"  mailbox         user {user}, password {password} (mail is kept in memory)",
        f"  config          {config}",
        f"  certificate     {cert} (self-signed; pass it as the CA file)",
        "",
        "  listener     usual   demo port        proto tls       what",
        *rows,
        "",
        "Try it from another terminal:",
        "",
        *(f"  {line}" for line in _commands(ports, cert, message)),
        "",
        "Connection logs follow on stderr. Press Ctrl-C to stop.",
    ]
    return "\n".join(lines)
