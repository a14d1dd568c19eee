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

from modelswarm import contract, lab
from modelswarm.apiclient import Api, ApiError, CredentialsMissing
from modelswarm.contract import Exit
from modelswarm.imagebuild import BuildError
from modelswarm.tooling.progress import err, out, progress


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
            "manager, leader" if info["leader"] else info.get("role", "manager"),
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
        with lab.build_lock(settings, "lab up"):
            report = lab.up(settings, rebuild=args.rebuild)
    elif args.lab_command == "down":
        report = lab.down(settings, purge_images=args.purge_images)
    else:
        report = lab.status(settings)
        if not args.json:
            _print_status(report)
            return Exit.OK if report["healthy"] or not args.check else Exit.FAILED
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.lab_command == "up":
        workers = sum(1 for node in report["nodes"] if node not in {i["instance"] for i in report["instances"]})
        out.print(f"lab up: {len(report['nodes'])} hosts ({workers} workers); inventory {report['inventory']}")
        out.print("try:  .venv/bin/ansible -i inventory/lab all -m ping")
    if args.lab_command == "status" and args.check and not report["healthy"]:
        return Exit.FAILED
    return Exit.OK


def cmd_images(args: argparse.Namespace) -> int:
    from pathlib import Path

    from modelswarm.lab import kit

    settings = lab.LabSettings.from_env()
    client = lab.connect()
    with lab.build_lock(settings, f"images {args.images_command}"):
        if args.images_command == "build":
            report = kit.build_kit(client, settings)
        else:
            report = kit.save_bundle(client, Path(args.output) if args.output else settings.state_dir / "bundle")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        out.print(f"images {args.images_command}: {'changed' if report['changed'] else 'nothing changed'}")
    return Exit.OK


# ------------------------------------------------------------------------------------------- model lifecycle


def _inventory(args: argparse.Namespace):
    from modelswarm import cluster

    return cluster.read_inventory(args.inventory)


def _overrides(args: argparse.Namespace):
    from modelswarm.lifecycle import pipeline

    return pipeline.Overrides(
        registry=getattr(args, "registry", None),
        runtime_image=getattr(args, "runtime_image", None),
        endpoint_mode=getattr(args, "endpoint_mode", None),
        pip_index_url=getattr(args, "pip_index_url", ""),
    )


def _emit(args: argparse.Namespace, payload: dict, human: str) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        out.print(human)


def cmd_build(args: argparse.Namespace) -> int:
    from modelswarm import cluster
    from modelswarm.lifecycle import bundle as bundles
    from modelswarm.lifecycle import pipeline

    bundle = bundles.load_bundle(args.bundle)
    inventory = _inventory(args)
    with cluster.manager(inventory) as client:
        image, built = pipeline.build(client, bundle, _overrides(args))
    _emit(args, {"image": image.reference, "built": built}, f"{image.reference} ({'built' if built else 'present'})")
    return Exit.OK


def cmd_validate(args: argparse.Namespace) -> int:
    from modelswarm import cluster
    from modelswarm.lab import kit
    from modelswarm.lifecycle import bundle as bundles
    from modelswarm.lifecycle import pipeline

    bundle = bundles.load_bundle(args.bundle)
    overrides = _overrides(args)
    if args.local:
        client = lab.connect()
        overrides = pipeline.Overrides(
            runtime_image=overrides.runtime_image or kit.PYTHON_RUNTIME, pip_index_url=overrides.pip_index_url
        )
        verdict = pipeline.validate(client, bundle, overrides, on_cluster=False, report=progress)
    else:
        with cluster.manager(_inventory(args)) as client:
            verdict = pipeline.validate(client, bundle, overrides, report=progress)
    payload = {"model": bundle.name, "version": bundle.version, **verdict.__dict__}
    if verdict.passed:
        _emit(args, payload, f"[green]valid[/green]: {bundle.name} {bundle.version} answered {verdict.examples} "
                             f"example input(s) in its image")  # fmt: skip
        return Exit.OK
    _emit(args, payload, f"[red]invalid[/red]: {bundle.name} {bundle.version}: {verdict.failure}")
    return Exit.USAGE


