"""Build the ordered plan for one host: gather the facts each resource needs,
run its diff, order the changes, and fingerprint the facts they relied on.

Order: checks → directories → files → stale locks/pointer → (container) →
(stages). A change names what it depends on; apply runs it only after those
succeeded.
"""
from __future__ import annotations

import os
import posixpath

from . import __version__
from .context import Context, resolve_context  # noqa: F401 - resolve_context is part of this room's API
from .diff_container import diff_container
from .diff_storage import (diff_directory, diff_file, diff_free_disk, diff_lock, diff_marker, diff_orphans,
                           diff_pointer, diff_port, diff_storage_owner, diff_tempfiles, orphans_of)
from .facts_docker import ContainerFact, ImageFact
from .facts_host import HostFacts
from .facts_runtime import RuntimeFacts
from .plan_model import Change, Plan
from .stages import catalog
from .stages.plan import runtime_facts, stage_changes
from .diff_telemetry import PID_FILE, TSDB_DIR, diff_prometheus
from .state_container import config_hash, container_config, prometheus_listen
from .state_layout import (DIRECTORIES, INIT_SCRIPT, LAST_APPLY, LOCKS_DIR, MARKERS_DIR, POINTER, PROMETHEUS_CONFIG,
                           READ_ONLY_DIRS, lock_path, marker_path)
from .state_load import Desired
from .state_templates import desired_files

CONTAINER_TELEMETRY = "/telemetry"


def directories() -> tuple:
    """The storage layout's directories, plus any cache dir a stage kind
    needs that the layout does not list (after the last profiles/ cache)."""
    extra = [rel for rel in catalog.cache_dirs() if rel not in DIRECTORIES]
    if not extra:
        return DIRECTORIES
    at = DIRECTORIES.index("profiles/.locks")
    return DIRECTORIES[:at] + tuple(extra) + DIRECTORIES[at:]


def ancestors(path: str) -> list[str]:
    """Every directory above `path`, from / down."""
    out = []
    while True:
        parent = posixpath.dirname(path)
        if parent == path:
            return out[::-1]
        out.append(parent)
        path = parent


def nearest_existing(facts: HostFacts, path: str):
    probe = path
    while True:
        parent = posixpath.dirname(probe)
        if parent == probe:
            return facts.directory(probe)
        fact = facts.directory(parent)
        if fact.kind != "missing":
            return fact
        probe = parent


def resource_addresses(desired: Desired, facts: HostFacts, ctx: Context) -> list[str]:
    """Every resource of this host, in plan order."""
    addresses = ["check:storage_owner", "check:free_disk"]
    addresses += [f"directory:{rel}" for rel in directories()]
    addresses += [f"file:{f.rel}" for f in desired_files(desired)]
    for entry in facts.listdir(ctx.path(LOCKS_DIR)):
        if entry.endswith(".lock") and not entry.startswith("."):
            addresses.append(f"lock:{entry[: -len('.lock')]}")
    markers = [e[: -len(".json")] for e in facts.listdir(ctx.path(MARKERS_DIR))
               if e.endswith(".json") and not e.startswith(".")]
    addresses += [f"marker:{name}" for name in markers]
    addresses += [f"orphans:{name}" for name in markers]
    if ctx.runtime_kind == "local" and desired.data["telemetry"]["prometheus"]["state"] != "unmanaged":
        addresses.append("telemetry:prometheus")
    addresses.append("tempfiles:leftover")
    addresses.append("pointer:container_run_meta.env")
    if ctx.runtime_kind == "docker":
        addresses.append(f"container:{desired.data['runtime']['container']['name']}")
    addresses.append(f"port:{desired.data['server']['port']}")
    return addresses


def orphans(desired: Desired, facts: HostFacts, ctx: Context, name: str) -> list:
    """What the killed apply that left marker `name` left running."""
    marker = facts.lock_file(name, ctx.path(marker_path(name)))
    procs = {pid: facts.process(pid) for pid, _, _ in marker.processes}
    held = facts.lock_held(ctx.path(lock_path(name))) if marker.processes else None
    return orphans_of(marker, procs, ctx.hostname, held)


def prometheus_argv(desired: Desired, ctx: Context, binary: str) -> list:
    """How sglprep starts Prometheus for a local runtime."""
    return [binary, f"--config.file={ctx.path(PROMETHEUS_CONFIG)}", f"--storage.tsdb.path={ctx.path(TSDB_DIR)}",
            f"--web.listen-address={prometheus_listen(desired.data['telemetry']['prometheus_url'])}"]


