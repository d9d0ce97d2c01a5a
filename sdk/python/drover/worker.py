"""drover worker SDK for Python: write a worker for a ``kind: worker`` app.

A worker is a process the node's engine starts on demand as::

    <cmd/args of the spec> --app NAME --endpoint SOCKET --uuid UUID --locator HOST:PORT

It connects to the unix socket SOCKET and serves invocations: each has an
event name, a stream of request chunks and a stream of response chunks
(docs/protocol.md, section 5). This module speaks that protocol::

    from drover import worker

    @worker.on("echo")
    def echo(request, response):
        for chunk in request:          # bytes, as they arrive
            response.write(chunk)
        # returning closes the response; raising answers an error

    @worker.http("http")
    def hello(req):
        return 200, [("content-type", "text/plain")], b"hello " + req.path.encode()

    raise SystemExit(worker.run())     # 0 once the engine terminated us

Concurrency: one reader thread (the one calling run()) owns the socket's
input, heartbeats and terminate; every invocation runs its handler in a
thread of a pool that grows up to ``max_threads`` (64 by default; more
invocations wait for a free thread). Writes from handler threads are
serialized on one lock. Handlers may block (a request iterator waits for
the next chunk), so one slow invocation does not stall the others.

Errors: ``raise worker.Error(category, code, message)`` in a handler answers
``error [[category, code], message]``; any other exception answers
``[5, 1] "Type: message"`` (category app) and is printed to stderr. An event
with no handler is answered ``[1, 38] "no handler for event NAME"``; a
request body over ``body_limit`` (16 MiB) is answered ``[1, 90]`` and the
handler's request raises ``Error``.

Lifecycle: heartbeats every 5 s (a received one is answered, at most once
a second), 60 s of silence from the agent ends the connection; on terminate
no new invocations are taken (``[4, 108]``), open ones get ``grace`` seconds
(5) to finish, the rest are ended with ``[4, 108]``, terminate is answered
and run() returns 0. run() returns 1 when the connection failed.

Only the standard library and python3-msgpack are used.
"""

import collections
import os
import queue
import selectors
import socket
import sys
import threading
import time
import traceback
import urllib.parse

import msgpack

__all__ = [
    "Worker", "Request", "Response", "HttpRequest", "Error",
    "on", "register", "http", "run", "default",
    "PROTOCOL", "LOCATOR", "ENGINE", "WORKER", "APP",
]

# Error categories (docs/protocol.md section 4); codes are errno values for
# categories 1-4, the application's own for APP.
PROTOCOL, LOCATOR, ENGINE, WORKER, APP = 1, 2, 3, 4, 5

MAX_MESSAGE = 4 << 20
CHUNK_MAX = 1 << 20
BODY_LIMIT = 16 << 20
HEARTBEAT = 5.0
PEER_SILENCE = 60.0
GRACE = 5.0
HB_REPLY_MIN = 1.0
READ_SIZE = 64 << 10
ERROR_MSG_MAX = 1024

_EINVAL, _ENOSYS, _EMSGSIZE, _ECONNRESET, _ESHUTDOWN = 22, 38, 90, 104, 108


class Error(Exception):
    """An invocation error ``[[category, code], message]``: raise it from a
    handler to answer it; a request raises it when the agent ended the
    request with an error (or the body limit was passed)."""

    def __init__(self, category, code, message):
        super().__init__(f"[{category}, {code}] {message}")
        self.category = int(category)
        self.code = int(code)
        self.message = str(message)


class _ProtocolError(Exception):
    """The byte stream from the agent is broken: the connection ends."""

_FIXED = {0xc0: (1, 0), 0xc2: (1, 0), 0xc3: (1, 0), 0xca: (1, 4), 0xcb: (1, 8),
          0xcc: (1, 1), 0xcd: (1, 2), 0xce: (1, 4), 0xcf: (1, 8),
          0xd0: (1, 1), 0xd1: (1, 2), 0xd2: (1, 4), 0xd3: (1, 8),
          0xd4: (2, 1), 0xd5: (2, 2), 0xd6: (2, 4), 0xd7: (2, 8), 0xd8: (2, 16)}
