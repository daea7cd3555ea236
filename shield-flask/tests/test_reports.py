"""shield_flask's reports and what a hostile client (or a garbled reply) can throw at it,
against a fake daemon on a temporary Unix socket (run by `cargo xtask test`: `python3 -m
unittest discover -s shield-flask/tests` with shield-flask on PYTHONPATH)."""

import json
import logging
import os
import tempfile
import unittest

from helpers import LOGIN_POLICY, Base, login_decider, make_app


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


if __name__ == "__main__":
    unittest.main()
