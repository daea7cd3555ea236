"""shield_flask against a fake daemon on a temporary Unix socket (run by `cargo xtask test`:
`python3 -m unittest discover -s shield-flask/tests` with shield-flask on PYTHONPATH)."""

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
import unittest

from flask import Flask, jsonify

from fake_daemon import FakeDaemon
from shield_flask import Shield

LOGIN_POLICY = '"login";q=5;w=60'


def login_decider(limit=5):
    """A decide handler that limits POST /login to `limit` requests, like the daemon."""
    state = {"n": 0}

    def decide(req):
        if req["rule"] != "/login" or req["method"] != "POST":
            return {"endpoint": None, "allow": True}
        state["n"] += 1
        remaining = limit - state["n"]
        if remaining >= 0:
            return {
                "allow": True,
                "endpoint": "login",
                "client": req["peer"],
                "limit": limit,
                "remaining": remaining,
                "reset": 12,
                "policy": LOGIN_POLICY,
            }
        return {
            "allow": False,
            "status": 429,
            "endpoint": "login",
            "client": req["peer"],
            "retry_after": 12,
            "limit": limit,
            "remaining": 0,
            "reset": 12,
            "policy": LOGIN_POLICY,
            "detail": "login allows 5 requests per minute (burst 5) per ip; retry in 12 s",
        }

    return decide


def make_app(socket_path, on_error="open", timeout=0.5, before=None, backoff=0, pool_size=None):
    app = Flask(__name__)
    app.config.update(
        SHIELD_SOCKET=socket_path, SHIELD_ON_ERROR=on_error, SHIELD_TIMEOUT=timeout, SHIELD_BACKOFF=backoff
    )
    if pool_size is not None:
        app.config["SHIELD_POOL_SIZE"] = pool_size
    if before is not None:
        app.before_request(before)
    shield = Shield(app)

    @app.post("/login")
    def login():
        if "bad" in (app.config.get("NEXT_PASSWORD") or ""):
            shield.report("login_failed")
            return jsonify(error="wrong password"), 401
        return jsonify(ok=True)

    @app.get("/users/<int:uid>")
    def user(uid):
        return jsonify(id=uid)

    @app.get("/health")
    @shield.exempt
    def health():
        return "ok"

    @shield.exempt
    @app.get("/ready")
    def ready():
        return "ready"

    return app, shield


class Base(unittest.TestCase):
    def setUp(self):
        self.daemon = FakeDaemon()
        self.addCleanup(self.daemon.stop)


def cost_decider(burst=10, endpoint_cost=1):
    """Token arithmetic like the daemon's (no refill): `cost` absent = the endpoint's."""
    state = {"left": burst}

    def decide(req):
        if req["rule"] != "/export":
            return {"endpoint": None, "allow": True}
        cost = req.get("cost", endpoint_cost)
        base = {"endpoint": "export", "client": req["peer"], "limit": burst, "reset": 60, "policy": '"export";q=10;w=60'}
        if cost <= state["left"]:
            state["left"] -= cost
            return dict(base, allow=True, remaining=state["left"])
        return dict(base, allow=False, status=429, retry_after=6, remaining=0, detail=f"costs {cost}")

    return decide