def _show(args: argparse.Namespace, recorded) -> int:
    outcome = recorded.outcome
    if recorded.ledger_warning:
        err.print(f"[yellow]warning:[/yellow] {recorded.ledger_warning}", markup=True)
    payload = {
        **outcome.ledger_entry(),
        "image": outcome.image,
        "exit_code": int(outcome.exit_code),
        "ledger_id": recorded.ledger_id,
    }
    colour = "green" if outcome.exit_code == Exit.OK else "red"
    _emit(
        args,
        payload,
        f"[{colour}]{outcome.result}[/{colour}]: {outcome.model} {outcome.from_version or '-'} -> "
        f"{outcome.to_version}: {outcome.message}",
    )
    return outcome.exit_code


def cmd_deploy(args: argparse.Namespace) -> int:
    from modelswarm.lifecycle import bundle as bundles
    from modelswarm.lifecycle import pipeline

    bundle = bundles.load_bundle(args.bundle)
    recorded = pipeline.deploy(
        _inventory(args), bundle, _overrides(args), timeout=args.timeout, report=progress, note=args.note
    )
    return _show(args, recorded)


def cmd_rollback(args: argparse.Namespace) -> int:
    from modelswarm.lifecycle import pipeline

    recorded = pipeline.rollback(
        _inventory(args), args.name, args.to, timeout=args.timeout, report=progress, note=args.note
    )
    return _show(args, recorded)


def cmd_restore_models(args: argparse.Namespace) -> int:
    from modelswarm.lifecycle import pipeline

    try:
        with open(args.record, encoding="utf-8") as handle:
            models = json.load(handle)
    except (OSError, ValueError) as exc:
        err.print(f"error: cannot read the models a backup recorded from {args.record}: {exc}")
        return Exit.USAGE
    if not isinstance(models, dict):
        err.print(f"error: {args.record} is not a JSON object of model name -> record")
        return Exit.USAGE
    if not models:
        _emit(args, {}, "the backup recorded no model: nothing to restore")
        return Exit.OK
    recorded = pipeline.restore_models(_inventory(args), models, timeout=args.timeout, report=progress, note=args.note)
    worst = Exit.OK
    for one in recorded:
        _show(args, one)
        worst = max(worst, one.exit_code)
    return worst


def cmd_status(args: argparse.Namespace) -> int:
    from modelswarm import cluster, contract
    from modelswarm.lifecycle import rollout

    inventory = _inventory(args)
    report = {}
    with cluster.manager(inventory) as client:
        services = client.services.list(filters={"label": contract.LABEL_MODEL})
        for service in services:
            name = service.attrs["Spec"]["Labels"][contract.LABEL_MODEL]
            if args.name and name != args.name:
                continue
            info = rollout.describe(service)
            tasks = client.api.tasks(filters={"service": service.id, "desired-state": "running"})
            nodes = {n.id: n.attrs["Description"]["Hostname"] for n in client.nodes.list()}
            info["tasks"] = [{"node": nodes.get(t.get("NodeID"), "?"), "state": t["Status"]["State"]} for t in tasks]
            report[name] = info
    if args.name and args.name not in report:
        err.print(f"error: model {args.name!r} is not deployed")
        return Exit.USAGE
    lines = [
        f"{name}: {i['version']} on {', '.join(t['node'] + ' ' + t['state'] for t in i['tasks'])}"
        f" (update: {i['update_state'] or 'none'})"
        for name, i in sorted(report.items())
    ]
    _emit(args, report, "\n".join(lines) or "no model deployed")
    return Exit.OK


