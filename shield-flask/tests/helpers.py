"""What the shield_flask tests share: the demo app (`make_app`), the test case with a fake
daemon (`Base`) and decide handlers that count like the daemon (`login_decider`,
`cost_decider`). Not a test module: the test_*.py modules import it."""

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


def make_app(socket_path, on_error="open", timeout=30, before=None, backoff=0, pool_size=None):
    """The demo app. `timeout` is long by default: a reply of the fake daemon that a loaded
    machine delays must not turn into on_error; a test of timeouts shortens it
    (`app.config["SHIELD_TIMEOUT"]`) only around the request it means to time out."""
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