def prometheus_change(desired: Desired, facts: HostFacts, ctx: Context) -> Change:
    want = desired.data["telemetry"]["prometheus"]
    path_env = desired.data["runtime"]["env"].get("PATH", "")
    fact = facts.service(ctx.path(PID_FILE), want["binary"], path_env)
    listen = prometheus_listen(desired.data["telemetry"]["prometheus_url"])
    holder = ""
    if fact.kind != "running" and want["state"] == "running":
        port = facts.port(int(listen.rsplit(":", 1)[1])) if listen.rsplit(":", 1)[1].isdigit() else None
        if port is not None and port.state == "busy":
            holder = f"pid {port.pid} ({' '.join(port.cmdline)[:80]})" if port.pid else "another process"
    return diff_prometheus(want["state"], prometheus_argv(desired, ctx, fact.binary or want["binary"]), fact,
                           listen, holder)


def temp_dirs(desired: Desired, facts: HostFacts, ctx: Context) -> tuple:
    """Where sglprep's atomic writes put their temp files: the managed dirs,
    the stages' signature dirs, the newest run dirs."""
    rels = ["", "telemetry", "telemetry/prometheus", "telemetry/sglprep", LOCKS_DIR, MARKERS_DIR,
            "telemetry/container_runs"]
    rels += [s.signature_rel(desired.model_slug).rsplit("/", 1)[0] for s in catalog.stages(desired.data)]
    runs = [r for r in facts.listdir(ctx.path("telemetry/container_runs")) if not r.startswith(".")]
    for run in sorted(runs, reverse=True)[:5]:
        rels += [f"telemetry/container_runs/{run}", f"telemetry/container_runs/{run}/stages"]
    return tuple(ctx.path(rel) for rel in dict.fromkeys(rels))


def desired_container(desired: Desired, ctx: Context) -> tuple[dict, str]:
    """(canonical config, config hash) of the container this host should run."""
    init = {f.rel: f for f in desired_files(desired)}.get(INIT_SCRIPT)
    config = container_config(desired.data, ctx.root, ctx.owner.spec, init.render_key if init else "",
                              desired.host)
    return config, config_hash(config)


def diff_resource(address: str, desired: Desired, facts: HostFacts, ctx: Context,
                  own_pid: int | None = None) -> Change | None:
    """The change one resource needs, from the facts as `facts` sees them.

    Used to build the plan and, with fresh facts, by apply to re-check a
    change just before it acts. None: the resource does not exist (or is a
    lock held by `own_pid`, this apply's own).
    """
    kind, _, name = address.partition(":")
    storage = desired.data["storage"]
    if address == "check:storage_owner":
        root_fact = facts.directory(ctx.root)
        if root_fact.kind == "symlink":  # a symlinked root is the user's choice; judge its target
            root_fact = facts.directory(os.path.realpath(ctx.root))
        ancestor = nearest_existing(facts, ctx.root) if root_fact.kind == "missing" else root_fact
        path_facts = [facts.directory(p, follow=True) for p in ancestors(ancestor.path)]
        return diff_storage_owner(ctx.owner, ctx.root, root_fact, ancestor, storage["ownership"], path_facts)
    if address == "check:free_disk":
        return diff_free_disk(facts.free_disk(ctx.root), storage["min_free_gib"])
    if kind == "directory":
        return diff_directory(name, facts.directory(ctx.path(name)), ctx.owner, storage["ownership"],
                              read_only=name in READ_ONLY_DIRS)
    if kind == "file":
        want = {f.rel: f for f in desired_files(desired)}[name]
        change = diff_file(want, facts.file(ctx.path(name)), ctx.owner)
        return change._replace(observed=dict(change.observed or {}, render_key=want.render_key))
    if kind == "lock":
        lock = facts.lock_file(name, ctx.path(lock_path(name)))
        if lock.kind == "missing" or (own_pid is not None and lock.owner_pid == own_pid):
            return None
        return diff_lock(lock, ctx.hostname)
    if kind == "marker":
        marker = facts.lock_file(name, ctx.path(marker_path(name)))
        return None if marker.kind == "missing" else diff_marker(marker, ctx.hostname)
    if kind == "pointer":
        pointer = facts.pointer(ctx.path(POINTER), CONTAINER_TELEMETRY, ctx.path("telemetry"))
        if ctx.runtime_kind == "docker" and facts.engine().reachable:
            return diff_pointer(pointer, facts.container(desired.data["runtime"]["container"]["name"]))
        return diff_pointer(pointer)
    if kind == "container":
        want, want_hash = desired_container(desired, ctx)
        engine = facts.engine()
        if not engine.reachable:
            cont, image = ContainerFact(name=name, kind="missing"), ImageFact(ref=want["image"], kind="missing")
        else:
            cont, image = facts.container(name), facts.image(want["image"])
        extra = (f"file:{INIT_SCRIPT}",) if want["entrypoint"] == "sglprep" else ()
        return diff_container(want, want_hash, desired.data["runtime"]["container"]["state"], engine, cont, image,
                              extra)
    if kind == "port":
        return diff_port(facts.port(int(name)), needed=False)
    if kind == "orphans":
        return diff_orphans(name, orphans(desired, facts, ctx, name), desired.data["timeouts"]["teardown_s"])
    if address == "telemetry:prometheus":
        return prometheus_change(desired, facts, ctx)
    if address == "tempfiles:leftover":
        found = facts.temp_leftovers(temp_dirs(desired, facts, ctx))
        return diff_tempfiles([(path, pid, facts.process(pid).alive) for path, pid in found])
    owner = catalog.resource_types().get(kind)
    if owner is not None:
        stage = next(s for s in catalog.stages(desired.data) if isinstance(s, owner))
        return stage.diff_resource(address, facts, ctx, runtime_facts(desired, facts, ctx))
    raise ValueError(f"unknown resource address {address!r}")


