"""Users and roles against a real ``amvad serve``: which role may call every route (anonymous, viewer,
admin), logins with their session cookie, the limit on failed logins, the WebSocket with a cookie, and user
management over the API. ``ROLES`` names every route of the app; a route that is added without a role, or
without a line here, fails ``test_every_route_declares_the_role_this_table_gives_it``."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest
from websockets.sync.client import connect

from amvad.service.users import UserStore
from tests.support.servers import running_service

pytestmark = pytest.mark.integration
PASSWORDS = {"ada": "ada-password-1", "vic": "vic-password-1"}
WINDOW_S = 5  # the service's login window in this module (auth.login_window_s)

V, A, P = "viewer", "admin", "public"
ROLES = {
    ("GET", "/healthz"): P, ("GET", "/readyz"): P, ("GET", "/metrics"): P, ("GET", "/docs"): P,
    ("GET", "/login"): P, ("POST", "/v1/login"): P, ("POST", "/v1/logout"): P,
    ("GET", "/v1/me"): V, ("GET", "/"): V, ("GET", "/review"): V,
    # cameras: viewers watch, admins change
    ("GET", "/v1/cameras"): V, ("GET", "/v1/cameras/{camera_id}"): V, ("GET", "/v1/cameras/{camera_id}/scores"): V,
    ("GET", "/v1/cameras/{camera_id}/heatmap.jpg"): V, ("WS", "/v1/cameras/{camera_id}/ws"): V,
    ("POST", "/v1/cameras"): A, ("PATCH", "/v1/cameras/{camera_id}"): A, ("DELETE", "/v1/cameras/{camera_id}"): A,
    ("POST", "/v1/cameras/{camera_id}/recordings"): A, ("GET", "/v1/cameras/{camera_id}/recordings"): A,
    ("POST", "/v1/cameras/{camera_id}/calibrate"): A, ("GET", "/v1/cameras/{camera_id}/calibration"): A,
    ("GET", "/v1/cameras/{camera_id}/calibrations"): A, ("GET", "/v1/cameras/{camera_id}/calibrations/{job_id}"): A,
    ("DELETE", "/v1/cameras/{camera_id}/calibrations/{job_id}"): A,
    # events and their evidence: viewers read them and give feedback
    ("GET", "/v1/events"): V, ("GET", "/v1/events/cameras"): V, ("GET", "/v1/cameras/{camera_id}/events"): V,
    ("GET", "/v1/cameras/{camera_id}/events/{event_id}"): V,
    ("GET", "/v1/cameras/{camera_id}/events/{event_id}/clip.mp4"): V,
    ("GET", "/v1/cameras/{camera_id}/events/{event_id}/snapshot.jpg"): V,
    ("GET", "/v1/cameras/{camera_id}/events/{event_id}/scores"): V,
    ("POST", "/v1/cameras/{camera_id}/events/{event_id}/feedback"): V,
    # everything else is an admin's
    ("POST", "/v1/clips"): A, ("GET", "/v1/clips/{job_id}"): A, ("GET", "/v1/clips/{job_id}/plot.png"): A,
    ("GET", "/v1/clips/{job_id}/frames/{frame_id}/heatmap.jpg"): A,
    ("GET", "/v1/models"): A, ("POST", "/v1/models"): A, ("POST", "/v1/models/fit"): A, ("GET", "/v1/models/fit"): A,
    ("GET", "/v1/models/fit/{job_id}"): A, ("DELETE", "/v1/models/fit/{job_id}"): A, ("GET", "/v1/models/{name}"): A,
    ("GET", "/v1/models/{name}/card.md"): A, ("POST", "/v1/models/{name}/rollback"): A,
    ("DELETE", "/v1/models/{name}"): A,
    ("GET", "/v1/recordings"): A, ("GET", "/v1/recordings/{rec_id}"): A,
    ("GET", "/v1/recordings/{rec_id}/segments/{index}.mp4"): A, ("DELETE", "/v1/recordings/{rec_id}"): A,
    ("GET", "/v1/webhooks"): A, ("POST", "/v1/webhooks"): A, ("DELETE", "/v1/webhooks/{hook_id}"): A,
    ("GET", "/v1/backup"): A,
    ("GET", "/v1/users"): A, ("POST", "/v1/users"): A, ("PATCH", "/v1/users/{name}"): A,
    ("DELETE", "/v1/users/{name}"): A, ("POST", "/v1/users/{name}/keys"): A,
    ("DELETE", "/v1/users/{name}/keys/{key_id}"): A,
}
NOT_ROUTES = {"/openapi.json", "/docs-assets"}  # Starlette's own: the schema and Swagger's files, for anyone


def declared_role(route) -> str | None:
    """The highest role any dependency of the route (its router's, its own, its parameters') declares."""
    found, todo = [], [route.dependant]
    while todo:
        dep = todo.pop()
        if role := getattr(dep.call, "amvad_role", None):
            found.append(role)
        todo.extend(dep.dependencies)
    rank = {"public": 0, "viewer": 1, "admin": 2}
    return max(found, key=rank.__getitem__) if found else None


def app_routes(tmp_path) -> dict[tuple[str, str], str | None]:
    from amvad.service.app import create_app
    from amvad.service.config import ServiceSettings
    app = create_app(ServiceSettings(model="unused", state_dir=tmp_path), services=object())
    try:
        from fastapi.routing import iter_route_contexts  # FastAPI >= 0.16x includes routers lazily
        routes = list(iter_route_contexts(app.routes))
    except ImportError:
        routes = app.routes
    out = {}
    for route in routes:
        if route.path in NOT_ROUTES:
            continue
        methods = sorted(route.methods or ()) if getattr(route, "methods", None) else ["WS"]
        for method in methods:
            out[(method, route.path)] = declared_role(route)
    return out


def test_every_route_declares_the_role_this_table_gives_it(tmp_path):
    routes = app_routes(tmp_path)
    missing = sorted(k for k, role in routes.items() if role is None)
    assert not missing, f"routes without a role (add VIEWER, ADMIN or PUBLIC): {missing}"
    assert sorted(set(routes) - set(ROLES)) == [], "routes this test does not know: classify them in ROLES"
    assert sorted(set(ROLES) - set(routes)) == [], "ROLES names routes the app no longer has"
    wrong = {k: (routes[k], ROLES[k]) for k in ROLES if routes[k] != ROLES[k]}
    assert not wrong, f"(declared, expected): {wrong}"


@pytest.fixture(scope="module")
def world(tiny_model, tmp_path_factory):
    """A service with the api_key setting and two users, each with a password and an API key."""
    tmp = tmp_path_factory.mktemp("roles")
    store, keys = UserStore(tmp / "state" / "users.json"), {}
    for name, role in (("ada", "admin"), ("vic", "viewer")):
        store.add(name, role, PASSWORDS[name])
        keys[name] = store.add_key(name, "test")[1]
    with running_service(tmp, tiny_model, {"auth": {"login_window_s": WINDOW_S}}) as svc:
        yield svc, keys


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def call(svc, method: str, path: str, key: str | None) -> tuple[int, str]:
    """(status, error message) of one call as a client with ``key`` (None: anonymous). Changes send ``{}``,
    and every id is ``1``, which exists nowhere: an admin gets 404 or 422, never a change."""
    if method == "WS":
        url = svc.base.replace("http", "ws", 1) + concrete(path)
        with connect(url, additional_headers={"X-API-Key": key} if key else {}) as ws:
            first = json.loads(ws.recv(timeout=10))
        return first.get("status", 200), first.get("error", "")
    headers = {"X-API-Key": key} if key else {}
    with httpx.Client(base_url=svc.base, timeout=60) as http:
        r = http.request(method, concrete(path), headers=headers, json={} if method in ("POST", "PATCH") else None)
    try:
        error = r.json().get("error", "") if r.headers.get("content-type") == "application/json" else ""
    except (ValueError, AttributeError):
        error = ""
    return r.status_code, error


@pytest.mark.parametrize("method,path", sorted(ROLES), ids=[f"{m} {p}" for m, p in sorted(ROLES)])
def test_who_may_call_each_route(world, method, path):
    svc, keys = world
    role = ROLES[(method, path)]
    anonymous, viewer, admin = call(svc, method, path, None), call(svc, method, path, keys["vic"]), \
        call(svc, method, path, keys["ada"])
    if role == "public":
        assert anonymous[0] not in (401, 403), anonymous
    else:
        assert anonymous[0] == 401 and "API key" in anonymous[1], anonymous
    if role == "admin":
        assert viewer[0] == 403 and "needs the admin role" in viewer[1], viewer
    else:
        assert viewer[0] not in (401, 403), viewer
    assert admin[0] not in (401, 403), admin


def test_the_api_key_setting_stays_an_admin_key_and_wrong_keys_are_401(world):
    svc, keys = world
    assert svc.http.get("/v1/me").json() == {"name": "api_key", "role": "admin", "via": "api_key", "auth": True}
    assert svc.http.get("/v1/users").status_code == 200
    assert httpx.get(f"{svc.base}/v1/me", headers={"Authorization": f"Bearer {keys['vic']}"}).json()["role"] == "viewer"
    r = httpx.get(f"{svc.base}/v1/cameras", headers={"X-API-Key": keys["vic"] + "x"})
    assert r.status_code == 401 and r.json()["error"] == "wrong API key"


def login(svc, name: str, password: str, **kw) -> httpx.Response:
    return httpx.post(f"{svc.base}/v1/login", json={"name": name, "password": password}, **kw)


def test_a_login_sets_an_httponly_samesite_cookie_whose_session_has_the_users_role(world):
    svc, _ = world
    r = login(svc, "vic", PASSWORDS["vic"])
    assert r.status_code == 200 and r.json()["role"] == "viewer", r.text
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("amvad_session=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Path=/" in cookie and "Secure" not in cookie  # plain HTTP here; test_tls.py checks Secure
    with httpx.Client(base_url=svc.base, cookies=r.cookies) as browser:
        assert browser.get("/v1/me").json() == {"name": "vic", "role": "viewer", "via": "session", "auth": True}
        assert browser.get("/v1/cameras").status_code == 200
        r = browser.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/x"})
        assert r.status_code == 403 and r.json()["error"] == "this needs the admin role; vic is a viewer"
        token = browser.cookies["amvad_session"]
        assert browser.post("/v1/logout").json() == {"logged_out": True}
        assert "amvad_session" not in browser.cookies
    # the token of a session that ended lets nobody in
    r = httpx.get(f"{svc.base}/v1/cameras", headers={"cookie": f"amvad_session={token}"})
    assert r.status_code == 401 and "log in again" in r.json()["error"]
    assert login(svc, "vic", "wrong-password").status_code == 401
    r = httpx.post(f"{svc.base}/v1/login", json={"name": "vic"})
    assert r.status_code == 422 and "password" in r.json()["error"]


def test_a_form_login_goes_on_to_a_local_page_only(world):
    svc, _ = world
    for wanted, lands in (("/review?camera=gate", "/review?camera=gate"), ("//evil.example/x", "/"),
                          ("https://evil.example/", "/")):
        r = httpx.post(f"{svc.base}/v1/login", data={"name": "vic", "password": PASSWORDS["vic"], "next": wanted})
        assert r.status_code == 303 and r.headers["location"] == lands and "amvad_session" in r.cookies


def test_pages_send_a_browser_without_credentials_to_the_login_page(world):
    svc, _ = world
    r = httpx.get(f"{svc.base}/review?camera=gate", headers={"accept": "text/html"})
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Freview%3Fcamera%3Dgate"
    assert httpx.get(f"{svc.base}/", headers={"accept": "*/*"}).status_code == 401  # an API client: 401
    page = httpx.get(f"{svc.base}/login")
    assert page.status_code == 200 and '<form id="login"' in page.text and "http" not in page.text.split("<script>")[1]
    assert "<script src" not in page.text and "<link rel=\"stylesheet\"" not in page.text  # nothing from a CDN


def test_a_session_cookie_is_refused_on_changes_from_another_origin_and_works_on_the_websocket(world):
    svc, _ = world
    cookies = login(svc, "vic", PASSWORDS["vic"]).cookies
    host = f"127.0.0.1:{svc.port}"
    with httpx.Client(base_url=svc.base, cookies=cookies) as browser:
        feedback = "/v1/cameras/none/events/1/feedback"
        r = browser.post(feedback, json={"label": "normal"}, headers={"origin": "http://127.0.0.1:9999"})
        assert r.status_code == 403 and "http://127.0.0.1:9999" in r.json()["error"]
        assert browser.post(feedback, json={"label": "normal"}, headers={"origin": f"http://{host}"}).status_code == 404
        assert browser.get("/v1/cameras", headers={"origin": "http://127.0.0.1:9999"}).status_code == 200  # reads
    ws = f"ws://{host}/v1/cameras/none/ws"
    cookie = f"amvad_session={cookies['amvad_session']}"
    for origin, status in ((f"http://{host}", 404), ("http://127.0.0.1:9999", 403)):
        with connect(ws, additional_headers={"cookie": cookie}, origin=origin) as conn:
            assert json.loads(conn.recv(timeout=10))["status"] == status  # 404: let in, no such camera
    with connect(ws, origin=f"http://{host}") as conn:
        assert json.loads(conn.recv(timeout=10))["status"] == 401


def test_an_admin_manages_users_and_their_api_keys(world):
    svc, _ = world
    r = svc.http.post("/v1/users", json={"name": "nvr", "role": "viewer"})  # a machine: keys only
    assert r.status_code == 201 and r.json()["password"] is False, r.text
    assert svc.http.post("/v1/users", json={"name": "nvr", "role": "viewer"}).status_code == 409
    assert svc.http.post("/v1/users", json={"name": "bad name", "role": "viewer"}).status_code == 422
    assert svc.http.post("/v1/users", json={"name": "x", "role": "root"}).status_code == 422
    assert svc.http.post("/v1/users", json={"name": "x", "role": "viewer", "password": "short"}).status_code == 422
    made = svc.http.post("/v1/users/nvr/keys", json={"label": "recorder"}).json()
    assert made["key"].startswith("amvad_") and made["label"] == "recorder"
    listed = {u["name"]: u for u in svc.http.get("/v1/users").json()}
    assert listed["nvr"]["keys"] == [{"id": made["id"], "label": "recorder", "created": made["created"]}]
    assert made["key"] not in svc.http.get("/v1/users").text
    nvr = {"X-API-Key": made["key"]}
    assert httpx.get(f"{svc.base}/v1/cameras", headers=nvr).status_code == 200
    assert httpx.get(f"{svc.base}/v1/webhooks", headers=nvr).status_code == 403
    assert svc.http.patch("/v1/users/nvr", json={"role": "admin"}).json()["role"] == "admin"
    assert httpx.get(f"{svc.base}/v1/webhooks", headers=nvr).status_code == 200  # the key follows the role
    assert svc.http.delete(f"/v1/users/nvr/keys/{made['id']}").status_code == 200
    assert httpx.get(f"{svc.base}/v1/cameras", headers=nvr).status_code == 401
    assert svc.http.delete("/v1/users/nvr").json() == {"deleted": "nvr"}
    assert svc.http.delete("/v1/users/nvr").status_code == 404


def test_failed_logins_are_limited_per_name_and_per_address_then_429_and_counted(world):
    svc, _ = world

    def logins(result: str) -> float:
        text = httpx.get(f"{svc.base}/metrics").text
        line = re.search(rf'^vad_logins_total{{result="{result}"}} (\S+)$', text, re.MULTILINE)
        return float(line.group(1)) if line else 0.0

    time.sleep(WINDOW_S)  # the other tests' failures age out
    failed, throttled = logins("failed"), logins("throttled")
    # per name: five wrong passwords for vic, then even the right one waits
    for _ in range(5):
        assert login(svc, "vic", "not-the-password").status_code == 401
    r = login(svc, "vic", PASSWORDS["vic"])
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= WINDOW_S, r.text
    assert "too many failed logins" in r.json()["error"]
    assert logins("failed") == failed + 5 and logins("throttled") == throttled + 1
    # per address: the same client trying other names is held back too
    assert login(svc, "someone-else", "whatever-password").status_code == 429
    time.sleep(int(r.headers["retry-after"]) + 0.5)
    assert login(svc, "vic", PASSWORDS["vic"]).status_code == 200  # the window passed
    time.sleep(WINDOW_S)
