"""The local lab: three hosts on one machine (`hosts`) and the image kit that stands in for registries (`kit`)."""

from modelswarm.lab.hosts import LabError, LabSettings, build_lock, connect, down, ensure_base_image, status, up

__all__ = ["LabError", "LabSettings", "build_lock", "connect", "down", "ensure_base_image", "status", "up"]
