"""Build the ordered plan for one host: gather the facts each resource needs,
run its diff, order the changes, and fingerprint the facts they relied on.

Order: checks → directories → files → stale locks/pointer → (container) →
(stages). A change names what it depends on; apply runs it only after those
succeeded.
"""
from __future__ import annotations

import os
import posixpath
from typing import NamedTuple

from . import __version__
from .diff_storage import (Owner, diff_directory, diff_file, diff_free_disk, diff_lock, diff_marker,
                           diff_pointer, diff_port, diff_storage_owner, resolve_owner, storage_root)
from .diff_stages import (STAGES, SignatureFact, cache_dir, diff_flashinfer_incomplete, diff_flashinfer_toolchain,
                          diff_gpu_count,
                          diff_model, diff_runtime, diff_server_flags, diff_stage, file_name, flashinfer_direct,
                          is_custom, is_server_stage, needs_sglang, stage_names, stage_options, stage_signature)
from .diff_container import diff_container
from .facts_docker import ContainerFact, ImageFact
from .facts_host import HostFacts
from .facts_runtime import RuntimeFacts
from .facts_stages import flashinfer_cache_problem
from .plan_model import Change, Plan
from .state_layout import (DIRECTORIES, INIT_SCRIPT, LAST_APPLY, LOCKS_DIR, MARKERS_DIR, POINTER, lock_path,
                           marker_path)
from .state_load import Desired
from .state_container import config_hash, container_config
from .state_flags import flashinfer_cached_ops, server_argv
from .state_templates import desired_files

CONTAINER_TELEMETRY = "/telemetry"


class Context(NamedTuple):
    """What every diff of one run shares: the resolved owner and root, and how
    the runtime sees the storage (the same paths locally; the mounts in a
    container)."""

    owner: Owner
    root: str
    hostname: str
    runtime_kind: str = "local"

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def runtime_path(self, rel: str) -> str:
        if self.runtime_kind == "local":
            return self.path(rel)
        return "/" + rel  # the container mounts telemetry/, profiles/, models/ at /


def resolve_context(desired: Desired, facts: HostFacts) -> Context:
    ident = facts.identity()
    owner = resolve_owner(desired.data["storage"]["owner"], ident)
    root = storage_root(desired.data["storage"]["root"], owner, ident, facts.home_of)
    return Context(owner=owner, root=root, hostname=ident.hostname, runtime_kind=desired.data["runtime"]["kind"])


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
    addresses += [f"directory:{rel}" for rel in DIRECTORIES]
    addresses += [f"file:{f.rel}" for f in desired_files(desired)]
    for entry in facts.listdir(ctx.path(LOCKS_DIR)):
        if entry.endswith(".lock") and not entry.startswith("."):
            addresses.append(f"lock:{entry[: -len('.lock')]}")
    for entry in facts.listdir(ctx.path(MARKERS_DIR)):
        if entry.endswith(".json") and not entry.startswith("."):
            addresses.append(f"marker:{entry[: -len('.json')]}")
    addresses.append("pointer:container_run_meta.env")
    if ctx.runtime_kind == "docker":
        addresses.append(f"container:{desired.data['runtime']['container']['name']}")
    addresses.append(f"port:{desired.data['server']['port']}")
    return addresses


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
        return diff_directory(name, facts.directory(ctx.path(name)), ctx.owner, storage["ownership"])
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
    if address == "flashinfer:incomplete":
        return flashinfer_incomplete(desired, facts, ctx, runtime_facts(desired, facts, ctx))
    raise ValueError(f"unknown resource address {address!r}")


def signature_path(stage: str, slug: str) -> str:
    """Built-in stages sign per model slug; a custom stage signs its own dir."""
    if is_custom(stage):
        return f"{cache_dir(stage)}/signature.json"
    return f"{cache_dir(stage)}/{slug}/signature.json"


