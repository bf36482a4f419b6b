"""TlsStream: tlsgate's TLS layer, a trio stream over `ssl.SSLObject` and two `MemoryBIO`s.

Not `trio.SSLStream`: that returns one 16 KiB record per `receive_some` and cannot half-close,
which halves relay throughput (PERFORMANCE.md). Theory of operation:

- OpenSSL only talks to the BIOs: transport ciphertext goes into `_incoming`; whatever OpenSSL
  wants on the wire (records, alerts, tickets, KeyUpdate replies) appears in `_outgoing`.
- `receive_some`: ONE large transport read, fed to the BIO once, then every record that can be
  decrypted (up to `max_bytes`), joined. The transport is read again only when nothing could
  be decrypted. Plaintext beyond `max_bytes` is not copied: it waits in OpenSSL's record
  buffer and in the BIO, and the next call takes it before touching the transport.
- `send_all`: encrypt everything, then one transport `send_all` (per `SEND_CHUNK_BYTES`).
- A sender and a receiver (flushing a KeyUpdate reply) may both need the transport's send
  side. Both take `_send_lock` and read the outgoing BIO only while holding it, so records go
  out in the order OpenSSL made them. Uncontended, the lock costs no checkpoint.
- `send_eof`: close_notify, then the transport's write side is shut; receiving continues, so
  the peer's last replies still arrive (the half-close `SSLStream` lacks).
- A transport send that fails or is cancelled midway leaves part of a record on the wire: the
  stream is BROKEN from then on, as in `SSLStream`. Cancellation is taken before encrypting.

Nothing on the per-chunk path logs or counts (PERFORMANCE.md §3). Errors are classified here,
once: handshake failures become `TlsHandshakeError`, the rest `trio.BrokenResourceError`.
"""

from __future__ import annotations

import contextlib
import enum
import operator
import ssl
import sys
from typing import Final

import trio
from trio.abc import HalfCloseableStream, Stream

from tlsgate.net.locks import TaskLock
from tlsgate.net.socket_io import SocketFastPath
from tlsgate.observe.events import HandshakeFailure
from tlsgate.tls.failures import TlsHandshakeError, classify_ssl_error, ssl_error_detail

__all__ = ["RECEIVE_SIZE_BYTES", "TlsStream"]

# One transport read per receive_some. 256 KiB is what PERFORMANCE.md measured at stunnel's
# throughput: 16 records per wake-up instead of one. The buffer exists only for the duration of
# the read (the transport allocates it and shrinks it to what arrived); idle connections hold
# nothing, and a preallocated per-connection buffer bought ~5% at 9x the idle memory.
RECEIVE_SIZE_BYTES: Final = 256 * 1024
# Handshake flights are a few KiB; 64 KiB covers any certificate chain in one read, and was
# the handshake-rate variant measured at 0.96x stunnel.
HANDSHAKE_RECEIVE_SIZE_BYTES: Final = 64 * 1024
# RFC 8446 §5.1 / RFC 5246 §6.2.1: a record carries at most 2^14 bytes of plaintext, and
# SSL_read returns at most one record per call, so this is the right size for each read.
MAX_RECORD_PLAINTEXT_BYTES: Final = 16 * 1024
# Bound on the ciphertext one send_all builds up before writing it out: same size as a read.
SEND_CHUNK_BYTES: Final = 256 * 1024
# aclose() sends close_notify as a courtesy. It is 24-31 bytes, so it only blocks if the peer
# stopped reading and the socket buffer is full; then we give up and close anyway.
CLOSE_NOTIFY_TIMEOUT_SECONDS: Final = 1.0

# TlsHandshakeError.detail when the transport, not OpenSSL, ended the handshake.
TRANSPORT_BROKEN_DETAIL: Final = "TRANSPORT_BROKEN"

_UNLIMITED: Final = sys.maxsize


class _State(enum.Enum):
    OPEN = enum.auto()
    BROKEN = enum.auto()
    CLOSED = enum.auto()


