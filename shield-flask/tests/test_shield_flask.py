"""shield_flask against a fake daemon on a temporary Unix socket (run by `cargo xtask test`:
`python3 -m unittest discover -s shield-flask/tests` with shield-flask on PYTHONPATH)."""

import json
import logging
import os
import tempfile
import threading
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

    def test_a_charge_past_the_largest_cost_is_refused_not_waved_through(self):
        # charge(len(rows)) with rows from the request: a count past u64 made the daemon
        # refuse the line, and on_error "open" let the work run uncharged.
        self.daemon.decide = cost_decider(burst=10)
        app, done = self.make()
        client = app.test_client()
        shield = app.extensions["shield"]
        for rows in (10**30, 2**64, 100_000_001):
            r = client.post(f"/export?rows={rows}")
            self.assertEqual(r.status_code, 429, r.data)
        self.assertEqual(done, [], "the refused requests' work must not run")
        self.assertEqual(shield.errors, 0)
        charged = [d["cost"] for d in self.daemon.of("decide") if "cost" in d]
        self.assertEqual(charged, [100_000_001] * 3)

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

    def test_report_takes_a_user_that_is_not_a_string_as_identify_does(self):
        # report(user=current_user.id), an int: sent as a JSON number, the daemon refused the
        # report (a string is expected), so the signal never counted and never banned.
        app, shield = make_app(self.daemon.path)
        with app.test_request_context("/login", method="POST"):
            reply = shield.report("login_failed", user=42)
        self.assertEqual(reply and reply["counted"], True)
        self.assertEqual(shield.errors, 0)
        (report,) = self.daemon.of("report")
        self.assertEqual(report["user"], "42")

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

    def test_an_identity_with_a_lone_surrogate_is_still_decided_and_reported(self):
        # Python's json takes "\ud800" from a request body; the daemon (serde_json) refuses
        # a line holding it. An identity read from the JSON body made every decision an
        # error (on_error "open": waved through) and every report uncounted (never banned).
        self.daemon.decide = login_decider(limit=0)
        reported = []
        self.daemon.report = lambda req: reported.append(req) or {"counted": True, "limited": True, "banned": False}
        holder = {}

        def before():
            from flask import request as rq

            holder["shield"].identify(user=(rq.get_json(silent=True) or {}).get("user"))

        app, shield = make_app(self.daemon.path, on_error="open", before=before)
        holder["shield"] = shield
        client = app.test_client()
        for user in ("\ud800alice", "\udfff" * 3000):
            r = client.post("/login", data=json.dumps({"user": user}), content_type="application/json",
                            environ_base={"REMOTE_ADDR": "127.0.0.1"})
            self.assertEqual(r.status_code, 429, r.data)
        self.assertEqual(shield.errors, 0)
        first, second = (d["user"] for d in self.daemon.of("decide"))
        self.assertTrue(first.startswith("sha256:") and first != second, (first, second))
        with app.test_request_context("/login", method="POST"):
            shield.identify(user="\ud83dbob")
            reply = shield.report("login_failed", key="\udc00acct")
        self.assertEqual(reply and reply["counted"], True)
        self.assertEqual(shield.errors, 0)
        self.assertTrue(reported[0]["user"].startswith("sha256:") and reported[0]["key"].startswith("sha256:"))

    def test_a_host_header_port_out_of_range_is_still_decided(self):
        # gunicorn on a Unix socket (behind nginx, `proxy_set_header Host $http_host`) takes
        # SERVER_PORT from the Host header: "Host: x:99999" made a port the daemon's u16
        # refuses, and on_error "open" waved the request through.
        self.daemon.decide = login_decider(limit=0)
        app, shield = make_app(self.daemon.path, on_error="open")
        client = app.test_client()
        for port in ("99999", "-1", "8000x", ""):
            r = client.post("/login", environ_base={"REMOTE_ADDR": "127.0.0.1"}, environ_overrides={"SERVER_PORT": port})
            self.assertEqual(r.status_code, 429, (port, r.data))
        self.assertEqual(shield.errors, 0)
        self.assertEqual([d["port"] for d in self.daemon.of("decide")], [None] * 4)
        client.post("/login", environ_base={"REMOTE_ADDR": "127.0.0.1"}, environ_overrides={"SERVER_PORT": "8000"})
        self.assertEqual(self.daemon.of("decide")[-1]["port"], 8000)

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