def runtime_facts(desired: Desired, facts: HostFacts, ctx: Context, container: Change | None = None) -> RuntimeFacts:
    """One probe of the runtime. With the docker runtime the probe runs in the
    container, so it waits (status `pending`) while the container is not up
    as desired."""
    rt = desired.data["runtime"]
    if rt["kind"] == "local":
        return facts.runtime(rt["python"], rt["env"], ctx.owner.uid, ctx.owner.gid)
    name = rt["container"]["name"]
    if rt["container"]["state"] == "absent":
        return RuntimeFacts(status="unavailable", problem=f"runtime.container.state is absent: no container {name} "
                            "to prime caches in")
    if container is not None and container.action != "noop":
        return RuntimeFacts(status="pending", problem=f"probed once container:{name} runs")
    return facts.runtime(rt["python"], rt["env"], ctx.owner.uid, ctx.owner.gid, container=name)


def model_config_path(desired: Desired, ctx: Context) -> str | None:
    """config.json of the model, as a host path (None: not visible from the host)."""
    path = desired.data["model"]["path"]
    if ctx.runtime_kind == "local":
        return posixpath.join(path, "config.json")
    if path.startswith("/models/"):
        return ctx.path(posixpath.join("models", path[len("/models/"):], "config.json"))
    return None


def flashinfer_incomplete(desired: Desired, facts: HostFacts, ctx: Context, runtime: RuntimeFacts) -> Change | None:
    """`flashinfer:incomplete`, when the FlashInfer stage is active and its cache can be located."""
    if desired.stage_mode("flashinfer") == "skip" or runtime.status != "ok" or not runtime.gpus or \
            not runtime.version("flashinfer"):
        return None
    host_ops = flashinfer_cached_ops(ctx.path("profiles"), runtime.version("flashinfer"), runtime.gpus[0].compute_cap)
    runtime_ops = flashinfer_cached_ops(ctx.runtime_path("profiles"), runtime.version("flashinfer"),
                                        runtime.gpus[0].compute_cap)
    return diff_flashinfer_incomplete(facts.flashinfer_modules(host_ops, runtime_ops, None),
                                      facts.flashinfer_build_locks(host_ops), host_ops)


def flashinfer_problem(desired: Desired, facts: HostFacts, ctx: Context, runtime: RuntimeFacts) -> str:
    if runtime.status != "ok" or not runtime.gpus:
        return ""
    version, cap = runtime.version("flashinfer"), runtime.gpus[0].compute_cap
    if not version:
        return ""
    host_ops = flashinfer_cached_ops(ctx.path("profiles"), version, cap)
    runtime_ops = flashinfer_cached_ops(ctx.runtime_path("profiles"), version, cap)
    ninja = runtime.ninja if ctx.runtime_kind == "local" else None
    return flashinfer_cache_problem(facts.flashinfer_modules(host_ops, runtime_ops, ninja),
                                    runtime.flashinfer_data_newest_mtime)


