"""One bounded HTTP POST: a total deadline, a cap on the answer's size, every fault one line.

`http.client` times out each socket read on its own, so a server that sends one
byte every half second holds it forever; and it reads a body of any size. Here a
watchdog shuts the socket down when the request's total deadline passes, so every
blocked read returns at once, and the body is read in pieces up to `max_bytes`.
Faults (no connection, a bad status line, too many headers, a reset, a truncated
body, an HTTP error, a redirect) become a CaptureError naming the server and what
it sent. Only the standard library is used.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
import urllib.parse

from parity.core.errors import CaptureError

MAX_RESPONSE_BYTES = 32 * 2**20   # a completion with top-5 log-probabilities is ~200 bytes a token
_READ_BYTES = 64 * 2**10
_PREVIEW_CHARS = 80


def post(url: str, body: bytes, *, headers: dict[str, str], deadline: float, max_bytes: int = MAX_RESPONSE_BYTES) -> bytes:
    """POST `body` to `url` and return the 200 answer's body, all before `deadline` (time.monotonic())."""
    seconds = deadline - time.monotonic()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CaptureError(f"{url} is not an http(s)://HOST[:PORT] address")
    try:
        port = parts.port
    except ValueError:
        raise CaptureError(f"{url}: the port is not a number from 0 to 65535") from None
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _timeout(url, seconds)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    kwargs = {"context": ssl.create_default_context()} if parts.scheme == "https" else {}
    connection = connection_class(parts.hostname, port, timeout=remaining, **kwargs)
    watchdog = _Watchdog(connection, remaining)
    try:
        answer = _exchange(connection, url, parts, body, headers, deadline, max_bytes, watchdog)
    except CaptureError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as error:
        if watchdog.fired or time.monotonic() >= deadline:
            raise _timeout(url, seconds) from None
        raise _connection_error(url, error) from None
    finally:
        watchdog.cancel()
        connection.close()
    if watchdog.fired:
        raise _timeout(url, seconds)
    return answer


def _exchange(connection, url: str, parts, body: bytes, headers: dict[str, str], deadline: float, max_bytes: int,
              watchdog: "_Watchdog") -> bytes:
    path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    connection.request("POST", path, body=body, headers={**headers, "Connection": "close"})
    watchdog.start()   # the connection's socket exists once the request is sent
    response = connection.getresponse()
    if response.status != 200:
        raise _status_error(url, response, deadline, watchdog)
    declared = response.getheader("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise CaptureError(f"the server at {url} announced a {int(declared):,}-byte answer, over parity's "
                           f"{max_bytes:,}-byte limit; ask for fewer tokens with -n")
    return _read_capped(response, url, deadline, max_bytes, watchdog)


def _read_capped(response, url: str, deadline: float, max_bytes: int, watchdog: "_Watchdog") -> bytes:
    pieces, size = [], 0
    declared = response.length   # Content-Length, or None
    while True:
        watchdog.shrink_timeout(deadline)
        piece = response.read1(_READ_BYTES)
        if not piece:
            if declared is not None and size < declared:
                raise http.client.IncompleteRead(b"".join(pieces), declared - size)
            return b"".join(pieces)
        size += len(piece)
        if size > max_bytes:
            raise CaptureError(f"the server at {url} sent more than {max_bytes:,} bytes without ending its answer; "
                               "is it a completions endpoint? ask for fewer tokens with -n")
        pieces.append(piece)


class StatusError(CaptureError):
    """The server answered with a status other than 200 (`status`): an endpoint it does not have is 404."""

    def __init__(self, message: str, status: int, detail: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail       # the start of the answer's body (its error message)


def _status_error(url: str, response, deadline: float, watchdog: "_Watchdog") -> CaptureError:
    status, reason = response.status, (response.reason or "").strip()
    if 300 <= status < 400:
        location = response.getheader("Location") or "nowhere"
        return CaptureError(f"the server at {url} answered HTTP {status} {reason}, a redirect to {location[:120]!r}; "
                            "give the address it redirects to")
    try:
        watchdog.shrink_timeout(deadline)
        detail = response.read1(200)
    except (OSError, http.client.HTTPException, ValueError):
        detail = b""
    return StatusError(f"the server at {url} answered HTTP {status} {reason}: {preview(detail)}; "
                       "check the server's log and the address", status, detail)


def server_root(url: str) -> str:
    """http://HOST:PORT of a server's address given with or without /v1, /v1/completions or /v1/chat/completions
    (where its other endpoints, /tokenize and /apply-template, are)."""
    base = url.rstrip("/")
    for suffix in ("/chat/completions", "/completions", "/v1"):
        base = base.removesuffix(suffix)
    return base


def preview(raw: bytes) -> str:
    """The start of what a server sent, safe to print on one line."""
    text = raw[:_PREVIEW_CHARS].decode("utf-8", errors="replace")
    return repr(text) + ("..." if len(raw) > _PREVIEW_CHARS else "")


def _connection_error(url: str, error: BaseException) -> CaptureError:
    if isinstance(error, ConnectionRefusedError) or isinstance(error, socket.gaierror):
        return CaptureError(f"cannot reach the server at {url}: {error.strerror or error}; is it running on that address?")
    if isinstance(error, http.client.IncompleteRead):
        due = f" ({error.expected:,} more were due)" if isinstance(error.expected, int) else ""
        return CaptureError(f"the server at {url} closed the connection after {len(error.partial):,} bytes of its "
                            f"answer{due}; check the server's log")
    if isinstance(error, http.client.RemoteDisconnected):
        return CaptureError(f"the server at {url} closed the connection without answering; check the server's log")
    if isinstance(error, http.client.BadStatusLine):
        line = str(error.args[0]) if error.args else ""
        return CaptureError(f"the server at {url} sent a bad HTTP status line {line[:_PREVIEW_CHARS]!r}; "
                            "is it an HTTP server?")
    if isinstance(error, http.client.LineTooLong):
        return CaptureError(f"the server at {url} sent a header or status line over 65,536 bytes; is it an HTTP server?")
    if isinstance(error, http.client.HTTPException):
        detail = str(error).strip() or type(error).__name__
        return CaptureError(f"the server at {url} sent a malformed answer ({detail[:_PREVIEW_CHARS]}); "
                            "is it an OpenAI-compatible server?")
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return CaptureError(f"the connection to the server at {url} failed: {reason}; check that it is running and healthy")


def _timeout(url: str, seconds: float) -> CaptureError:
    return CaptureError(f"the server at {url} did not finish answering within {max(seconds, 0):.2g} s; "
                        "check that it is not stuck, or allow more time with --timeout")


class _Watchdog:
    """Shuts the connection's socket down when the deadline passes, ending any blocked read."""

    def __init__(self, connection, seconds: float) -> None:
        self.connection, self.fired, self._socket = connection, False, None
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True
        self._started_at = time.monotonic()

    def start(self) -> None:
        # http.client drops its reference to the socket once a `Connection: close` answer
        # arrives; the answer still reads from it, so keep it here to shut it down.
        self._socket = self.connection.sock
        elapsed = time.monotonic() - self._started_at
        self._timer.interval = max(self._timer.interval - elapsed, 0.0)
        self._timer.start()

    def shrink_timeout(self, deadline: float) -> None:
        """Each read waits at most until the deadline (the watchdog ends reads that trickle)."""
        if self._socket is not None:
            self._socket.settimeout(max(deadline - time.monotonic(), 0.001))

    def _fire(self) -> None:
        self.fired = True
        sock = self._socket
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cancel(self) -> None:
        self._timer.cancel()
