"""Views over the kernel caches: the `inspect` snapshot (the seeds'
`profile_cache.start` shape) and the `reset` selection. Read-only: they use
facts and the plan's stage changes, and write nothing. The caches and the
stage that primes each come from the catalog."""
from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from typing import NamedTuple

from ..context import Context
from ..facts_host import tree_scan, tree_stats
from ..plan_model import Plan
from ..state_layout import marker_path
from . import catalog

# cache name -> (directory under the root, the stage that primes it)
CACHES = catalog.caches()


def iso(epoch: float) -> str | None:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if epoch else None


NEWEST = 5  # files listed per cache


def cache_snapshot(plan: Plan, facts, ctx: Context, data: dict, slug: str, sizes: bool,
                   caches: list | None = None) -> dict:
    """`{"schema_version": "1", <cache>: {exists, partial, partial_info, valid,
    reason, path, size_bytes, file_count, latest_mtime_iso, newest_files,
    signature}}` for every cache, or those in `caches`. A cache is walked
    (sizes, counts and its newest files) only when asked: `sizes`, or named
    in `caches`."""
    out: dict = {"schema_version": "1"}
    stages = {s.name: s for s in catalog.stages(data)}
    for name, (rel, stage) in CACHES.items():
        if caches and name not in caches:
            continue
        path = ctx.path(rel)
        exists = facts.directory(path).kind == "dir"
        marker = facts.lock_file(stage, ctx.path(marker_path(stage)))
        sig = facts.signature(ctx.path(stages[stage].signature_rel(slug)))
        change = plan.find(f"stage:{stage}")
        partial = marker.kind != "missing"
        if change is not None and change.reason == "valid_signature":
            valid, reason = True, "valid_signature"
        elif change is not None and change.reason == "skipped":
            valid = sig.kind == "ok" and not partial
            reason = "stage skipped: signature present, not compared" if valid else (
                "in_progress_or_aborted" if partial else "no signature")
        else:
            valid, reason = False, ("in_progress_or_aborted" if partial else
                                    change.message if change is not None else "unknown")
        if not valid and not partial:  # filled by another stage (a custom torch.compile stage fills triton)?
            filler = _filled_by(plan, facts, ctx, stages, name, slug)
            if filler is not None:
                valid, reason, stage, sig = True, f"primed by {filler[0]} (valid_signature)", filler[0], filler[1]
        entry = {"exists": exists, "partial": partial,
                 "partial_info": {"owner_pid": marker.owner_pid, "started_at": marker.started_at} if partial else None,
                 "valid": valid, "reason": reason, "path": path, "stage": stage,
                 "size_bytes": None, "file_count": None, "latest_mtime_iso": None, "newest_files": None,
                 "signature": sig.signature if sig.kind == "ok" else None}
        if (sizes or caches) and exists:
            stats, newest = tree_scan(path, NEWEST)
            entry.update(size_bytes=stats.bytes, file_count=stats.files, latest_mtime_iso=iso(stats.newest_mtime),
                         newest_files=[{"path": os.path.relpath(p, ctx.root), "size_bytes": size,
                                        "mtime_iso": iso(mtime)} for mtime, p, size in newest])
        out[name] = entry
    return out


def _filled_by(plan: Plan, facts, ctx: Context, stages: dict, cache: str, slug: str):
    """(stage name, signature fact) of a stage whose valid signature says it
    filled `cache` (custom stages record the routed caches they wrote)."""
    for name, stage in stages.items():
        change = plan.find(f"stage:{name}")
        if change is None or change.reason != "valid_signature":
            continue
        sig = facts.signature(ctx.path(stage.signature_rel(slug)))
        if sig.kind == "ok" and cache in sig.fills:
            return name, sig
    return None


class ResetEntry(NamedTuple):
    cache: str
    name: str  # the entry under the cache dir (a slug dir, a kernel hash dir, a file)
    path: str
    files: int
    bytes: int
    newest_mtime: float


def reset_selection(ctx: Context, caches: list | None, match_slug: str | None, older_than_days: float | None,
                    now: float | None = None) -> list:
    """What `reset` would delete: the entries directly under each selected
    cache dir, filtered by slug prefix and age (newest file older than N days)."""
    now = time.time() if now is None else now
    cutoff = now - older_than_days * 86400 if older_than_days is not None else None
    selected = []
    from ..facts_host import linked_component

    for cache in caches or list(CACHES):
        base = ctx.path(CACHES[cache][0])
        if linked_component(ctx.root, CACHES[cache][0]):
            continue  # never delete through a link: it may lead outside the root
        try:
            names = sorted(os.listdir(base))
        except OSError:
            continue
        for name in names:
            if match_slug is not None and not name.startswith(match_slug):
                continue
            path = os.path.join(base, name)
            if os.path.isdir(path) and not os.path.islink(path):
                stats = tree_stats(path)
            else:
                st = os.lstat(path)
                stats = (1, st.st_size, st.st_mtime)
            files, size, newest = stats
            if cutoff is not None and newest and newest >= cutoff:
                continue
            selected.append(ResetEntry(cache, name, path, files, size, newest))
    return selected
