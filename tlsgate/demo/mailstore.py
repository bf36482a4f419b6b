"""In-memory mailboxes shared by the legacy SMTP and POP3 demo servers.

SMTP delivers each message to the mailbox named by every recipient's local part (lower-cased,
as sendmail's local delivery does) and to the catch-all `messages` list; POP3 reads and deletes
from the mailboxes. Every message gets a unique, never reused id for POP3 UIDL (RFC 1939 §7).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count
from typing import NamedTuple


class Delivery(NamedTuple):
    """One message as SMTP accepted it: envelope and body, body exactly as the client meant it.

    A named tuple, so `mail_from, rcpts, body = store.messages[0]` works too.
    """

    mail_from: str
    rcpts: tuple[str, ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class StoredMessage:
    uid: str
    data: bytes


def local_part(address: str) -> str:
    """`Demo@Localhost` -> `demo`; an address without a domain is all local part."""
    return address.rsplit("@", 1)[0].lower()


@dataclass
class MailStore:
    """The demo's whole mail spool.

    Attributes:
        messages: every accepted message, in order, with its envelope.
        locked: mailboxes a POP3 session holds (RFC 1939 §8: exclusive-access lock).
    """

    messages: list[Delivery] = field(default_factory=list)
    locked: set[str] = field(default_factory=set)
    _boxes: dict[str, list[StoredMessage]] = field(default_factory=dict)
    _uid_counter: count[int] = field(default_factory=lambda: count(1))

    def deliver(self, mail_from: str, rcpts: tuple[str, ...], body: bytes) -> None:
        """Record one SMTP delivery and append it to each recipient's mailbox."""
        self.messages.append(Delivery(mail_from, rcpts, body))
        for user in dict.fromkeys(local_part(rcpt) for rcpt in rcpts):
            self.add(user, body)

    def add(self, user: str, data: bytes) -> None:
        """Put a message straight into `user`'s mailbox (tests seed mailboxes with this)."""
        uid = f"legacy-{next(self._uid_counter)}"
        self._boxes.setdefault(user, []).append(StoredMessage(uid, data))

    def mailbox(self, user: str) -> list[StoredMessage]:
        """A snapshot of `user`'s mailbox (empty if the user never got mail)."""
        return list(self._boxes.get(user, ()))

    @property
    def mailboxes(self) -> dict[str, list[bytes]]:
        """user -> message bytes, in delivery order (a copy, for assertions)."""
        return {user: [m.data for m in box] for user, box in self._boxes.items()}

    def remove(self, user: str, uids: set[str]) -> None:
        """Delete the messages with these ids (the POP3 UPDATE state, RFC 1939 §6)."""
        box = self._boxes.get(user, [])
        box[:] = [m for m in box if m.uid not in uids]