class Charge(Base):
    def make(self):
        app, shield = make_app(self.daemon.path)
        done = []

        @app.post("/export")
        def export():
            from flask import request as rq

            shield.charge(int(rq.args.get("rows", "1")))
            done.append(rq.args.get("rows"))
            return "exported"

        @app.post("/free")
        def free():
            self.assertIsNone(shield.charge(3))
            return "free"

        return app, done

    def test_charge_draws_more_tokens_before_the_work_and_aborts_over_the_limit(self):
        self.daemon.decide = cost_decider(burst=10)
        app, done = self.make()
        client = app.test_client()
        r = client.post("/export?rows=4")  # 1 on arrival + 4 charged: 5 left
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.headers["RateLimit"], '"export";r=5;t=60')
        arrival, charged = self.daemon.of("decide")
        self.assertNotIn("cost", arrival)
        self.assertEqual(charged["cost"], 4)
        self.assertEqual((charged["rule"], charged["method"]), ("/export", "POST"))
        r = client.post("/export?rows=5")  # 1 on arrival leaves 4: the charge of 5 is refused
        self.assertEqual(r.status_code, 429)
        self.assertEqual(r.headers["Content-Type"], "application/problem+json")
        self.assertEqual(r.headers["Retry-After"], "6")
        self.assertEqual(r.headers["RateLimit"], '"export";r=0;t=60')
        self.assertEqual(json.loads(r.data)["detail"], "costs 5")
        self.assertEqual(done, ["4"], "the refused request's work must not run")

    def test_charge_on_an_unmatched_route_sends_nothing_and_bad_counts_raise(self):
        self.daemon.decide = cost_decider()
        app, _ = self.make()
        client = app.test_client()
        self.assertEqual(client.post("/free").status_code, 200)
        self.assertEqual(len(self.daemon.of("decide")), 1, "no charge for a request without endpoint")
        with app.test_request_context("/export", method="POST"):
            _, shield = app, app.extensions["shield"]
            for bad in (0, -1, 1.5, True, "2"):
                with self.assertRaises(ValueError):
                    shield.charge(bad)


class InFlight(Base):
    """`concurrency = N` endpoints: the decide reply's slot is released when the request ends."""

    def make(self):
        app, shield = make_app(self.daemon.path)
        seen = []

        def decide(req):
            if req["rule"] != "/slow":
                return {"endpoint": None, "allow": True}
            seen.append(req)
            if req.get("charge"):
                return {"allow": True, "endpoint": "slow"}
            return {"allow": True, "endpoint": "slow", "slot": 40 + len(seen)}

        self.daemon.decide = decide

        @app.get("/slow")
        def slow():
            from flask import g as fg, request as rq

            # Released after the response: not yet while the view runs.
            mine, _ = fg._shield_slots[-1]
            self.assertNotIn(mine, [m["slot"] for m in self.daemon.of("release")])
            if rq.args.get("charge"):
                shield.charge(2)
            if rq.args.get("boom"):
                raise RuntimeError("the view failed")
            return "done"

        return app, seen

    def test_the_slot_is_released_after_the_response(self):
        app, seen = self.make()
        r = app.test_client().get("/slow")
        self.assertEqual(r.status_code, 200)
        self.assertEqual([m["slot"] for m in self.daemon.of("release")], [41])

    def test_the_slot_is_released_after_an_exception(self):
        app, _ = self.make()
        app.testing = False  # a real 500, as under gunicorn
        r = app.test_client().get("/slow?boom=1")
        self.assertEqual(r.status_code, 500)
        self.assertEqual([m["slot"] for m in self.daemon.of("release")], [41])

    def test_a_charge_takes_no_slot_and_unmatched_requests_release_nothing(self):
        app, seen = self.make()
        client = app.test_client()
        self.assertEqual(client.get("/slow?charge=1").status_code, 200)
        self.assertEqual(seen[1].get("charge"), True)
        self.assertEqual([m["slot"] for m in self.daemon.of("release")], [41])
        self.assertEqual(client.get("/users/1").status_code, 200)
        self.assertEqual(len(self.daemon.of("release")), 1)

    def test_a_release_that_fails_closes_the_connection_so_the_daemon_frees_the_slot(self):
        app, _ = self.make()
        real = self.daemon._reply

        def no_release(req):
            if req.get("op") == "release":
                return {"ok": False, "error": "boom"}
            return real(req)

        self.daemon._reply = no_release
        client = app.test_client()
        self.assertEqual(client.get("/slow").status_code, 200)
        self.assertEqual(client.get("/slow").status_code, 200)
        self.assertEqual(len(self.daemon.connections()), 2, "the failed release's connection was replaced")