# type byte -> (size field bytes, header bytes, kind: 0 payload, 1 array, 2 map)
_SIZED = {0xc4: (1, 2, 0), 0xc5: (2, 3, 0), 0xc6: (4, 5, 0), 0xd9: (1, 2, 0), 0xda: (2, 3, 0),
          0xdb: (4, 5, 0), 0xc7: (1, 3, 0), 0xc8: (2, 4, 0), 0xc9: (4, 6, 0),
          0xdc: (2, 3, 1), 0xdd: (4, 5, 1), 0xde: (2, 3, 2), 0xdf: (4, 5, 2)}
MAX_DEPTH = 32


class _Scanner:
    """Finds where a message ends from the msgpack headers alone, enforcing
    the size and depth limits before the bytes arrive: msgpack's own
    Unpacker only checks a 4 GiB bin header once its data came. Resumable:
    the buffer holds the current message from its first byte."""

    def __init__(self, max_message):
        self.max = max_message
        self.reset()

    def reset(self):
        self.pos = 0
        self.left = [1]

    def next(self, buf):
        """The message's length once buf holds all of it, else 0."""
        n, mx, left, pos = len(buf), self.max, self.left, self.pos
        while left:
            if left[-1] == 0:
                left.pop()
                continue
            if pos >= n:
                self.pos = pos
                if pos >= mx:
                    raise _ProtocolError(f"a message from the agent is over {mx} bytes")
                return 0
            b = buf[pos]
            hdr, payload, children = 1, 0, 0
            if b <= 0x7f or b >= 0xe0:
                pass
            elif b <= 0x8f:
                children = 2 * (b & 0x0f)
            elif b <= 0x9f:
                children = b & 0x0f
            elif b <= 0xbf:
                payload = b & 0x1f
            elif b in _FIXED:
                hdr, payload = _FIXED[b]
            elif b in _SIZED:
                size, hdr, kind = _SIZED[b]
                if pos + hdr > mx:
                    raise _ProtocolError(f"a message from the agent is over {mx} bytes")
                if pos + hdr > n:
                    self.pos = pos
                    return 0
                v = int.from_bytes(buf[pos + 1:pos + 1 + size], "big")
                if kind == 0:
                    payload = v
                else:
                    children = v * kind
            else:
                raise _ProtocolError(f"bad msgpack from the agent (byte 0x{b:02x})")
            if pos + hdr + payload + children > mx:
                raise _ProtocolError(f"a message from the agent is over {mx} bytes")
            left[-1] -= 1
            pos += hdr + payload
            if children:
                if len(left) > MAX_DEPTH:
                    raise _ProtocolError(f"a message from the agent nests deeper than "
                                         f"{MAX_DEPTH}")
                left.append(children)
        self.pos = pos
        return pos if pos <= n else 0


def _text(b):
    if isinstance(b, bytes):
        return b.decode("utf-8", "surrogateescape")
    return str(b)


def _bytes(data):
    if isinstance(data, str):
        return data.encode("utf-8")
    return bytes(data)


_END = object()


class Request:
    """The request side of one invocation: iterate it for chunks (bytes), or
    read() the whole body. Both raise Error when the request was ended with
    an error."""

    def __init__(self, event, headers):
        self.event = event
        # invoke headers (docs/protocol.md section 1): first one of a name wins
        self.headers = {}
        for name, value in headers:
            self.headers.setdefault(name, value)
        self._q = queue.Queue()
        self._ended = False

    def chunk(self, timeout=None):
        """The next chunk, or None once the request is complete. Raises
        Error, or queue.Empty after timeout seconds."""
        if self._ended:
            return None
        item = self._q.get(timeout=timeout)
        if item is _END:
            self._ended = True
            return None
        if isinstance(item, Error):
            self._ended = True
            raise item
        return item

    def __iter__(self):
        while True:
            c = self.chunk()
            if c is None:
                return
            yield c

    def read(self):
        """The whole body (bounded by the worker's body_limit)."""
        return b"".join(self)


class Response:
    """The response side of one invocation. Usable from any thread; every
    method raises BrokenPipeError once the response has ended (closed by
    you, or by the SDK on terminate, body limit or a lost connection)."""

    def __init__(self, worker, inv):
        self._w = worker
        self._inv = inv

    @property
    def closed(self):
        return self._inv.res_ended

    def write(self, data):
        """Sends data (bytes or str) as write chunks of at most 1 MiB."""
        data = _bytes(data)
        view = memoryview(data)
        if not view:
            self._w._check_open(self._inv)
            return
        for off in range(0, len(view), CHUNK_MAX):
            self._w._send_on(self._inv, 0, [bytes(view[off:off + CHUNK_MAX])])

    def close(self):
        self._w._end(self._inv, 2, [])

    def error(self, category, code, message):
        msg = str(message)[:ERROR_MSG_MAX]
        self._w._end(self._inv, 1, [[int(category), int(code)], msg])


