"""The preflight role's kernel probe, fed with the evidence of different kernels."""

import importlib.util
from pathlib import Path

MODULE = Path(__file__).resolve().parents[2] / "roles" / "preflight" / "library" / "kernel_features.py"
spec = importlib.util.spec_from_file_location("kernel_features", MODULE)
kernel_features = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kernel_features)

LAB_CONFIG = """
CONFIG_OVERLAY_FS=y
CONFIG_VXLAN=y
# CONFIG_IP_VS is not set
# CONFIG_INET_ESP is not set
"""


def probe(config="", filesystems="", sys_modules=(), modules=()):
    return kernel_features.probe(
        "6.1.0",
        "/proc/config.gz",
        kernel_features.config_values(config),
        filesystems,
        set(sys_modules),
        set(modules),
    )


def test_lab_kernel_has_overlay_and_vxlan_but_no_ipvs_or_esp():
    features, evidence = probe(LAB_CONFIG)
    assert features == {"overlay": True, "vxlan": True, "ip_vs": False, "esp": False}
    assert evidence["vxlan"] == "CONFIG_VXLAN=y in /proc/config.gz"
    assert evidence["ip_vs"] == "none"


def test_loadable_modules_count_as_available():
    features, evidence = probe("CONFIG_IP_VS=m\n", modules={"esp4"})
    assert features["ip_vs"] and features["esp"]
    assert evidence["esp"] == "esp4 in /lib/modules/6.1.0"


def test_runtime_evidence_without_a_config_file():
    features, _ = probe(filesystems="nodev\toverlay\n", sys_modules={"vxlan", "ip_vs"})
    assert features == {"overlay": True, "vxlan": True, "ip_vs": True, "esp": False}


def test_nothing_known_means_nothing_available():
    features, _ = probe()
    assert not any(features.values())


def test_module_listing_parses_paths(tmp_path, monkeypatch):
    release = "9.9.9"
    tree = tmp_path / release
    tree.mkdir()
    (tree / "modules.dep").write_text("kernel/net/ipv4/esp4.ko.xz: kernel/net/xfrm/xfrm_algo.ko.xz\n")
    (tree / "modules.builtin").write_text("kernel/drivers/net/vxlan/vxlan.ko\n")
    real_join = kernel_features.os.path.join
    monkeypatch.setattr(
        kernel_features.os.path,
        "join",
        lambda *parts: real_join(str(tmp_path), *parts[1:]) if parts[0] == "/lib/modules" else real_join(*parts),
    )
    assert kernel_features.module_files(release) == {"esp4", "vxlan"}
