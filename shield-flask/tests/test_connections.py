"""shield_flask's identity, connections and on_error against a fake daemon on a temporary
Unix socket: the user of a decision, one hello per connection, reconnects, threads and
forks, the daemon absent, stuck or answering errors, and a refused config (run by `cargo
xtask test`: `python3 -m unittest discover -s shield-flask/tests` with shield-flask on
PYTHONPATH)."""

import json
import logging
import os
import tempfile
import threading
import unittest

from flask import Flask

from fake_daemon import FakeDaemon
from helpers import Base, make_app
from shield_flask import Shield


class Identity(Base):
    def test_user_loader_runs_before_the_decision(self):
        app, shield = make_app(self.daemon.path)

        @shield.user_loader
        def load():
            return "alice"

        app.test_client().post("/login")
        (decide,) = self.daemon.of("decide")
        self.assertEqual(decide["user"], "alice")

    def test_identify_in_an_earlier_before_request(self):
        holder = {}

        def before():
            holder["shield"].identify(user=7)

        app, shield = make_app(self.daemon.path, before=before)
        holder["shield"] = shield
        app.test_client().post("/login")
        (decide,) = self.daemon.of("decide")
        self.assertEqual(decide["user"], "7")


class Connections(Base):
    def test_one_connection_one_hello_for_many_requests(self):
        app, _ = make_app(self.daemon.path)
        client = app.test_client()
        for _ in range(3):
            client.get("/users/1")
        self.assertEqual(self.daemon.connections(), [1])
        self.assertEqual(self.daemon.ops(1), ["hello", "decide", "decide", "decide"])

    def test_reconnects_after_the_daemon_closes(self):
        app, shield = make_app(self.daemon.path)
        client = app.test_client()
        self.assertEqual(client.get("/users/1").status_code, 200)
        self.daemon.close_all()
        self.assertEqual(client.get("/users/2").status_code, 200)
        self.assertEqual(self.daemon.connections(), [1, 2])
        self.assertEqual(self.daemon.ops(2), ["hello", "decide"])
        self.assertEqual(shield.errors, 0)

    def test_generation_change_triggers_hello_and_new_key_headers(self):
        app, _ = make_app(self.daemon.path)
        client = app.test_client()
        client.get("/users/1", headers={"X-Tenant": "t1"})
        self.daemon.generation = 2
        self.daemon.key_headers = ["X-Tenant"]
        client.get("/users/2", headers={"X-Tenant": "t1"})
        client.get("/users/3", headers={"X-Tenant": "t1"})
        self.assertEqual(self.daemon.ops(1), ["hello", "decide", "decide", "hello", "decide"])
        headers = [d["headers"] for d in self.daemon.of("decide")]
        self.assertEqual(headers, [{}, {}, {"X-Tenant": "t1"}])

    def test_threads_share_the_pool_one_hello_per_connection(self):
        # A generous timeout: a round trip a loaded machine answers late must not time out,
        # close its connection and open another (this counts connections).
        app, _ = make_app(self.daemon.path, timeout=30)
        barrier = threading.Barrier(4)
        statuses = []

        def worker():
            client = app.test_client()
            barrier.wait()
            for _ in range(5):
                statuses.append(client.get("/users/1").status_code)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(statuses, [200] * 20)
        self.assertLessEqual(len(self.daemon.connections()), 4, "no more connections than requests at once")
        for c in self.daemon.connections():
            self.assertEqual(self.daemon.ops(c)[0], "hello")
            self.assertEqual(self.daemon.ops(c).count("hello"), 1)
        self.assertEqual(len(self.daemon.of("decide")), 20)

    @unittest.skipUnless(hasattr(os, "fork"), "needs fork")
    def test_a_forked_child_never_uses_the_parents_connection(self):
        app, _ = make_app(self.daemon.path)
        client = app.test_client()
        self.assertEqual(client.get("/users/1").status_code, 200)
        pid = os.fork()
        if pid == 0:  # the child: one request, then out without running the test runner's exit
            code = 0 if client.get("/users/2").status_code == 200 else 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        self.assertEqual(client.get("/users/3").status_code, 200)
        self.assertEqual(self.daemon.ops(1), ["hello", "decide", "decide"])
        self.assertEqual(self.daemon.ops(2), ["hello", "decide"])


