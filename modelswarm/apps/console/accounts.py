"""Who may do what: API keys, console users and their browser sessions, and the key grants that NGINX loads.

- API keys are 256-bit random secrets ("msk_<id>_<secret>", see the contract). Only the SHA-256 digest of a key is
  stored: for a random key of that length a fast hash is as good as a slow one (nothing to guess), and it lets NGINX
  on every node check a key in microseconds from a digest map, without calling this console per request.
- Passwords are chosen by people, so they are stored with a slow, salted hash: Argon2id (argon2-cffi).
- A browser session is a random token in an HttpOnly, Secure, SameSite=Strict cookie; the database keeps its
  digest, the user and a CSRF token for the session's forms.
- Every change to the keys bumps one version number in the same transaction; NGINX's grants file carries it, so the
  CLI can wait until every node has loaded a change.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from modelswarm import contract

SESSION_LIFETIME = timedelta(hours=8)
MIN_PASSWORD = 12
PASSWORD_RULE = f"at least {MIN_PASSWORD} characters (or leave it out to get a generated one)"
MAX_AUTHORIZATION = 1024  # longer Authorization headers are refused unread (a key with Basic fits in ~160)


class Refused(ValueError):
    """A request about keys or users that cannot be done; `errors` maps field -> message (HTTP 400)."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


class Conflict(ValueError):
    """The name is taken (HTTP 409)."""


@dataclass(frozen=True)
class Identity:
    """An authenticated caller: a key or a signed-in user."""

    name: str
    role: str
    kind: str  # "key" or "user"
    models: tuple[str, ...] | None = None  # keys only: None = every model
    csrf_token: str | None = field(default=None, repr=False)  # sessions only

    def may(self, needed: str) -> bool:
        return contract.role_includes(self.role, needed)

    def public(self) -> dict:
        return {"name": self.name, "role": self.role, "kind": self.kind, "models": list(self.models or []) or None}


@dataclass(frozen=True)
class Credentials:
    key: str
    user: str | None = None  # HTTP Basic's user part (must be the key's name)


# ------------------------------------------------------------------------------------------------ keys: pure parts


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A new key and its id."""
    key_id = secrets.token_hex(6)
    return f"{contract.API_KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}", key_id


def key_id_of(key: str) -> str | None:
    return key.split("_")[1] if contract.matches(contract.API_KEY_PATTERN, key) else None


def parse_authorization(header: str | None) -> Credentials | None:
    """The key from `Bearer <key>` or `Basic base64(<name>:<key>)`; None when absent, malformed or not a key.

    Defensive by design: any oddity (too long, non-ASCII, bad base64, empty) means "no credentials", never an error."""
    if not header or len(header) > MAX_AUTHORIZATION or not header.isascii():
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return Credentials(key=value) if contract.matches(contract.API_KEY_PATTERN, value) else None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("ascii")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, key = decoded.partition(":")
        if not sep or not contract.matches(contract.API_KEY_PATTERN, key):
            return None
        return Credentials(key=key, user=user)
    return None


def _check_key_request(name: object, role: object, models: object) -> tuple[str, str, list[str] | None]:
    errors = {}
    if not contract.matches(contract.PRINCIPAL_NAME_PATTERN, name):
        errors["name"] = f"required: {contract.PRINCIPAL_NAME_RULE}"
    if role not in contract.ROLES:
        errors["role"] = f"one of {', '.join(contract.ROLES)}"
    if models is not None:
        if not isinstance(models, list) or not models:
            errors["models"] = "a non-empty list of model names, or null for every model"
        else:
            bad = [m for m in models if not contract.matches(contract.MODEL_NAME_PATTERN, m)]
            if bad:
                errors["models"] = f"not model names: {', '.join(map(str, bad))} ({contract.MODEL_NAME_RULE})"
    if errors:
        raise Refused(errors)
    return name, role, (sorted(set(models)) if models else None)


# ------------------------------------------------------------------------------------------------ keys: storage


def _unique_violation(exc: Exception) -> bool:
    return getattr(exc, "pgcode", None) == "23505"  # two requests raced for the same name


def _bump(cur) -> int:
    cur.execute("UPDATE grants_state SET version = version + 1 RETURNING version")
    return cur.fetchone()[0]


def grants_version(conn) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT version FROM grants_state")
        return cur.fetchone()[0]


def create_key(conn, name: object, role: object = "predict", models: object = None, *, by: str) -> dict:
    """Store a new key for `name`; the result is the only place the key itself ever appears."""
    name, role, models = _check_key_request(name, role, models)
    key, key_id = new_key()
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM api_keys WHERE name = %s AND revoked_at IS NULL", (name,))
        if cur.fetchone():
            conn.rollback()
            raise Conflict(f"{name} already has a working key: revoke or rotate it")
        try:
            cur.execute(
                "INSERT INTO api_keys (key_id, digest, name, role, models, created_by) VALUES (%s, %s, %s, %s, %s, %s)",
                (key_id, digest(key), name, role, models, by),
            )
        except Exception as exc:
            conn.rollback()
            if _unique_violation(exc):
                raise Conflict(f"{name} already has a working key: revoke or rotate it") from None
            raise
        version = _bump(cur)
    conn.commit()
    return {"name": name, "role": role, "models": models, "key_id": key_id, "key": key, "grants_version": version}


def revoke_key(conn, name: str, *, by: str) -> dict | None:
    """Revoke `name`'s working key; None when it has none."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE api_keys SET revoked_at = now(), revoked_by = %s WHERE name = %s AND revoked_at IS NULL"
            " RETURNING key_id",
            (by, name),
        )
        row = cur.fetchone()
        if row is None:
            conn.rollback()
            return None
        version = _bump(cur)
    conn.commit()
    return {"name": name, "key_id": row[0], "revoked": True, "grants_version": version}


