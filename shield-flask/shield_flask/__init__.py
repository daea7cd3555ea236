"""shield for Flask: every request of a `[[endpoint]]` is decided by `shield run` over its
app socket (limits exact across every gunicorn worker and thread), over-limit requests get
RFC 9457 problem responses with `Retry-After` and the IETF RateLimit fields, and the app's
own signals (`shield.report("login_failed")`) feed `[[signal]]` rules that end in bans at
the NIC. See README.md in this package.
"""

import hashlib
import json
import logging
import os
import re
import threading
import time

from flask import abort, current_app, g, has_app_context, has_request_context, request

from .client import Pool, ShieldError

__all__ = ["Shield", "ShieldError", "PROBLEM_BASE"]
__version__ = "0.1.0"

log = logging.getLogger("shield_flask")

#: Base of the problem `type` URIs (RFC 9457).
PROBLEM_BASE = "https://shield.dev/problems/"

DEFAULT_SOCKET = "/run/shield/app.sock"
DEFAULT_TIMEOUT = 0.5
DEFAULT_BACKOFF = 1.0
DEFAULT_POOL_SIZE = 32

_TITLES = {429: "Too Many Requests", 403: "Forbidden", 503: "Service Unavailable"}
_TYPES = {429: "rate-limited", 403: "banned", 503: "unavailable"}


#: Sizes below are of a field's JSON text as sent (ASCII, with its quotes): JSON writes a
#: non-ASCII character as \\uXXXX (6 bytes; 12 for an emoji), so counting characters let a
#: client's long path and X-Forwarded-For push the line past the daemon's 64 KiB, and the
#: request went to on_error (waved through under "open") instead of being decided.
#: Longest header value, user or key sent as it is; a longer one is sent as its SHA-256
#: (the daemon keeps keys that way too).
MAX_KEY_FIELD = 1024
#: Longest X-Forwarded-For sent: its rightmost entries (the ones the daemon walks, from
#: the right, past the trusted proxies) are kept, whole.
MAX_XFF = 4096
#: The largest cost a decision can draw (the daemon's largest burst): `charge(n)` sends a
#: larger n as MAX_COST + 1, which the daemon refuses with a 429 (it never passes).
MAX_COST = 100_000_000
#: Longest path sent (only a prefix endpoint looks at it; rules are short).
MAX_PATH = 4096


def _digest(value):
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _size(value):
    """Bytes of `value`'s JSON text, as the client sends it."""
    return len(json.dumps(value))


def _char_size(ch):
    """Bytes one character takes inside a JSON string (ensure_ascii, as sent)."""
    o = ord(ch)
    if ch in '"\\\b\f\n\r\t':
        return 2
    if o < 0x20:
        return 6
    if o < 0x7F:
        return 1
    return 6 if o < 0x10000 else 12


def _cut(value, limit):
    """The longest start of `value` whose JSON text is at most `limit` bytes."""
    size = 2
    for i, ch in enumerate(value):
        size += _char_size(ch)
        if size > limit:
            return value[:i]
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value):
    """Whether `value` holds a surrogate code point (U+D800 to U+DFFF): Python's json reads
    "\\ud800" from a request body and writes it back as such, and the daemon refuses a line
    holding one (a JSON string must be Unicode text)."""
    return _SURROGATE.search(value) is not None


def _fit(msg):
    """Bounds the fields of `msg` a client controls, so that every request fits in one
    line the daemon reads: an oversized request is still decided, never waved through by
    on_error. A key with a lone surrogate is sent as its SHA-256 and other fields get
    U+FFFD for it, for the same reason (the daemon refuses such a line)."""
    headers = msg.get("headers")
    if isinstance(headers, dict):
        for name, value in list(headers.items()):
            if isinstance(value, str) and (_size(value) > MAX_KEY_FIELD or _lone_surrogate(value)):
                headers[name] = _digest(value)
    for field in ("user", "key"):
        value = msg.get(field)
        if isinstance(value, str) and (_size(value) > MAX_KEY_FIELD or _lone_surrogate(value)):
            msg[field] = _digest(value)
    for field in ("xff", "path", "rule", "method", "peer", "signal"):
        value = msg.get(field)
        if isinstance(value, str) and _lone_surrogate(value):
            msg[field] = _SURROGATE.sub("\ufffd", value)
    xff = msg.get("xff")
    if isinstance(xff, str) and _size(xff) > MAX_XFF:
        kept, size = [], 2
        for entry in reversed(xff.split(",")):
            size += _size(entry) - 2 + 1
            if size > MAX_XFF:
                break
            kept.append(entry)
        msg["xff"] = ",".join(reversed(kept))
    for field in ("path", "rule"):
        value = msg.get(field)
        if isinstance(value, str) and _size(value) > MAX_PATH:
            msg[field] = _cut(value, MAX_PATH)
    return msg