class Decisions(Base):
    def test_allowed_request_sends_the_decide_fields_and_gets_ratelimit_headers(self):
        self.daemon.decide = login_decider()
        app, _ = make_app(self.daemon.path)
        client = app.test_client()
        r = client.post(
            "/login",
            headers={"X-Forwarded-For": "198.51.100.7, 10.0.0.2", "X-Api-Key": "abc", "X-Other": "no"},
            environ_base={"REMOTE_ADDR": "127.0.0.1"},
        )
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.headers["RateLimit-Policy"], LOGIN_POLICY)
        self.assertEqual(r.headers["RateLimit"], '"login";r=4;t=12')
        self.assertNotIn("Retry-After", r.headers)
        (decide,) = self.daemon.of("decide")
        self.assertEqual(
            decide,
            {
                "op": "decide",
                "method": "POST",
                "rule": "/login",
                "path": "/login",
                "peer": "127.0.0.1",
                "xff": "198.51.100.7, 10.0.0.2",
                "port": 80,
                "headers": {"X-Api-Key": "abc"},
                "user": None,
            },
        )

    def test_flask_rule_and_unmatched_requests(self):
        app, _ = make_app(self.daemon.path)
        client = app.test_client()
        r = client.get("/users/42")
        self.assertEqual(r.status_code, 200)
        self.assertNotIn("RateLimit", r.headers)
        self.assertNotIn("RateLimit-Policy", r.headers)
        self.assertEqual(client.get("/nowhere").status_code, 404)
        first, missing = self.daemon.of("decide")
        self.assertEqual((first["rule"], first["path"], first["xff"]), ("/users/<int:uid>", "/users/42", None))
        self.assertEqual((missing["rule"], missing["path"]), (None, "/nowhere"))

    def test_over_the_limit_is_a_429_problem(self):
        self.daemon.decide = login_decider()
        app, _ = make_app(self.daemon.path)
        client = app.test_client()
        statuses = [client.post("/login").status_code for _ in range(5)]
        self.assertEqual(statuses, [200] * 5)
        r = client.post("/login")
        self.assertEqual(r.status_code, 429)
        self.assertEqual(r.headers["Content-Type"], "application/problem+json")
        self.assertEqual(r.headers["Retry-After"], "12")
        self.assertEqual(r.headers["RateLimit-Policy"], LOGIN_POLICY)
        self.assertEqual(r.headers["RateLimit"], '"login";r=0;t=12')
        self.assertEqual(
            json.loads(r.data),
            {
                "type": "https://shield.dev/problems/rate-limited",
                "title": "Too Many Requests",
                "status": 429,
                "detail": "login allows 5 requests per minute (burst 5) per ip; retry in 12 s",
                "endpoint": "login",
                "retry_after": 12,
            },
        )

    def test_banned_is_a_403_problem(self):
        detail = "198.51.100.7 is banned for 900 s more (login: repeated limit violations)"
        self.daemon.decide = lambda req: {
            "allow": False,
            "status": 403,
            "endpoint": "login",
            "client": "198.51.100.7",
            "retry_after": 900,
            "detail": detail,
        }
        app, _ = make_app(self.daemon.path)
        r = app.test_client().post("/login")
        self.assertEqual(r.status_code, 403)
        self.assertEqual(r.headers["Content-Type"], "application/problem+json")
        self.assertEqual(r.headers["Retry-After"], "900")
        self.assertNotIn("RateLimit", r.headers)
        self.assertEqual(
            json.loads(r.data),
            {
                "type": "https://shield.dev/problems/banned",
                "title": "Forbidden",
                "status": 403,
                "detail": detail,
                "endpoint": "login",
                "retry_after": 900,
            },
        )

    def test_exempt_views_are_never_decided(self):
        app, _ = make_app(self.daemon.path)
        client = app.test_client()
        self.assertEqual(client.get("/health").data, b"ok")
        self.assertEqual(client.get("/ready").data, b"ready")
        self.assertEqual(self.daemon.of("decide"), [])

    def test_proxyfix_does_not_hide_the_tcp_peer(self):
        from werkzeug.middleware.proxy_fix import ProxyFix

        app, _ = make_app(self.daemon.path)
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)
        app.test_client().get(
            "/users/1", headers={"X-Forwarded-For": "203.0.113.9"}, environ_base={"REMOTE_ADDR": "127.0.0.1"}
        )
        (decide,) = self.daemon.of("decide")
        self.assertEqual((decide["peer"], decide["xff"]), ("127.0.0.1", "203.0.113.9"))


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
        app, _ = make_app(self.daemon.path)
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
        with self.assertLogs("shield_flask", logging.WARNING) as logs:
            self.assertEqual(client.get("/users/1").status_code, 200)
        daemon.release.set()
        with self.assertLogs("shield_flask", logging.WARNING) as logs:
            self.assertEqual(client.get("/users/1").status_code, 200)
        self.assertIn("answers again", logs.output[0])
        self.assertEqual(shield.errors, 1)

    def test_timeout_applies_on_error_and_the_next_request_reconnects(self):
        daemon = FakeDaemon()
        daemon.on_error = "closed"
        self.addCleanup(daemon.stop)
        app, shield = make_app(daemon.path, on_error="open", timeout=0.2)
        client = app.test_client()
        self.assertEqual(client.get("/users/1").status_code, 200)
        daemon.release.clear()  # replies held until released: the client times out
        with self.assertLogs("shield_flask", logging.WARNING) as logs:
            r = client.get("/users/2")
        self.assertEqual(r.status_code, 503)
        self.assertIn("timed out", logs.output[0])
        self.assertEqual(shield.errors, 1)
        daemon.release.set()
        self.assertEqual(client.get("/users/3").status_code, 200)
        self.assertEqual(daemon.ops(2), ["hello", "decide"])

    def test_after_a_timeout_the_daemon_is_not_asked_during_the_backoff(self):
        daemon = FakeDaemon()
        daemon.on_error = "closed"
        self.addCleanup(daemon.stop)
        # A back-off far longer than the test: the second request must not wait on the daemon.
        app, shield = make_app(daemon.path, timeout=0.2, backoff=3600)
        client = app.test_client()
        self.assertEqual(client.get("/users/1").status_code, 200)
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