class _Invocation:
    __slots__ = ("ch", "event", "handler", "request", "response", "req_ended", "res_ended",
                 "dropping", "received")

    def __init__(self, ch, event, handler, headers):
        self.ch = ch
        self.event = event
        self.handler = handler
        self.request = Request(event, headers) if handler else None
        self.response = None
        self.req_ended = False
        self.res_ended = handler is None
        self.dropping = handler is None
        self.received = 0


class HttpRequest:
    """A request of HTTP over invocation (docs/protocol.md section 6)."""

    def __init__(self, method, uri, version, headers, body):
        self.method = method
        self.uri = uri
        self.version = version
        self.headers = headers  # [(name, value)] as sent
        self.body = body        # bytes
        parts = urllib.parse.urlsplit(uri)
        self.path = parts.path or "/"
        self.query = parts.query
        self.args = urllib.parse.parse_qs(parts.query, keep_blank_values=True)

    def header(self, name, default=None):
        """First header named name (case-insensitive)."""
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    @classmethod
    def decode(cls, chunk):
        """Decodes the request chunk [method, uri, version, [[name, value]...],
        body]; raises Error [1, 22] when it is not one."""
        try:
            obj = msgpack.unpackb(chunk, raw=True)  # limits follow len(chunk)
        except Exception as e:  # any msgpack failure is a bad chunk
            raise Error(PROTOCOL, _EINVAL, f"bad HTTP request chunk: not msgpack ({e})")
        if not isinstance(obj, (list, tuple)) or len(obj) != 5:
            raise Error(PROTOCOL, _EINVAL, "bad HTTP request chunk: request is not "
                        "[method, uri, version, headers, body]")
        method, uri, version, headers, body = obj
        if not all(isinstance(x, bytes) for x in (method, uri, version)):
            raise Error(PROTOCOL, _EINVAL, "bad HTTP request chunk: method, uri and version "
                        "must be strings")
        if not isinstance(headers, (list, tuple)) or not all(
                isinstance(h, (list, tuple)) and len(h) == 2 and isinstance(h[0], bytes)
                and isinstance(h[1], bytes) for h in headers):
            raise Error(PROTOCOL, _EINVAL, "bad HTTP request chunk: headers are not "
                        "[[name, value]...]")
        if body is None:
            body = b""
        if not isinstance(body, bytes):
            raise Error(PROTOCOL, _EINVAL, "bad HTTP request chunk: body is not bytes")
        return cls(_text(method), _text(uri), _text(version),
                   [(_text(k), _text(v)) for k, v in headers], body)

    def encode(self):
        """The request chunk (for clients and tests)."""
        return encode_request(self.method, self.uri, self.headers, self.body, self.version)


def encode_request(method, uri, headers=(), body=b"", version="1.1"):
    """The msgpack request chunk of HTTP over invocation."""
    return msgpack.packb([method, uri, version, [[k, v] for k, v in headers], _bytes(body)],
                         use_bin_type=True)


def encode_head(code, headers=()):
    """The response head chunk [code, [[name, value]...]]."""
    return msgpack.packb([int(code), [[str(k), str(v)] for k, v in headers]],
                         use_bin_type=True)


def decode_head(chunk):
    """(code, [(name, value)]) from a response head chunk."""
    code, headers = msgpack.unpackb(chunk, raw=True)
    return code, [(_text(k), _text(v)) for k, v in headers]


def parse_args(argv):
    """{'app', 'endpoint', 'uuid', 'locator'} from the engine's arguments
    (any order, --name value or --name=value, others ignored)."""
    out = {}
    names = ("app", "endpoint", "uuid", "locator")
    i = 1
    while i < len(argv):
        a = argv[i]
        for n in names:
            if a == "--" + n:
                if i + 1 >= len(argv):
                    raise ValueError(f"--{n} needs a value")
                out[n] = argv[i + 1]
                i += 1
                break
            if a.startswith("--" + n + "="):
                out[n] = a[len(n) + 3:]
                break
        i += 1
    if not out.get("endpoint"):
        raise ValueError("missing --endpoint SOCKET (a worker is started by drover)")
    if "uuid" not in out:
        raise ValueError("missing --uuid UUID (a worker is started by drover)")
    return out


