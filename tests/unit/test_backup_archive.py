"""The backup role's backup_archive module (no cluster): sealing and opening with the passphrase, the manifest's
checksums and HMAC, and the refusals restore.yml relies on before it changes anything."""

import importlib.util
import json
import os
import stat
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[2] / "roles" / "backup" / "library"
spec = importlib.util.spec_from_file_location("backup_archive", LIBRARY / "backup_archive.py")
archive = importlib.util.module_from_spec(spec)
spec.loader.exec_module(archive)

PASSPHRASE = "correct horse battery staple"


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def make_backup(tmp_path, files=None):
    directory = tmp_path / "backup"
    directory.mkdir()
    for name, content in (files or {"registry.tar": b"blobs" * 100, "models.json": b'{"iris": {}}'}).items():
        (directory / name).write_bytes(content)
    manifest = archive.write_manifest(str(directory), PASSPHRASE, {"swarm_id": "abc", "models": ["iris"]}, "T")
    return directory, manifest


def test_a_sealed_blob_opens_with_the_passphrase_and_hides_its_content():
    sealed = archive.seal_bytes(b"the ledger dump", PASSPHRASE)
    assert b"the ledger dump" not in sealed
    assert archive.open_bytes(sealed, PASSPHRASE) == (archive.KIND_FILE, b"the ledger dump")


def test_each_seal_has_its_own_salt_and_nonce():
    assert archive.seal_bytes(b"same", PASSPHRASE) != archive.seal_bytes(b"same", PASSPHRASE)


def test_a_wrong_passphrase_is_refused():
    sealed = archive.seal_bytes(b"secret", PASSPHRASE)
    with pytest.raises(archive.BackupError, match="passphrase is wrong or the sealed file was altered"):
        archive.open_bytes(sealed, "another passphrase")


@pytest.mark.parametrize("where", ["kind", "salt", "ciphertext"])
def test_an_altered_byte_anywhere_is_refused(where):
    sealed = bytearray(archive.seal_bytes(b"secret payload", PASSPHRASE))
    offset = {"kind": len(archive.MAGIC), "salt": len(archive.MAGIC) + 1, "ciphertext": len(sealed) - 3}[where]
    sealed[offset] ^= 0x01
    with pytest.raises(archive.BackupError):
        archive.open_bytes(bytes(sealed), PASSPHRASE)


def test_a_file_that_is_not_sealed_is_named_so():
    with pytest.raises(archive.BackupError, match="not a sealed modelswarm backup file"):
        archive.open_bytes(b"plain text", PASSPHRASE)


def test_an_empty_passphrase_is_refused():
    with pytest.raises(archive.BackupError, match="empty"):
        archive.seal_bytes(b"x", "")


def test_a_sealed_directory_leaves_out_the_excluded_names_and_opens_only_missing_files(tmp_path):
    secrets = tmp_path / "secrets"
    (secrets / "pki").mkdir(parents=True)
    (secrets / "pki" / "ca.key").write_bytes(b"CA KEY")
    (secrets / "console-db-password").write_bytes(b"pw")
    (secrets / "backup-passphrase").write_bytes(PASSPHRASE.encode())
    sealed = archive.seal_bytes(archive.tar_directory(str(secrets), ["backup-passphrase"]), PASSPHRASE, b"d")
    kind, data = archive.open_bytes(sealed, PASSPHRASE)
    assert kind == archive.KIND_DIR

    target = tmp_path / "checkout-secrets"
    target.mkdir()
    (target / "console-db-password").write_bytes(b"another pw")  # this checkout's own: never overwritten
    written, differing = archive.untar_into(data, str(target))
    assert written == ["pki/ca.key"]
    assert differing == ["console-db-password"]
    assert (target / "console-db-password").read_bytes() == b"another pw"
    assert (target / "pki" / "ca.key").read_bytes() == b"CA KEY"
    assert mode(target / "pki" / "ca.key") == 0o600
    assert not (target / "backup-passphrase").exists()
    # Opening again writes nothing: what is there is the same.
    assert archive.untar_into(data, str(target)) == ([], ["console-db-password"])