def cmd_predict(args: argparse.Namespace) -> int:
    import requests

    from modelswarm import cluster

    try:
        payload = json.loads(args.data)
    except json.JSONDecodeError as exc:
        err.print(f"error: DATA is not JSON: {exc}")
        return Exit.USAGE
    inventory = cluster.read_inventory(args.inventory)
    api = Api.for_inventory(inventory, "predict")
    hosts = [inventory.hosts[args.node]] if args.node else inventory.managers
    for host in hosts:
        url = f"{api.base(host)}/models/{args.name}/predict"
        try:
            response = requests.post(url, json=payload, timeout=30, headers=api.headers, verify=api.tls_verify)
        except requests.RequestException as exc:
            progress(f"{host.name}: {exc.__class__.__name__}; trying the next node")
            continue
        body = response.json() if response.headers.get("Content-Type", "").startswith("application/json") else {}
        if args.json:
            print(json.dumps({"status": response.status_code, "node": host.name, **body}, indent=2))
        else:
            out.print(json.dumps(body) if body else response.text)
        return Exit.OK if response.status_code == 200 else Exit.FAILED
    err.print("error: no node answered")
    return Exit.FAILED


# ------------------------------------------------------------------------------------------- model secrets


def _secret_value(args: argparse.Namespace) -> bytes:
    """The value to store: --from-file's bytes, else stdin (read without echo, twice, from a terminal). Never
    printed or logged."""
    from modelswarm.lifecycle import modelsecrets

    if args.from_file:
        try:
            with open(args.from_file, "rb") as handle:
                return handle.read(contract.MAX_SECRET_BYTES + 1)
        except OSError as exc:
            raise modelsecrets.SecretError(f"cannot read --from-file {args.from_file}: {exc.strerror}") from None
    if sys.stdin is None or sys.stdin.closed:
        raise modelsecrets.SecretError("no value: pipe it to stdin or give --from-file PATH")
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"value of {args.name} for {args.model} (not shown): ")
        if value and getpass.getpass("the same value again: ") != value:
            raise modelsecrets.SecretError("the two values differ: nothing was stored")
        return value.encode()
    return sys.stdin.buffer.read(contract.MAX_SECRET_BYTES + 1)


def _secrets_set(args: argparse.Namespace, client, value: bytes, service_name: str, in_use: dict | None) -> int:
    from modelswarm.lifecycle import modelsecrets

    progress(f"storing secret {args.name} of {args.model} as a swarm secret")
    stored, created = modelsecrets.store(client, args.model, args.name, value)
    payload = {"model": args.model, "name": args.name, "version": stored.version, "secret": stored.secret_name,
               "created": created, "created_at": stored.created_at}  # fmt: skip
    if created:
        human = f"stored {args.model}/{args.name} as version {stored.version} ({stored.secret_name})"
    else:
        human = f"unchanged: {stored.secret_name} (version {stored.version}) already holds this value"
    if in_use is None:
        human += f"\n{service_name} is not deployed: `modelswarm deploy BUNDLE` mounts it"
    elif in_use.get(args.name) != stored.secret_name:
        using = f"uses {in_use[args.name]}" if args.name in in_use else "does not mount it"
        human += f"\n{service_name} {using}: `modelswarm deploy BUNDLE` (of a version declaring it) rolls it out"
    _emit(args, payload, human)
    return Exit.OK


def _secrets_list(args: argparse.Namespace, listed: dict, service_name: str, in_use: dict) -> int:
    rows = [
        {"name": name, "version": v.version, "secret": v.secret_name, "created_at": v.created_at,
         "current": v is versions[-1], "in_use": in_use.get(name) == v.secret_name}
        for name, versions in listed.items() for v in versions
    ]  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
        return Exit.OK
    if not rows:
        out.print(f"{args.model} has no secrets (set one: modelswarm secrets set {args.model} NAME)")
        return Exit.OK
    from rich.table import Table

    table = Table(title=f"secrets of {args.model} (values are never shown; --json for the swarm secrets' names)")
    for column in ("name", "version", "created", "current", f"used by {service_name}"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], str(row["version"]), row["created_at"], "yes" if row["current"] else "",
                      "yes" if row["in_use"] else "")  # fmt: skip
    out.print(table)
    stale = sorted(n for n in listed if in_use.get(n) not in (None, listed[n][-1].secret_name))
    if stale:
        out.print(
            f"{service_name} runs an older version of {', '.join(stale)}: `modelswarm deploy BUNDLE` rolls it out"
        )
    return Exit.OK