def stage_changes(desired: Desired, facts: HostFacts, ctx: Context, container: Change | None = None
                  ) -> tuple[list, list]:
    """(check changes, stage changes) for the cache stages; no runtime probe
    when every stage is skipped."""
    data = desired.data
    names = stage_names(data)
    modes = {stage: desired.stage_mode(stage) for stage in names}
    active = [stage for stage, mode in modes.items() if mode != "skip"]
    port = data["server"]["port"]
    runtime = runtime_facts(desired, facts, ctx, container) if active else RuntimeFacts(status="unavailable")
    sglang_needed = any(needs_sglang(stage, data) for stage in active)
    checks, stages = [], []
    if active:
        checks.append(diff_runtime(runtime, data["runtime"]["python"], data["runtime"]["kind"], sglang_needed))
        if runtime.status == "ok":
            checks.append(diff_gpu_count(data["tp"], runtime))
        config = model_config_path(desired, ctx)
        if config is not None and any(stage in STAGES and not is_custom(stage) and
                                      (stage != "flashinfer" or not flashinfer_direct(data)) for stage in active):
            checks.append(diff_model(data["model"]["path"], data["server"]["settings"].get("context_length"),
                                     facts.model(config)))
        if modes["flashinfer"] != "skip" and runtime.status == "ok":
            checks.append(diff_flashinfer_toolchain(runtime, ctx.runtime_kind))
    slug = desired.model_slug
    container_name = data["runtime"]["container"]["name"] if ctx.runtime_kind == "docker" else ""
    for stage in names:
        marker = facts.lock_file(file_name(stage), ctx.path(marker_path(file_name(stage))))
        want = stage_signature(stage, data, slug, runtime) if runtime.status == "ok" else {}
        cache_problem = flashinfer_problem(desired, facts, ctx, runtime) if stage == "flashinfer" and \
            modes[stage] != "skip" else ""
        option_problem = ""
        if needs_sglang(stage, data) and runtime.status == "ok" and not runtime.version("sglang"):
            option_problem = f"sglang is not installed in runtime python {data['runtime']['python']!r}"
        elif stage == "moe_tune" and not data["caches"]["moe_tune"]["script"]:
            option_problem = ("caches.moe_tune.script is not set → point it at the fused-MoE tuner "
                              "(benchmark/kernels/fused_moe_triton/tuning_fused_moe_triton.py of your SGLang tag)")
        elif stage == "inductor" and data["server"]["settings"].get("cuda_graph") is False:
            option_problem = ("server.settings.cuda_graph is false: torch.compile runs only during decode "
                              "CUDA-graph capture, so the inductor stage would compile nothing → enable cuda_graph")
        elif stage == "flashinfer" and flashinfer_direct(data) and not data["caches"]["flashinfer"]["modules"]:
            option_problem = "caches.flashinfer.via is direct but caches.flashinfer.modules lists no module"
        elif stage == "flashinfer" and flashinfer_direct(data) and runtime.status == "ok" and \
                not runtime.version("flashinfer"):
            option_problem = f"flashinfer is not installed in runtime python {data['runtime']['python']!r}"
        sig_path = ctx.path(signature_path(stage, slug))
        sig = facts.signature(sig_path) if modes[stage] != "skip" else SignatureFact(sig_path, "missing")
        stages.append(diff_stage(stage, modes[stage], want, runtime, sig,
                                 marker if marker.kind != "missing" else None, ctx.hostname, port,
                                 cache_problem, option_problem, container_name, is_server_stage(stage, data)))
    incomplete = flashinfer_incomplete(desired, facts, ctx, runtime)
    if incomplete is not None:
        stages.insert(0, incomplete)
    running = [c.name for c in stages if c.action == "run" and is_server_stage(c.name, data)]
    if running and runtime.status == "ok":  # pending: apply validates them once the container runs
        argvs = {stage: server_argv(stage, data, data["model"]["path"], stage_timeout(data, stage))
                 for stage in running}
        results = facts.server_flags(data["runtime"]["python"], data["runtime"]["env"], argvs,
                                     ctx.owner.uid, ctx.owner.gid, container_name)
        checks.append(diff_server_flags(results, runtime.version("sglang")))
    return checks, stages


def stage_timeout(data: dict, stage: str) -> float:
    return stage_options(data, stage).get("timeout_s") or data["timeouts"]["stage_s"]


RUNTIME_SIGNATURE_KEYS = frozenset(RuntimeFacts(status="").signature()) | {"deep_gemm_version", "flashinfer_version"}


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


def build_plan(desired: Desired, facts: HostFacts, own_pid: int | None = None) -> Plan:
    """The plan for `desired` on this host. `own_pid`: a lock held by this pid
    (apply's own run lock) is not a resource to act on."""
    ctx = resolve_context(desired, facts)
    container = None
    if ctx.runtime_kind == "docker":
        container = diff_resource(f"container:{desired.data['runtime']['container']['name']}", desired, facts, ctx)
    stage_checks, stages = stage_changes(desired, facts, ctx, container)
    port_needed = any(c.type == "stage" and c.action == "run" and is_server_stage(c.name, desired.data)
                      for c in stages)
    changes = []
    for address in resource_addresses(desired, facts, ctx):
        if container is not None and address == container.address:
            change = container
        elif address.startswith("port:"):
            change = diff_port(facts.port(int(address[5:])), needed=port_needed)
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
                fingerprint_parts=parts, last_apply_at=record.applied_at if record.kind == "ok" else None)
