"""API keys, users, sessions and the console's identity checks, on a real PostgreSQL (see conftest.py).

The console app runs here as it runs in its container: migrations and the bootstrap as the owner, requests as the
application role, credentials from secret files; only the HTTP server is replaced by direct WSGI calls."""

import base64
import hashlib
import io
import json
import re
from urllib.parse import urlencode

import pytest

from modelswarm import contract
from modelswarm.apps.console import accounts, app

# ------------------------------------------------------------------------------------------------ pure parts


def test_a_new_key_has_the_contract_format_and_enough_randomness():
    keys = {accounts.new_key()[0] for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert contract.matches(contract.API_KEY_PATTERN, key)
        assert len(base64.urlsafe_b64decode(key.split("_", 2)[2] + "=")) == 32  # 32 random bytes
    key, key_id = accounts.new_key()
    assert accounts.key_id_of(key) == key_id
    assert accounts.digest(key) == hashlib.sha256(key.encode()).hexdigest() != key


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer msk_short",
        "Token " + "msk_0123456789ab_" + "A" * 43,
        "Bearer " + "x" * 10_000,
        "Bearer msk_0123456789ab_" + "é" * 43,
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b"alice:not-a-key").decode(),
        "Basic " + base64.b64encode("ann:\xff".encode("latin-1")).decode(),
    ],
)
def test_malformed_authorization_is_no_credentials_never_an_error(header):
    assert accounts.parse_authorization(header) is None


def test_bearer_and_basic_carry_the_same_key():
    key, _ = accounts.new_key()
    assert accounts.parse_authorization(f"Bearer {key}") == accounts.Credentials(key=key)
    basic = base64.b64encode(f"alice:{key}".encode()).decode()
    assert accounts.parse_authorization(f"basic {basic}") == accounts.Credentials(key=key, user="alice")


# ------------------------------------------------------------------------------------------------ storage


@pytest.fixture
def db(migrated_db):
    return migrated_db


def test_keys_are_stored_only_as_digests_and_listed_without_them(db):
    created = accounts.create_key(db, "alice", "viewer", ["iris"], by="admin")
    with db.cursor() as cur:
        cur.execute("SELECT * FROM api_keys")
        stored = json.dumps(cur.fetchall(), default=str)
    assert created["key"] not in stored and accounts.digest(created["key"]) in stored
    listed = accounts.list_keys(db)
    assert [k["name"] for k in listed] == ["alice"] and listed[0]["models"] == ["iris"]
    assert created["key"] not in json.dumps(listed) and accounts.digest(created["key"]) not in json.dumps(listed)


def test_a_key_identifies_its_owner_with_its_role_and_models(db):
    created = accounts.create_key(db, "ci", "deploy", ["iris", "sentiment"], by="admin")
    identity = accounts.key_identity(db, accounts.Credentials(created["key"]))
    assert identity == accounts.Identity(name="ci", role="deploy", kind="key", models=("iris", "sentiment"))
    assert identity.may("predict") and identity.may("viewer") and identity.may("deploy") and not identity.may("admin")
    assert accounts.key_identity(db, accounts.Credentials(created["key"], user="ci")) == identity
    assert accounts.key_identity(db, accounts.Credentials(created["key"], user="someone")) is None
    forged = created["key"][:-1] + ("A" if created["key"][-1] != "A" else "B")  # same id, other secret
    assert accounts.key_identity(db, accounts.Credentials(forged)) is None


def test_one_working_key_per_name_revoke_and_rotate(db):
    first = accounts.create_key(db, "bob", by="admin")
    with pytest.raises(accounts.Conflict):
        accounts.create_key(db, "bob", by="admin")
    rotated = accounts.rotate_key(db, "bob", by="admin")
    assert rotated["grants_version"] > first["grants_version"] and rotated["role"] == "predict"
    assert accounts.key_identity(db, accounts.Credentials(first["key"])) is None
    assert accounts.key_identity(db, accounts.Credentials(rotated["key"])).name == "bob"
    revoked = accounts.revoke_key(db, "bob", by="admin")
    assert revoked["grants_version"] > rotated["grants_version"]
    assert accounts.key_identity(db, accounts.Credentials(rotated["key"])) is None
    assert accounts.revoke_key(db, "bob", by="admin") is None
    assert [k["revoked_by"] for k in accounts.list_keys(db, include_revoked=True)] == ["admin", "admin"]
    assert accounts.create_key(db, "bob", by="admin")["name"] == "bob"  # the name is free again


