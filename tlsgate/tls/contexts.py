"""Server-side `ssl.SSLContext`s for every listener, built from a config in one immutable snapshot.

Theory of operation. `build_tls_snapshot(config)` is the only way the server gets contexts, at
start and on every reload; `check_certificates(config)` runs exactly the same analysis for
`tlsgate check`, so `run` refuses precisely what `check` rejects. Nothing running is touched:
a reload builds a snapshot off to the side (in a thread: it reads files) and swaps it in with
one assignment, or drops it and keeps the old one when it raises `ConfigError`.

1. `certstore.load_certificates` reads and judges every `[[certificate]]`.
2. Each TLS listener gets the certificates it names (all, by default) and its policy
   (`[tls]` overlaid with its own keys, `policy.resolve`) and client-certificate settings.
3. For each distinct (policy, client settings, certificate set) one *front* context is built,
   holding the default certificate(s), with an `sni_callback`; and for each distinct group of
   certificates that some server name selects (`selection.select`) one context holding that
   group. All are built here, once (PERFORMANCE.md §5): the callback does a dict lookup and,
   for a name that is not the default's, assigns `ssl_object.context`; OpenSSL then serves that
   context's certificates. The policy is applied to every one of them, because after the swap
   OpenSSL verifies client certificates against the *new* context's trust store.
   Session tickets stay encrypted with the front context's keys (OpenSSL keeps the initial
   context as the session context), so resumption works across the swap.

How keys reach OpenSSL. Python's `ssl` loads keys only from files. Handing it the operator's
files would make OpenSSL read them a second time (a renewal landing in between would pair a
new certificate with an old key, and a PKCS#12 file it cannot read at all), so the chain and
key that `cryptography` parsed are written back out for OpenSSL: one PEM file per certificate,
mode 0600, in a fresh mode-0700 directory, removed as soon as the contexts are built. The key
in it is encrypted (PKCS#8, AES-256) with a random password made for this build and never
stored anywhere: even a file left behind by a crash, or read from a disk image, reveals
nothing. A plaintext key thus never touches the disk, as the issue requires, whatever the
input format; the cost is a few milliseconds per certificate and reload.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import ssl
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

from tlsgate.config.load import ConfigError, ConfigProblem, ConfigWarning
from tlsgate.config.model import BackendTls, ClientAuth, Config, ListenerConfig, Profile, TlsMode
from tlsgate.config.parse import quote
from tlsgate.tls import certstore, selection
from tlsgate.tls.backend_contexts import build_backend_contexts
from tlsgate.tls.certstore import (
    CertificateInfo,
    EntryFindings,
    LoadedCertificate,
    normalize_name,
    wildcard_for,
)
from tlsgate.tls.client_auth import read_ca_certificates
from tlsgate.tls.policy import ResolvedPolicy, new_server_context, resolve
from tlsgate.tls.selection import Selection

__all__ = [
    "FileStamp",
    "TlsSnapshot",
    "build_tls_snapshot",
    "check_certificates",
    "tls_file_stamps",
    "tls_files",
]

# Random bytes in the password that protects keys on their way to OpenSSL (see above).
KEY_TRANSIT_PASSWORD_BYTES = 32

_VERIFY_MODES = {ClientAuth.OPTIONAL: ssl.CERT_OPTIONAL, ClientAuth.REQUIRED: ssl.CERT_REQUIRED}
Finding = ConfigProblem | ConfigWarning
# (client_auth, PEM text of the trusted CAs or None): part of what makes contexts shareable.
_ClientSettings = tuple[ClientAuth, str | None]
_ContextKey = tuple[ResolvedPolicy, _ClientSettings, tuple[int, ...]]
SniCallback = Callable[[ssl.SSLObject, str | None, ssl.SSLContext], int | None]


@dataclass(frozen=True, slots=True, eq=False)
class TlsSnapshot:
    """Every listener's server context for one config; never changed after it is built.

    Attributes:
        contexts: listener name -> its front context (only listeners with TLS).
        backend_contexts: listener name -> its client context towards its relays (only
            listeners with `backend_tls`).
        certificates: the loaded certificates, without keys (for metrics and logs).
        warnings: what `check` would print as warnings for this config's TLS side.
        legacy_listeners: names of listeners on the `legacy` profile (logged at start).
        next_change: when a certificate becomes valid or expires, which may change which one
            is served; rebuild the snapshot then (None: no such moment ahead).
    """

    contexts: Mapping[str, ssl.SSLContext]
    backend_contexts: Mapping[str, ssl.SSLContext] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )
    certificates: tuple[CertificateInfo, ...] = ()
    warnings: tuple[ConfigWarning, ...] = ()
    legacy_listeners: tuple[str, ...] = ()
    next_change: datetime | None = None

    def context_for(self, listener_name: str) -> ssl.SSLContext | None:
        """The context a new handshake on this listener starts with; None without TLS."""
        return self.contexts.get(listener_name)

    def backend_context_for(self, listener_name: str) -> ssl.SSLContext | None:
        """The context a new connection to this listener's relays uses; None without TLS."""
        return self.backend_contexts.get(listener_name)


