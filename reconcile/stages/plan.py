"""The stage part of a plan: preflight checks, extra resources the kinds own,
and one `stage:<name>` change per stage, iterating the catalog. No stage
name appears here: each Stage answers for itself."""
from __future__ import annotations

import posixpath

from ..facts_runtime import RuntimeFacts
from ..facts_stages import SignatureFact
from ..state_layout import marker_path
from ..state_spec import SETTINGS_FIELDS
from . import catalog
from .checks import diff_gpu_count, diff_model, diff_runtime, diff_server_flags
from .diff import diff_stage


def runtime_facts(desired, facts, ctx, container=None) -> RuntimeFacts:
    """The runtime as the stages will see it. With the docker runtime the
    probe runs in the container, so it waits (status `pending`) while the
    container is not up as desired. `facts` memoizes the probe: one per
    command."""
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


def model_config_path(desired, ctx) -> str | None:
    """config.json of the model, as a host path (None: not visible from the host)."""
    path = desired.data["model"]["path"]
    if ctx.runtime_kind == "local":
        return posixpath.join(path, "config.json")
    if path.startswith("/models/"):
        return ctx.path(posixpath.join("models", path[len("/models/"):], "config.json"))
    return None


def want_signature(stage, desired, runtime) -> dict:
    return stage.signature(desired.model_slug, runtime, SETTINGS_FIELDS) if runtime.status == "ok" else {}


def stage_change(stage, desired, facts, ctx, runtime, verify: bool = False):
    """`stage:<name>` from the facts as `facts` sees them (plan, and apply's
    re-check). `verify`: re-hash every artifact (else sizes and mtimes)."""
    data = desired.data
    marker = facts.lock_file(stage.file_name, ctx.path(marker_path(stage.file_name)))
    sig_path = ctx.path(stage.signature_rel(desired.model_slug))
    active = stage.mode != "skip"
    sig = facts.signature(sig_path) if active else SignatureFact(sig_path, "missing")
    want = want_signature(stage, desired, runtime)
    artifacts = None
    if active and sig.kind == "ok" and sig.signature == want:  # only a cache that claims to be warm is proven
        artifacts = facts.artifacts(ctx.path(stage.manifest_rel(desired.model_slug)), ctx.root, verify)
    cache_problem = stage.observe(facts, ctx, runtime) if active else ""
    container = data["runtime"]["container"]["name"] if ctx.runtime_kind == "docker" else ""
    problem = stage.option_problem(runtime) or (linked_dir(facts, ctx, stage.cache_dir) if active else "")
    change = diff_stage(stage, want, runtime, sig, marker if marker.kind != "missing" else None, ctx.hostname,
                        data["server"]["port"], cache_problem, problem, container, artifacts)
    bundles = data["bundles"]
    if change.action == "run" and stage.portable and bundles["registry"] and bundles["pull"] \
            and change.reason in BUNDLE_REASONS and want:
        found = facts.bundle(bundles, stage.file_name, want)
        observed = {**change.observed, "bundle": found.digest or found.kind}
        if found.kind == "present":
            change = change._replace(message=f"{change.message}; pull bundle {found.digest[:19]}… (saves a compile)",
                                     observed=observed)
        elif found.kind == "unreachable":
            change = change._replace(message=f"{change.message}; compiles here: {found.error}", observed=observed)
    return change


# a stage that needs priming for one of these can take a bundle instead
# (rebuild asks for a fresh compile: never a bundle)
BUNDLE_REASONS = ("no_signature", "signature_changed", "signature_unreadable", "manifest_missing", "artifact_damaged",
                  "partial")


def linked_dir(facts, ctx, rel: str) -> str:
    """Why a stage may not write under `rel`: a directory on the way there
    (below the storage root) is a symbolic link, which could lead anywhere."""
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        fact = facts.directory(ctx.path("/".join(parts[:i])))
        if fact.kind == "symlink":
            return f"{fact.path} is a symlink → replace it with a directory (sglprep never writes through a link)"
        if fact.kind == "missing":
            return ""
    return ""


def stage_changes(desired, facts, ctx, container=None, verify: bool = False) -> tuple[list, list, RuntimeFacts]:
    """(check changes, stage changes, runtime facts) for the cache stages; no
    runtime probe when every stage is skipped."""
    data = desired.data
    stages = catalog.stages(data)
    active = [s for s in stages if s.mode != "skip"]
    runtime = runtime_facts(desired, facts, ctx, container) if active else RuntimeFacts(status="unavailable")
    checks, changes = [], []
    if active:
        checks.append(diff_runtime(runtime, data["runtime"]["python"], data["runtime"]["kind"],
                                   any(s.uses_sglang for s in active)))
        if runtime.status == "ok":
            checks.append(diff_gpu_count(data["tp"], runtime))
        config = model_config_path(desired, ctx)
        if config is not None and any(s.uses_sglang for s in active):
            checks.append(diff_model(data["model"]["path"], data["server"]["settings"].get("context_length"),
                                     facts.model(config)))
        for stage in active:
            checks.extend(stage.checks(runtime, ctx.runtime_kind))
    extra = []
    for stage in stages:
        changes.append(stage_change(stage, desired, facts, ctx, runtime, verify))
        extra.extend(stage.resources(facts, ctx, runtime))
    changes[0:0] = extra
    running = [s for s in stages if s.starts_server and s.mode != "skip"
               and next(c for c in changes if c.address == s.address).action == "run"]
    if running and runtime.status == "ok":  # pending: apply validates them once the container runs
        container_name = data["runtime"]["container"]["name"] if ctx.runtime_kind == "docker" else ""
        check = facts.server_flags(data["runtime"]["python"], data["runtime"]["env"],
                                   {s.name: s.flags_argv() for s in running},
                                   ctx.owner.uid, ctx.owner.gid, container_name)
        checks.append(diff_server_flags(check, runtime.version("sglang"), [s.name for s in running]))
    return checks, changes, runtime


def stage_directories() -> tuple:
    """Cache directories the stage kinds need (the plan adds any the storage
    layout does not list)."""
    return catalog.cache_dirs()