def _server_port(environ):
    """SERVER_PORT as a port number, or None. gunicorn on a Unix socket takes it from the
    Host header, which the client writes: "x:99999" is no port (the daemon reads a u16 and
    would refuse the line, leaving the request to on_error)."""
    try:
        port = int(environ.get("SERVER_PORT"))
    except (TypeError, ValueError):
        return None
    return port if 0 <= port <= 65535 else None


def _count(value):
    """A non-negative whole number from a reply field; anything else is 0."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError, OverflowError):
        return 0


def _sf_string(value):
    """A structured-field string (RFC 8941): quoted, with backslash escapes."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Shield:
    """The Flask extension: `Shield(app)` or `Shield().init_app(app)`.

    Config: `SHIELD_SOCKET` (default /run/shield/app.sock), `SHIELD_ON_ERROR` ("open" or
    "closed": what to do while the daemon is unreachable before any hello succeeded; after
    one, the daemon's `[app] on_error` rules), `SHIELD_TIMEOUT` (seconds per round trip,
    default 0.5; also the longest wait for a free connection of the pool),
    `SHIELD_BACKOFF` (seconds during which, after a timed-out round trip, this process
    applies on_error without asking the daemon; default 1.0, 0 turns it off),
    `SHIELD_POOL_SIZE` (the most connections to the daemon this process opens, shared by
    its threads or greenlets; default 32).

    Every round trip borrows a connection of the process's pool and gives it back after the
    reply; when all are in use it waits (cooperatively under gevent or eventlet) at most
    SHIELD_TIMEOUT, then applies on_error (counted in `errors`). A request's in-flight slot
    is released on the connection that took it.
    """

    def __init__(self, app=None):
        self._pool = None  # this process's Pool, made on first use (see _connections)
        self._lock = threading.Lock()
        self._errors = 0
        self._outage = False
        self._on_error = None  # from the last successful hello
        self._user_loader = None
        self._skip_until = 0.0  # time.monotonic() before which a stuck daemon is not asked
        self._seen_report_errors = set()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)
        if app is not None:
            self.init_app(app)

    def _after_fork(self):
        # A lock held by another thread at fork time would never be released here.
        self._lock = threading.Lock()

    # -- set-up ------------------------------------------------------------------------

    def init_app(self, app):
        app.config.setdefault("SHIELD_SOCKET", DEFAULT_SOCKET)
        app.config.setdefault("SHIELD_ON_ERROR", "open")
        app.config.setdefault("SHIELD_TIMEOUT", DEFAULT_TIMEOUT)
        app.config.setdefault("SHIELD_BACKOFF", DEFAULT_BACKOFF)
        app.config.setdefault("SHIELD_POOL_SIZE", DEFAULT_POOL_SIZE)
        if app.config["SHIELD_ON_ERROR"] not in ("open", "closed"):
            raise ValueError(
                f"SHIELD_ON_ERROR must be \"open\" or \"closed\", not {app.config['SHIELD_ON_ERROR']!r}"
            )
        timeout = app.config["SHIELD_TIMEOUT"]
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise ValueError(f"SHIELD_TIMEOUT must be a positive number of seconds, not {timeout!r}")
        backoff = app.config["SHIELD_BACKOFF"]
        if not isinstance(backoff, (int, float)) or isinstance(backoff, bool) or backoff < 0:
            raise ValueError(f"SHIELD_BACKOFF must be a number of seconds >= 0, not {backoff!r}")
        size = app.config["SHIELD_POOL_SIZE"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"SHIELD_POOL_SIZE must be a whole number of connections >= 1, not {size!r}")
        app.extensions["shield"] = self
        app.before_request(self._before_request)
        app.after_request(self._after_request)
        app.teardown_request(self._teardown_request)
        return self

    def exempt(self, view):
        """Decorator: this view is never decided nor counted (health checks, metrics)."""
        view._shield_exempt = True
        return view

    def user_loader(self, fn):
        """Decorator: `fn()` returns the request's user (or None); called in shield's
        before_request just before the decision, so `key = "user"` endpoints see it."""
        self._user_loader = fn
        return fn

    # -- public API --------------------------------------------------------------------

    @property
    def errors(self):
        """Requests and reports this process handled by on_error (daemon unreachable,
        timed out or answering with an error)."""
        return self._errors

    @property
    def on_error(self):
        """The on_error in force: the daemon's (from its last hello), else SHIELD_ON_ERROR."""
        if self._on_error is not None:
            return self._on_error
        return current_app.config["SHIELD_ON_ERROR"]

    def identify(self, user):
        """Sets the `user` key of the current request (for `key = "user"` endpoints and
        signals). Must run before the decision to count for it: in a user loader or in a
        before_request function registered before Shield."""
        g._shield_user = None if user is None else str(user)

    def report(self, signal, key=None, user=None):
        """Reports a `[[signal]]` (e.g. "login_failed") for the current request's client.

        `key`: an explicit key value (overrides the signal's key kind); `user`: the user
        (default: the one set by identify). Returns the daemon's reply (a dict: counted,
        limited, banned, client) or None when the daemon could not be asked. Never raises
        for a daemon error: it is logged and counted in `errors`.
        """
        msg = {"op": "report", "signal": str(signal)}
        msg.update(self._request_fields(None if user is None else str(user)))
        msg["key"] = None if key is None else str(key)
        try:
            reply = self._call(msg)
        except (OSError, ShieldError) as e:
            self._failed(e)
            return None
        self._recovered()
        if not reply.get("ok"):
            error = str(reply.get("error"))
            with self._lock:
                self._errors += 1
                first = error not in self._seen_report_errors
                self._seen_report_errors.add(error)
            if first:
                log.warning("shield: report %r refused: %s", signal, error)
            return None
        return reply

    # -- the request path --------------------------------------------------------------

    def _before_request(self):
        view = current_app.view_functions.get(request.endpoint)
        if view is not None and getattr(view, "_shield_exempt", False):
            return None
        if self._user_loader is not None and getattr(g, "_shield_user", None) is None:
            user = self._user_loader()
            if user is not None:
                self.identify(user)
        # No `cost`: the daemon draws the endpoint's own `cost` (default 1).
        return self._decide(self._decide_msg())

    def charge(self, n):
        """Draws `n` more tokens for the current request from its endpoint's buckets (for a
        route whose cost depends on the input); call it in the view before the work. The
        request already drew the endpoint's `cost` when it arrived, so it costs that plus
        `n` in all. Over the limit (or banned) it aborts the request with the same 429 (403)
        problem response as an over-limit arrival; while the daemon is unreachable,
        on_error decides (open: returns None, closed: aborts with 503). Returns the
        daemon's decision (a dict) when allowed, or None when nothing was charged (the
        request matches no endpoint, the view is exempt, or the daemon is unreachable).
        An `n` past 100,000,000 (more than any endpoint holds) is refused with a 429.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"charge() takes a whole number of tokens >= 1, not {n!r}")
        view = current_app.view_functions.get(request.endpoint)
        if view is not None and getattr(view, "_shield_exempt", False):
            return None
        first = getattr(g, "_shield_decision", None)
        if first is not None and not first.get("endpoint"):
            return None  # no endpoint: not counted
        msg = self._decide_msg()
        # Past the largest cost (what no endpoint ever holds) the daemon answers 429; a
        # count past its u64 would be an error, left to on_error.
        msg["cost"] = min(n, MAX_COST + 1)
        msg["charge"] = True  # the request is admitted already: no in-flight slot
        refusal = self._decide(msg)
        if refusal is not None:
            abort(refusal)
        decision = getattr(g, "_shield_decision", None)
        if decision is None or decision is first or not decision.get("endpoint"):
            return None
        return decision

    def _decide_msg(self):
        """The current request's decide line: rule, method, path, the request fields and
        the server port (the arrival's decision sends it as is, a charge adds its cost)."""
        rule = request.url_rule.rule if request.url_rule is not None else None
        msg = {"op": "decide", "method": request.method, "rule": rule, "path": request.path}
        msg.update(self._request_fields(None))
        msg["port"] = _server_port(request.environ)
        return msg

    def _decide(self, msg):
        """One decide round trip; the problem response to send, or None to go on."""
        try:
            reply, conn = self._exchange(msg)
            if not reply.get("ok"):
                raise ShieldError(f"the daemon answered: {reply.get('error')}")
        except (OSError, ShieldError) as e:
            self._failed(e)
            if self.on_error == "closed":
                return self._problem(
                    503,
                    "the abuse shield is unreachable and this service is configured to refuse requests meanwhile",
                    None,
                    None,
                )
            return None
        self._recovered()
        g._shield_decision = reply
        slot = reply.get("slot")
        if slot is not None:
            # A `concurrency = N` endpoint: the slot is released when the request ends, on
            # the connection that took it (the only one the daemon takes its release on).
            g._shield_slots = getattr(g, "_shield_slots", []) + [(slot, conn)]
        if reply.get("allow", True):
            return None
        status = reply.get("status")
        status = status if status in (429, 403) else 429
        return self._problem(
            status,
            reply.get("detail") or _TITLES[status],
            reply.get("endpoint"),
            reply.get("retry_after"),
        )

    def _after_request(self, response):
        decision = getattr(g, "_shield_decision", None)
        if decision and decision.get("endpoint") and decision.get("policy"):
            response.headers["RateLimit-Policy"] = str(decision["policy"])
            remaining = _count(decision.get("remaining"))
            reset = _count(decision.get("reset"))
            response.headers["RateLimit"] = (
                f"{_sf_string(decision['endpoint'])};r={remaining};t={reset}"
            )
        return response

    def _teardown_request(self, exc):
        """Releases the request's in-flight slots (after the response, also after an
        exception), each on the connection that took it, waiting for it if another request
        is using it. A connection dropped meanwhile took its slots with it (the daemon
        releases every slot of a closed connection); a release that cannot be sent closes
        its connection (when it comes back, if in use), so no slot is ever lost."""
        slots = getattr(g, "_shield_slots", None)
        if not slots:
            return
        g._shield_slots = []
        for slot, conn in slots:
            try:
                reply, used = self._exchange({"op": "release", "slot": slot}, conn)
                if used is not None and not reply.get("ok"):
                    raise ShieldError(f"the daemon answered: {reply.get('error')}")
            except (OSError, ShieldError):
                self._connections().drop(conn)
            except BaseException:
                self._connections().drop(conn)
                raise

    def _problem(self, status, detail, endpoint, retry_after):
        body = {
            "type": PROBLEM_BASE + _TYPES[status],
            "title": _TITLES[status],
            "status": status,
            "detail": detail,
        }
        if status != 503:
            body["endpoint"] = endpoint
            body["retry_after"] = retry_after
        response = current_app.response_class(
            json.dumps(body), status=status, mimetype="application/problem+json"
        )
        if isinstance(retry_after, int) and not isinstance(retry_after, bool):
            response.headers["Retry-After"] = str(max(1, retry_after))
        return response

    def _request_fields(self, user):
        """peer, xff, headers and user of the current request (nulls outside one)."""
        if not has_request_context():
            return {"peer": None, "xff": None, "headers": {}, "user": user}
        environ = request.environ
        # Werkzeug's ProxyFix rewrites REMOTE_ADDR; shield wants the TCP peer and the raw
        # header (it applies [app] trusted_proxies itself).
        orig = environ.get("werkzeug.proxy_fix.orig") or {}
        peer = orig.get("REMOTE_ADDR") or environ.get("REMOTE_ADDR")
        xff = orig.get("HTTP_X_FORWARDED_FOR", environ.get("HTTP_X_FORWARDED_FOR"))
        if user is None:
            user = getattr(g, "_shield_user", None)
        # The headers named in hello's key_headers are filled in by _call.
        return {"peer": peer, "xff": xff, "headers": {}, "user": user}

    @staticmethod
    def _key_headers(names):
        """The request's values of the headers the policy keys on."""
        headers = {}
        for name in names:
            value = request.headers.get(name)
            if value is not None:
                headers[name] = value
        return headers

    def _connections(self):
        """This process's pool: made on first use, and again in a child after a fork (the
        parent's connections are never used there: their inherited descriptors are
        closed). Made in the worker, after gevent or eventlet patched `threading`."""
        pool = self._pool
        if pool is not None and pool.pid == os.getpid():
            return pool
        with self._lock:
            if self._pool is pool:
                self._pool = Pool()
            new = self._pool
        if pool is not None:
            pool.abandon()
        return new

    def _call(self, msg):
        """One round trip on a connection of the pool; the reply."""
        return self._exchange(msg)[0]

    def _exchange(self, msg, held=None):
        """One round trip on a connection checked out of this process's pool for it (or on
        `held`, a slot's connection); returns the reply and that connection, or
        (None, None) when `held` was dropped meanwhile. Hello on connect and whenever a
        reply carries another generation; a reused connection found closed (the daemon
        restarted) is dropped and the request retried on another."""
        app = current_app
        path = app.config["SHIELD_SOCKET"]
        timeout = float(app.config["SHIELD_TIMEOUT"])
        size = app.config["SHIELD_POOL_SIZE"]
        if self._backing_off():
            # A round trip timed out moments ago: a stuck daemon would hold every worker
            # thread for the whole timeout; apply on_error at once until the back-off ends.
            raise ShieldError(self._backing_off())
        pool = self._connections()
        while True:
            # Each retry follows a dead reused connection, dropped: at most size + 1 tries.
            if held is None:
                # Waiting for a connection, stop when another round trip timed out meanwhile.
                conn = pool.checkout(path, timeout, size, self._backing_off)
            else:
                conn = pool.checkout_this(held, timeout)
                if conn is None:
                    return None, None
            reused = conn.used
            try:
                # Everything from here to the check-in gives the connection back, however
                # it ends: one lost while checked out would shrink the pool for good.
                self._on_error = conn.on_error or self._on_error
                if "headers" in msg and has_request_context():
                    msg["headers"] = self._key_headers(conn.key_headers)
                _fit(msg)
                reply = conn.call(msg)
            except (ConnectionResetError, BrokenPipeError) as e:
                pool.checkin(conn, broken=True)
                if reused and held is None:
                    continue
                raise ShieldError(str(e)) from None
            except BaseException:
                pool.checkin(conn, broken=True)
                raise
            broken = False
            generation = reply.get("generation")
            if generation is not None and generation != conn.generation:
                try:
                    conn.hello()
                    self._on_error = conn.on_error or self._on_error
                except (OSError, ShieldError):
                    broken = True
                except BaseException:
                    pool.checkin(conn, broken=True)
                    raise
            pool.checkin(conn, broken)
            return reply, conn

    def _backing_off(self):
        """Why the daemon is not asked now (a round trip timed out moments ago), or None."""
        if time.monotonic() < self._skip_until:
            return "a round trip timed out moments ago; not asking during the back-off"
        return None

    def _failed(self, error):
        if isinstance(error, TimeoutError) and has_app_context():
            # Connect, hello or the reply timed out: back off (see SHIELD_BACKOFF).
            self._skip_until = time.monotonic() + float(current_app.config["SHIELD_BACKOFF"])
        with self._lock:
            self._errors += 1
            first = not self._outage
            self._outage = True
        if first:
            log.warning(
                "shield: the daemon cannot be asked (%s); on_error=%s until it answers again",
                error,
                self.on_error if has_app_context() else "?",
            )

    def _recovered(self):
        if self._outage:
            with self._lock:
                was = self._outage
                self._outage = False
            if was:
                log.warning("shield: the daemon answers again")
