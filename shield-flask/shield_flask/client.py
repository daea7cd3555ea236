"""The app socket client: newline-delimited JSON to `shield run` over a Unix stream socket.

A `Connection` is one persistent socket; a `Pool` is a process's bounded set of them,
shared by its threads (or greenlets, under gevent or eventlet: the pool waits with
`threading` primitives, which their monkey-patching makes cooperative). A connection is
used by one round trip at a time, and never across a fork (gunicorn `--preload` forks
workers from a master that may already have connected): a child opens its own.
"""

import json
import os
import socket
import threading
import time

__all__ = ["Connection", "Pool", "PoolTimeout", "ShieldError", "MAX_LINE"]

#: The daemon refuses request lines longer than this (64 KiB).
MAX_LINE = 64 * 1024


class ShieldError(Exception):
    """The daemon could not be asked or answered with an error."""


class PoolTimeout(ShieldError):
    """No connection of the pool came free within the timeout (every one was in use)."""


class Connection:
    """One connection to the app socket. Not thread-safe: a `Pool` lends it to one round
    trip at a time."""

    def __init__(self, path, timeout):
        self.path = path
        self.timeout = timeout
        self.pid = os.getpid()
        self.generation = None
        self.on_error = None
        self.key_headers = []
        self.version = None
        self.used = False
        # Kept by the pool, under its lock.
        self.busy = False  # checked out
        self.closed = False  # dropped from the pool (closed, or inherited across a fork)
        self.doomed = False  # to be dropped when checked in
        self.ready = None  # a Condition on the pool's lock: checked in, or dropped
        self.waiters = 0  # releases waiting for this very connection (checkout_this)
        self.handoff = False  # checked in to one of them: still busy, theirs to take
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._reader = sock.makefile("rb")

    def close(self):
        # close(), never shutdown(): a copy inherited across a fork must not end the
        # parent's connection.
        try:
            self._reader.close()
        finally:
            self._sock.close()

    def __del__(self):
        # A thread that ends drops its connection: close it rather than leak it to GC.
        try:
            self.close()
        except (OSError, AttributeError):
            pass

    def call(self, message):
        """Sends one request line and returns the reply (a dict with "ok")."""
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        if len(line) > MAX_LINE:
            raise ShieldError("request line longer than 64 KiB")
        self._sock.settimeout(self.timeout)
        self._sock.sendall(line)
        reply = self._reader.readline(MAX_LINE + 1)
        if not reply:
            raise ConnectionResetError("the daemon closed the connection")
        if not reply.endswith(b"\n"):
            raise ShieldError("reply line cut short or longer than 64 KiB")
        try:
            value = json.loads(reply)
        except ValueError as e:
            raise ShieldError(f"reply is not JSON: {e}") from None
        if not isinstance(value, dict) or "ok" not in value:
            raise ShieldError("reply has no \"ok\" field")
        self.used = True
        return value

    def hello(self):
        reply = self.call({"op": "hello"})
        if not reply.get("ok"):
            raise ShieldError(f"hello refused: {reply.get('error')}")
        self.version = reply.get("version")
        self.generation = reply.get("generation")
        on_error = reply.get("on_error")
        self.on_error = on_error if on_error in ("open", "closed") else None
        headers = reply.get("key_headers") or []
        self.key_headers = [h for h in headers if isinstance(h, str)]
        return reply


def _wait(condition, timeout):
    """`condition.wait(timeout)` that returns or raises with its lock held. A greenlet
    killed while it takes the lock back at the end of a wait (gevent raises GreenletExit
    there) would otherwise run its clean-up without the lock, and release it on the way
    out while another holds it."""
    try:
        return condition.wait(timeout)
    except BaseException:
        while not condition._is_owned():
            try:
                condition.acquire()
            except BaseException:  # killed again: the first exception still goes up
                pass
        raise