def rotate_key(conn, name: str, *, by: str) -> dict | None:
    """A new key with the same name, role and models; the old one stops working in the same change."""
    with conn.cursor() as cur:
        cur.execute("SELECT role, models FROM api_keys WHERE name = %s AND revoked_at IS NULL", (name,))
        row = cur.fetchone()
    if row is None:
        conn.rollback()
        return None
    key, key_id = new_key()
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE api_keys SET revoked_at = now(), revoked_by = %s WHERE name = %s AND revoked_at IS NULL",
            (by, name),
        )
        cur.execute(
            "INSERT INTO api_keys (key_id, digest, name, role, models, created_by) VALUES (%s, %s, %s, %s, %s, %s)",
            (key_id, digest(key), name, row[0], row[1], by),
        )
        version = _bump(cur)
    conn.commit()
    return {"name": name, "role": row[0], "models": row[1], "key_id": key_id, "key": key, "grants_version": version}


def _listing(cur) -> list[dict]:
    """The rows of a listing query as dicts, dates to the second (ISO 8601), None where a date is unset."""
    columns = [d[0] for d in cur.description]
    rows = [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
    for row in rows:
        for column in columns:
            if isinstance(row[column], datetime):
                row[column] = row[column].isoformat(timespec="seconds")
    return rows


def list_keys(conn, include_revoked: bool = False) -> list[dict]:
    """Names, roles, models and dates; never a key or a digest."""
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    with conn.cursor() as cur:
        cur.execute(
            "SELECT name, role, models, key_id, created_by, created_at, revoked_at, revoked_by FROM api_keys"  # noqa: S608
            + where
            + " ORDER BY name, created_at"
        )
        return _listing(cur)


def key_identity(conn, credentials: Credentials | None) -> Identity | None:
    """The working key these credentials name, by id (one indexed lookup), compared by digest in constant time."""
    if credentials is None:
        return None
    key_id = key_id_of(credentials.key)
    if key_id is None:
        return None
    with conn.cursor() as cur:
        cur.execute(
            "SELECT name, role, models, digest FROM api_keys WHERE key_id = %s AND revoked_at IS NULL", (key_id,)
        )
        row = cur.fetchone()
    if row is None or not hmac.compare_digest(row[3], digest(credentials.key)):
        return None
    if credentials.user is not None and credentials.user != row[0]:
        return None  # HTTP Basic: the user part must be the key's own name
    return Identity(name=row[0], role=row[1], kind="key", models=tuple(row[2]) if row[2] else None)


def grants(conn) -> tuple[int, list[tuple[str, str, tuple[str, ...] | None, str]]]:
    """The grants version and every working key as (name, role, models, digest), read in one snapshot."""
    with conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur.execute("SELECT version FROM grants_state")
        version = cur.fetchone()[0]
        cur.execute("SELECT name, role, models, digest FROM api_keys WHERE revoked_at IS NULL ORDER BY name")
        rows = [(n, r, tuple(m) if m else None, d) for n, r, m, d in cur.fetchall()]
    conn.commit()
    return version, rows


# ------------------------------------------------------------------------------------------------ users and sessions


def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()  # Argon2id with the library's current defaults (RFC 9106 low-memory profile)


def new_password() -> str:
    return secrets.token_urlsafe(18)


def create_user(conn, name: object, role: object, password: str | None = None, *, by: str) -> dict:
    """Create a console user; with no password given, one is generated and returned (shown once)."""
    errors = {}
    if not contract.matches(contract.PRINCIPAL_NAME_PATTERN, name):
        errors["name"] = f"required: {contract.PRINCIPAL_NAME_RULE}"
    if role not in contract.USER_ROLES:
        errors["role"] = f"one of {', '.join(contract.USER_ROLES)}"
    if password is not None and (not isinstance(password, str) or len(password) < MIN_PASSWORD):
        errors["password"] = PASSWORD_RULE
    if errors:
        raise Refused(errors)
    generated = password is None
    password = new_password() if generated else password
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM users WHERE name = %s", (name,))
        if cur.fetchone():
            conn.rollback()
            raise Conflict(f"user {name} exists")
        try:
            cur.execute(
                "INSERT INTO users (name, role, password_hash, created_by) VALUES (%s, %s, %s, %s)",
                (name, role, _hasher().hash(password), by),
            )
        except Exception as exc:
            conn.rollback()
            if _unique_violation(exc):
                raise Conflict(f"user {name} exists") from None
            raise
    conn.commit()
    return {"name": name, "role": role, **({"password": password} if generated else {})}


def set_password(conn, name: str, password: str | None = None) -> dict | None:
    """A new password for `name` (generated when none is given) and the end of that user's sessions."""
    if password is not None and (not isinstance(password, str) or len(password) < MIN_PASSWORD):
        raise Refused({"password": PASSWORD_RULE})
    generated = password is None
    password = new_password() if generated else password
    with conn.cursor() as cur:
        cur.execute("UPDATE users SET password_hash = %s WHERE name = %s", (_hasher().hash(password), name))
        if cur.rowcount == 0:
            conn.rollback()
            return None
        cur.execute("DELETE FROM sessions WHERE user_name = %s", (name,))
    conn.commit()
    return {"name": name, **({"password": password} if generated else {})}


def disable_user(conn, name: str) -> bool:
    with conn.cursor() as cur:
        cur.execute("UPDATE users SET disabled_at = now() WHERE name = %s AND disabled_at IS NULL", (name,))
        changed = cur.rowcount == 1
        cur.execute("DELETE FROM sessions WHERE user_name = %s", (name,))
    conn.commit()
    return changed


def list_users(conn) -> list[dict]:
    with conn.cursor() as cur:
        cur.execute("SELECT name, role, created_by, created_at, disabled_at FROM users ORDER BY name")
        return _listing(cur)


# An Argon2 hash of a random password: checked when the user does not exist, so that a wrong name costs as long as
# a wrong password (no user enumeration by timing).
_DUMMY_HASH: list[str] = []


def authenticate_user(conn, name: object, password: object) -> Identity | None:
    from argon2.exceptions import InvalidHashError, VerificationError

    if not isinstance(name, str) or not isinstance(password, str) or len(password) > 1024:
        return None
    with conn.cursor() as cur:
        cur.execute("SELECT role, password_hash FROM users WHERE name = %s AND disabled_at IS NULL", (name,))
        row = cur.fetchone()
    conn.commit()
    hasher = _hasher()
    if row is None:
        if not _DUMMY_HASH:
            _DUMMY_HASH.append(hasher.hash(new_password()))
        with contextlib.suppress(VerificationError):
            hasher.verify(_DUMMY_HASH[0], password)
        return None
    try:
        hasher.verify(row[1], password)
    except (VerificationError, InvalidHashError):
        return None
    return Identity(name=name, role=row[0], kind="user")


def start_session(conn, user: Identity) -> str:
    """A new session for a signed-in user; returns the cookie's token (stored only as a digest)."""
    token = secrets.token_urlsafe(32)
    with conn.cursor() as cur:
        cur.execute("DELETE FROM sessions WHERE expires_at < now()")
        cur.execute(
            "INSERT INTO sessions (digest, user_name, csrf_token, expires_at) VALUES (%s, %s, %s, now() + %s)",
            (digest(token), user.name, secrets.token_urlsafe(32), SESSION_LIFETIME),
        )
    conn.commit()
    return token


def session_identity(conn, token: str | None) -> Identity | None:
    if not token or len(token) > 128 or not token.isascii():
        return None
    with conn.cursor() as cur:
        cur.execute(
            "SELECT u.name, u.role, s.csrf_token FROM sessions s JOIN users u ON u.name = s.user_name"
            " WHERE s.digest = %s AND s.expires_at > now() AND u.disabled_at IS NULL",
            (digest(token),),
        )
        row = cur.fetchone()
    conn.commit()
    return Identity(name=row[0], role=row[1], kind="user", csrf_token=row[2]) if row else None


def end_session(conn, token: str | None) -> None:
    if token:
        with conn.cursor() as cur:
            cur.execute("DELETE FROM sessions WHERE digest = %s", (digest(token),))
        conn.commit()


# ------------------------------------------------------------------------------------------------ bootstrap


def bootstrap(conn, keys_json: str | None, admin_password: str | None) -> list[str]:
    """What the converge hands over: the controller's keys (digests only) and the first admin's password.

    A controller key is (re)registered when its name has no working key with that digest (first converge, or the
    controller's key file was replaced); the first admin user is created only if no user of that name exists, so a
    password changed in the console is never reset by a later converge. Returns what changed (names only)."""
    changed = []
    entries = json.loads(keys_json) if keys_json else []
    with conn.cursor() as cur:
        for entry in entries:
            name, role, key_digest = entry["name"], entry["role"], entry["digest"]
            _check_key_request(name, role, None)
            key_id = entry["key_id"]
            # Known already (working, or revoked by an admin since): nothing to do. A revoked controller key stays
            # revoked at every restart; a new key file on the controller (then a converge) brings a new key.
            cur.execute("SELECT 1 FROM api_keys WHERE digest = %s OR key_id = %s", (key_digest, key_id))
            if cur.fetchone():
                continue
            cur.execute(
                "UPDATE api_keys SET revoked_at = now(), revoked_by = 'converge'"
                " WHERE name = %s AND revoked_at IS NULL",
                (name,),
            )
            cur.execute(
                "INSERT INTO api_keys (key_id, digest, name, role, models, created_by)"
                " VALUES (%s, %s, %s, %s, NULL, 'converge')",
                (key_id, key_digest, name, role),
            )
            _bump(cur)
            changed.append(f"key {name}")
        if admin_password:
            cur.execute("SELECT 1 FROM users WHERE name = %s", (contract.FIRST_ADMIN_USER,))
            if cur.fetchone() is None:
                cur.execute(
                    "INSERT INTO users (name, role, password_hash, created_by) VALUES (%s, 'admin', %s, 'converge')",
                    (contract.FIRST_ADMIN_USER, _hasher().hash(admin_password)),
                )
                changed.append(f"user {contract.FIRST_ADMIN_USER}")
    conn.commit()
    return changed
