"""Dropping root after binding: the config's `user` and `group`, for a start without systemd.

Under the shipped unit systemd starts tlsgate as `User=tlsgate` with CAP_NET_BIND_SERVICE, so
there is no root to drop and this does nothing. Started as root by anything else (an init
script, a container entrypoint, an admin at a shell), tlsgate binds its ports, switches to
`user`/`group`, and only then accepts a connection: no byte from the network is ever handled
as root.

The names are looked up when `run` starts, before anything is bound, so a missing user fails
at once with a clear line instead of after the ports were taken. `check` does not look them
up (CONTRACT.md): a config is often checked on another machine than the one it runs on.

What stays root-only afterwards: binding a port below 1024 (a reload that adds one fails and
keeps the old config) and reading files only root may read (certificates must be readable by
`user` for reloads and ticket-key rotation to succeed).
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass


class PrivilegeError(Exception):
    """The configured user or group cannot be used; the message is the line an admin reads."""


@dataclass(frozen=True, slots=True)
class Account:
    """The ids to switch to. `user` None: only the group changes (the config has no `user`)."""

    user: str | None
    uid: int | None
    group: str
    gid: int

    def __str__(self) -> str:
        owner = "" if self.user is None else f"user {self.user} (uid {self.uid}), "
        return f"{owner}group {self.group} (gid {self.gid})"


def resolve_account(user: str | None, group: str | None) -> Account | None:
    """Look up the config's `user` and `group`; None when neither is set.

    Raises:
        PrivilegeError: a name does not exist on this machine, or `user` is root.
    """
    if user is None and group is None:
        return None
    uid: int | None = None
    gid: int | None = None
    if user is not None:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise PrivilegeError(f"user {user!r} (config key `user`) does not exist") from None
        if entry.pw_uid == 0:
            raise PrivilegeError(f"user {user!r} is root (uid 0): nothing would be dropped")
        uid, gid = entry.pw_uid, entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise PrivilegeError(f"group {group!r} (config key `group`) does not exist") from None
    assert gid is not None  # from the group, else from the user's entry
    group_name = group if group is not None else _group_name(gid)
    return Account(user=user, uid=uid, group=group_name, gid=gid)


def running_as_root() -> bool:
    return os.geteuid() == 0


def drop_privileges(account: Account) -> None:
    """Switch the whole process (every thread: glibc's setxid) to `account` for good.

    Groups first: once the uid is not root, the process may no longer change its groups.
    Real, effective and saved ids are all set, so nothing can switch back, and that is
    verified rather than assumed.

    Raises:
        PrivilegeError: a switch failed, or root could still be regained afterwards.
    """
    try:
        if account.user is not None:
            # The user's supplementary groups too (e.g. `ssl-cert` to read /etc/ssl/private),
            # as login and every daemon that drops to a user do.
            os.initgroups(account.user, account.gid)
        else:
            os.setgroups([account.gid])
        os.setresgid(account.gid, account.gid, account.gid)
        if account.uid is not None:
            os.setresuid(account.uid, account.uid, account.uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot switch to {account}: {exc.strerror or exc}") from exc
    if account.uid is not None and _can_regain_root():
        raise PrivilegeError(f"switched to {account}, but setuid(0) still succeeds")


def _can_regain_root() -> bool:
    try:
        os.setuid(0)
    except PermissionError:
        return False
    return True


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:  # a primary gid without a /etc/group entry is legal
        return str(gid)
