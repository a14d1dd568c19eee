"""The `modelswarm` command line.

Exit codes: 0 success, 1 the operation failed (the message says why), 2 bad usage or bad input.
Progress goes to stderr; with --json, stdout carries exactly one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys

import docker.errors

from modelswarm import lab
from modelswarm.build import BuildError
from modelswarm.console import err, out

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _print_status(report: dict) -> None:
    from rich.table import Table

    table = Table(title=f"lab on {report['subnet']}", show_lines=False)
    for column in ("host", "container", "state", "address", "ssh", "role"):
        table.add_column(column)
    for node, info in report["nodes"].items():
        table.add_row(
            node,
            info["container"],
            info["state"],
            info["address"],
            "yes" if info["ssh"] else "no",
            "manager, leader" if info["leader"] else "manager",
        )
    out.print(table)
    images = ", ".join(f"{tag} ({'present' if ok else 'absent'})" for tag, ok in report["images"].items())
    out.print(f"images:    {images}")
    out.print(f"network:   {', '.join(report['network']) or 'absent'}")
    out.print(f"volumes:   {', '.join(report['volumes']) or 'none'}")
    out.print(f"inventory: {report['inventory'] or 'absent'}")
    out.print(f"healthy:   {'yes' if report['healthy'] else 'no'}")


def cmd_lab(args: argparse.Namespace) -> int:
    settings = lab.LabSettings.from_env()
    if args.lab_command == "up":
        report = lab.up(settings, rebuild=args.rebuild)
    elif args.lab_command == "down":
        report = lab.down(settings, purge_images=args.purge_images)
    else:
        report = lab.status(settings)
        if not args.json:
            _print_status(report)
            return EXIT_OK if report["healthy"] or not args.check else EXIT_FAILED
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.lab_command == "up":
        out.print(f"lab up: {len(report['instances'])} hosts; inventory {report['inventory']}")
        out.print("try:  .venv/bin/ansible -i inventory/lab all -m ping")
    if args.lab_command == "status" and args.check and not report["healthy"]:
        return EXIT_FAILED
    return EXIT_OK


def cmd_images(args: argparse.Namespace) -> int:
    from pathlib import Path

    from modelswarm import kit

    settings = lab.LabSettings.from_env()
    client = lab.connect()
    if args.images_command == "build":
        report = kit.build_kit(client, settings)
    else:
        report = kit.save_bundle(client, Path(args.output) if args.output else settings.state_dir / "bundle")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        out.print(f"images {args.images_command}: {'changed' if report['changed'] else 'nothing changed'}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelswarm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    lab_parser = sub.add_parser(
        "lab",
        help="the local three-host lab (containers that look like servers)",
        description="Manage the local lab: three hosts (node1 leader, node2, node3) on a dedicated bridge network. "
        "Settings: MODELSWARM_LAB_SUBNET, MODELSWARM_LAB_PREFIX, MODELSWARM_EXTRA_CA_CERTS, MODELSWARM_DEBIAN_MIRROR.",
    )
    lab_sub = lab_parser.add_subparsers(dest="lab_command", required=True)
    up = lab_sub.add_parser("up", help="create the lab, or leave a healthy one as it is")
    up.add_argument("--rebuild", action="store_true", help="rebuild the node image (e.g. after changing CA certs)")
    down = lab_sub.add_parser("down", help="remove the lab's containers, network, volumes and inventory")
    down.add_argument("--purge-images", action="store_true", help="also remove the lab's base and node images")
    st = lab_sub.add_parser("status", help="show what exists of the lab")
    st.add_argument("--check", action="store_true", help="exit 1 unless the lab is healthy")
    for p in (up, down, st):
        p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    lab_parser.set_defaults(func=cmd_lab)

    images_parser = sub.add_parser(
        "images",
        help="the lab image kit and the air-gapped image bundle",
        description="Build the platform images from the Debian base (NGINX, PostgreSQL, registry, Python runtime, "
        "console; placeholders for Consul, Logstash, Elasticsearch, LogSpout, Registrator) and save them as one "
        "bundle that the Ansible `images` role loads on every node.",
    )
    images_sub = images_parser.add_subparsers(dest="images_command", required=True)
    build = images_sub.add_parser("build", help="build the kit images (unchanged ones come from the cache)")
    save = images_sub.add_parser("bundle", help="save the kit images into one tarball + manifest.json")
    save.add_argument("--output", help="bundle directory (default: .lab/bundle)")
    for p in (build, save):
        p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    images_parser.set_defaults(func=cmd_images)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (lab.LabError, BuildError, docker.errors.DockerException, RuntimeError) as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", markup=True, highlight=False)
        return EXIT_FAILED
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