def build_tls_snapshot(config: Config, *, now: datetime | None = None) -> TlsSnapshot:
    """Load every certificate of `config` and build every TLS listener's contexts.

    Args:
        config: a validated config.
        now: the moment to judge validity against (tests); defaults to the current time.

    Raises:
        ConfigError: with every problem (and the warnings) `check_certificates` reports.
    """
    analysis = _Analysis(config, now or datetime.now(UTC))
    snapshot = analysis.run()
    if analysis.problems or snapshot is None:
        raise ConfigError(analysis.problems, analysis.warnings)
    return snapshot


def check_certificates(
    config: Config, *, now: datetime | None = None
) -> tuple[list[ConfigProblem], list[ConfigWarning]]:
    """What `tlsgate check` reports about certificates, keys and TLS policy.

    The same analysis as `build_tls_snapshot`, contexts included (OpenSSL has the last word on
    a key too small for a profile, or a cipher string that selects nothing).

    Returns:
        The problems (each names the file, the key path and what was expected) and warnings.
    """
    analysis = _Analysis(config, now or datetime.now(UTC))
    analysis.run()
    return analysis.problems, analysis.warnings


# ---- the analysis ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ListenerPlan:
    listener: ListenerConfig
    policy: ResolvedPolicy
    client: _ClientSettings
    entries: tuple[int, ...]  # indices into config.certificates


