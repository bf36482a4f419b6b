"""The `tlsgate` command: `run`, `check`, `demo` and `cert`.

Exit codes are a contract (CONTRACT.md): 0 the config is valid (warnings are printed, still 0),
2 the config is invalid (one line per problem on stderr), 1 a runtime failure such as a port
already in use. `cert` follows the same rule: 0 done, 2 a bad argument or input file (or an
output file it refuses to overwrite), 1 output that could not be written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from tlsgate import __version__, certtool
from tlsgate.config import Config, ConfigError, ConfigProblem, ConfigWarning
from tlsgate.config.load import load_config_with_warnings
from tlsgate.tls.contexts import check_certificates

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors (argparse exits 2)
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    command: str = args.command
    if command == "check":
        return _check(Path(args.config))
    if command == "run":
        return _run(Path(args.config))
    if command == "cert":
        return _cert(args)
    return _demo(check=bool(args.check))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlsgate", description="A TLS front door for legacy SMTP and POP3 servers."
    )
    parser.add_argument("--version", action="version", version=f"tlsgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the daemon in the foreground")
    check = commands.add_parser("check", help="validate the config, certificates and keys")
    for sub in (run, check):
        sub.add_argument("-c", "--config", required=True, metavar="FILE", help="config file")
    demo = commands.add_parser("demo", help="start a self-contained demo on loopback ports")
    demo.add_argument(
        "--check", action="store_true", help="drive one client session per listener and exit"
    )
    _add_cert_parser(commands)
    return parser


def _add_cert_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cert = commands.add_parser("cert", help="make certificates and keys, or show a certificate")
    tools = cert.add_subparsers(dest="cert_command", required=True, metavar="COMMAND")
    self_signed = tools.add_parser("self-signed", help="a self-signed server certificate")
    ca = tools.add_parser("ca", help="a private CA whose root certificate your users import")
    ca_tools = ca.add_subparsers(dest="ca_command", required=True, metavar="COMMAND")
    ca_init = ca_tools.add_parser("init", help="make the CA: ca.pem and ca-key.pem")
    ca_issue = ca_tools.add_parser("issue", help="a server certificate signed by the CA")
    show = tools.add_parser("show", help="describe the certificates in a PEM or DER file")
    show.add_argument("file", type=Path, metavar="FILE", help="certificate file")
    ca_init.add_argument(
        "--name",
        default=certtool.DEFAULT_CA_NAME,
        help="the CA's common name (default: %(default)s)",
    )
    ca_issue.add_argument(
        "--ca", required=True, type=Path, metavar="DIR", help="directory with ca.pem, ca-key.pem"
    )
    for sub in (self_signed, ca_issue):
        sub.add_argument(
            "--host",
            action="append",
            required=True,
            metavar="NAME",
            help="DNS name or IP address; repeat for more; the first is the CN",
        )
    for sub, days in (
        (self_signed, certtool.DEFAULT_LEAF_DAYS),
        (ca_init, certtool.DEFAULT_CA_DAYS),
        (ca_issue, certtool.DEFAULT_LEAF_DAYS),
    ):
        sub.add_argument(
            "--key",
            choices=[key.value for key in certtool.KeyType],
            default=certtool.KeyType.ECDSA.value,
            help="key type (default: ecdsa, P-256)",
        )
        sub.add_argument(
            "--days", type=int, default=days, metavar="N", help=f"validity (default: {days})"
        )
        sub.add_argument(
            "--out", required=True, type=Path, metavar="DIR", help="created 0700 if missing"
        )
        sub.add_argument("--force", action="store_true", help="replace existing files")


def _validated(path: Path) -> Config | None:
    """Load the config and check its certificates, printing every finding; None if invalid."""
    try:
        config, warnings = load_config_with_warnings(path)
    except ConfigError as exc:
        _report(exc.warnings, exc.problems)
        return None
    problems, cert_warnings = check_certificates(config)
    _report([*warnings, *cert_warnings], problems)
    return None if problems else config


def _report(warnings: Iterable[ConfigWarning], problems: Iterable[ConfigProblem]) -> None:
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)


def _check(path: Path) -> int:
    config = _validated(path)
    if config is None:
        return EXIT_CONFIG
    count = len(config.listeners)
    print(f"config OK: {count} listener{'' if count == 1 else 's'}")
    return EXIT_OK


def _run(path: Path) -> int:
    config = _validated(path)
    if config is None:
        return EXIT_CONFIG
    # Imported here so that `check` works without the daemon's (heavier) dependencies.
    from tlsgate.net.daemon import run_daemon

    try:
        return run_daemon(config)
    except ConfigError as exc:  # e.g. a certificate that changed since the check
        _report(exc.warnings, exc.problems)
        return EXIT_CONFIG
    except OSError as exc:  # e.g. a port already in use
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


def _cert(args: argparse.Namespace) -> int:
    try:
        lines = _cert_lines(args)
    except certtool.CertToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:  # e.g. an --out directory that cannot be written
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_RUNTIME
    print("\n".join(lines))
    return EXIT_OK


def _cert_lines(args: argparse.Namespace) -> list[str]:
    if args.cert_command == "show":
        return certtool.show(args.file)
    key_type = certtool.KeyType(args.key)
    if args.cert_command == "self-signed":
        return certtool.self_signed(
            hosts=args.host, key_type=key_type, days=args.days, out=args.out, force=args.force
        )
    if args.ca_command == "init":
        return certtool.ca_init(
            out=args.out, name=args.name, key_type=key_type, days=args.days, force=args.force
        )
    return certtool.ca_issue(
        ca=args.ca,
        hosts=args.host,
        key_type=key_type,
        days=args.days,
        out=args.out,
        force=args.force,
    )


def _demo(*, check: bool) -> int:
    from tlsgate.demo import main as demo_main

    return demo_main(check=check)
