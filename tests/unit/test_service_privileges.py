"""Dropping root: looking the names up, and the switch itself (in a child: it cannot be undone).

Run as root (CI is) with the accounts every Debian system has, `nobody` and `nogroup`; no user
is created.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TypedDict

import pytest

from tlsgate.service.privileges import Account, PrivilegeError, resolve_account

REPO = Path(__file__).resolve().parents[2]
NOBODY = pwd.getpwnam("nobody")
NOGROUP = grp.getgrnam("nogroup")
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="only root can drop privileges")


def test_nothing_configured_resolves_to_nothing() -> None:
    assert resolve_account(None, None) is None


def test_a_user_alone_takes_its_primary_group() -> None:
    primary = grp.getgrgid(NOBODY.pw_gid).gr_name
    assert resolve_account("nobody", None) == Account(
        user="nobody", uid=NOBODY.pw_uid, group=primary, gid=NOBODY.pw_gid
    )


def test_a_group_overrides_the_users_primary_group() -> None:
    assert resolve_account("nobody", "nogroup") == Account(
        user="nobody", uid=NOBODY.pw_uid, group="nogroup", gid=NOGROUP.gr_gid
    )


def test_a_group_alone_changes_only_the_group() -> None:
    account = resolve_account(None, "nogroup")
    assert account == Account(user=None, uid=None, group="nogroup", gid=NOGROUP.gr_gid)
    assert str(account) == f"group nogroup (gid {NOGROUP.gr_gid})"


@pytest.mark.parametrize(
    ("user", "group", "message"),
    [
        ("tlsgate-no-such-user", None, "user 'tlsgate-no-such-user' (config key `user`) does not"),
        ("nobody", "tlsgate-no-such-group", "group 'tlsgate-no-such-group' (config key `group`)"),
        ("root", None, "user 'root' is root"),
    ],
)
def test_unusable_names_are_refused_with_the_line_an_admin_reads(
    user: str | None, group: str | None, message: str
) -> None:
    with pytest.raises(PrivilegeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_account(user, group)


DROP_AND_REPORT = textwrap.dedent(
    """
    import json, os, sys
    from tlsgate.service.privileges import drop_privileges, resolve_account
    drop_privileges(resolve_account(sys.argv[1] or None, sys.argv[2] or None))
    try:
        os.setuid(0)
        regained = True
    except PermissionError:
        regained = False
    print(json.dumps({
        "uid": os.getresuid(), "gid": os.getresgid(), "groups": os.getgroups(),
        "regained": regained,
    }))
    """
)


class Report(TypedDict):
    uid: list[int]
    gid: list[int]
    groups: list[int]
    regained: bool


def drop_in_child(user: str, group: str) -> Report:
    result = subprocess.run(
        [sys.executable, "-c", DROP_AND_REPORT, user, group],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    report: Report = json.loads(result.stdout)
    return report


@ROOT_ONLY
def test_dropping_sets_every_id_and_root_cannot_be_regained() -> None:
    report = drop_in_child("nobody", "nogroup")
    uid, gid = NOBODY.pw_uid, NOGROUP.gr_gid
    assert report["uid"] == [uid, uid, uid]
    assert report["gid"] == [gid, gid, gid]
    assert 0 not in report["groups"]
    assert gid in report["groups"]
    assert report["regained"] is False


@ROOT_ONLY
def test_dropping_only_the_group_leaves_no_root_group_behind() -> None:
    report = drop_in_child("", "nogroup")
    gid = NOGROUP.gr_gid
    assert report["gid"] == [gid, gid, gid]
    assert report["groups"] == [gid]