class _Analysis:
    def __init__(self, config: Config, now: datetime) -> None:
        self.config, self.now = config, now
        self.file = str(config.source)
        self.problems: list[ConfigProblem] = []
        self.warnings: list[ConfigWarning] = []

    def add(self, findings: Sequence[Finding]) -> None:
        for finding in findings:
            if isinstance(finding, ConfigProblem):
                if finding not in self.problems:
                    self.problems.append(finding)
            elif finding not in self.warnings:
                self.warnings.append(finding)

    def run(self) -> TlsSnapshot | None:
        """Judge everything, then build; None (and `problems`) when something is wrong."""
        config = self.config
        loaded, findings = certstore.load_certificates(config)
        self.add(findings)
        listeners = [
            (i, item) for i, item in enumerate(config.listeners) if item.tls is not TlsMode.NONE
        ]
        if listeners and not config.certificates:
            expected = "at least one [[certificate]]"
            self.add([ConfigProblem(self.file, "certificate", expected, "none")])
        infos = [entry.info for entry in loaded if entry is not None]
        plans = [self._plan(index, listener, loaded) for index, listener in listeners]
        selections = self._judge_validity(infos, plans)
        backend_contexts, backend_problems = build_backend_contexts(config)
        self.add(backend_problems)
        if self.problems:
            return None
        if not listeners:
            snapshot = TlsSnapshot(MappingProxyType({}), certificates=tuple(infos))
        else:
            built = self._build(loaded, plans, selections, infos)
            if built is None:
                return None
            snapshot = built
        return dataclasses.replace(
            snapshot,
            backend_contexts=MappingProxyType(backend_contexts),
            warnings=tuple(self.warnings),
        )

    def _plan(
        self, index: int, listener: ListenerConfig, loaded: Sequence[LoadedCertificate | None]
    ) -> _ListenerPlan:
        path = f"listener[{index}]"
        settings = listener.tls_settings(self.config.tls)
        policy = resolve(settings)
        try:
            new_server_context(policy)
        except ssl.SSLError as exc:
            key = f"{path}.ciphers" if listener.ciphers else "tls.ciphers"
            got = f"{quote(policy.ciphers)} ({_reason(exc)})"
            self.add([ConfigProblem(self.file, key, "a cipher string OpenSSL can use", got)])
        return _ListenerPlan(
            listener, policy, self._client(path, listener), self._entries(path, listener, loaded)
        )

    def _entries(
        self, path: str, listener: ListenerConfig, loaded: Sequence[LoadedCertificate | None]
    ) -> tuple[int, ...]:
        if not listener.certificates:
            return tuple(range(len(loaded)))
        names = {entry.info.name for entry in loaded if entry is not None}
        explicit = {entry.name for entry in self.config.certificates if entry.name is not None}
        # A certificate that failed to load without an explicit name might have been meant.
        unsure = any(
            entry is None and self.config.certificates[i].name is None
            for i, entry in enumerate(loaded)
        )
        for position, name in enumerate(listener.certificates):
            if name in names or name in explicit or unsure:
                continue
            known = ", ".join(quote(known) for known in sorted(names | explicit)) or "none"
            expected = f"the name of a [[certificate]] (one of {known})"
            key = f"{path}.certificates[{position}]"
            self.add([ConfigProblem(self.file, key, expected, quote(name))])
        wanted = set(listener.certificates)
        return tuple(
            i
            for i, entry in enumerate(loaded)
            if (entry.info.name if entry is not None else self.config.certificates[i].name)
            in wanted
        )

    def _client(self, path: str, listener: ListenerConfig) -> _ClientSettings:
        if listener.client_auth is ClientAuth.NONE or listener.client_ca is None:
            return ClientAuth.NONE, None
        try:
            return listener.client_auth, read_ca_certificates(listener.client_ca)
        except ValueError as exc:
            got = f"{quote(str(listener.client_ca))} ({exc})"
            self.add([ConfigProblem(self.file, f"{path}.client_ca", "CA certificates", got)])
            return listener.client_auth, None

    def _judge_validity(
        self, infos: Sequence[CertificateInfo], plans: Sequence[_ListenerPlan]
    ) -> dict[tuple[int, ...], Selection]:
        """Select for every certificate set in use, and for all of them together."""
        by_index = {info.index: info for info in infos}
        sets = {tuple(sorted(by_index))} | {plan.entries for plan in plans}
        selections = {
            entries: selection.select([by_index[i] for i in entries if i in by_index], self.now)
            for entries in sets
            if any(i in by_index for i in entries)
        }
        reports = {
            info.index: EntryFindings(self.file, info.index, self.config.certificates[info.index])
            for info in infos
        }
        selection.validity_findings(infos, selections.values(), reports, self.now)
        for report in reports.values():
            self.add(report.found)
        return selections

    # ---- building ------------------------------------------------------------------------

    def _build(
        self,
        loaded: Sequence[LoadedCertificate | None],
        plans: Sequence[_ListenerPlan],
        selections: Mapping[tuple[int, ...], Selection],
        infos: Sequence[CertificateInfo],
    ) -> TlsSnapshot | None:
        builder = _ContextBuilder(self, loaded)
        try:
            contexts = {
                plan.listener.name: builder.front(plan, selections[plan.entries]) for plan in plans
            }
        finally:
            builder.close()
        if self.problems:
            return None
        legacy = tuple(p.listener.name for p in plans if p.policy.profile is Profile.LEGACY)
        moments = [s.next_change for s in selections.values() if s.next_change is not None]
        return TlsSnapshot(
            contexts=MappingProxyType(contexts),
            certificates=tuple(infos),
            warnings=tuple(self.warnings),
            legacy_listeners=legacy,
            next_change=min(moments, default=None),
        )


class _ContextBuilder:
    """Builds each distinct context once; owns the private directory keys pass through."""

    def __init__(self, analysis: _Analysis, loaded: Sequence[LoadedCertificate | None]) -> None:
        self._analysis = analysis
        self._loaded = loaded
        self._password = secrets.token_bytes(KEY_TRANSIT_PASSWORD_BYTES)
        self._directory = Path(tempfile.mkdtemp(prefix="tlsgate-keys-"))  # mode 0700
        self._files: dict[int, Path] = {}
        # (policy, client settings, certificate indices) -> context
        self._by_group: dict[_ContextKey, ssl.SSLContext] = {}
        self._fronts: dict[_ContextKey, ssl.SSLContext] = {}

    def close(self) -> None:
        shutil.rmtree(self._directory, ignore_errors=True)

    def front(self, plan: _ListenerPlan, selection: Selection) -> ssl.SSLContext:
        """The context a listener's handshakes start with: default certificates + SNI map."""
        key = (plan.policy, plan.client, plan.entries)
        if key in self._fronts:
            return self._fronts[key]
        front = self._context(plan.policy, plan.client, selection.default)
        names: dict[str, ssl.SSLContext] = {}
        for name, group in selection.by_name.items():
            names[name] = front if group == selection.default else self._group(plan, group)
        front.sni_callback = sni_callback(MappingProxyType(names))
        self._fronts[key] = front
        return front

    def _group(self, plan: _ListenerPlan, group: tuple[int, ...]) -> ssl.SSLContext:
        key = (plan.policy, plan.client, group)
        if key not in self._by_group:
            self._by_group[key] = self._context(plan.policy, plan.client, group)
        return self._by_group[key]

    def _context(
        self, policy: ResolvedPolicy, client: _ClientSettings, group: tuple[int, ...]
    ) -> ssl.SSLContext:
        context = new_server_context(policy)
        auth, cadata = client
        if auth is not ClientAuth.NONE and cadata is not None:
            context.verify_mode = _VERIFY_MODES[auth]
            context.load_verify_locations(cadata=cadata)
        for index in group:
            try:
                context.load_cert_chain(self._file(index), password=self._password)
            except ssl.SSLError as exc:
                self._refused(index, policy, exc)
        return context

    def _file(self, index: int) -> Path:
        if index not in self._files:
            loaded = self._loaded[index]
            assert loaded is not None, "only loaded certificates are selected"
            path = self._directory / f"{index}.pem"
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as out:
                out.write(loaded.openssl_pem(self._password))
            self._files[index] = path
        return self._files[index]

    def _refused(self, index: int, policy: ResolvedPolicy, exc: ssl.SSLError) -> None:
        entry = self._analysis.config.certificates[index]
        report = EntryFindings(self._analysis.file, index, entry)
        expected = f'a certificate and key OpenSSL accepts with profile "{policy.profile}"'
        report.problem(report.source_field, expected, entry.source, _reason(exc))
        self._analysis.add(report.found)