class TlsStream(HalfCloseableStream):
    """A TLS connection over any trio stream (normally a `trio.SocketStream`).

    Args:
        transport: the stream carrying ciphertext.
        context: built once per certificate set (PERFORMANCE.md §5).
        server_side: whether we answer the handshake.
        server_hostname: SNI and verification name when we are the client.
        initial_data: ciphertext already read off `transport` (by the sniffer, say); it is fed to
            OpenSSL before anything read later.
    """

    __slots__ = (
        "_closed_abruptly",
        "_delayed_outgoing",
        "_eof_received",
        "_eof_sent",
        "_fast_transport",
        "_first_bytes",
        "_handshake_done",
        "_incoming",
        "_outgoing",
        "_pending",
        "_receiving",
        "_send_lock",
        "_sending",
        "_ssl",
        "_state",
        "_transport",
    )

    def __init__(
        self,
        transport: Stream,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        initial_data: bytes | bytearray = b"",
    ) -> None:
        self._transport = transport
        self._fast_transport = SocketFastPath.of(transport)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
        )
        if initial_data:
            self._incoming.write(initial_data)
        # Kept until the handshake ends, to tell plaintext from a version mismatch.
        self._first_bytes = bytes(initial_data[:2])
        self._state = _State.OPEN
        self._handshake_done = False
        self._send_lock = TaskLock()
        self._sending = False
        self._receiving = False
        self._eof_sent = False
        self._eof_received = False
        self._closed_abruptly = False
        # Plaintext that was decrypted but not returned yet; only send_eof ever fills it.
        self._pending = b""
        # Server-side TLS 1.3 session tickets, held until our first send (see the handshake).
        self._delayed_outgoing = b""

    @property
    def transport_stream(self) -> Stream:
        """The stream carrying the ciphertext."""
        return self._transport

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The OpenSSL connection: `version()`, `cipher()`, `server_hostname`, certificates."""
        return self._ssl

    @property
    def closed_abruptly(self) -> bool:
        """True once the transport reached EOF without the peer's close_notify."""
        return self._closed_abruptly

    async def do_handshake(self) -> None:
        """Run the handshake, or return at once (after a checkpoint) if it is done.

        Callers bound it with `trio.fail_after`. Other methods call it when needed.

        Raises:
            TlsHandshakeError: OpenSSL refused the handshake, or the peer closed or reset the
                connection during it (failure EOF).
            trio.BrokenResourceError: an earlier handshake or transfer failed.
            trio.ClosedResourceError: this stream was closed.
        """
        if self._handshake_done:
            await trio.lowlevel.checkpoint()
            return
        self._check_can_receive()
        await self._send_lock.take()
        try:
            try:
                await self._handshake_locked()
            except trio.BrokenResourceError as exc:
                self._mark_broken()
                # A reset, or a write to a connection the peer already closed, is the peer
                # leaving mid-handshake: the same class of failure as a clean EOF.
                raise TlsHandshakeError(HandshakeFailure.EOF, TRANSPORT_BROKEN_DETAIL) from exc
            except BaseException:
                self._mark_broken()
                raise
        finally:
            self._send_lock.release()

    async def _handshake_locked(self) -> None:
        if self._handshake_done:  # another task finished it while we waited for the lock
            return
        # A server can do nothing before the ClientHello: read it first rather than make
        # OpenSSL say so with an SSLWantReadError, which costs more than the call itself.
        must_receive = self._ssl.server_side and not self._incoming.pending
        while True:
            if must_receive:
                must_receive = False
                if not await self._receive_handshake_bytes():
                    continue
            try:
                self._ssl.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            except ssl.SSLError as exc:
                await self._send_alert_best_effort()
                failure = classify_ssl_error(exc, first_bytes=self._first_bytes)
                raise TlsHandshakeError(failure, ssl_error_detail(exc)) from exc
            if done and self._ssl.server_side and self._ssl.version() == "TLSv1.3":
                # OpenSSL queues the TLS 1.3 NewSessionTicket messages as the server's handshake
                # ends. Sending them now can deadlock against a client that is not reading yet
                # (openssl/openssl#7948, #7967; trio's SSLStream does the same): they go out in
                # front of our first record instead.
                self._delayed_outgoing = self._outgoing.read()
            elif self._outgoing.pending:
                await self._transport_send(self._outgoing.read())
            if done:
                self._handshake_done = True
                self._first_bytes = b""
                return
            must_receive = True

    async def _receive_handshake_bytes(self) -> bool:
        """Feed the next handshake bytes to OpenSSL; False at EOF (OpenSSL then raises
        SSLEOFError, which classifies as EOF)."""
        data = await self._transport_receive(HANDSHAKE_RECEIVE_SIZE_BYTES)
        if not data:
            self._incoming.write_eof()
            return False
        if len(self._first_bytes) < 2:
            self._first_bytes = (self._first_bytes + data)[:2]
        self._incoming.write(data)
        return True

    async def _send_alert_best_effort(self) -> None:
        # The alert tells the peer why (unknown_ca, protocol_version, ...). The transport may
        # already be gone; the caller's handshake deadline bounds the wait.
        alert = self._outgoing.read()
        if alert:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._transport.send_all(alert)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Return every record that can be decrypted, up to `max_bytes`, as one chunk.

        Returns b"" at the peer's close_notify and at transport EOF; in the second case
        `closed_abruptly` becomes True.

        Raises:
            trio.BusyResourceError: another task is receiving.
            trio.ClosedResourceError: this stream was closed.
            trio.BrokenResourceError: the transport failed, or a record did not decrypt.
            TlsHandshakeError: the implicit handshake failed.
        """
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this TlsStream")
        self._receiving = True
        try:
            if max_bytes is None:
                limit = _UNLIMITED
            else:
                limit = operator.index(max_bytes)
                if limit < 1:
                    raise ValueError("max_bytes must be >= 1")
            self._check_can_receive()
            if not self._handshake_done:
                await self.do_handshake()
            if self._pending:
                data, self._pending = self._pending[:limit], self._pending[limit:]
                await trio.lowlevel.checkpoint()
                return data
            if self._eof_received:
                await trio.lowlevel.checkpoint()
                return b""
            yielded = False
            while True:
                # Records left from a call that hit max_bytes come before any new read.
                if self._incoming.pending or self._ssl.pending():
                    decrypted = self._decrypt(limit)
                    if self._outgoing.pending:  # a KeyUpdate reply, a renegotiation message
                        await self._flush()
                        yielded = True
                    if decrypted is not None:
                        if not yielded:
                            await trio.lowlevel.checkpoint()
                        return decrypted
                ciphertext = await self._transport_receive(RECEIVE_SIZE_BYTES)
                yielded = True
                if not ciphertext:
                    self._eof_received = True
                    self._closed_abruptly = True
                    return b""
                self._incoming.write(ciphertext)
        finally:
            self._receiving = False

    def _decrypt(self, limit: int) -> bytes | None:
        """Read records until OpenSSL wants more ciphertext; None if not even one was ready."""
        read = self._ssl.read
        chunks: list[bytes] = []
        total = 0
        try:
            while total < limit:
                chunk = read(min(limit - total, MAX_RECORD_PLAINTEXT_BYTES))
                if not chunk:
                    # Python reports the peer's close_notify as b"" while we have not sent
                    # ours, and as SSLZeroReturnError once we have.
                    self._eof_received = True
                    break
                chunks.append(chunk)
                total += len(chunk)
                if not self._incoming.pending and not self._ssl.pending():
                    break  # the next read would only raise SSLWantReadError, at some cost
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self._eof_received = True
        except ssl.SSLError as exc:
            self._mark_broken()
            raise trio.BrokenResourceError(f"TLS receive failed: {ssl_error_detail(exc)}") from exc
        if not self._eof_sent:
            self._queue_key_update_reply()
        if not chunks:
            return b"" if self._eof_received else None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _queue_key_update_reply(self) -> None:
        # RFC 8446 §4.6.3: a KeyUpdate(update_requested) must be answered before our next
        # application data, and OpenSSL writes that answer only from SSL_write. An empty write
        # (SSL_write_ex(3): "will not send application data to the peer") moves it into the
        # outgoing BIO now, so a connection that only receives still answers at once; with
        # nothing to answer it writes nothing. One C call per receive, not per record.
        try:
            self._ssl.write(b"")
        except ssl.SSLWantReadError:
            pass  # a TLS 1.2 renegotiation in progress: its messages are already queued
        except ssl.SSLError as exc:
            self._mark_broken()
            raise trio.BrokenResourceError(f"TLS receive failed: {ssl_error_detail(exc)}") from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt all of `data` and write it to the transport.

        Raises:
            trio.BusyResourceError: another task is sending.
            trio.ClosedResourceError: this stream was closed, or `send_eof` was called.
            trio.BrokenResourceError: the transport failed (or an earlier send did).
            TlsHandshakeError: the implicit handshake failed.
        """
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this TlsStream")
        self._sending = True
        try:
            self._check_can_send()
            if not self._handshake_done:
                await self.do_handshake()
            # Once records are in the outgoing BIO they must reach the wire, so a cancellation
            # is taken here, before encrypting, where it costs nothing.
            await trio.lowlevel.checkpoint_if_cancelled()
            if len(data) <= SEND_CHUNK_BYTES:
                self._encrypt(data)
                await self._flush()
                return
            with memoryview(data) as view:
                for start in range(0, len(view), SEND_CHUNK_BYTES):
                    with view[start : start + SEND_CHUNK_BYTES] as chunk:
                        self._encrypt(chunk)
                    await self._flush()
        finally:
            self._sending = False

    def _encrypt(self, data: bytes | bytearray | memoryview) -> None:
        remaining = len(data)
        if not remaining:
            return
        try:
            written = self._ssl.write(data)
            # Python never enables SSL_MODE_ENABLE_PARTIAL_WRITE and a memory BIO never
            # fills, so this loop does not run today; it guards against either changing.
            while written < remaining:
                data = memoryview(data)[written:]
                remaining -= written
                written = self._ssl.write(data)
        except ssl.SSLError as exc:
            self._mark_broken()
            raise trio.BrokenResourceError(f"TLS send failed: {ssl_error_detail(exc)}") from exc

    async def send_eof(self) -> None:
        """Send close_notify, then shut the transport's write side if it can half-close.

        Receiving keeps working afterwards. Calling it again does nothing.
        """
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this TlsStream")
        self._sending = True
        try:
            if self._state is _State.CLOSED:
                raise trio.ClosedResourceError("this TlsStream is closed")
            if self._eof_sent:
                await trio.lowlevel.checkpoint()
                return
            self._check_can_send()
            if not self._handshake_done:
                await self.do_handshake()
            await trio.lowlevel.checkpoint_if_cancelled()
            self._eof_sent = True
            self._write_close_notify()
            await self._flush()
            if isinstance(self._transport, HalfCloseableStream):
                await self._send_lock.take()  # the flush just passed a schedule point
                try:
                    fast = self._fast_transport
                    await (fast.send_eof() if fast is not None else self._transport.send_eof())
                except trio.ClosedResourceError as exc:
                    raise self._broken_by_close(exc) from exc
                finally:
                    self._send_lock.release()
        finally:
            self._sending = False

    def _write_close_notify(self) -> None:
        """Queue close_notify in the outgoing BIO without losing records not yet read."""
        # unwrap() calls SSL_shutdown() twice: the first writes close_notify, the second reads
        # for the peer's, and would fail records still unread in the incoming BIO with
        # APPLICATION_DATA_AFTER_CLOSE_NOTIFY, losing them. So the rest of a half-returned
        # record moves to `_pending`, the unread ciphertext steps out of the BIO, and the second
        # call finds nothing: SSLWantReadError, as expected, since we do not wait for the peer.
        buffered = self._ssl.pending()
        if buffered:
            self._pending += self._ssl.read(buffered)
        parked = self._incoming.read()
        try:
            self._ssl.unwrap()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            self._mark_broken()
            raise trio.BrokenResourceError(f"TLS close failed: {ssl_error_detail(exc)}") from exc
        finally:
            if parked:
                self._incoming.write(parked)

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the transport could take more data (see `trio.abc.SendStream`)."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this TlsStream")
        self._sending = True
        try:
            self._check_can_send()
            async with self._send_lock:
                try:
                    await self._transport.wait_send_all_might_not_block()
                except trio.ClosedResourceError as exc:
                    raise self._broken_by_close(exc) from exc
        finally:
            self._sending = False

    async def aclose(self) -> None:
        """Send close_notify if still possible (without waiting long), then close the transport.

        Never raises because the transport is already broken.
        """
        if self._state is _State.CLOSED:
            await trio.lowlevel.checkpoint()
            return
        # If another task is mid-send we cannot add a record without interleaving; and a broken
        # or half-done stream has no meaningful close_notify to give.
        courtesy = (
            self._state is _State.OPEN
            and self._handshake_done
            and not self._eof_sent
            and not self._send_lock.locked()
        )
        self._state = _State.CLOSED
        try:
            if courtesy:
                self._eof_sent = True
                await self._send_close_notify_best_effort()
        finally:
            await self._transport.aclose()

    async def _send_close_notify_best_effort(self) -> None:
        try:
            self._write_close_notify()
        except trio.BrokenResourceError:
            return
        data = self._take_outgoing()
        self._send_lock.acquire_nowait()  # free: aclose() checked, and nothing awaited since
        try:
            with trio.move_on_after(CLOSE_NOTIFY_TIMEOUT_SECONDS):
                await self._transport.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._send_lock.release()

    # ---- transport access and state: the only places that translate transport errors ----

    async def _flush(self) -> None:
        """Send whatever the outgoing BIO holds. Always a checkpoint."""
        await self._send_lock.take()
        try:
            # Read the BIO only while holding the lock, so whoever sends, sends in BIO order.
            data = self._take_outgoing()
            if data:
                await self._transport_send(data)
            else:
                await trio.lowlevel.checkpoint()
        finally:
            self._send_lock.release()

    def _take_outgoing(self) -> bytes:
        data = self._outgoing.read()
        if self._delayed_outgoing:
            data = self._delayed_outgoing + data
            self._delayed_outgoing = b""
        return data

    async def _transport_send(self, data: bytes) -> None:
        # The send lock makes this the transport's only sender, as the fast path requires.
        fast = self._fast_transport
        try:
            if fast is not None:
                await fast.send_all(data)
            else:
                await self._transport.send_all(data)
        except trio.ClosedResourceError as exc:
            raise self._broken_by_close(exc) from exc
        except BaseException:
            # Cancelled or failed midway: an unknown part of a record is on the wire.
            self._mark_broken()
            raise

    async def _transport_receive(self, max_bytes: int) -> bytes | bytearray:
        # A cancelled receive loses nothing, so only failures change the state.
        fast = self._fast_transport
        try:
            if fast is not None:
                return await fast.receive_some(max_bytes)
            return await self._transport.receive_some(max_bytes)
        except trio.ClosedResourceError as exc:
            raise self._broken_by_close(exc) from exc
        except trio.BrokenResourceError:
            self._mark_broken()
            raise

    def _broken_by_close(self, exc: trio.ClosedResourceError) -> trio.BrokenResourceError:
        """The transport reports closed: re-raise if our own aclose() did it, else we broke."""
        if self._state is _State.CLOSED:
            raise exc
        self._mark_broken()
        return trio.BrokenResourceError("the transport was closed underneath the TLS stream")

    def _mark_broken(self) -> None:
        if self._state is _State.OPEN:
            self._state = _State.BROKEN

    def _check_can_receive(self) -> None:
        if self._state is _State.CLOSED:
            raise trio.ClosedResourceError("this TlsStream is closed")
        if self._state is _State.BROKEN:
            raise trio.BrokenResourceError("this TlsStream is broken")

    def _check_can_send(self) -> None:
        if self._state is _State.CLOSED or self._eof_sent:
            raise trio.ClosedResourceError("this TlsStream is closed for sending")
        if self._state is _State.BROKEN:
            raise trio.BrokenResourceError("this TlsStream is broken")