class Worker:
    """Handlers by event name, and the loop serving them on one connection."""

    def __init__(self, body_limit=BODY_LIMIT, max_threads=64, heartbeat=HEARTBEAT,
                 peer_silence=PEER_SILENCE, grace=GRACE, max_message=MAX_MESSAGE):
        self.handlers = {}
        self.body_limit = body_limit
        self.max_threads = max_threads
        self.heartbeat = heartbeat
        self.peer_silence = peer_silence
        self.grace = grace
        self.max_message = max_message
        self.app = self.endpoint = self.uuid = self.locator = None
        self.error = ""  # why the connection ended, when it failed
        self._lock = threading.Lock()      # calls and their states
        self._send_lock = threading.Lock()  # the socket's output
        self._calls = {}
        self._sock = None
        self._broken = None
        self._jobs = queue.Queue()
        self._threads = 0
        self._idle = 0
        self._stop = None  # (deadline, code, reason) once terminating
        self._last_hb_tx = 0.0
        self._last_ch = 1

    # ---- registration ----

    def register(self, event, fn):
        """fn(request, response) serves event; it returns when done (the
        response is closed for it if still open)."""
        if not event:
            raise ValueError("empty event name")
        if event in self.handlers:
            raise ValueError(f"event {event} already has a handler")
        self.handlers[event] = fn
        return fn

    def on(self, event):
        """Decorator form of register."""
        return lambda fn: self.register(event, fn)

    def http(self, event="http"):
        """Decorator: fn(req: HttpRequest) returns (code, headers, body) where
        body is bytes, str, None or an iterable of bytes (streamed)."""
        def deco(fn):
            def serve(request, response):
                req = HttpRequest.decode(request.read())
                code, headers, body = fn(req)
                response.write(encode_head(code, headers))
                if body is None:
                    pass
                elif isinstance(body, (bytes, bytearray, memoryview, str)):
                    response.write(body)
                else:
                    for part in body:
                        response.write(part)
            self.register(event, serve)
            return fn
        return deco

    # ---- running ----

    def run(self, argv=None):
        """Parses the engine's arguments, connects and serves until
        terminated: returns 0 then, 1 when the connection failed, 2 for bad
        arguments (messages go to stderr)."""
        try:
            args = parse_args(sys.argv if argv is None else argv)
        except ValueError as e:
            print(f"drover worker: {e}", file=sys.stderr)
            return 2
        self.app, self.endpoint = args.get("app"), args["endpoint"]
        self.uuid, self.locator = args["uuid"], args.get("locator")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.endpoint)
        except OSError as e:
            print(f"drover worker: connect {self.endpoint}: {e}", file=sys.stderr)
            s.close()
            return 1
        rc = self.serve(s)
        if rc != 0:
            print(f"drover worker: {self.error}", file=sys.stderr)
        return rc

    def serve(self, sock):
        """Serves an already connected socket (owned from now on)."""
        self._sock = sock
        sock.settimeout(self.peer_silence)  # bounds a blocked send
        self._send(1, 0, [self.uuid or ""])
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ)
        scanner = _Scanner(self.max_message)
        buf = bytearray()
        now = time.monotonic()
        last_rx = now
        next_hb = now + self.heartbeat
        try:
            while True:
                now = time.monotonic()
                if self._broken:
                    raise ConnectionError(self._broken)
                if now - last_rx >= self.peer_silence:
                    raise ConnectionError(f"no message from the agent for {now - last_rx:.0f} s")
                if self._stop and (not self._busy() or now >= self._stop[0]):
                    return self._finish()
                if now >= next_hb:
                    self._send(1, 0, [])
                    next_hb = now + self.heartbeat
                wait = min(next_hb, last_rx + self.peer_silence) - now
                if self._stop:
                    wait = min(wait, self._stop[0] - now, 0.05)
                if not sel.select(max(wait, 0)):
                    continue
                data = sock.recv(READ_SIZE)
                if not data:
                    if self._stop:
                        self._abort_all(WORKER, _ESHUTDOWN, "worker terminated")
                        return 0
                    raise ConnectionError("the agent closed the connection")
                last_rx = time.monotonic()
                buf += data
                while True:
                    mlen = scanner.next(buf)
                    if not mlen:
                        break
                    try:
                        msg = msgpack.unpackb(bytes(buf[:mlen]), raw=True,
                                              strict_map_key=False)
                    except Exception as e:  # msgpack's errors: the stream is lost
                        raise _ProtocolError(f"bad msgpack from the agent: {e}")
                    del buf[:mlen]
                    scanner.reset()
                    self._dispatch(msg)
        except (_ProtocolError, ConnectionError, OSError) as e:
            self.error = str(e) or type(e).__name__
            self._close_sock()
            self._abort_all(WORKER, _ECONNRESET, "connection to the agent lost")
            return 1
        finally:
            sel.close()

    def stop(self, code=0, reason="stopping"):
        """Graceful stop from the worker's side (as if terminated)."""
        with self._lock:
            if not self._stop:
                self._stop = (time.monotonic() + self.grace, code, reason)

    # ---- internals ----

    def _busy(self):
        with self._lock:
            return any(not inv.res_ended for inv in self._calls.values())

    def _finish(self):
        with self._lock:
            open_calls = [inv for inv in self._calls.values() if not inv.res_ended]
        for inv in open_calls:
            self._abort(inv, WORKER, _ESHUTDOWN, "worker terminated before the invocation "
                        "finished")
        _, code, reason = self._stop
        try:
            self._send(1, 1, [code, reason])
        except OSError:
            pass
        self._close_sock()
        self._abort_all(WORKER, _ESHUTDOWN, "worker terminated")
        return 0

    def _close_sock(self):
        with self._send_lock:
            if self._sock is not None:
                try:
                    self._sock.close()
                except OSError:
                    pass
                self._sock = None

    def _send(self, ch, type_, args):
        with self._send_lock:
            self._send_locked(ch, type_, args)

    def _send_locked(self, ch, type_, args):
        data = msgpack.packb([ch, type_, args], use_bin_type=True)
        if self._sock is None:
            raise BrokenPipeError("not connected to the agent")
        try:
            self._sock.sendall(data)
        except OSError as e:
            self._broken = f"writing to the agent: {e}"
            raise BrokenPipeError(self._broken)
        if ch == 1 and type_ == 0:
            self._last_hb_tx = time.monotonic()

    def _check_open(self, inv):
        if inv.res_ended:
            raise BrokenPipeError(f"invocation {inv.ch}: response already ended")
        if self._sock is None:
            raise BrokenPipeError("not connected to the agent")

    def _send_on(self, inv, type_, args):
        self._check_open(inv)
        self._send(inv.ch, type_, args)

    def _end(self, inv, type_, args):
        # marked and sent under the send lock, so a terminate answer (sent
        # once every response ended) always follows this message
        with self._send_lock:
            with self._lock:
                self._check_open(inv)
                inv.res_ended = True
                self._reap(inv)
            self._send_locked(inv.ch, type_, args)

    def _reap(self, inv):
        # called with self._lock held
        if inv.req_ended and inv.res_ended:
            self._calls.pop(inv.ch, None)

    def _abort(self, inv, cat, code, msg):
        """The SDK ends an invocation itself: answer the error if our side is
        open, and wake a handler waiting on the request."""
        with self._lock:
            send = not inv.res_ended
            inv.res_ended = True
            tell = not inv.dropping
            inv.dropping = True
            self._reap(inv)
        if send and self._sock is not None:
            try:
                self._send(inv.ch, 1, [[cat, code], msg])
            except OSError:
                pass
        if tell and inv.request is not None:
            inv.request._q.put(Error(cat, code, msg))

    def _abort_all(self, cat, code, msg):
        with self._lock:
            calls = list(self._calls.values())
            for inv in calls:
                inv.req_ended = True
        for inv in calls:
            self._abort(inv, cat, code, msg)

    def _dispatch(self, msg):
        if (not isinstance(msg, (list, tuple)) or len(msg) not in (3, 4)
                or not isinstance(msg[0], int) or isinstance(msg[0], bool) or msg[0] < 1
                or not isinstance(msg[1], int) or isinstance(msg[1], bool) or msg[1] < 0
                or not isinstance(msg[2], (list, tuple))):
            raise _ProtocolError("message is not [channel, type, args(, headers)]")
        ch, type_, args = msg[0], msg[1], msg[2]
        headers = []
        if len(msg) == 4:
            if not isinstance(msg[3], (list, tuple)) or not all(
                    isinstance(h, (list, tuple)) and len(h) == 2 and isinstance(h[0], bytes)
                    and isinstance(h[1], bytes) for h in msg[3]):
                raise _ProtocolError("headers are not [[name, value]...]")
            headers = [(_text(k), v) for k, v in msg[3]]
        if ch == 1:
            if type_ == 0:
                if time.monotonic() - self._last_hb_tx >= HB_REPLY_MIN:
                    self._send(1, 0, [])
            elif type_ == 1:
                code = args[0] if args and isinstance(args[0], int) else 0
                self.stop(code, "terminated")
            return
        with self._lock:
            inv = self._calls.get(ch)
            if inv is None:
                if ch <= self._last_ch:
                    raise _ProtocolError(f"channel {ch} goes backwards (last {self._last_ch})")
                self._last_ch = ch
        if inv is None:
            self._open(ch, type_, args, headers)
            return
        if inv.req_ended:
            raise _ProtocolError(f"channel {ch}: message after the request ended")
        if type_ == 0:
            if len(args) < 1 or not isinstance(args[0], bytes):
                self._abort(inv, PROTOCOL, _EINVAL, "write expects [chunk] (str or bin)")
                return
            if inv.dropping:
                return
            if len(args[0]) > self.body_limit - inv.received:
                self._abort(inv, PROTOCOL, _EMSGSIZE, f"request body over {self.body_limit} bytes")
                return
            inv.received += len(args[0])
            inv.request._q.put(args[0])
        elif type_ in (1, 2):
            with self._lock:
                inv.req_ended = True
                tell = not inv.dropping
                inv.dropping = True
                self._reap(inv)
            if tell:
                if type_ == 2:
                    inv.request._q.put(_END)
                else:
                    cat, code, text = PROTOCOL, _EINVAL, "error"
                    if args and isinstance(args[0], (list, tuple)) and len(args[0]) == 2:
                        cat, code = args[0]
                    if len(args) > 1 and isinstance(args[1], bytes):
                        text = _text(args[1])
                    inv.request._q.put(Error(cat, code, text))
        else:
            self._abort(inv, PROTOCOL, _EINVAL, f"unknown message type {type_}")

    def _open(self, ch, type_, args, headers):
        event = None
        if type_ == 0 and args and isinstance(args[0], bytes):
            event = _text(args[0])
        handler = self.handlers.get(event) if event is not None and not self._stop else None
        inv = _Invocation(ch, event, handler, headers)
        with self._lock:
            self._calls[ch] = inv
        if event is None:
            self._send(ch, 1, [[PROTOCOL, _EINVAL], f"channel {ch}: expected invoke [event]"])
        elif self._stop:
            self._send(ch, 1, [[WORKER, _ESHUTDOWN], "worker is terminating"])
        elif handler is None:
            self._send(ch, 1, [[PROTOCOL, _ENOSYS], f"no handler for event {event}"])
        else:
            inv.response = Response(self, inv)
            self._submit(inv)

    def _submit(self, inv):
        self._jobs.put(inv)
        with self._lock:
            if self._idle == 0 and self._threads < self.max_threads:
                self._threads += 1
                self._idle += 1
                threading.Thread(target=self._thread, daemon=True,
                                 name=f"drover-worker-{self._threads}").start()

    def _thread(self):
        while True:
            inv = self._jobs.get()
            with self._lock:
                self._idle -= 1
            try:
                self._call(inv)
            finally:
                with self._lock:
                    self._idle += 1

    def _call(self, inv):
        res = inv.response
        try:
            inv.handler(inv.request, res)
            if not res.closed:
                res.close()
        except Error as e:
            if not res.closed:
                self._quiet(res.error, e.category, e.code, e.message)
        except BrokenPipeError:
            pass  # the response was ended under the handler (terminate, lost agent)
        except Exception as e:
            if not res.closed:
                traceback.print_exc(file=sys.stderr)
                self._quiet(res.error, APP, 1, f"{type(e).__name__}: {e}")

    @staticmethod
    def _quiet(fn, *args):
        try:
            fn(*args)
        except OSError:
            pass


default = Worker()
on = default.on
register = default.register
http = default.http
run = default.run
stop = default.stop
