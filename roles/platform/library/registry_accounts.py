#!/usr/bin/python
"""Ansible module: the registry's accounts on the controller: a password file each and the gateway's htpasswd."""

from __future__ import annotations

DOCUMENTATION = r"""
module: registry_accounts
short_description: Make (once) the registry accounts' passwords and keep a bcrypt htpasswd file in step with them.
description:
  - For each account, reads C(<dir>/<user>.password) or, when it does not exist, writes a new random password there
    (32 letters and digits from the OS's random source; mode 0600, directory 0700).
  - Writes C(<dir>/htpasswd) (bcrypt, C(rounds)) only when an entry is missing, does not match its password, has
    another cost or names an account not asked for. An unchanged file keeps its bytes, so the swarm secret made from
    it does not change either.
  - Returns nothing secret (account names only); use C(no_log) anyway.
options:
  dir: {description: Directory of the files (created 0700 if missing)., type: path, required: true}
  users: {description: Account names, in order., type: list, elements: str, required: true}
  rounds: {description: bcrypt cost (4-31)., type: int, default: 6}
requirements: [bcrypt (the controller's Python)]
"""

RETURN = r"""
users: {description: The account names., returned: always, type: list, elements: str}
htpasswd: {description: Path of the htpasswd file., returned: always, type: str}
"""

import os
import re
import secrets
import string

from ansible.module_utils.basic import AnsibleModule

ALPHABET = string.ascii_letters + string.digits
PASSWORD = re.compile(r"[A-Za-z0-9]{32}")


def _write_private(path: str, text: str) -> None:
    descriptor = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.replace(path + ".new", path)


def _cost(hashed: str) -> int | None:
    match = re.fullmatch(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}", hashed)
    return int(match.group(1)) if match else None


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "dir": {"type": "path", "required": True},
            "users": {"type": "list", "elements": "str", "required": True},
            "rounds": {"type": "int", "default": 6},
        },
        supports_check_mode=True,
    )
    try:
        import bcrypt
    except ImportError:
        module.fail_json(msg="the controller's Python lacks bcrypt (it is in requirements/lock.txt: make venv)")
    directory, users, rounds = module.params["dir"], module.params["users"], module.params["rounds"]
    if not 4 <= rounds <= 31:
        module.fail_json(msg=f"rounds must be 4-31, not {rounds}")
    for user in users:
        if not re.fullmatch(r"[a-z][a-z0-9._-]{1,39}", user):
            module.fail_json(msg=f"not an account name: {user!r}")
    changed = False
    if not os.path.isdir(directory):
        if not module.check_mode:
            os.makedirs(directory, mode=0o700)
        changed = True
    elif os.stat(directory).st_mode & 0o077 and not module.check_mode:
        os.chmod(directory, 0o700)
        changed = True

    passwords = {}
    for user in users:
        path = os.path.join(directory, f"{user}.password")
        if os.path.exists(path):
            with open(path) as handle:
                password = handle.read().strip()
            if not PASSWORD.fullmatch(password):
                module.fail_json(msg=f"{path} does not hold a password of 32 letters and digits; it is left as it is")
            if os.stat(path).st_mode & 0o077 and not module.check_mode:
                os.chmod(path, 0o600)
                changed = True
        else:
            password = "".join(secrets.choice(ALPHABET) for _ in range(32))
            if not module.check_mode:
                _write_private(path, password + "\n")
            changed = True
        passwords[user] = password

    htpasswd = os.path.join(directory, "htpasswd")
    current: dict[str, str] = {}
    if os.path.exists(htpasswd):
        with open(htpasswd) as handle:
            for line in handle.read().splitlines():
                name, _, hashed = line.partition(":")
                if name:
                    current[name] = hashed
    entries, rewrite = [], set(current) != set(users)
    for user in users:
        hashed = current.get(user, "")
        good = _cost(hashed) == rounds and bcrypt.checkpw(passwords[user].encode(), hashed.encode())
        if not good:
            hashed = bcrypt.hashpw(passwords[user].encode(), bcrypt.gensalt(rounds=rounds, prefix=b"2b")).decode()
            rewrite = True
        entries.append(f"{user}:{hashed}")
    if rewrite:
        if not module.check_mode:
            _write_private(htpasswd, "\n".join(entries) + "\n")
        changed = True
    elif os.path.exists(htpasswd) and os.stat(htpasswd).st_mode & 0o077 and not module.check_mode:
        os.chmod(htpasswd, 0o600)
        changed = True
    module.exit_json(changed=changed, users=users, htpasswd=htpasswd)


if __name__ == "__main__":
    main()
