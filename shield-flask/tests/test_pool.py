"""shield_flask's connection pool (SHIELD_POOL_SIZE) against a fake daemon: the bound on
connections under many threads, gevent greenlets and gunicorn gevent workers, and slots
released on the connection that took them (run with the other tests by `cargo xtask test`)."""

import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from helpers import Base, make_app


def wait_for(condition, what, seconds=10):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


API_DECISION = {"allow": True, "endpoint": "api", "policy": '"api";q=100;w=1', "remaining": 1, "reset": 1}


def slot_decider(hold=0.0):
    """Every request is decided (endpoint "api"); /items/<n> takes in-flight slot n (so a
    release names its request); each reply is held `hold` seconds (a busy daemon)."""

    def decide(req):
        if hold:
            time.sleep(hold)
        if req["rule"] == "/items/<int:n>":
            return dict(API_DECISION, slot=int(req["path"].rsplit("/", 1)[1]))
        return dict(API_DECISION)

    return decide


def releases_on_their_connections(daemon):
    """(slot, decide's connection, release's connection) for every release seen."""
    with daemon._lock:
        requests = list(daemon.requests)
    took = {
        int(r["path"].rsplit("/", 1)[1]): c
        for c, r in requests
        if r.get("op") == "decide" and r["rule"] == "/items/<int:n>"
    }
    return [(r["slot"], took.get(r["slot"]), c) for c, r in requests if r.get("op") == "release"]


