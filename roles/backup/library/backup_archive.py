#!/usr/bin/python
# -*- coding: utf-8 -*-
# A backup's sealed files and its manifest, on the controller. Python 3 (the controller's), `cryptography`.
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: backup_archive
short_description: Seal and open a backup's secret files, write and verify its manifest
description:
  - Runs on the controller (delegate_to localhost) for playbooks/backup.yml and playbooks/restore.yml.
  - C(seal) encrypts a file, or a directory as one tar archive, with a key derived from the passphrase (scrypt,
    n=2**15, r=8, p=1, a random salt per file) and AES-256-GCM; the header is authenticated too. The result is
    written 0600.
  - C(open) decrypts one; a wrong passphrase or an altered file fails with one message and writes nothing. A sealed
    directory is opened into C(dest) file by file, and with C(only_missing) only the files C(dest) lacks are
    written; files that exist with other contents are reported by name, never overwritten.
  - C(write_manifest) writes manifest.json in C(dir) - every other file's SHA-256 and size, and C(meta) - with an
    HMAC-SHA256 over it keyed from the passphrase, and makes the files 0600 and the directory 0700.
  - C(verify_manifest) checks that HMAC and every checksum, and fails naming what does not match (a file altered,
    missing, or not listed), before a restore changes anything.
options:
  action:
    description: What to do.
    type: str
    required: true
    choices: [seal, open, write_manifest, verify_manifest]
  src:
    description: C(seal) - the file or directory to seal (or give C(content)); C(open) - the sealed file.
    type: path
  content:
    description: C(seal) - the text to seal instead of C(src) (a database dump read on a node), never written in
      clear.
    type: str
  dest:
    description: C(seal) - the sealed file to write; C(open) - the file (or, for a sealed directory, the directory)
      to write.
    type: path
  dir:
    description: The backup directory (C(write_manifest), C(verify_manifest)).
    type: path
  passphrase:
    description: The backup passphrase.
    type: str
    required: true
    no_log: true
  exclude:
    description: C(seal) of a directory - top-level names left out (the passphrase file itself).
    type: list
    elements: str
    default: []
  only_missing:
    description: C(open) of a sealed directory - write only the files C(dest) does not have.
    type: bool
    default: true
  meta:
    description: C(write_manifest) - what the backup holds and where it came from (kept in the manifest).
    type: dict
    default: {}
requirements: [cryptography]
author: modelswarm
"""

RETURN = r"""
written:
  description: Files written (C(open) of a directory; relative to dest).
  returned: open
  type: list
differing:
  description: Files that exist in dest with other contents, left as they are (C(open) of a directory).
  returned: open
  type: list
manifest:
  description: The manifest (C(write_manifest), C(verify_manifest)).
  returned: write_manifest, verify_manifest
  type: dict
"""

import base64
import hashlib
import hmac
import io
import json
import os
import tarfile

from ansible.module_utils.basic import AnsibleModule

MAGIC = b"MODELSWARM-SEALED-1\n"
KIND_FILE = b"f"
KIND_DIR = b"d"
SALT_BYTES = 16
NONCE_BYTES = 12
SCRYPT = {"n": 2**15, "r": 8, "p": 1}
MANIFEST = "manifest.json"
FORMAT = 1


class BackupError(Exception):
    """The backup cannot be sealed, opened or trusted; the message says why."""


def derive(passphrase, salt, purpose):
    """A 32-byte key for `purpose` (sealing or the manifest's HMAC) from the passphrase and a salt."""
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    if not passphrase:
        raise BackupError("the backup passphrase is empty")
    key = Scrypt(salt=salt + purpose, length=32, **SCRYPT).derive(passphrase.encode("utf-8"))
    return key


def seal_bytes(data, passphrase, kind=KIND_FILE):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt, nonce = os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)
    header = MAGIC + kind + salt + nonce
    return header + AESGCM(derive(passphrase, salt, b"seal")).encrypt(nonce, data, header)


def open_bytes(sealed, passphrase):
    """(kind, plaintext) of a sealed blob; BackupError for a wrong passphrase or an altered blob."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    size = len(MAGIC) + 1 + SALT_BYTES + NONCE_BYTES
    if len(sealed) < size or not sealed.startswith(MAGIC):
        raise BackupError("not a sealed modelswarm backup file")
    header = sealed[:size]
    kind = header[len(MAGIC) : len(MAGIC) + 1]
    salt = header[len(MAGIC) + 1 : len(MAGIC) + 1 + SALT_BYTES]
    nonce = header[len(MAGIC) + 1 + SALT_BYTES :]
    try:
        return kind, AESGCM(derive(passphrase, salt, b"seal")).decrypt(nonce, sealed[size:], header)
    except InvalidTag:
        raise BackupError("the passphrase is wrong or the sealed file was altered") from None


def tar_directory(path, exclude=()):
    """The directory's files as one tar archive (regular files and directories only; modes kept, owners not)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for root, dirs, files in os.walk(path):
            relative_root = os.path.relpath(root, path)
            if relative_root == ".":
                dirs[:] = sorted(d for d in dirs if d not in exclude)
                files = [f for f in files if f not in exclude]
            else:
                dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                if not os.path.isfile(full) or os.path.islink(full):
                    continue
                info = archive.gettarinfo(full, arcname=os.path.normpath(os.path.join(relative_root, name)))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(full, "rb") as handle:
                    archive.addfile(info, handle)
    return buffer.getvalue()


