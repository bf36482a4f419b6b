"""Client-side `ssl.SSLContext`s for outbound listeners (TLS towards a relay).

Secure by default, as Postfix's `smtp_tls_security_level = secure` and stunnel's
`verifyChain + checkHost`: the relay's chain is verified against `backend_ca` (the system's
trust store unless set) and its certificate must name `backend_server_name` (default: the
backend's host). Only `backend_verify = false` turns that off, and `check` warns about it.

One context per outbound listener, built with the server contexts (`contexts.py`) so that
`check`, start and every reload judge the same files the same way.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence

from tlsgate.config.load import ConfigProblem
from tlsgate.config.model import BackendTls, Config, ListenerConfig
from tlsgate.config.parse import quote
from tlsgate.tls.client_auth import read_ca_certificates
from tlsgate.tls.policy import ssl_version

__all__ = ["build_backend_contexts", "new_backend_context"]


class BackendContextError(ValueError):
    """A file an outbound listener needs is unusable; `key` names the config key."""

    def __init__(self, key: str, expected: str, got: str) -> None:
        super().__init__(f"{key}: expected {expected}, got {got}")
        self.key, self.expected, self.got = key, expected, got


def new_backend_context(listener: ListenerConfig) -> ssl.SSLContext:
    """The context every TLS connection from `listener` to its relays uses.

    Raises:
        BackendContextError: the CA, certificate or key file is unusable.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl_version(listener.backend_min_version)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if listener.backend_verify:
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        if listener.backend_ca is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            try:
                context.load_verify_locations(cadata=read_ca_certificates(listener.backend_ca))
            except ValueError as exc:
                got = f"{quote(str(listener.backend_ca))} ({exc})"
                raise BackendContextError("backend_ca", "CA certificates", got) from exc
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if listener.backend_cert is not None:
        key = listener.backend_key
        try:
            context.load_cert_chain(listener.backend_cert, key)
        except (OSError, ssl.SSLError) as exc:
            reason = str(exc) if isinstance(exc, ssl.SSLError) else exc.strerror or str(exc)
            files = quote(str(listener.backend_cert)) + (f" + {quote(str(key))}" if key else "")
            expected = "a PEM certificate with its unencrypted private key"
            raise BackendContextError("backend_cert", expected, f"{files} ({reason})") from exc
    return context


def build_backend_contexts(
    config: Config,
) -> tuple[Mapping[str, ssl.SSLContext], Sequence[ConfigProblem]]:
    """A context for each listener with `backend_tls` set, and the problems found."""
    contexts: dict[str, ssl.SSLContext] = {}
    problems: list[ConfigProblem] = []
    for index, listener in enumerate(config.listeners):
        if listener.backend_tls is BackendTls.NONE:
            continue
        try:
            contexts[listener.name] = new_backend_context(listener)
        except BackendContextError as exc:
            key = f"listener[{index}].{exc.key}"
            problems.append(ConfigProblem(str(config.source), key, exc.expected, exc.got))
    return contexts, problems