def _reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason ("EE_KEY_TOO_SMALL"), else the message alone, without a tuple's quotes."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        return reason
    return str(exc.args[-1]) if exc.args else str(exc)


def sni_callback(names: Mapping[str, ssl.SSLContext]) -> SniCallback:
    """`SSLContext.sni_callback` choosing among contexts built in advance.

    The hot path (a client sending a name as it appears in a SAN, lower case) is one dict
    lookup and one attribute store; only a miss normalises the name (case, trailing dot) and
    tries the wildcard that would cover it. A name matching nothing keeps the front context:
    the default certificate. The name is kept on the SSL object for the `tls_established` log.
    """

    def choose(ssl_object: ssl.SSLObject, server_name: str | None, front: ssl.SSLContext) -> None:
        ssl_object.tlsgate_sni = server_name  # type: ignore[attr-defined]  # SSLObject has a __dict__
        if server_name is None:
            return
        context = names.get(server_name)
        if context is None:
            name = normalize_name(server_name)
            context = names.get(name)
            if context is None and (pattern := wildcard_for(name)) is not None:
                context = names.get(pattern)
        if context is not None and context is not front:
            ssl_object.context = context

    return choose


# ---- the files a config depends on ----------------------------------------------------------

# inode, size, mtime and ctime in nanoseconds: a copy that keeps the mtime still changes ctime.
FileStamp = tuple[int, int, int, int]


def tls_files(config: Config) -> tuple[Path, ...]:
    """Every file the TLS contexts of `config` are built from, each once, in config order:
    certificates, keys, PKCS#12 and password files, client CA files, and the outbound CA,
    certificate and key files (a CA directory counts with every file in it, and itself)."""
    paths: list[Path] = []
    for entry in config.certificates:
        paths += [p for p in (entry.cert, entry.key, entry.pkcs12, entry.password_file) if p]
    for listener in config.listeners:
        if listener.backend_tls is not BackendTls.NONE:
            paths += [p for p in (listener.backend_cert, listener.backend_key) if p]
            paths += _with_directory_files(listener.backend_ca)
        if listener.tls is not TlsMode.NONE and listener.client_auth is not ClientAuth.NONE:
            paths += _with_directory_files(listener.client_ca)
    return tuple(dict.fromkeys(paths))


def _with_directory_files(path: Path | None) -> list[Path]:
    """A CA file, or a CA directory with every file in it (adding one changes its mtime)."""
    if path is None:
        return []
    paths = [path]
    if path.is_dir():
        # Unreadable: reported by the build; the directory's own stamp still changes.
        with contextlib.suppress(OSError):
            paths += sorted(p for p in path.iterdir() if p.is_file())
    return paths


def tls_file_stamps(config: Config) -> dict[Path, FileStamp | None]:
    """`tls_files` with each file's identity (None: cannot be read now). Two results differ
    when, and practically only when, a file was replaced or rewritten: compare them to decide
    on a certificate reload without reading the files."""
    stamps: dict[Path, FileStamp | None] = {}
    for path in tls_files(config):
        try:
            stat = os.stat(path)
        except OSError:
            stamps[path] = None
            continue
        stamps[path] = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    return stamps