def untar_into(data, dest, only_missing=True):
    """Write the archive's files under dest (0700 directories, each file's mode capped at 0600). Returns
    (written, differing); with only_missing, an existing file is never overwritten."""
    written, differing = [], []
    root = os.path.realpath(dest)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as archive:
        for member in archive.getmembers():
            if not member.isfile():
                continue
            target = os.path.realpath(os.path.join(root, member.name))
            if not target.startswith(root + os.sep):
                raise BackupError("the sealed archive names a path outside its directory: %s" % member.name)
            content = archive.extractfile(member).read()
            if os.path.exists(target):
                with open(target, "rb") as handle:
                    same = handle.read() == content
                if same:
                    continue
                if only_missing:
                    differing.append(member.name)
                    continue
            os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
            descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(content)
            os.chmod(target, member.mode & 0o600 or 0o600)
            written.append(member.name)
    return sorted(written), sorted(differing)


def write_private(path, data):
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def backup_files(directory):
    """Every file of the backup but the manifest, relative to the directory, sorted."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in files:
            relative = os.path.relpath(os.path.join(root, name), directory)
            if relative != MANIFEST:
                found.append(relative)
    return sorted(found)


def canonical(body):
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def signature(body, passphrase, salt):
    return hmac.new(derive(passphrase, salt, b"manifest"), canonical(body), hashlib.sha256).hexdigest()


def write_manifest(directory, passphrase, meta, created):
    """Write manifest.json for the files in `directory`, make everything private, return the manifest."""
    files = {}
    for relative in backup_files(directory):
        path = os.path.join(directory, relative)
        os.chmod(path, 0o600)
        files[relative] = {"sha256": sha256_of(path), "bytes": os.path.getsize(path)}
    for root, dirs, _ in os.walk(directory):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o700)
    os.chmod(directory, 0o700)
    body = {"format": FORMAT, "created": created, "meta": meta, "files": files}
    salt = os.urandom(SALT_BYTES)
    manifest = dict(
        body, hmac={"salt": base64.b64encode(salt).decode("ascii"), "sha256": signature(body, passphrase, salt)}
    )
    write_private(
        os.path.join(directory, MANIFEST), (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")
    )
    return manifest


def verify_manifest(directory, passphrase):
    """The manifest, if its HMAC and every checksum match; BackupError naming every mismatch otherwise."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isdir(directory):
        raise BackupError("%s is not a directory" % directory)
    if not os.path.isfile(path):
        raise BackupError("%s has no %s: not a modelswarm backup" % (directory, MANIFEST))
    try:
        with open(path, "rb") as handle:
            manifest = json.loads(handle.read().decode("utf-8"))
        seal = manifest.pop("hmac")
        salt = base64.b64decode(seal["salt"])
        claimed = seal["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError("%s cannot be read: %s" % (MANIFEST, exc)) from None
    if manifest.get("format") != FORMAT:
        raise BackupError("%s has format %r; this version reads format %d" % (MANIFEST, manifest.get("format"), FORMAT))
    if not hmac.compare_digest(signature(manifest, passphrase, salt), claimed):
        raise BackupError("%s was altered, or the passphrase is not the one the backup was made with" % MANIFEST)
    problems = []
    listed = manifest.get("files") or {}
    for relative, expected in sorted(listed.items()):
        full = os.path.join(directory, relative)
        if not os.path.isfile(full):
            problems.append("%s is missing" % relative)
        elif os.path.getsize(full) != expected["bytes"] or sha256_of(full) != expected["sha256"]:
            problems.append("%s does not match its checksum" % relative)
    for relative in backup_files(directory):
        if relative not in listed:
            problems.append("%s is not in the manifest" % relative)
    if problems:
        raise BackupError("the backup in %s cannot be trusted: %s" % (directory, "; ".join(problems)))
    return dict(manifest, hmac=seal)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", required=True, choices=["seal", "open", "write_manifest", "verify_manifest"]),
            src=dict(type="path"),
            content=dict(type="str", no_log=True),
            dest=dict(type="path"),
            dir=dict(type="path"),
            passphrase=dict(type="str", required=True, no_log=True),
            exclude=dict(type="list", elements="str", default=[]),
            only_missing=dict(type="bool", default=True),
            meta=dict(type="dict", default={}),
        ),
        required_if=[
            ("action", "seal", ("src", "content"), True),
            ("action", "seal", ("dest",)),
            ("action", "open", ("src", "dest")),
            ("action", "write_manifest", ("dir",)),
            ("action", "verify_manifest", ("dir",)),
        ],
        supports_check_mode=True,
    )
    p = module.params
    try:
        if p["action"] == "verify_manifest":
            module.exit_json(changed=False, manifest=verify_manifest(p["dir"], p["passphrase"]))
        if module.check_mode:
            module.exit_json(changed=True)
        if p["action"] == "seal":
            if p["content"] is not None:
                sealed = seal_bytes(p["content"].encode("utf-8"), p["passphrase"], KIND_FILE)
            elif os.path.isdir(p["src"]):
                sealed = seal_bytes(tar_directory(p["src"], p["exclude"]), p["passphrase"], KIND_DIR)
            else:
                with open(p["src"], "rb") as handle:
                    sealed = seal_bytes(handle.read(), p["passphrase"], KIND_FILE)
            write_private(p["dest"], sealed)
            module.exit_json(changed=True)
        if p["action"] == "open":
            with open(p["src"], "rb") as handle:
                kind, data = open_bytes(handle.read(), p["passphrase"])
            if kind == KIND_DIR:
                os.makedirs(p["dest"], mode=0o700, exist_ok=True)
                written, differing = untar_into(data, p["dest"], p["only_missing"])
                module.exit_json(changed=bool(written), written=written, differing=differing)
            write_private(p["dest"], data)
            module.exit_json(changed=True, written=[os.path.basename(p["dest"])], differing=[])
        from datetime import datetime, timezone

        created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        module.exit_json(changed=True, manifest=write_manifest(p["dir"], p["passphrase"], p["meta"], created))
    except (BackupError, OSError) as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