def test_an_archive_naming_a_path_outside_its_directory_is_refused(tmp_path):
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    (tmp_path / "dest").mkdir()
    with pytest.raises(archive.BackupError, match="outside its directory"):
        archive.untar_into(buffer.getvalue(), str(tmp_path / "dest"))
    assert not (tmp_path / "escaped").exists()


def test_the_manifest_lists_every_file_with_its_checksum_and_makes_them_private(tmp_path):
    directory, manifest = make_backup(tmp_path)
    assert set(manifest["files"]) == {"registry.tar", "models.json"}
    assert manifest["files"]["models.json"]["bytes"] == len(b'{"iris": {}}')
    import hashlib

    assert manifest["files"]["registry.tar"]["sha256"] == hashlib.sha256(b"blobs" * 100).hexdigest()
    assert manifest["meta"]["models"] == ["iris"]
    assert mode(directory) == 0o700
    assert {mode(p) for p in directory.iterdir()} == {0o600}
    on_disk = json.loads((directory / "manifest.json").read_text())
    assert on_disk["hmac"]["sha256"] == manifest["hmac"]["sha256"]


def test_an_untouched_backup_verifies(tmp_path):
    directory, manifest = make_backup(tmp_path)
    assert archive.verify_manifest(str(directory), PASSPHRASE)["files"] == manifest["files"]


def test_a_file_whose_bytes_changed_is_refused_by_name(tmp_path):
    directory, _ = make_backup(tmp_path)
    data = bytearray((directory / "registry.tar").read_bytes())
    data[10] ^= 0x01  # the same size, another checksum
    (directory / "registry.tar").write_bytes(bytes(data))
    with pytest.raises(archive.BackupError, match=r"registry\.tar does not match its checksum"):
        archive.verify_manifest(str(directory), PASSPHRASE)


def test_a_missing_file_and_an_unlisted_file_are_refused(tmp_path):
    directory, _ = make_backup(tmp_path)
    (directory / "models.json").unlink()
    (directory / "extra.bin").write_bytes(b"?")
    with pytest.raises(archive.BackupError) as caught:
        archive.verify_manifest(str(directory), PASSPHRASE)
    assert "models.json is missing" in str(caught.value)
    assert "extra.bin is not in the manifest" in str(caught.value)


def test_a_manifest_rewritten_to_match_altered_files_is_refused_without_the_passphrase(tmp_path):
    import hashlib

    directory, _ = make_backup(tmp_path)
    (directory / "registry.tar").write_bytes(b"forged")
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"]["registry.tar"] = {"sha256": hashlib.sha256(b"forged").hexdigest(), "bytes": 6}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(archive.BackupError, match=r"manifest\.json was altered, or the passphrase"):
        archive.verify_manifest(str(directory), PASSPHRASE)


def test_the_wrong_passphrase_fails_verification(tmp_path):
    directory, _ = make_backup(tmp_path)
    with pytest.raises(archive.BackupError, match="passphrase is not the one"):
        archive.verify_manifest(str(directory), "not it")


def test_a_directory_without_a_manifest_is_not_a_backup(tmp_path):
    with pytest.raises(archive.BackupError, match="not a modelswarm backup"):
        archive.verify_manifest(str(tmp_path), PASSPHRASE)


def test_moved_reference_keeps_path_tag_and_digest():
    from modelswarm.lifecycle import pipeline

    old = "172.30.98.11:5000/models/iris:1.2.0@sha256:" + "a" * 64
    assert (
        pipeline.moved_reference(old, "172.30.97.11:5000") == "172.30.97.11:5000/models/iris:1.2.0@sha256:" + "a" * 64
    )
    with pytest.raises(pipeline.PipelineError):
        pipeline.moved_reference("iris:1.2.0", "172.30.97.11:5000")