class Pooling(Base):
    """A process's connections: at most SHIELD_POOL_SIZE, shared by its threads (greenlets)."""

    def test_300_threads_share_8_connections_and_every_request_is_decided(self):
        self.daemon.decide = slot_decider(hold=0.002)
        app, shield = make_app(self.daemon.path, timeout=30, pool_size=8)

        @app.get("/items/<int:n>")
        def item(n):
            return "item"

        barrier = threading.Barrier(300)
        results = []

        def worker(i):
            client = app.test_client()
            barrier.wait()
            for path in (f"/users/{i}", f"/items/{i}"):
                r = client.get(path)
                results.append((r.status_code, r.headers.get("RateLimit")))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(300)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(len(results), 600)
        self.assertEqual(set(results), {(200, '"api";r=1;t=1')}, "every request got the daemon's decision")
        self.assertEqual(shield.errors, 0)
        self.assertEqual(len(self.daemon.of("decide")), 600)
        self.assertEqual(self.daemon.peak, 8, "never more than SHIELD_POOL_SIZE connections, all of them used")
        self.assertEqual(len(self.daemon.connections()), 8)
        released = releases_on_their_connections(self.daemon)
        self.assertEqual(sorted(slot for slot, _, _ in released), list(range(300)))
        self.assertEqual([r for r in released if r[1] != r[2]], [], "a release went to another connection")

    def test_a_slot_is_released_on_its_connection_waiting_while_another_request_uses_it(self):
        app, shield = make_app(self.daemon.path, timeout=5, pool_size=2)
        in_view, view_may_end, reply_may_go = threading.Event(), threading.Event(), threading.Event()

        @app.get("/items/<int:n>")
        def item(n):
            in_view.set()
            view_may_end.wait(10)
            return "item"

        def decide(req):
            if req["rule"] == "/items/<int:n>":
                return {"allow": True, "endpoint": "api", "slot": 7}
            reply_may_go.wait(10)  # the other request keeps the connection in use meanwhile
            return {"endpoint": None, "allow": True}

        self.daemon.decide = decide
        statuses = {}

        def get(name, path):
            statuses[name] = app.test_client().get(path).status_code

        slotted = threading.Thread(target=get, args=("slotted", "/items/7"))
        slotted.start()
        in_view.wait(5)  # decided on connection 1 (slot 7), which went back to the pool
        other = threading.Thread(target=get, args=("other", "/users/1"))
        other.start()
        wait_for(lambda: len(self.daemon.ops(1)) == 3, "the other request's decide on connection 1")
        view_may_end.set()  # the slotted request ends: its release needs connection 1, in use
        time.sleep(0.3)
        self.assertEqual(self.daemon.of("release"), [], "released before its connection came back")
        self.assertEqual(self.daemon.connections(), [1], "the release must not go on another connection")
        reply_may_go.set()
        slotted.join()
        other.join()
        self.assertEqual(statuses, {"slotted": 200, "other": 200})
        self.assertEqual(self.daemon.ops(1), ["hello", "decide", "decide", "release"])
        self.assertEqual(self.daemon.of("release"), [{"op": "release", "slot": 7}])
        self.assertEqual(shield.errors, 0)

    def test_a_release_waiting_for_its_connection_goes_before_requests_waiting_for_any(self):
        app, shield = make_app(self.daemon.path, timeout=5, pool_size=1)
        in_view, view_may_end, reply_may_go = threading.Event(), threading.Event(), threading.Event()

        @app.get("/items/<int:n>")
        def item(n):
            in_view.set()
            view_may_end.wait(10)
            return "item"

        def decide(req):
            if req["rule"] == "/items/<int:n>":
                return {"allow": True, "endpoint": "api", "slot": 7}
            if req["path"] == "/users/1":
                reply_may_go.wait(10)  # holds the only connection
            return {"endpoint": None, "allow": True}

        self.daemon.decide = decide
        statuses = {}

        def get(path):
            statuses[path] = app.test_client().get(path).status_code

        threads = [threading.Thread(target=get, args=("/items/7",))]
        threads[0].start()
        in_view.wait(5)
        threads.append(threading.Thread(target=get, args=("/users/1",)))
        threads[1].start()
        wait_for(lambda: len(self.daemon.ops(1)) == 3, "/users/1's decide on the only connection")
        threads.append(threading.Thread(target=get, args=("/users/2",)))
        threads[2].start()  # waits for any connection
        time.sleep(0.2)
        view_may_end.set()  # its release waits for connection 1, behind /users/2
        (conn,) = shield._pool._open
        wait_for(lambda: conn.waiters == 1, "the release waiting for connection 1")
        reply_may_go.set()
        for t in threads:
            t.join()
        self.assertEqual(statuses, {"/items/7": 200, "/users/1": 200, "/users/2": 200})
        self.assertEqual(self.daemon.ops(1), ["hello", "decide", "decide", "release", "decide"])
        self.assertEqual([r["path"] for r in self.daemon.of("decide")], ["/items/7", "/users/1", "/users/2"])
        self.assertEqual(shield.errors, 0)

    def test_a_slot_whose_connection_was_dropped_sends_no_release(self):
        self.daemon.decide = slot_decider()
        app, shield = make_app(self.daemon.path)
        in_view, view_may_end = threading.Event(), threading.Event()

        @app.get("/items/<int:n>")
        def item(n):
            in_view.set()
            view_may_end.wait(10)
            return "item"

        statuses = []
        t = threading.Thread(target=lambda: statuses.append(app.test_client().get("/items/5").status_code))
        t.start()
        in_view.wait(5)
        self.daemon.close_all()  # a daemon restart: it released the slot with the connection
        self.assertEqual(app.test_client().get("/users/1").status_code, 200)  # finds it dead, reconnects
        view_may_end.set()
        t.join()
        self.assertEqual(statuses, [200])
        self.assertEqual(self.daemon.of("release"), [], "the slot died with its connection")
        self.assertEqual(self.daemon.ops(2), ["hello", "decide"])
        self.assertEqual(shield.errors, 0)

    def test_an_error_on_a_connection_closes_that_connection_not_the_pool(self):
        app, shield = make_app(self.daemon.path, pool_size=2)
        both = threading.Barrier(2)
        stuck = threading.Event()

        def decide(req):
            if req["path"] in ("/users/1", "/users/2"):
                both.wait(5)  # both requests at once: two connections
            if req["path"] == "/users/3":
                stuck.wait(5)  # the client times out on this connection
            return {"endpoint": None, "allow": True}

        self.daemon.decide = decide
        threads = [threading.Thread(target=app.test_client().get, args=(f"/users/{i}",)) for i in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(self.daemon.connections(), [1, 2])
        client = app.test_client()
        app.config["SHIELD_TIMEOUT"] = 0.3
        with self.assertLogs("shield_flask", logging.WARNING):
            self.assertEqual(client.get("/users/3").status_code, 200)  # timed out: on_error open
        app.config["SHIELD_TIMEOUT"] = 30
        self.assertEqual(shield.errors, 1)
        stuck.set()
        (timed_out,) = [c for c, r in self.daemon.requests if r.get("path") == "/users/3"]
        self.assertEqual(client.get("/users/4").status_code, 200)
        (other,) = [c for c, r in self.daemon.requests if r.get("path") == "/users/4"]
        self.assertEqual(self.daemon.connections(), [1, 2], "the pool's other connection was used, none opened")
        self.assertEqual(other, 3 - timed_out)
        self.assertEqual(self.daemon.ops(other).count("hello"), 1)

    def test_after_a_daemon_restart_every_dead_idle_connection_is_skipped(self):
        app, shield = make_app(self.daemon.path, timeout=5, pool_size=4)
        four = threading.Barrier(4)

        def decide(req):
            if req["path"] != "/users/9":
                four.wait(5)  # four requests at once: four connections
            return dict(API_DECISION)

        self.daemon.decide = decide
        threads = [threading.Thread(target=app.test_client().get, args=(f"/users/{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(self.daemon.connections(), [1, 2, 3, 4])
        self.daemon.close_all()  # a restart (or 300 s of silence): all four idle ones are dead
        r = app.test_client().get("/users/9")
        self.assertEqual((r.status_code, r.headers.get("RateLimit")), (200, '"api";r=1;t=1'))
        self.assertEqual(self.daemon.ops(5), ["hello", "decide"])
        self.assertEqual(shield.errors, 0)

    def test_waiting_longer_than_the_timeout_for_a_connection_applies_on_error(self):
        self.daemon.on_error = "closed"
        # A back-off far longer than the test: a full pool is not a stuck daemon, no back-off.
        app, shield = make_app(self.daemon.path, timeout=5, pool_size=1, backoff=3600)
        client = app.test_client()
        self.assertEqual(client.get("/users/0").status_code, 200)  # hello: on_error "closed"
        holding, reply_may_go = threading.Event(), threading.Event()

        def decide(req):
            if req["path"] == "/users/1":
                holding.set()
                reply_may_go.wait(10)
            return {"endpoint": None, "allow": True}

        self.daemon.decide = decide
        statuses = []
        t = threading.Thread(target=lambda: statuses.append(app.test_client().get("/users/1").status_code))
        t.start()
        holding.wait(5)  # the only connection is in use (its round trip may take 5 s)
        app.config["SHIELD_TIMEOUT"] = 0.3  # the next request waits for a connection at most 0.3 s
        start = time.monotonic()
        with self.assertLogs("shield_flask", logging.WARNING) as logs:
            r = client.get("/users/2")
        waited = time.monotonic() - start
        self.assertEqual(r.status_code, 503)
        self.assertEqual(json.loads(r.data)["type"], "https://shield.dev/problems/unavailable")
        self.assertIn(
            "no connection to the daemon came free within 0.3 s (all 1 of this process in use)", logs.output[0]
        )
        self.assertGreaterEqual(waited, 0.3)
        self.assertLess(waited, 3)
        self.assertEqual(shield.errors, 1)
        reply_may_go.set()
        t.join()
        self.assertEqual(statuses, [200])
        self.assertEqual(self.daemon.connections(), [1], "the pool never opened a second connection")
        self.assertEqual(client.get("/users/3").status_code, 200)
        self.assertEqual(shield.errors, 1)


GEVENT_SCRIPT = r"""
from gevent import monkey

monkey.patch_all()

import importlib.util
import json
import logging
import sys

import gevent
from flask import Flask

from shield_flask import Shield

app = Flask(__name__)
app.config.update(SHIELD_SOCKET=sys.argv[1], SHIELD_TIMEOUT=30, SHIELD_ON_ERROR="closed")
shield = Shield(app)  # the default pool


@app.get("/items/<int:n>")
def item(n):
    gevent.sleep(0.001)
    return "item"


def one(n):
    r = app.test_client().get(f"/items/{n}")
    return r.status_code, r.headers.get("RateLimit")


jobs = [gevent.spawn(one, n) for n in range(int(sys.argv[2]))]
gevent.joinall(jobs, raise_error=True)
print(json.dumps({"results": [j.value for j in jobs], "errors": shield.errors}))
"""


class Gevent(Base):
    def test_1500_greenlets_share_the_default_pool_of_32(self):
        if importlib.util.find_spec("gevent") is None:
            self.fail(
                f"{sys.executable} cannot import gevent: run `cargo xtask bootstrap` (it installs python3-gevent)"
            )
        self.daemon.decide = slot_decider(hold=0.005)
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=package)
        run = subprocess.run(
            [sys.executable, "-c", GEVENT_SCRIPT, self.daemon.path, "1500"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(run.returncode, 0, run.stderr)
        out = json.loads(run.stdout)
        self.assertEqual(len(out["results"]), 1500)
        self.assertEqual({tuple(r) for r in out["results"]}, {(200, '"api";r=1;t=1')}, "every decision answered")
        self.assertEqual(out["errors"], 0)
        self.assertEqual(len(self.daemon.of("decide")), 1500)
        self.assertEqual(self.daemon.peak, 32, "the default pool: 32 connections at most, all used")
        released = releases_on_their_connections(self.daemon)
        self.assertEqual(sorted(slot for slot, _, _ in released), list(range(1500)))
        self.assertEqual([r for r in released if r[1] != r[2]], [], "a release went to another connection")

GEVENT_KILLED_WAITER = r"""
from gevent import monkey

monkey.patch_all()

import json
import sys

import gevent

from shield_flask.client import Pool, PoolTimeout

path = sys.argv[1]
pool = Pool()
conn = pool.checkout(path, 5, 1)  # a pool of one, in use
took = []
waiter = gevent.spawn(lambda: took.append(pool.checkout_this(conn, 5)))  # a release waiting for it
gevent.sleep(0.05)
waiting = conn.waiters
pool.checkin(conn)  # handed to the waiting release...
with pool._lock:  # ...which wakes and waits for the pool's lock back...
    gevent.sleep(0.05)
    waiter.kill(block=False)  # ...and is killed there, before it takes it
waiter.join()
try:
    again = pool.checkout(path, 0.5, 1)
    out = {"same": again is conn, "timeout": None}
except PoolTimeout as e:
    out = {"same": False, "timeout": str(e)}
out.update(waiting=waiting, took=len(took), died_of=type(waiter.exception or waiter.value).__name__)
# The same for a round trip waiting for any connection of the full pool.
other = gevent.spawn(pool.checkout, path, 5, 1)
gevent.sleep(0.05)
pool.checkin(again)
with pool._lock:
    gevent.sleep(0.05)
    other.kill(block=False)
other.join()
out["other_died_of"] = type(other.exception or other.value).__name__
try:
    out["other_same"] = pool.checkout(path, 0.5, 1) is conn
except PoolTimeout:
    out["other_same"] = False
print(json.dumps(out))
"""


class KilledWaiter(Base):
    def test_greenlets_killed_as_they_wake_leave_the_pool_whole(self):
        # gevent kills greenlets (a worker's graceful timeout, an app's own timeouts). One
        # killed as it wakes from a wait in the pool, while it takes the pool's lock back,
        # must die of the kill: its clean-up must run with the lock (it ran without it and
        # then released the lock another held: RuntimeError), and a release handed its
        # connection must give it back (with a pool of one, every later request would
        # wait SHIELD_TIMEOUT and fail).
        if importlib.util.find_spec("gevent") is None:
            self.fail(
                f"{sys.executable} cannot import gevent: run `cargo xtask bootstrap` (it installs python3-gevent)"
            )
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        run = subprocess.run(
            [sys.executable, "-c", GEVENT_KILLED_WAITER, self.daemon.path],
            env=dict(os.environ, PYTHONPATH=package),
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(run.returncode, 0, run.stderr)
        out = json.loads(run.stdout)
        self.assertEqual((out["waiting"], out["took"]), (1, 0), "the scenario ran as meant")
        # Killed as it took the pool's lock back: it dies of the kill, without the lock's
        # errors (its clean-up ran without the lock, and released it on the way out).
        self.assertEqual((out["died_of"], out["other_died_of"]), ("GreenletExit",) * 2, run.stderr)
        self.assertTrue(out["other_same"], "the pool still lends its one connection")
        self.assertNotIn("Error", run.stderr)
        self.assertIsNone(out["timeout"], "the connection handed to the killed release never came back")
        self.assertTrue(out["same"], "the next round trip gets the same connection (no second one opened)")
        self.assertEqual(self.daemon.connections(), [1])


GUNICORN_APP = """
import os

from flask import Flask

from shield_flask import Shield

app = Flask(__name__)
app.config.update(SHIELD_SOCKET=os.environ["SHIELD_SOCKET"], SHIELD_TIMEOUT=30, SHIELD_ON_ERROR="closed")
shield = Shield(app)

# --preload: the master connects before it forks the workers, which must not use its connection.
with app.test_request_context("/"):
    assert shield.report("login_failed", key="preloaded") is not None


@app.get("/items/<int:n>")
def item(n):
    return str(shield.errors)


@app.get("/health")
@shield.exempt
def health():
    return "ok"
"""


def unix_get(path, target, timeout=60):
    """GET `target` over HTTP/1.0 on the Unix socket `path`: (status line, headers, body)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(f"GET {target} HTTP/1.0\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *headers = head.decode("latin-1").split("\r\n")
    return status, dict(h.split(": ", 1) for h in headers if ": " in h), body.decode()


class GunicornGevent(Base):
    def test_gevent_workers_with_preload_each_stay_within_their_pool(self):
        gunicorn = shutil.which("gunicorn")
        if gunicorn is None or importlib.util.find_spec("gevent") is None:
            self.fail("gunicorn or python3-gevent is missing: run `cargo xtask bootstrap` (it installs both)")
        self.daemon.decide = slot_decider(hold=0.005)
        work = tempfile.mkdtemp(prefix="shield-flask-gunicorn-")
        self.addCleanup(shutil.rmtree, work, True)
        with open(os.path.join(work, "app.py"), "w") as f:
            f.write(GUNICORN_APP)
        http = os.path.join(work, "http.sock")
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=package, SHIELD_SOCKET=self.daemon.path)
        log = open(os.path.join(work, "gunicorn.log"), "w")
        self.addCleanup(log.close)
        server = subprocess.Popen(
            [gunicorn, "--worker-class", "gevent", "--preload", "--workers", "2", "--worker-connections", "1000",
             "--backlog", "2048", "--bind", f"unix:{http}", "--chdir", work, "app:app"],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )

        def stop():
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

        self.addCleanup(stop)

        def up():
            if server.poll() is not None:
                raise AssertionError(f"gunicorn exited: {open(log.name).read()}")
            try:
                return unix_get(http, "/health", timeout=1)[0].endswith(" 200 OK")
            except OSError:
                return False

        wait_for(up, "gunicorn's /health", seconds=30)
        clients = 600
        barrier = threading.Barrier(clients)
        results = []

        def one(n):
            barrier.wait()
            status, headers, body = unix_get(http, f"/items/{n}")
            results.append((status.split(" ", 1)[1], headers.get("RateLimit"), body))

        threads = [threading.Thread(target=one, args=(n,)) for n in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(len(results), clients)
        self.assertEqual(set(results), {("200 OK", '"api";r=1;t=1', "0")}, "every request decided, no worker error")
        self.assertEqual(len(self.daemon.of("decide")), clients)
        self.assertLessEqual(self.daemon.peak, 2 * 32 + 1, "at most 32 connections per worker, and the master's")
        self.assertEqual(self.daemon.ops(1), ["hello", "report"], "the master's connection, never used by a worker")
        released = releases_on_their_connections(self.daemon)
        self.assertEqual(sorted(slot for slot, _, _ in released), list(range(clients)))
        self.assertEqual([r for r in released if r[1] != r[2]], [], "a release went to another connection")
