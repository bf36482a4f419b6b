"""Which certificate serves which server name, for a set of certificates and a moment.

PURE: no I/O, no clock (the moment is an argument), so every rule is a plain unit test.

Per name: valid before not-yet-valid before expired, judged over all of the name's candidates,
so an expired certificate is never served while a valid one exists; then a SAN naming the host
exactly before a wildcard covering it; then the one expiring last (renewals with overlapping
validity); then the first in the config. One certificate per key type, so RSA and ECDSA
certificates for a name share its context and OpenSSL offers each client the one its
signature algorithms allow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from tlsgate.tls.certstore import CertificateInfo, EntryFindings, KeyType, Validity, wildcard_for

# Warn this long before a served certificate expires: ACME clients renew at 30 days left, so
# under 21 days renewal has failed at least once (and three weeks remain to act).
EXPIRY_WARNING_DAYS = 21


@dataclass(frozen=True, slots=True)
class Selection:
    """Which certificates (by entry index) serve which name, for one set of entries.

    Attributes:
        by_name: a DNS name or wildcard pattern from the SANs -> the entries serving it.
        default: the entries serving clients without SNI or with a name in no SAN.
        only_expired: names for which every candidate has expired -> those candidates.
        served: every entry that serves some name (or the default).
        next_change: the next moment a validity boundary could change the choice.
    """

    by_name: Mapping[str, tuple[int, ...]]
    default: tuple[int, ...]
    only_expired: Mapping[str, tuple[int, ...]]
    served: frozenset[int]
    next_change: datetime | None


def select(certificates: Sequence[CertificateInfo], now: datetime) -> Selection:
    """Choose, per name and key type, the certificate that serves it.

    Ranking (best first): valid, then not yet valid, then expired, judged over all of a name's
    candidates, so an expired certificate is never served while a valid one exists for the
    name; then a SAN naming the host exactly before a wildcard covering it; then the one that
    expires last; then the first in the config.
    """
    assert certificates, "select needs at least one certificate"
    exact: dict[str, list[CertificateInfo]] = {}
    for info in certificates:
        for name in info.dns_names:
            exact.setdefault(name, []).append(info)
    by_name: dict[str, tuple[int, ...]] = {}
    only_expired: dict[str, tuple[int, ...]] = {}
    for name, named in exact.items():
        pattern = None if name.startswith("*.") else wildcard_for(name)
        covering = exact.get(pattern, []) if pattern is not None else []
        chosen, expired = _choose(named, covering, now)
        by_name[name] = chosen
        if expired:
            only_expired[name] = tuple(info.index for info in named)
    default = _default(certificates, by_name)
    served = frozenset(index for chosen in (*by_name.values(), default) for index in chosen)
    moments = [m for info in certificates for m in (info.not_before, info.not_after) if m > now]
    return Selection(by_name, default, only_expired, served, min(moments, default=None))


def _choose(
    named: Sequence[CertificateInfo], covering: Sequence[CertificateInfo], now: datetime
) -> tuple[tuple[int, ...], bool]:
    """The best candidate of each key type, and whether even the best has expired."""
    ranked = sorted(
        [(info.validity(now), 0, info) for info in named]
        + [(info.validity(now), 1, info) for info in covering],
        key=lambda item: (item[0], item[1], -item[2].not_after.timestamp(), item[2].index),
    )
    best_validity = ranked[0][0]
    chosen: dict[KeyType, int] = {}
    for validity, _, info in ranked:
        if validity == best_validity:
            chosen.setdefault(info.key_type, info.index)
    return tuple(sorted(chosen.values())), best_validity is Validity.EXPIRED


def _default(
    certificates: Sequence[CertificateInfo], by_name: Mapping[str, tuple[int, ...]]
) -> tuple[int, ...]:
    """The entry marked default (else the first), as served for its first DNS name: a renewal
    of the default certificate takes its place, as it does for SNI clients."""
    entry = next((info for info in certificates if info.default), certificates[0])
    if entry.dns_names:
        return by_name[entry.dns_names[0]]
    return (entry.index,)


def validity_findings(
    certificates: Iterable[CertificateInfo],
    selections: Iterable[Selection],
    reports: Mapping[int, EntryFindings],
    now: datetime,
) -> None:
    """Judge expiry once for every entry, whichever sets (listeners) it belongs to.

    An expired entry that is the only choice for a name, or the default, is a problem;
    expired but replaced everywhere, a warning; served and expiring within
    `EXPIRY_WARNING_DAYS`, or not valid yet, a warning. So is an entry no client can reach.
    """
    selections = list(selections)
    fatal = {i for s in selections for indices in s.only_expired.values() for i in indices}
    fatal.update(i for s in selections for i in s.default)  # only matters for expired ones
    served = {i for s in selections for i in s.served}
    for info in certificates:
        report = reports[info.index]
        field, path = report.source_field, report.entry.source
        if not info.dns_names and info.index not in served:
            expected = "a certificate with a DNS name in its subjectAltName, or default = true"
            report.warning(field, expected, path, "no DNS name: never served")
        state = info.validity(now)
        if state is Validity.EXPIRED:
            detail = f"expired {_when(info.not_after)}"
            expected = "a certificate that has not expired"
            if info.index in fatal:
                report.problem(field, expected, path, detail)
            else:
                report.warning(field, expected, path, f"{detail}; not served, a valid one is")
        elif state is Validity.NOT_YET_VALID:
            detail = f"not valid before {_when(info.not_before)}"
            report.warning(field, "a certificate that is already valid", path, detail)
        elif info.index in served and info.not_after - now < timedelta(days=EXPIRY_WARNING_DAYS):
            expected = f"a certificate valid for at least {EXPIRY_WARNING_DAYS} more days"
            left = info.not_after - now
            detail = f"expires {_when(info.not_after)}, in {left.days} days"
            report.warning(field, expected, path, detail)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
