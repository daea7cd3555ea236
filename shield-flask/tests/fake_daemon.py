"""A fake `shield run` app socket for the package's tests: speaks the app protocol (one
JSON request line, one reply line) on a temporary Unix socket, records what it received,
and lets a test script its replies, close every connection (a daemon restart), change
the policy generation or hold replies back (a stuck daemon). `peak` is the most
connections it ever had open at once."""

import json
import os
import socket
import tempfile
import threading


def _has_lone_surrogate(value):
    """Whether a parsed JSON value holds a string with a lone surrogate (a pair escaped as
    two \\uXXXX is one character once parsed)."""
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


class FakeDaemon:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="shield-flask-test-")
        self.path = os.path.join(self.dir, "app.sock")
        self.generation = 1
        self.on_error = "open"
        self.key_headers = ["X-Api-Key"]
        self.requests = []  # (connection number, request dict)
        self.decide = lambda req: {"endpoint": None, "allow": True}
        self.report = lambda req: {"counted": True, "limited": False, "banned": False}
        self.release = threading.Event()  # cleared: replies wait for it
        self.release.set()
        self._lock = threading.Lock()
        self._conns = []
        self._count = 0
        self._open = 0
        self.peak = 0
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(64)
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    # -- test controls -----------------------------------------------------------------

    def ops(self, conn=None):
        with self._lock:
            return [r["op"] for c, r in self.requests if conn is None or c == conn]

    def of(self, op):
        with self._lock:
            return [r for _, r in self.requests if r.get("op") == op]

    def connections(self):
        with self._lock:
            return sorted({c for c, _ in self.requests})

    def close_all(self):
        """Closes every open connection (as a daemon restart does)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def stop(self):
        self._stopped = True
        self.release.set()
        try:
            self._listener.close()
        finally:
            self.close_all()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.rmdir(self.dir)

    # -- the server ----------------------------------------------------------------

    def _accept(self):
        while not self._stopped:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._count += 1
                number = self._count
                self._open += 1
                self.peak = max(self.peak, self._open)
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn, number):
        reader = conn.makefile("rb")
        try:
            for line in reader:
                try:
                    req = json.loads(line)
                except ValueError:
                    conn.sendall(b'{"ok":false,"error":"bad JSON"}\n')
                    continue
                if _has_lone_surrogate(req):
                    # As the daemon (serde_json): a string must be Unicode; Python's json
                    # takes "\ud800", the daemon refuses the whole line.
                    conn.sendall(b'{"ok":false,"error":"bad request: lone leading surrogate in hex escape"}\n')
                    continue
                if any(req.get(f) is not None and not isinstance(req.get(f), str) for f in ("user", "key")):
                    # As the daemon: `user` and `key` are strings.
                    conn.sendall(b'{"ok":false,"error":"bad request: invalid type: expected a string"}\n')
                    continue
                port = req.get("port")
                if port is not None and not (isinstance(port, int) and 0 <= port <= 65535):
                    # As the daemon: `port` is a u16.
                    conn.sendall(b'{"ok":false,"error":"bad request: invalid value: expected u16"}\n')
                    continue
                cost = req.get("cost")
                if cost is not None and not (isinstance(cost, int) and 0 <= cost < 2**64):
                    # As the daemon: `cost` is a u64.
                    conn.sendall(b'{"ok":false,"error":"bad request: invalid value: expected u64"}\n')
                    continue
                with self._lock:
                    self.requests.append((number, req))
                self.release.wait()
                if self._stopped:
                    return
                conn.sendall(json.dumps(self._reply(req)).encode() + b"\n")
        except OSError:
            pass
        finally:
            with self._lock:
                self._open -= 1
            try:
                reader.close()
                conn.close()
            except OSError:
                pass

    def _reply(self, req):
        op = req.get("op")
        if op == "hello":
            return {
                "ok": True,
                "version": "0.1.0",
                "generation": self.generation,
                "on_error": self.on_error,
                "key_headers": list(self.key_headers),
            }
        if op == "decide":
            reply = {"ok": True, "generation": self.generation}
            reply.update(self.decide(req))
            return reply
        if op == "report":
            if req.get("signal") != "login_failed":
                return {"ok": False, "error": f"no [[signal]] named \"{req.get('signal')}\" in the policy"}
            reply = {"ok": True, "generation": self.generation, "signal": req["signal"], "client": req.get("peer")}
            reply.update(self.report(req))
            return reply
        if op == "release":
            return {"ok": True, "generation": self.generation, "released": True}
        return {"ok": False, "error": "the app socket accepts only hello, decide, report and release"}