@pytest.mark.parametrize(
    ("name", "role", "models", "field"),
    [
        ("Bob", "predict", None, "name"),
        ("bob", "root", None, "role"),
        ("bob", "predict", [], "models"),
        ("bob", "predict", ["Iris"], "models"),
        ("bob", "predict", "iris", "models"),
    ],
)
def test_bad_key_requests_are_refused_by_field(db, name, role, models, field):
    with pytest.raises(accounts.Refused) as refused:
        accounts.create_key(db, name, role, models, by="admin")
    assert field in refused.value.errors


def test_grants_list_every_working_key_under_one_version(db):
    accounts.create_key(db, "alice", "predict", ["iris"], by="admin")
    bob = accounts.create_key(db, "bob", "admin", by="admin")
    accounts.revoke_key(db, "alice", by="admin")
    version, rows = accounts.grants(db)
    assert version == accounts.grants_version(db) and version > bob["grants_version"] - 1
    assert rows == [("bob", "admin", None, accounts.digest(bob["key"]))]


def test_passwords_are_argon2_hashed_and_checked(db):
    created = accounts.create_user(db, "ann", "viewer", by="admin")
    password = created["password"]
    with db.cursor() as cur:
        cur.execute("SELECT password_hash FROM users WHERE name = 'ann'")
        stored = cur.fetchone()[0]
    assert stored.startswith("$argon2id$") and password not in stored
    assert accounts.authenticate_user(db, "ann", password) == accounts.Identity("ann", "viewer", "user")
    assert accounts.authenticate_user(db, "ann", password + "x") is None
    assert accounts.authenticate_user(db, "nobody-here", password) is None
    with pytest.raises(accounts.Refused):
        accounts.create_user(db, "cid", "viewer", "short", by="admin")
    with pytest.raises(accounts.Refused):
        accounts.create_user(db, "cid", "predict", by="admin")  # a person who only predicts needs a key


def test_sessions_end_with_logout_password_change_and_disable(db):
    password = accounts.create_user(db, "ann", "admin", by="admin")["password"]
    user = accounts.authenticate_user(db, "ann", password)
    token = accounts.start_session(db, user)
    session = accounts.session_identity(db, token)
    assert session.name == "ann" and session.csrf_token and session.kind == "user"
    accounts.end_session(db, token)
    assert accounts.session_identity(db, token) is None
    token = accounts.start_session(db, user)
    new = accounts.set_password(db, "ann")["password"]
    assert accounts.session_identity(db, token) is None
    assert accounts.authenticate_user(db, "ann", password) is None
    token = accounts.start_session(db, accounts.authenticate_user(db, "ann", new))
    assert accounts.disable_user(db, "ann")
    assert accounts.session_identity(db, token) is None and accounts.authenticate_user(db, "ann", new) is None


def test_the_bootstrap_registers_controller_keys_and_the_first_admin_once(db):
    key, key_id = accounts.new_key()
    handed = json.dumps(
        [{"name": "controller-admin", "role": "admin", "key_id": key_id, "digest": accounts.digest(key)}]
    )
    assert accounts.bootstrap(db, handed, "first-admin-password") == ["key controller-admin", "user admin"]
    assert accounts.bootstrap(db, handed, "another-password-now") == []  # a re-converge changes nothing
    assert accounts.authenticate_user(db, "admin", "first-admin-password") is not None
    assert accounts.key_identity(db, accounts.Credentials(key)).role == "admin"
    replaced, replaced_id = accounts.new_key()
    again = json.dumps([{"name": "controller-admin", "role": "admin", "key_id": replaced_id,
                         "digest": accounts.digest(replaced)}])  # fmt: skip
    assert accounts.bootstrap(db, again, None) == ["key controller-admin"]
    assert accounts.key_identity(db, accounts.Credentials(key)) is None


def test_the_application_role_cannot_touch_the_schema_or_the_key_digests_of_others(db, pg_database):
    """The console's request role reads and writes rows; it owns nothing and cannot change tables."""
    with db.cursor() as cur:
        cur.execute("ALTER ROLE console_app LOGIN PASSWORD 'app-password-for-tests'")
    db.commit()
    conn = pg_database.connect(user="console_app", password="app-password-for-tests")
    try:
        with conn.cursor() as cur, pytest.raises(Exception, match=r"must be owner|permission denied"):
            cur.execute("ALTER TABLE api_keys DROP COLUMN digest")
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------------ the app, end to end