class Reports(Base):
    def test_report_feeds_the_signal_with_the_request_identity(self):
        self.daemon.report = lambda req: {"counted": True, "limited": True, "banned": False}
        app, shield = make_app(self.daemon.path)
        app.config["NEXT_PASSWORD"] = "bad"
        r = app.test_client().post(
            "/login", headers={"X-Forwarded-For": "198.51.100.7"}, environ_base={"REMOTE_ADDR": "127.0.0.1"}
        )
        self.assertEqual(r.status_code, 401)
        (report,) = self.daemon.of("report")
        self.assertEqual(
            report,
            {
                "op": "report",
                "signal": "login_failed",
                "peer": "127.0.0.1",
                "xff": "198.51.100.7",
                "headers": {},
                "user": None,
                "key": None,
            },
        )

    def test_report_returns_the_reply_and_takes_key_and_user(self):
        app, shield = make_app(self.daemon.path)
        with app.test_request_context("/login", method="POST"):
            reply = shield.report("login_failed", key="acct-9", user="bob")
        self.assertEqual(reply["counted"], True)
        (report,) = self.daemon.of("report")
        self.assertEqual((report["key"], report["user"]), ("acct-9", "bob"))

    def test_unknown_signal_is_logged_and_counted_never_raised(self):
        app, shield = make_app(self.daemon.path)
        with app.test_request_context("/"):
            with self.assertLogs("shield_flask", logging.WARNING) as logs:
                self.assertIsNone(shield.report("no_such_signal"))
                self.assertIsNone(shield.report("no_such_signal"))
        self.assertEqual(len(logs.records), 1)
        self.assertIn('no [[signal]] named "no_such_signal"', logs.output[0])
        self.assertEqual(shield.errors, 2)

    def test_report_without_the_daemon_returns_none(self):
        d = tempfile.mkdtemp(prefix="shield-flask-absent-")
        self.addCleanup(os.rmdir, d)
        app, shield = make_app(os.path.join(d, "app.sock"))
        with app.test_request_context("/"):
            with self.assertLogs("shield_flask", logging.WARNING):
                self.assertIsNone(shield.report("login_failed"))
        self.assertEqual(shield.errors, 1)


if __name__ == "__main__":
    unittest.main()


