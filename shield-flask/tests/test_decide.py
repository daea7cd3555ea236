"""shield_flask's decisions against a fake daemon on a temporary Unix socket: the decide
line, 429 and 403 problems, exempt views, `charge()` and in-flight slots (run by `cargo
xtask test`: `python3 -m unittest discover -s shield-flask/tests` with shield-flask on
PYTHONPATH)."""

import json
import unittest

from helpers import LOGIN_POLICY, Base, cost_decider, login_decider, make_app


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


if __name__ == "__main__":
    unittest.main()
