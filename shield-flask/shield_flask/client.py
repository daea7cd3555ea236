"""The app socket client: newline-delimited JSON to `shield run` over a Unix stream socket.

One `Connection` is one persistent socket; `Connections` hands each (process, thread) its
own, so no socket is ever shared between threads or across a fork (gunicorn `--preload`
forks workers from a master that may already have connected).
"""

import json
import os
import socket
import threading

__all__ = ["Connection", "Connections", "ShieldError", "MAX_LINE"]

#: The daemon refuses request lines longer than this (64 KiB).
MAX_LINE = 64 * 1024


class ShieldError(Exception):
    """The daemon could not be asked or answered with an error."""


class Connection:
    """One connection to the app socket. Not thread-safe: one per thread."""

    def __init__(self, path, timeout):
        self.path = path
        self.timeout = timeout
        self.pid = os.getpid()
        self.generation = None
        self.on_error = None
        self.key_headers = []
        self.version = None
        self.used = False
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


class Connections:
    """Per-(pid, thread) persistent connections, each greeted with hello on connect."""

    def __init__(self):
        self._local = threading.local()

    def get(self, path, timeout):
        """This thread's connection (connecting and saying hello if needed)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and (conn.pid != os.getpid() or conn.path != path):
            # Inherited across a fork, or the socket path changed: never reuse it.
            self._drop(conn)
            conn = None
        if conn is None:
            conn = Connection(path, timeout)
            try:
                conn.hello()
            except BaseException:
                conn.close()
                raise
            self._local.conn = conn
        conn.timeout = timeout
        return conn

    def discard(self):
        """Closes this thread's connection (after an error: its state is unknown)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._drop(conn)

    def _drop(self, conn):
        self._local.conn = None
        if conn.pid == os.getpid():
            conn.close()
        else:
            # A copy from before a fork: close our descriptor only (close, not shutdown).
            try:
                conn.close()
            except OSError:
                pass