def cmd_secrets(args: argparse.Namespace) -> int:
    from modelswarm import cluster
    from modelswarm.lifecycle import modelsecrets, rollout

    modelsecrets.check_names(args.model, getattr(args, "name", None))
    if args.secrets_command == "set":
        value = _secret_value(args)
        modelsecrets.check_value(value)  # before the cluster is asked anything
    service_name = contract.service_name(args.model)
    with cluster.manager(_inventory(args)) as client:
        service = rollout.find(client, service_name)
        in_use = modelsecrets.mounted_names(service.attrs["Spec"]) if service else {}
        if args.secrets_command == "set":
            return _secrets_set(args, client, value, service_name, in_use if service else None)
        if args.secrets_command == "prune":
            # Swarm's automatic rollback returns to the previous spec: keep what it mounts too.
            previous = modelsecrets.mounted_names(service.attrs.get("PreviousSpec")) if service else {}
            removed = modelsecrets.remove_unused(client, args.model, {*in_use.values(), *previous.values()})
            listing = "".join(f"\n  {name}" for name in removed)
            _emit(args, {"model": args.model, "removed": removed}, f"removed {len(removed)} old version(s){listing}")
            return Exit.OK
        listed = modelsecrets.versions(modelsecrets.inspected(client, args.model), args.model)
    return _secrets_list(args, listed, service_name, in_use)


# ------------------------------------------------------------------------------------------- access control


def _wait_on_nodes(api: Api, version: int, probe_key: str | None = None) -> None:
    """Keys are checked by NGINX on every node: wait (at most 10 s) until each one has the change."""
    nodes = api.wait_for_grants(version, probe_key)
    late = [name for name, ready in nodes.items() if not ready]
    if late:
        raise ApiError(f"the change is stored, but not yet in force on {', '.join(late)} after 10 s")
    progress(f"in force on every node ({', '.join(nodes)})")


def _print_secret(args: argparse.Namespace, payload: dict, secret_field: str, what: str) -> None:
    """The secret alone on the last line of stdout (shown once, never again); the rest on stderr."""
    if args.json:
        print(json.dumps(payload, indent=2))
        return
    details = {k: v for k, v in payload.items() if k != secret_field}
    err.print(f"{what}: {json.dumps(details)}  (shown once: store it now)", highlight=False)
    print(payload[secret_field])


def cmd_keys(args: argparse.Namespace) -> int:
    api = Api.for_inventory(_inventory(args), "admin")
    if args.keys_command == "create":
        models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
        body = {"name": args.name, "role": args.role, "models": models}
        created = api.call("POST", "/api/keys", expected=(201,), json=body).json()
        _wait_on_nodes(api, created["grants_version"], created["key"])
        _print_secret(args, created, "key", f"key for {args.name}")
    elif args.keys_command == "rotate":
        rotated = api.call("POST", f"/api/keys/{args.name}/rotate").json()
        _wait_on_nodes(api, rotated["grants_version"], rotated["key"])
        _print_secret(args, rotated, "key", f"new key for {args.name} (the old one no longer works)")
    elif args.keys_command == "revoke":
        revoked = api.call("DELETE", f"/api/keys/{args.name}").json()
        _wait_on_nodes(api, revoked["grants_version"])
        _emit(args, revoked, f"revoked {args.name}'s key {revoked['key_id']} on every node")
    else:
        keys = api.call("GET", "/api/keys", params={"all": "1" if args.all else "0"}).json()
        if args.json:
            print(json.dumps(keys, indent=2))
            return Exit.OK
        from rich.table import Table

        table = Table(title="API keys" + (" (with revoked)" if args.all else ""))
        for column in ("name", "role", "models", "id", "created", "by", "revoked"):
            table.add_column(column)
        for k in keys:
            table.add_row(
                k["name"], k["role"], ",".join(k["models"] or ["*"]), k["key_id"], k["created_at"], k["created_by"],
                k["revoked_at"] or "",
            )  # fmt: skip
        out.print(table)
        out.print(f"roles, weakest first (each includes the ones before): {', '.join(contract.ROLES)}")
    return Exit.OK