class OnError(unittest.TestCase):
    def absent(self):
        d = tempfile.mkdtemp(prefix="shield-flask-absent-")
        self.addCleanup(os.rmdir, d)
        return os.path.join(d, "app.sock")

    def test_open_allows_counts_and_logs_once(self):
        app, shield = make_app(self.absent(), on_error="open")
        client = app.test_client()
        with self.assertLogs("shield_flask", logging.WARNING) as logs:
            statuses = [client.post("/login").status_code for _ in range(3)]
        self.assertEqual(statuses, [200] * 3)
        self.assertEqual(shield.errors, 3)
        self.assertEqual(len(logs.records), 1)
        self.assertIn("cannot be asked", logs.output[0])

    def test_closed_refuses_with_a_503_problem(self):
        app, shield = make_app(self.absent(), on_error="closed")
        with self.assertLogs("shield_flask", logging.WARNING):
            r = app.test_client().post("/login")
        self.assertEqual(r.status_code, 503)
        self.assertEqual(r.headers["Content-Type"], "application/problem+json")
        body = json.loads(r.data)
        self.assertEqual(
            (body["type"], body["title"], body["status"]),
            ("https://shield.dev/problems/unavailable", "Service Unavailable", 503),
        )
        self.assertEqual(shield.errors, 1)

    def test_exempt_views_work_without_the_daemon(self):
        app, shield = make_app(self.absent(), on_error="closed")
        self.assertEqual(app.test_client().get("/health").status_code, 200)
        self.assertEqual(shield.errors, 0)

    def test_the_daemons_on_error_wins_after_hello(self):
        daemon = FakeDaemon()
        daemon.on_error = "closed"
        app, shield = make_app(daemon.path, on_error="open")
        client = app.test_client()
        self.assertEqual(client.get("/users/1").status_code, 200)
        daemon.stop()
        with self.assertLogs("shield_flask", logging.WARNING):
            self.assertEqual(client.get("/users/1").status_code, 503)
        self.assertEqual(shield.on_error, "closed")

    def test_outage_logged_again_after_recovery(self):
        daemon = FakeDaemon()
        self.addCleanup(daemon.stop)
        app, shield = make_app(daemon.path)
        client = app.test_client()
        daemon.release.clear()  # the daemon stops answering
        app.config["SHIELD_TIMEOUT"] = 0.5
        with self.assertLogs("shield_flask", logging.WARNING) as logs:
            self.assertEqual(client.get("/users/1").status_code, 200)
        app.config["SHIELD_TIMEOUT"] = 30
        daemon.release.set()
        with self.assertLogs("shield_flask", logging.WARNING) as logs:
            self.assertEqual(client.get("/users/1").status_code, 200)
        self.assertIn("answers again", logs.output[0])
        self.assertEqual(shield.errors, 1)

    def test_timeout_applies_on_error_and_the_next_request_reconnects(self):
        daemon = FakeDaemon()
        daemon.on_error = "closed"
        self.addCleanup(daemon.stop)
        # The first round trip (hello: the daemon's on_error) must not time out on a loaded
        # machine; only the held one gets the short timeout.
        app, shield = make_app(daemon.path, on_error="open", timeout=30)
        client = app.test_client()
        self.assertEqual(client.get("/users/1").status_code, 200)
        self.assertEqual(shield.errors, 0)
        app.config["SHIELD_TIMEOUT"] = 0.2
        daemon.release.clear()  # replies held until released: the client times out
        with self.assertLogs("shield_flask", logging.WARNING) as logs:
            r = client.get("/users/2")
        self.assertEqual(r.status_code, 503)
        self.assertIn("timed out", logs.output[0])
        self.assertEqual(shield.errors, 1)
        daemon.release.set()
        app.config["SHIELD_TIMEOUT"] = 30
        self.assertEqual(client.get("/users/3").status_code, 200)
        self.assertEqual(daemon.ops(2), ["hello", "decide"])

    def test_after_a_timeout_the_daemon_is_not_asked_during_the_backoff(self):
        daemon = FakeDaemon()
        daemon.on_error = "closed"
        self.addCleanup(daemon.stop)
        # A back-off far longer than the test: the second request must not wait on the daemon.
        # The first round trip (hello: the daemon's on_error "closed") must not time out on a
        # loaded machine, or the app's own "open" applies; only the held one gets 0.2 s.
        app, shield = make_app(daemon.path, timeout=30, backoff=3600)
        client = app.test_client()
        self.assertEqual(client.get("/users/1").status_code, 200)
        self.assertEqual(shield.errors, 0)
        app.config["SHIELD_TIMEOUT"] = 0.2
        daemon.release.clear()
        with self.assertLogs("shield_flask", logging.WARNING):
            self.assertEqual(client.get("/users/2").status_code, 503)
        asked = len(daemon.of("decide"))
        self.assertEqual(client.get("/users/3").status_code, 503)
        self.assertEqual(len(daemon.of("decide")), asked, "asked during the back-off")
        self.assertEqual(daemon.connections(), [1], "no new connection during the back-off")
        self.assertEqual(shield.errors, 2)
        daemon.release.set()

    def test_error_reply_applies_on_error(self):
        daemon = FakeDaemon()
        self.addCleanup(daemon.stop)
        daemon.on_error = "closed"
        daemon.decide = lambda req: {"ok": False, "error": "bad field types"}
        app, shield = make_app(daemon.path, on_error="open")
        with self.assertLogs("shield_flask", logging.WARNING):
            self.assertEqual(app.test_client().get("/users/1").status_code, 503)
        self.assertEqual(shield.errors, 1)

    def test_bad_config_is_refused(self):
        app = Flask(__name__)
        app.config["SHIELD_ON_ERROR"] = "maybe"
        with self.assertRaises(ValueError):
            Shield(app)
        app = Flask(__name__)
        app.config["SHIELD_TIMEOUT"] = 0
        with self.assertRaises(ValueError):
            Shield(app)
        app = Flask(__name__)
        app.config["SHIELD_BACKOFF"] = -1
        with self.assertRaises(ValueError):
            Shield(app)
        for bad in (0, -3, 2.5, "8", True, None):
            app = Flask(__name__)
            app.config["SHIELD_POOL_SIZE"] = bad
            with self.assertRaisesRegex(ValueError, "SHIELD_POOL_SIZE must be a whole number"):
                Shield(app)
            self.assertNotIn("shield", app.extensions, "a refused config must not be installed")
        app = Flask(__name__)
        app.config["SHIELD_POOL_SIZE"] = 1
        Shield(app)


if __name__ == "__main__":
    unittest.main()
