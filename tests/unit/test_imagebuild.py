"""Build contexts: the extra CA certificates setting and template rendering."""

import tarfile

import pytest

from modelswarm import imagebuild as build

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def members(buf):
    with tarfile.open(fileobj=buf) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_context_carries_the_given_ca_bundle(tmp_path):
    bundle = tmp_path / "corp.pem"
    bundle.write_bytes(PEM)
    files = members(build.context_tar({"Dockerfile": "FROM x\n"}, build.extra_ca_bundle(str(bundle))))
    assert files["Dockerfile"] == b"FROM x\n"
    assert files[build.CA_FILE_IN_CONTEXT] == PEM


def test_none_injects_an_empty_bundle():
    assert build.extra_ca_bundle("none") == b""
    assert build.extra_ca_bundle("NONE") == b""


def test_default_is_the_system_bundle(monkeypatch, tmp_path):
    system = tmp_path / "system.crt"
    system.write_bytes(PEM + PEM)
    monkeypatch.setattr(build, "SYSTEM_CA_BUNDLE", system)
    monkeypatch.delenv(build.CA_BUNDLE_ENV, raising=False)
    assert build.extra_ca_bundle() == PEM + PEM


def test_environment_setting_is_used(monkeypatch, tmp_path):
    bundle = tmp_path / "proxy.pem"
    bundle.write_bytes(PEM)
    monkeypatch.setenv(build.CA_BUNDLE_ENV, str(bundle))
    assert build.extra_ca_bundle() == PEM


def test_missing_bundle_is_an_error(tmp_path):
    with pytest.raises(build.BuildError, match="no such file"):
        build.extra_ca_bundle(str(tmp_path / "absent.pem"))


def test_non_pem_bundle_is_an_error(tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(build.BuildError, match="not a PEM certificate bundle"):
        build.extra_ca_bundle(str(junk))


def test_context_is_reproducible():
    a = build.context_tar({"Dockerfile": "FROM x\n"}, PEM).getvalue()
    b = build.context_tar({"Dockerfile": "FROM x\n"}, PEM).getvalue()
    assert a == b


def test_node_dockerfile_installs_the_ca_bundle_and_a_minimal_server():
    text = build.render("modelswarm.lab", "lab-node.Dockerfile.j2", base_image="example/base:1")
    assert text.startswith("# ") and "FROM example/base:1" in text
    assert f"COPY {build.CA_FILE_IN_CONTEXT} /usr/local/share/ca-certificates/" in text
    assert "update-ca-certificates" in text
    for package in ("systemd", "openssh-server", "python3", "sudo"):
        assert package in text
    installed = text.split("apt-get install", 1)[1].split("&&", 1)[0]
    assert "docker" not in installed  # Docker comes from the roles, as on a real server


def test_undefined_template_values_are_errors():
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        build.render("modelswarm.lab", "lab-node.Dockerfile.j2")