class Pool:
    """At most `size` connections to the app socket for this process (per `checkout`),
    each greeted with hello on connect. A round trip checks one out (an idle one, else a
    new one while fewer than `size` are open, else it waits for one to come back) and
    checks it back in after the reply. A pool belongs to the process that made it (`pid`).
    """

    def __init__(self):
        self.pid = os.getpid()
        # Reentrant for its owner check (see `_wait`), never taken twice.
        self._lock = threading.RLock()
        self._free = threading.Condition(self._lock)  # a connection came back, or room
        self._idle = []  # checked in, the most recently used last
        self._open = set()  # every connection of the pool, idle or checked out
        self._connecting = 0  # connects under way (they count against the size)

    def checkout(self, path, timeout, size, give_up=None):
        """A connection to `path` for one round trip; waits at most `timeout` seconds for
        one to come free (then PoolTimeout). Connect and hello errors are raised as they
        are (the room is given back). `give_up()`, asked after each wait, may return a
        reason to stop waiting (raised as ShieldError)."""
        deadline = time.monotonic() + timeout
        stale = []
        waited = False
        try:
            with self._lock:
                while True:
                    reason = give_up() if waited and give_up is not None else None
                    if reason:
                        self._free.notify()
                        raise ShieldError(reason)
                    while self._idle:
                        conn = self._idle.pop()
                        if conn.path == path:
                            conn.busy = True
                            conn.timeout = timeout
                            return conn
                        # The socket path changed: never reuse it.
                        self._forget(conn)
                        stale.append(conn)
                    if len(self._open) + self._connecting < size:
                        self._connecting += 1
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        # A wake-up this waiter took but cannot use goes to another.
                        self._free.notify()
                        raise PoolTimeout(
                            f"no connection to the daemon came free within {timeout:g} s "
                            f"(all {size} of this process in use)"
                        )
                    try:
                        _wait(self._free, remaining)
                    except BaseException:
                        self._free.notify()  # interrupted: a wake-up it took goes to another
                        raise
                    waited = True
        finally:
            for conn in stale:
                conn.close()
        conn = None
        try:
            conn = Connection(path, timeout)
            conn.hello()
        except BaseException:
            if conn is not None:
                conn.close()
            with self._lock:
                self._connecting -= 1
                self._free.notify()
            raise
        with self._lock:
            self._connecting -= 1
            conn.busy = True
            conn.ready = threading.Condition(self._lock)
            self._open.add(conn)
        return conn

    def checkout_this(self, conn, timeout):
        """`conn` itself (an in-flight slot is released on the connection that took it),
        waiting at most `timeout` seconds while another round trip uses it (then
        PoolTimeout); None when it was dropped meanwhile (the daemon released its slots).
        A connection checked in while a release waits for it goes to that release, before
        any round trip waiting for whichever connection (it would otherwise be taken again
        and again under load)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if conn.closed or conn.ready is None or conn.pid != self.pid:
                    return None
                if conn.handoff:
                    conn.handoff = False
                    conn.timeout = timeout
                    return conn
                if not conn.busy:
                    self._idle.remove(conn)
                    conn.busy = True
                    conn.timeout = timeout
                    return conn
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PoolTimeout(
                        f"the connection holding an in-flight slot did not come free within {timeout:g} s"
                    )
                conn.waiters += 1
                try:
                    _wait(conn.ready, remaining)
                except BaseException:
                    # Interrupted (a greenlet killed): a connection handed to the waiting
                    # releases and taken by none of them goes back to the pool.
                    conn.waiters -= 1
                    if conn.handoff and not conn.waiters:
                        conn.handoff = False
                        conn.busy = False
                        self._idle.append(conn)
                        self._free.notify()
                    raise
                conn.waiters -= 1

    def checkin(self, conn, broken=False):
        """Gives back a checked-out connection; `broken` (an error on it: its state is
        unknown) closes it instead."""
        with self._lock:
            drop = broken or conn.doomed
            if drop:
                conn.busy = False
                self._forget(conn)
            elif conn.waiters:
                conn.handoff = True  # stays busy: a waiting release takes it
                conn.ready.notify_all()
            else:
                conn.busy = False
                self._idle.append(conn)
                self._free.notify()
        if drop:
            conn.close()

    def drop(self, conn):
        """Closes `conn` (checked out by someone else: when it comes back), so that the
        daemon releases its slots; nothing if it is closed already."""
        with self._lock:
            if conn.closed or conn.ready is None or conn.pid != self.pid:
                return
            if conn.busy:
                conn.doomed = True
                return
            self._idle.remove(conn)
            self._forget(conn)
        conn.close()

    def _forget(self, conn):
        # Under the lock: out of the pool; room for another; its waiters look again.
        conn.closed = True
        self._open.discard(conn)
        self._free.notify()
        if conn.ready is not None:
            conn.ready.notify_all()

    def abandon(self):
        """In a child of the process that made this pool: closes the inherited descriptors
        (close, never shutdown: the parent's connections live on). Takes no lock (one held
        by another of the parent's threads at the fork would never be released here)."""
        for conn in list(self._open):
            try:
                conn.close()
            except OSError:
                pass