def cmd_users(args: argparse.Namespace) -> int:
    api = Api.for_inventory(_inventory(args), "admin")
    if args.users_command == "create":
        created = api.call("POST", "/api/users", expected=(201,), json={"name": args.name, "role": args.role}).json()
        _print_secret(args, created, "password", f"user {args.name}")
    elif args.users_command == "password":
        reset = api.call("POST", f"/api/users/{args.name}/password").json()
        _print_secret(args, reset, "password", f"new password for {args.name} (their sessions ended)")
    elif args.users_command == "disable":
        _emit(args, api.call("DELETE", f"/api/users/{args.name}").json(), f"disabled {args.name}")
    else:
        users = api.call("GET", "/api/users").json()
        lines = [f"{u['name']}  {u['role']}  created {u['created_at']}" + (" DISABLED" if u["disabled_at"] else "")
                 for u in users]  # fmt: skip
        _emit(args, users, "\n".join(lines))
    return Exit.OK


def cmd_ledger(args: argparse.Namespace) -> int:
    from modelswarm.apiclient import secrets_dir
    from modelswarm.lifecycle import ledger

    api = Api.for_inventory(_inventory(args), "viewer")
    if args.ledger_command == "export":
        text = ledger.export_text(api)
        entries = ledger.parse_export(text)  # refuse to write a damaged export
        if args.output:
            with open(args.output, "wb") as handle:
                handle.write(text)
            progress(f"ledger export: {len(entries)} entries -> {args.output}")
        else:
            sys.stdout.buffer.write(text)
        return Exit.OK
    anchor_file = args.anchor or str(secrets_dir() / "ledger-anchor.json")
    anchor = None if args.no_anchor else ledger.load_anchor(anchor_file)
    result, _ = ledger.verify(api, anchor)
    payload = {
        "ok": result.ok,
        "checked": result.checked,
        "failed_id": result.failed_id,
        "reason": result.reason,
        "head": list(result.head) if result.head else None,
        "anchor": list(anchor) if anchor else None,
    }
    if result.ok:
        if not args.no_anchor:
            ledger.save_anchor(anchor_file, result.head)
        since = f"; the entry {anchor[0]} verified earlier is unchanged" if anchor else ""
        _emit(args, payload, f"[green]ledger verified[/green]: {result.checked} entries, the chain holds{since}")
        return Exit.OK
    _emit(args, payload, f"[red]ledger verification failed[/red] at entry {result.failed_id}: {result.reason}")
    return Exit.FAILED


