"""The `tlsgate` command: `run`, `check` and `demo`.

Exit codes are a contract (CONTRACT.md): 0 the config is valid (warnings are printed, still 0),
2 the config is invalid (one line per problem on stderr), 1 a runtime failure such as a port
already in use.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from tlsgate import __version__
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
    return parser


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


def _demo(*, check: bool) -> int:
    from tlsgate.demo import main as demo_main

    return demo_main(check=check)
