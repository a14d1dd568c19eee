#!/usr/bin/python
"""Ansible module: the controller's API keys, one file each, made once and kept (0600 in a 0700 directory)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: api_key_files
short_description: Make (once) and read the controller's API key files; return only their ids and digests.
description:
  - For each name, reads C(<dir>/<name>.key) or, when it does not exist, writes a new random key there (mode 0600).
  - A key is C(<prefix>_<12 hex id>_<43 URL-safe base64 characters>) (32 random bytes from the OS), the format of
    modelswarm's contract. The module returns the key's id and SHA-256 digest, never the key; use C(no_log) anyway,
    as digests belong in no log either.
  - A file whose content is not a key of that format fails the task (it is never overwritten).
options:
  dir: {description: Directory of the key files (created 0700 if missing)., type: path, required: true}
  keys: {description: Name -> role of each key., type: dict, required: true}
  prefix: {description: The key prefix of the contract., type: str, required: true}
"""

RETURN = r"""
keys:
  description: One item per key, sorted by name.
  returned: always
  type: list
  elements: dict
  contains: {name: {type: str}, role: {type: str}, key_id: {type: str}, digest: {type: str}}
"""

import hashlib
import os
import re
import secrets

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "dir": {"type": "path", "required": True},
            "keys": {"type": "dict", "required": True},
            "prefix": {"type": "str", "required": True},
        },
        supports_check_mode=True,
    )
    directory, prefix = module.params["dir"], module.params["prefix"]
    pattern = re.compile(re.escape(prefix) + r"_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
    changed, results = False, []
    if not os.path.isdir(directory) and not module.check_mode:
        os.makedirs(directory, mode=0o700)
        changed = True
    for name, role in sorted(module.params["keys"].items()):
        path = os.path.join(directory, f"{name}.key")
        if os.path.exists(path):
            with open(path) as handle:
                key = handle.read().strip()
            if os.stat(path).st_mode & 0o077 and not module.check_mode:
                os.chmod(path, 0o600)
                changed = True
        else:
            key = f"{prefix}_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
            changed = True
            if not module.check_mode:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "w") as handle:
                    handle.write(key + "\n")
        match = pattern.fullmatch(key)
        if match is None:
            module.fail_json(msg=f"{path} does not hold an API key ({prefix}_<id>_<secret>): move it away")
        results.append(
            {"name": name, "role": role, "key_id": match.group(1), "digest": hashlib.sha256(key.encode()).hexdigest()}
        )
    module.exit_json(changed=changed, keys=results)


if __name__ == "__main__":
    main()
