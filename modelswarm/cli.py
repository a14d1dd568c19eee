"""The `modelswarm` command line.

Exit codes: 0 success, 1 the operation failed (the message says why), 2 bad usage or bad input.
Progress goes to stderr; with --json, stdout carries exactly one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import docker.errors

from modelswarm import lab
from modelswarm.build import BuildError
from modelswarm.console import err, out, progress
from modelswarm.modelimage import DEFAULT_RUNTIME

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


# ------------------------------------------------------------------------------------------- model lifecycle


def _settings(args: argparse.Namespace):
    from modelswarm import cluster

    inventory = cluster.read_inventory(args.inventory)
    registry = getattr(args, "registry", None) or inventory.registry
    return inventory, registry


def _emit(args: argparse.Namespace, payload: dict, human: str) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        out.print(human)


def cmd_build(args: argparse.Namespace) -> int:
    from modelswarm import bundle as bundles
    from modelswarm import cluster, modelimage

    bundle = bundles.load_bundle(args.bundle)
    inventory, registry = _settings(args)
    with cluster.manager(inventory) as client:
        image, built = modelimage.build_and_push(client, bundle, registry, args.runtime_image, args.pip_index_url)
    _emit(args, {"image": image.reference, "built": built}, f"{image.reference} ({'built' if built else 'present'})")
    return EXIT_OK


def _finish(args, inventory, outcome) -> int:
    from modelswarm import ledgerclient

    payload = {**outcome.ledger_entry(), "image": outcome.image, "exit_code": outcome.exit_code}
    try:
        stored = ledgerclient.record(inventory, outcome.ledger_entry())
        payload["ledger_id"] = stored["id"]
    except ledgerclient.LedgerError as exc:
        err.print(f"[yellow]warning:[/yellow] {exc}", markup=True)
        payload["ledger_id"] = None
    colour = "green" if outcome.exit_code == 0 else "red"
    _emit(
        args,
        payload,
        f"[{colour}]{outcome.result}[/{colour}]: {outcome.model} {outcome.from_version or '-'} -> "
        f"{outcome.to_version}: {outcome.message}",
    )
    return outcome.exit_code


def cmd_deploy(args: argparse.Namespace) -> int:
    from modelswarm import bundle as bundles
    from modelswarm import cluster, modelimage, rollout

    bundle = bundles.load_bundle(args.bundle)
    inventory, registry = _settings(args)
    with cluster.manager(inventory) as client:
        image, _ = modelimage.build_and_push(client, bundle, registry, args.runtime_image, args.pip_index_url)
        modelimage.stage(inventory, image.reference)
        target = rollout.Target.for_bundle(bundle, image, args.endpoint_mode)
        outcome = rollout.rollout(client, target, timeout=args.timeout, report=progress, actor=args.actor)
    return _finish(args, inventory, outcome)


def cmd_rollback(args: argparse.Namespace) -> int:
    from modelswarm import cluster, ledgerclient, modelimage, rollout

    inventory, _ = _settings(args)
    entries = ledgerclient.history(inventory, args.name)
    with cluster.manager(inventory) as client:
        service = rollout.find(client, rollout.SERVICE_PREFIX + args.name)
        if service is None:
            err.print(f"error: model {args.name!r} is not deployed")
            return EXIT_USAGE
        current = rollout.describe(service)
        good = [e for e in entries if e["result"] in ("succeeded", "no_op") and e["image_digest"]]
        if args.to:
            candidates = [e for e in good if e["to_version"] == args.to]
        else:
            candidates = [e for e in good if e["to_version"] != current["version"]]
        if not candidates:
            known = sorted({e["to_version"] for e in good})
            err.print(
                f"error: no recorded good rollout of {args.name} to {args.to or 'another version'}; known: {known}"
            )
            return EXIT_USAGE
        chosen = candidates[0]
        spec = service.attrs["Spec"]
        repo, tag = chosen["image"].rsplit(":", 1)
        found = modelimage.existing(client, repo, tag)  # the chosen version's own source hash, from its image
        target = rollout.Target(
            name=args.name,
            version=chosen["to_version"],
            image=f"{chosen['image']}@{chosen['image_digest']}",
            source_hash=found[1] if found else "",
            replicas=spec["Mode"]["Replicated"]["Replicas"],
            endpoint_mode=spec.get("EndpointSpec", {}).get("Mode", "dnsrr"),
        )
        modelimage.ensure_in_registry(client, target.image)
        modelimage.stage(inventory, target.image)
        outcome = rollout.rollout(client, target, timeout=args.timeout, report=progress, actor=args.actor)
    return _finish(args, inventory, outcome)


def cmd_status(args: argparse.Namespace) -> int:
    from modelswarm import cluster, rollout

    inventory, _ = _settings(args)
    report = {}
    with cluster.manager(inventory) as client:
        services = client.services.list(filters={"label": rollout.LABEL_MODEL})
        for service in services:
            name = service.attrs["Spec"]["Labels"][rollout.LABEL_MODEL]
            if args.name and name != args.name:
                continue
            info = rollout.describe(service)
            tasks = client.api.tasks(filters={"service": service.id, "desired-state": "running"})
            nodes = {n.id: n.attrs["Description"]["Hostname"] for n in client.nodes.list()}
            info["tasks"] = [{"node": nodes.get(t.get("NodeID"), "?"), "state": t["Status"]["State"]} for t in tasks]
            report[name] = info
    if args.name and args.name not in report:
        err.print(f"error: model {args.name!r} is not deployed")
        return EXIT_USAGE
    lines = [
        f"{name}: {i['version']} on {', '.join(t['node'] + ' ' + t['state'] for t in i['tasks'])}"
        f" (update: {i['update_state'] or 'none'})"
        for name, i in sorted(report.items())
    ]
    _emit(args, report, "\n".join(lines) or "no model deployed")
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    import requests

    from modelswarm import cluster

    try:
        payload = json.loads(args.data)
    except json.JSONDecodeError as exc:
        err.print(f"error: DATA is not JSON: {exc}")
        return EXIT_USAGE
    inventory = cluster.read_inventory(args.inventory)
    hosts = [inventory.hosts[args.node]] if args.node else inventory.managers
    for host in hosts:
        url = f"http://{host.address}/models/{args.name}/predict"
        try:
            response = requests.post(url, json=payload, timeout=30)
        except requests.RequestException as exc:
            progress(f"{host.name}: {exc.__class__.__name__}; trying the next node")
            continue
        body = response.json() if response.headers.get("Content-Type", "").startswith("application/json") else {}
        if args.json:
            print(json.dumps({"status": response.status_code, "node": host.name, **body}, indent=2))
        else:
            out.print(json.dumps(body) if body else response.text)
        return EXIT_OK if response.status_code == 200 else EXIT_FAILED
    err.print("error: no node answered")
    return EXIT_FAILED


def cmd_load(args: argparse.Namespace) -> int:
    from modelswarm import cluster
    from modelswarm import load as loads

    networks = [lab.LabSettings.from_env().subnet]
    hosts: list[str] = []
    if args.inventory:
        inventory = cluster.read_inventory(args.inventory)
        hosts = [h.address for h in inventory.hosts.values()]
    if args.data is not None:
        try:
            json.loads(args.data)
        except json.JSONDecodeError as exc:
            err.print(f"error: --data is not JSON: {exc}")
            return EXIT_USAGE
    plan = loads.LoadPlan(
        url=args.url,
        body=args.data,
        requests=args.requests,
        concurrency=args.concurrency,
        rate_per_worker=args.rate / args.concurrency if args.rate else 0.0,
        timeout=args.request_timeout,
    )
    try:
        loads.allowed_target(plan.url, networks, hosts)
        progress(f"load: {plan.total} requests, {plan.concurrency} workers -> {plan.url}")
        result = loads.run(plan)
    except loads.LoadError as exc:
        err.print(f"error: {exc}")
        return EXIT_USAGE
    _emit(args, result.as_dict(), result.summary())
    return EXIT_OK if result.failed == 0 else EXIT_FAILED


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

    def cluster_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-i",
            "--inventory",
            default=os.environ.get("MODELSWARM_INVENTORY", "inventory/lab"),
            help="Ansible inventory of the cluster (default: $MODELSWARM_INVENTORY or inventory/lab)",
        )
        p.add_argument("--json", action="store_true", help="print one JSON document on stdout")

    def build_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("bundle", help="model bundle directory (with modelswarm.yml)")
        p.add_argument("--registry", help="cluster registry host:port (default: the leader's address, port 5000)")
        p.add_argument(
            "--runtime-image",
            default=os.environ.get("MODELSWARM_RUNTIME_IMAGE", DEFAULT_RUNTIME),
            help="Python base image of model images (default: $MODELSWARM_RUNTIME_IMAGE or %(default)s)",
        )
        p.add_argument(
            "--pip-index-url",
            default=os.environ.get("MODELSWARM_PIP_INDEX_URL", ""),
            help="a PyPI mirror for air-gapped builds ($MODELSWARM_PIP_INDEX_URL)",
        )

    def rollout_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--timeout", type=float, default=600, help="seconds to wait for the rollout (default 600)")
        p.add_argument(
            "--actor",
            default=os.environ.get("MODELSWARM_ACTOR", os.environ.get("USER", "modelswarm")),
            help="who is rolling out, for the ledger (default: $MODELSWARM_ACTOR or $USER)",
        )
        p.add_argument(
            "--endpoint-mode",
            choices=["dnsrr", "vip"],
            default="dnsrr",
            help="service endpoints: DNS round-robin (no IPVS needed) or VIP",
        )

    build = sub.add_parser("build", help="validate a model bundle, build its image on the cluster and push it")
    build_options(build)
    cluster_options(build)
    build.set_defaults(func=cmd_build)

    deploy = sub.add_parser(
        "deploy",
        help="build if needed, then roll the model out and wait (exit 0 only when it serves on every replica)",
        description="Exit codes: 0 deployed (or already deployed), 1 failed or paused, 2 bad input, "
        "3 rolled back automatically, 4 timed out. Every rollout is written to the console's ledger.",
    )
    build_options(deploy)
    rollout_options(deploy)
    cluster_options(deploy)
    deploy.set_defaults(func=cmd_deploy)

    rollback = sub.add_parser("rollback", help="return a model to a recorded version (default: the previous one)")
    rollback.add_argument("name")
    rollback.add_argument("--to", metavar="VERSION", help="a version from the ledger")
    rollout_options(rollback)
    cluster_options(rollback)
    rollback.set_defaults(func=cmd_rollback)

    status = sub.add_parser("status", help="models, versions and where their replicas run")
    status.add_argument("name", nargs="?")
    cluster_options(status)
    status.set_defaults(func=cmd_status)

    predict = sub.add_parser("predict", help="POST JSON to a model through NGINX (first node that answers)")
    predict.add_argument("name")
    predict.add_argument("data", help="the JSON request body")
    predict.add_argument("--node", help="inventory name of the node to ask")
    cluster_options(predict)
    predict.set_defaults(func=cmd_predict)

    load = sub.add_parser(
        "load",
        help="send bounded prediction load with hey; report failures by kind, p50/p99/max and failures per second",
        description="Only loopback, the lab network and the hosts of --inventory are accepted as targets. "
        "Exit 0 when every request got a 2xx answer, 1 when some failed, 2 on bad input.",
    )
    load.add_argument("url", help="e.g. http://172.30.99.12/models/iris/predict")
    load.add_argument("--data", help="JSON body to POST (without it: GET)")
    load.add_argument("--requests", type=int, default=200, help="total requests (default 200)")
    load.add_argument("--concurrency", type=int, default=4, help="concurrent workers (default 4)")
    load.add_argument("--rate", type=float, default=0, help="requests per second in all (default: no limit)")
    load.add_argument("--request-timeout", type=int, default=10, help="seconds per request (default 10)")
    load.add_argument("-i", "--inventory", help="also accept this inventory's hosts as targets")
    load.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    load.set_defaults(func=cmd_load)
    return parser


def main(argv: list[str] | None = None) -> int:
    from modelswarm.bundle import BundleError
    from modelswarm.modelimage import ImageMissing

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (BundleError, ImageMissing) as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", markup=True, highlight=False)
        return EXIT_USAGE
    except (lab.LabError, BuildError, docker.errors.DockerException, RuntimeError) as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", markup=True, highlight=False)
        return EXIT_FAILED
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