# Signature keys that come from the runtime, not from the desired state: a
# change in them is corrective drift (the host moved), not intentional.
RUNTIME_SIGNATURE_KEYS = frozenset(RuntimeFacts(status="").signature()) | {
    f"{lib}_version" for kind in catalog.BUILTIN for lib in kind.libraries}


def change_intent(change: Change):
    """The desired side of a resource, as last-apply.json records it. None for
    resources that are only host facts (locks, markers, pointer, port, checks):
    a change to those is always corrective."""
    if change.type == "directory":
        return (change.after or {}).get("owner")
    if change.type == "file":
        return (change.observed or {}).get("render_key")
    if change.type == "container":
        return (change.after or {}).get("config_hash", "absent")
    if change.type == "stage":
        want = {k: v for k, v in (change.after or {}).items() if k not in RUNTIME_SIGNATURE_KEYS}
        return {"mode": (change.observed or {}).get("mode"), **want}
    return None


def classify(change: Change, record) -> str:
    """corrective: the host moved away from what the last apply left;
    intentional: the desired state asks for something new."""
    intent = change_intent(change)
    if intent is None:
        return "corrective"
    if record.kind != "ok" or change.address not in record.intents:
        return "intentional"
    return "corrective" if record.intents[change.address] == intent else "intentional"


def plan_intents(plan: Plan) -> dict:
    return {c.address: i for c in plan.changes if (i := change_intent(c)) is not None}


def build_plan(desired: Desired, facts: HostFacts, own_pid: int | None = None, verify: bool = False) -> Plan:
    """The plan for `desired` on this host. `own_pid`: a lock held by this pid
    (apply's own run lock) is not a resource to act on. `verify`: re-hash
    every primed artifact (plan --verify, apply) instead of sizes and mtimes."""
    ctx = resolve_context(desired, facts)
    container = None
    if ctx.runtime_kind == "docker":
        container = diff_resource(f"container:{desired.data['runtime']['container']['name']}", desired, facts, ctx)
    stage_checks, stages, _ = stage_changes(desired, facts, ctx, container, verify)
    servers = {s.address for s in catalog.stages(desired.data) if s.starts_server}
    port_needed = any(c.address in servers and c.action == "run" for c in stages)
    changes = []
    for address in resource_addresses(desired, facts, ctx):
        if container is not None and address == container.address:
            change = container
        elif address.startswith("port:"):
            held_by = {pid: c.address for c in changes if c.type == "orphans" for pid, _ in c.observed["processes"]}
            change = diff_port(facts.port(int(address[5:])), needed=port_needed, orphans=held_by)
        else:
            change = diff_resource(address, desired, facts, ctx, own_pid)
        if change is not None:
            changes.append(change)
    checks_end = sum(1 for c in changes if c.type == "check")
    changes[checks_end:checks_end] = stage_checks
    changes += stages
    known = {c.address for c in changes}
    record = facts.last_apply(ctx.path(LAST_APPLY))
    changes = [c._replace(depends_on=tuple(d for d in c.depends_on if d in known),
                          cause=classify(c, record) if c.action != "noop" else "") for c in changes]
    parts = [__version__, desired.sources_sha, desired.host,
             [[c.address, c.action, c.observed] for c in changes]]
    warnings = list(desired.warnings)
    for change in changes:
        warnings.extend(change.warnings)
    return Plan(host=desired.host, state_file=desired.state_file, changes=changes, warnings=warnings,
                overrides=desired.overrides,
                last_apply_exit_code=record.exit_code if record.kind == "ok" else None,
                last_success_at=record.last_success_at if record.kind == "ok" and record.last_success_at else None,
                fingerprint_parts=parts, last_apply_at=record.applied_at if record.kind == "ok" else None)