@pytest.fixture
def console(db, pg_database, tmp_path, monkeypatch):
    """The console app against the test database, with its secrets as files and a bootstrap admin key."""
    admin_key, admin_id = accounts.new_key()
    files = {
        "MODELSWARM_DB_PASSWORD_FILE": pg_database.server.password,
        "MODELSWARM_APP_DB_PASSWORD_FILE": "app-password-for-tests",
        "MODELSWARM_ADMIN_PASSWORD_FILE": "first-admin-password",
        "MODELSWARM_GRANTS_TOKEN_FILE": "grants-token",
        "MODELSWARM_BOOTSTRAP_KEYS_FILE": json.dumps(
            [{"name": "controller-admin", "role": "admin", "key_id": admin_id, "digest": accounts.digest(admin_key)}]
        ),
    }
    for env, content in files.items():
        path = tmp_path / env.lower()
        path.write_text(content + "\n")
        monkeypatch.setenv(env, str(path))
    params = pg_database.params()
    monkeypatch.setenv("PGHOST", params["host"])
    monkeypatch.setenv("PGPORT", str(params["port"]))
    monkeypatch.setenv("PGUSER", params["user"])
    monkeypatch.setenv("PGDATABASE", params["dbname"])
    monkeypatch.setattr(app, "_prepared", False)
    return admin_key


def http(method, path, body=None, key=None, headers=None, form=None):
    if form is not None:
        data, content_type = urlencode(form).encode(), "application/x-www-form-urlencoded"
    else:
        data, content_type = (json.dumps(body).encode() if body is not None else b""), "application/json"
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path.split("?")[0],
        "QUERY_STRING": path.partition("?")[2],
        "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": str(len(data)),
        "wsgi.input": io.BytesIO(data),
        "HTTP_X_FORWARDED_PROTO": "https",
        **({"HTTP_AUTHORIZATION": f"Bearer {key}"} if key else {}),
        **(headers or {}),
    }
    seen = {}

    def start_response(status, response_headers):
        seen["status"], seen["headers"] = int(status.split()[0]), response_headers

    body = b"".join(app.application(environ, start_response))
    return seen["status"], seen["headers"], body


def test_keys_through_the_api_roles_and_revocation(console):
    status, _, body = http("POST", "/api/keys", {"name": "ci", "role": "deploy", "models": ["iris"]}, key=console)
    assert status == 201
    ci = json.loads(body)
    assert http("GET", "/api/whoami", key=ci["key"])[0] == 200
    assert json.loads(http("GET", "/api/whoami", key=ci["key"])[2])["name"] == "ci"
    assert http("GET", "/api/rollouts", key=ci["key"])[0] == 200  # deploy includes viewer
    assert http("GET", "/api/keys", key=ci["key"])[0] == 403
    listing = http("GET", "/api/keys", key=console)[2].decode()
    assert ci["key"] not in listing and accounts.digest(ci["key"]) not in listing
    assert http("DELETE", "/api/keys/ci", key=console)[0] == 200
    assert http("GET", "/api/whoami", key=ci["key"])[0] == 401
    assert http("DELETE", "/api/keys/ci", key=console)[0] == 404


def test_the_grants_endpoint_serves_digests_with_an_etag(console):
    created = json.loads(http("POST", "/api/keys", {"name": "alice"}, key=console)[2])
    token = {"HTTP_AUTHORIZATION": "Bearer grants-token"}
    status, headers, body = http("GET", "/internal/grants", headers=token)
    assert status == 200
    etag = dict(headers)["ETag"]
    assert etag == f'"{created["grants_version"]}"'
    assert accounts.digest(created["key"]).encode() in body and created["key"].encode() not in body
    assert http("GET", "/internal/grants", headers={**token, "HTTP_IF_NONE_MATCH": etag})[0] == 304