class Hostile(Base):
    """What a client (or a garbled reply) can throw at the middleware."""

    def test_an_oversized_request_is_still_decided_not_waved_through(self):
        # 70 KB in the key header and in X-Forwarded-For: sent as is, the line would pass
        # the daemon's 64 KiB, and on_error "open" would let the request through uncounted.
        self.daemon.decide = login_decider(limit=0)
        app, shield = make_app(self.daemon.path, on_error="open")
        client = app.test_client()
        key = "k" * 70_000
        xff = ", ".join(["203.0.113.9"] * 6000) + ", 198.51.100.7"
        r = client.post(
            "/login",
            headers={"X-Api-Key": key, "X-Forwarded-For": xff},
            environ_base={"REMOTE_ADDR": "127.0.0.1"},
        )
        self.assertEqual(r.status_code, 429, r.data)
        self.assertEqual(shield.errors, 0)
        (decide,) = self.daemon.of("decide")
        sent = decide["headers"]["X-Api-Key"]
        self.assertTrue(sent.startswith("sha256:") and len(sent) == 7 + 64, sent[:80])
        self.assertLessEqual(len(decide["xff"]), 4096)
        self.assertTrue(decide["xff"].endswith(" 198.51.100.7"), decide["xff"][-40:])
        # The same long key gives the same digest (one bucket per key).
        client.post("/login", headers={"X-Api-Key": key}, environ_base={"REMOTE_ADDR": "127.0.0.1"})
        self.assertEqual(self.daemon.of("decide")[1]["headers"]["X-Api-Key"], sent)

    def test_a_request_of_escaped_characters_still_fits_the_line_and_is_decided(self):
        # JSON escapes a non-ASCII character as \\uXXXX (6 bytes; 12 for an emoji): 4,096
        # emoji in the path and 4,096 latin-1 characters in X-Forwarded-For made a 72 KB
        # line, which the client refused to send, and on_error "open" waved it through.
        def decide(req):
            if not req["path"].startswith("/files/"):
                return {"endpoint": None, "allow": True}
            return {"allow": False, "status": 429, "endpoint": "files", "retry_after": 3, "detail": "over"}

        self.daemon.decide = decide
        app, shield = make_app(self.daemon.path, on_error="open")

        @app.get("/files/<path:name>")
        def files(name):
            return "the whole file"

        client = app.test_client()
        path = "/files/" + "\U0001F600" * 5000
        xff = ", ".join(["\xff" * 60] * 100) + ", 198.51.100.7"
        key = "\xe9" * 1000
        r = client.get(path, headers={"X-Forwarded-For": xff, "X-Api-Key": key},
                       environ_base={"REMOTE_ADDR": "127.0.0.1"})
        self.assertEqual(r.status_code, 429, r.data[:200])
        self.assertEqual(shield.errors, 0)
        (decide_req,) = self.daemon.of("decide")
        line = json.dumps(decide_req).encode()
        self.assertLessEqual(len(line), 64 * 1024)
        self.assertTrue(decide_req["path"].startswith("/files/\U0001F600"), decide_req["path"][:20])
        self.assertTrue(decide_req["xff"].endswith(" 198.51.100.7"), decide_req["xff"][-40:])
        # A short key is sent as it is.
        r = client.get("/files/a", headers={"X-Api-Key": "\xe9" * 10}, environ_base={"REMOTE_ADDR": "127.0.0.1"})
        self.assertEqual(self.daemon.of("decide")[1]["headers"]["X-Api-Key"], "\xe9" * 10)

    def test_garbage_numbers_in_a_reply_never_make_a_500(self):
        replies = iter([
            {"allow": True, "endpoint": "login", "policy": LOGIN_POLICY, "remaining": "abc", "reset": [1]},
            {"allow": True, "endpoint": "login", "policy": LOGIN_POLICY, "remaining": 1e308 * 10, "reset": None},
        ])
        self.daemon.decide = lambda req: next(replies)
        app, _ = make_app(self.daemon.path)
        client = app.test_client()
        for _ in range(2):
            r = client.post("/login", environ_base={"REMOTE_ADDR": "127.0.0.1"})
            self.assertEqual(r.status_code, 200, r.data)
            self.assertEqual(r.headers["RateLimit"], '"login";r=0;t=0')


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
        time.sleep(0.2)
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
        app, shield = make_app(self.daemon.path, timeout=0.3, pool_size=2)
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
        with self.assertLogs("shield_flask", logging.WARNING):
            self.assertEqual(client.get("/users/3").status_code, 200)  # timed out: on_error open
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