def cmd_load(args: argparse.Namespace) -> int:
    from modelswarm import cluster
    from modelswarm.tooling import loadgen as loads

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
            return Exit.USAGE
    headers: tuple[str, ...] = ()
    if not args.no_key:
        from modelswarm.apiclient import api_key

        headers = (f"Authorization: Bearer {api_key('predict')[0]}",)
    plan = loads.LoadPlan(
        headers=headers,
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
        return Exit.USAGE
    _emit(args, result.as_dict(), result.summary())
    return Exit.OK if result.failed == 0 else Exit.FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelswarm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    lab_parser = sub.add_parser(
        "lab",
        help="the local three-host lab (containers that look like servers)",
        description="Manage the local lab: three manager hosts (node1 leader, node2, node3) and "
        "MODELSWARM_LAB_WORKERS worker hosts (node4, ...; default 0) on a dedicated bridge network. Lowering "
        "MODELSWARM_LAB_WORKERS removes the highest-numbered workers once they have left the swarm. "
        "Settings: MODELSWARM_LAB_SUBNET, MODELSWARM_LAB_PREFIX, MODELSWARM_LAB_WORKERS, MODELSWARM_EXTRA_CA_CERTS, "
        "MODELSWARM_DEBIAN_MIRROR.",
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
    save = images_sub.add_parser(
        "bundle", help="save the kit images into tarballs by placement (all nodes / leader) + manifest.json"
    )
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
        p.add_argument("--registry", help="cluster registry host:port (default: what the cluster publishes)")
        p.add_argument(
            "--runtime-image",
            help="Python base image of model images (default: the runtime image the cluster publishes, by digest)",
        )
        p.add_argument(
            "--pip-index-url",
            default=os.environ.get("MODELSWARM_PIP_INDEX_URL", ""),
            help="a PyPI mirror for air-gapped builds ($MODELSWARM_PIP_INDEX_URL)",
        )

    def rollout_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--timeout", type=float, default=600, help="seconds to wait for the rollout (default 600)")
        p.add_argument(
            "--note",
            default=os.environ.get("MODELSWARM_NOTE", ""),
            help="free text for the ledger, e.g. a CI job URL ($MODELSWARM_NOTE); the actor is the API key's name",
        )

    def endpoint_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--endpoint-mode",
            choices=["dnsrr", "vip"],
            help="service endpoints: DNS round-robin (no IPVS needed) or VIP (default: what the cluster publishes)",
        )

    validate = sub.add_parser(
        "validate",
        help="check a bundle, build its image and have it answer its example inputs (nothing reaches the cluster)",
        description="Exit codes: 0 every example answered with JSON, 2 the bundle is invalid or its image failed "
        "an example (the message names it). The image is built on a manager (default) or, with --local, on this "
        "machine's Docker daemon; it is not pushed.",
    )
    build_options(validate)
    validate.add_argument(
        "--local",
        action="store_true",
        help="build and run on this machine's Docker daemon (base: --runtime-image, default the lab kit's runtime)",
    )
    cluster_options(validate)
    validate.set_defaults(func=cmd_validate)

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
    endpoint_option(deploy)
    cluster_options(deploy)
    deploy.set_defaults(func=cmd_deploy)

    rollback = sub.add_parser("rollback", help="return a model to a recorded version (default: the previous one)")
    rollback.add_argument("name")
    rollback.add_argument("--to", metavar="VERSION", help="a version from the ledger")
    rollout_options(rollback)
    cluster_options(rollback)
    rollback.set_defaults(func=cmd_rollback)

    restore = sub.add_parser(
        "restore-models",
        help="serve again the models a backup recorded (playbooks/restore.yml calls it)",
        description="RECORD is the models.json of a backup (`modelswarm status --json` at backup time). Each "
        "model is rolled out, health-gated, from its image in this cluster's registry (restored from the same "
        "backup), with the replica count it had; each rollout is written to the ledger. Exit codes as deploy's.",
    )
    restore.add_argument("record", metavar="RECORD")
    rollout_options(restore)
    cluster_options(restore)
    restore.set_defaults(func=cmd_restore_models)

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

    keys = sub.add_parser(
        "keys",
        help="API keys: create, list, rotate, revoke (with the controller's admin key, or an admin key in "
        "$MODELSWARM_API_KEY)",
        description="A key is checked by NGINX on every node; create, rotate and revoke return once every node "
        "has the change (at most 10 s). A new key is printed once, alone on the last line of stdout.",
    )
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="a new key for NAME (one person or pipeline)")
    create.add_argument("name")
    create.add_argument("--role", default="predict", choices=contract.ROLES)
    create.add_argument("--models", help="comma-separated models the key may predict with (default: all)")
    listing = keys_sub.add_parser("list", help="names, roles, models and dates (never a key)")
    listing.add_argument("--all", action="store_true", help="also revoked keys")
    rotate = keys_sub.add_parser("rotate", help="a new key for NAME; the old one stops working")
    rotate.add_argument("name")
    revoke = keys_sub.add_parser("revoke", help="NAME's key stops working on every node")
    revoke.add_argument("name")
    for p in (create, listing, rotate, revoke):
        cluster_options(p)
    keys.set_defaults(func=cmd_keys)

    secrets = sub.add_parser(
        "secrets",
        help="model secrets: set, list, prune (swarm secrets, mounted at /run/secrets/<name>; values never shown)",
        description="A model declares its secrets in modelswarm.yml (secrets: [NAME, ...]) and reads them with "
        "modelswarm_model.secret(NAME). Each new value is a new version (swarm secret model-<model>-<name>-v<N>); "
        "the next rollout (`modelswarm deploy`, even of the same version) mounts the newest one. A deploy whose "
        "secret was never set is refused before anything changes.",
    )
    secrets_sub = secrets.add_subparsers(dest="secrets_command", required=True)
    sset = secrets_sub.add_parser(
        "set", help="store a value (stdin, not echoed on a terminal, or --from-file); the same value again is a no-op"
    )
    sset.add_argument("model")
    sset.add_argument("name")
    sset.add_argument("--from-file", metavar="PATH", help="read the value from this file (its bytes, as they are)")
    slist = secrets_sub.add_parser("list", help="names, versions, dates, the current one, the one in use")
    slist.add_argument("model")
    sprune = secrets_sub.add_parser("prune", help="remove versions that are neither current nor in use")
    sprune.add_argument("model")
    for p in (sset, slist, sprune):
        cluster_options(p)
    secrets.set_defaults(func=cmd_secrets)

    ledger_parser = sub.add_parser(
        "ledger",
        help="verify the ledger's hash chain, or export it for auditors (a viewer key or better)",
        description="verify: exit 0 when every entry's hash and link recompute, 1 naming the first entry that does "
        "not match. It remembers the newest entry it verified (.secrets/ledger-anchor.json) and fails if that entry "
        "later changes or vanishes, which also catches a chain rewritten from the start.",
    )
    ledger_sub = ledger_parser.add_subparsers(dest="ledger_command", required=True)
    lverify = ledger_sub.add_parser("verify", help="recompute the hash chain here, on the controller")
    lverify.add_argument("--anchor", help="anchor file (default: .secrets/ledger-anchor.json)")
    lverify.add_argument("--no-anchor", action="store_true", help="neither read nor update the anchor")
    lexport = ledger_sub.add_parser("export", help="the whole ledger as JSON lines (with its hashes)")
    lexport.add_argument("-o", "--output", help="file to write (default: stdout)")
    for p in (lverify, lexport):
        cluster_options(p)
    ledger_parser.set_defaults(func=cmd_ledger)

    users = sub.add_parser("users", help="console users: create, list, password, disable (admin)")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    ucreate = users_sub.add_parser("create", help="a new user; a generated password is printed once")
    ucreate.add_argument("name")
    ucreate.add_argument("--role", default="viewer", choices=contract.USER_ROLES)
    ulist = users_sub.add_parser("list")
    upassword = users_sub.add_parser("password", help="a new generated password; the user's sessions end")
    upassword.add_argument("name")
    udisable = users_sub.add_parser("disable", help="the user can no longer sign in; sessions end")
    udisable.add_argument("name")
    for p in (ucreate, ulist, upassword, udisable):
        cluster_options(p)
    users.set_defaults(func=cmd_users)

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
    load.add_argument(
        "--no-key",
        action="store_true",
        help="send no API key (default: $MODELSWARM_API_KEY, else the controller's deploy key)",
    )
    load.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    load.set_defaults(func=cmd_load)
    return parser


def main(argv: list[str] | None = None) -> int:
    from modelswarm.lifecycle.bundle import BundleError
    from modelswarm.lifecycle.modelimage import ImageMissing
    from modelswarm.lifecycle.modelsecrets import SecretError
    from modelswarm.lifecycle.pipeline import PipelineError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (BundleError, ImageMissing, PipelineError, CredentialsMissing, SecretError) as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", markup=True, highlight=False)
        return Exit.USAGE
    except (lab.LabError, BuildError, docker.errors.DockerException, ApiError, RuntimeError) as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", markup=True, highlight=False)
        return Exit.FAILED
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