def test_sign_in_session_csrf_and_sign_out(console):
    status, headers, body = http("GET", "/login")
    csrf = re.search(rb'name="csrf" value="([^"]+)"', body).group(1).decode()
    cookie = {"HTTP_COOKIE": f"{app.LOGIN_CSRF_COOKIE}={csrf}"}
    wrong = http("POST", "/login", form={"user": "admin", "password": "nope", "csrf": csrf}, headers=cookie)
    assert wrong[0] == 401
    status, headers, _ = http(
        "POST", "/login", form={"user": "admin", "password": "first-admin-password", "csrf": csrf}, headers=cookie
    )
    assert status == 303
    set_cookie = next(v for k, v in headers if k == "Set-Cookie" and v.startswith(app.SESSION_COOKIE))
    assert all(flag in set_cookie for flag in ("HttpOnly", "Secure", "SameSite=Strict"))
    session = {"HTTP_COOKIE": set_cookie.split(";")[0]}
    assert http("GET", "/api/whoami", headers=session)[0] == 200
    assert http("GET", "/", headers={**session, "HTTP_ACCEPT": "text/html"})[0] == 200
    # an unsafe request of the session without its CSRF token is refused; with it, allowed
    assert http("POST", "/api/keys", {"name": "zed"}, headers=session)[0] == 403
    page = http("GET", "/", headers=session)[2]
    session_csrf = re.search(rb'name="csrf" value="([^"]+)"', page).group(1).decode()
    assert http("POST", "/api/keys", {"name": "zed"}, headers={**session, "HTTP_X_CSRF_TOKEN": session_csrf})[0] == 201
    assert http("POST", "/logout", form={"csrf": session_csrf}, headers=session)[0] == 303
    assert http("GET", "/api/whoami", headers=session)[0] == 401


def test_a_revoked_controller_key_stays_revoked_when_the_console_restarts(db):
    key, key_id = accounts.new_key()
    handed = json.dumps(
        [{"name": "controller-deploy", "role": "deploy", "key_id": key_id, "digest": accounts.digest(key)}]
    )
    accounts.bootstrap(db, handed, None)
    accounts.revoke_key(db, "controller-deploy", by="admin")
    assert accounts.bootstrap(db, handed, None) == []  # a restart takes over the same secret again
    assert accounts.key_identity(db, accounts.Credentials(key)) is None


def test_changes_to_the_console_need_bearer_not_basic(console):
    basic = "Basic " + base64.b64encode(f"controller-admin:{console}".encode()).decode()
    assert http("GET", "/api/keys", headers={"HTTP_AUTHORIZATION": basic})[0] == 200
    status, headers, _ = http("POST", "/api/keys", {"name": "eve"}, headers={"HTTP_AUTHORIZATION": basic})
    assert status == 401 and dict(headers)["WWW-Authenticate"] == 'Bearer realm="modelswarm"'


def test_a_model_limited_deploy_key_records_only_its_models(console):
    ci = json.loads(http("POST", "/api/keys", {"name": "ci", "role": "deploy", "models": ["iris"]}, key=console)[2])
    entry = {"model": "sentiment", "to_version": "2", "image": "r/x:2", "result": "succeeded",
             "started_at": "2026-11-22T10:00:00Z", "finished_at": "2026-11-22T10:00:01Z"}  # fmt: skip
    assert http("POST", "/api/rollouts", entry, key=ci["key"])[0] == 403
    stored = http("POST", "/api/rollouts", {**entry, "model": "iris"}, key=ci["key"])
    assert stored[0] == 201 and json.loads(stored[2])["actor"] == "ci"


@pytest.mark.parametrize("target", ["//evil.example", "/\\evil.example", "/\tevil", "https://evil.example", "x"])
def test_sign_in_never_redirects_off_site(console, target):
    _, _, body = http("GET", "/login")
    csrf = re.search(rb'name="csrf" value="([^"]+)"', body).group(1).decode()
    status, headers, _ = http(
        "POST",
        "/login",
        form={"user": "admin", "password": "first-admin-password", "csrf": csrf, "next": target},
        headers={"HTTP_COOKIE": f"{app.LOGIN_CSRF_COOKIE}={csrf}"},
    )
    assert status == 303 and dict(headers)["Location"] == "/"


def test_a_new_database_starts_its_grants_above_any_earlier_ones(db):
    """Versions start at the creation time in ms, so nodes holding an older database's grants take the new ones."""
    import time

    assert abs(accounts.grants_version(db) - time.time() * 1000) < 600_000
