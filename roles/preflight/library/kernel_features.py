#!/usr/bin/python
# Read-only probe of the kernel features a swarm node needs. Kept compatible with Python 2.7 (CentOS 7 targets).


DOCUMENTATION = r"""
---
module: kernel_features
short_description: Report which kernel features a Docker Swarm node has
description:
  - Looks for each feature in the running kernel's config (/proc/config.gz or /boot/config-RELEASE), in
    /sys/module, in /proc/filesystems and in the module tree under /lib/modules. Changes nothing.
  - A feature counts as available when the kernel has it built in, has it loaded, or can load it as a module.
options: {}
author: modelswarm
"""

RETURN = r"""
features:
  description: Feature name to availability, for overlay, vxlan, ip_vs and esp.
  returned: always
  type: dict
evidence:
  description: Feature name to the first piece of evidence found, or "none".
  returned: always
  type: dict
kernel:
  description: The running kernel release.
  returned: always
  type: str
"""

import gzip
import os
import platform

from ansible.module_utils.basic import AnsibleModule

# feature -> (kernel config symbols, /sys/module names, module file stems)
FEATURES = {
    "overlay": (["CONFIG_OVERLAY_FS"], ["overlay"], ["overlay"]),
    "vxlan": (["CONFIG_VXLAN"], ["vxlan"], ["vxlan"]),
    "ip_vs": (["CONFIG_IP_VS"], ["ip_vs"], ["ip_vs"]),
    "esp": (["CONFIG_INET_ESP"], ["esp4"], ["esp4"]),
}


def read_kernel_config(release):
    for path in ("/proc/config.gz", "/boot/config-%s" % release):
        try:
            if path.endswith(".gz"):
                with gzip.open(path, "rt") as handle:
                    return path, handle.read()
            with open(path) as handle:
                return path, handle.read()
        except OSError:
            continue
    return None, ""


def config_values(text):
    values = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, value = line.split("=", 1)
            values[key] = value.strip()
    return values


def module_files(release):
    stems = set()
    for listing in ("modules.dep", "modules.builtin"):
        try:
            with open(os.path.join("/lib/modules", release, listing)) as handle:
                for line in handle:
                    path = line.split(":", 1)[0].strip()
                    name = os.path.basename(path)
                    stems.add(name.split(".ko")[0])
        except OSError:
            continue
    return stems


def probe(release, config_path, config, filesystems, sys_modules, modules):
    features, evidence = {}, {}
    for name, (symbols, sysfs_names, stems) in FEATURES.items():
        found = None
        for symbol in symbols:
            if config.get(symbol) in ("y", "m"):
                found = "%s=%s in %s" % (symbol, config[symbol], config_path)
                break
        if not found:
            for sysfs in sysfs_names:
                if sysfs in sys_modules:
                    found = "/sys/module/%s" % sysfs
                    break
        if not found and name == "overlay" and "overlay" in filesystems:
            found = "overlay in /proc/filesystems"
        if not found:
            for stem in stems:
                if stem in modules:
                    found = "%s in /lib/modules/%s" % (stem, release)
                    break
        features[name] = found is not None
        evidence[name] = found or "none"
    return features, evidence


def main():
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    release = platform.release()
    config_path, text = read_kernel_config(release)
    try:
        with open("/proc/filesystems") as handle:
            filesystems = handle.read()
    except OSError:
        filesystems = ""
    try:
        sys_modules = set(os.listdir("/sys/module"))
    except OSError:
        sys_modules = set()
    features, evidence = probe(
        release, config_path, config_values(text), filesystems, sys_modules, module_files(release)
    )
    module.exit_json(changed=False, features=features, evidence=evidence, kernel=release)


if __name__ == "__main__":
    main()
