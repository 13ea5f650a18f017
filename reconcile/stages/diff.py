"""The diff of one `stage:<name>`: pure, from the stage's spec, its wanted
signature and the facts (runtime, stored signature, marker, cache problem).

In `ensure` mode a stage whose stored signature matches, with no in-progress
marker and no host-side cache problem, is a noop; otherwise it runs and the
reason names each key that differs, old → new.
"""
from __future__ import annotations

from ..locks import lock_liveness
from ..plan_model import Change

def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def signature_delta(old: dict, new: dict) -> list[str]:
    """`key old → new` for each differing key, in the new signature's order."""
    out = []
    for key in list(new) + [k for k in old if k not in new]:
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            before = _show(old[key]) if key in old else "(none)"
            after = _show(new[key]) if key in new else "(none)"
            out.append(f"{key} {before} → {after}")
    return out


def diff_stage(stage, want: dict, runtime, sig, marker, hostname: str, port: int, cache_problem: str = "",
               option_problem: str = "", container: str = "", artifacts=None) -> Change:
    """`stage:<name>` for `stage` (a Stage). `cache_problem`: a host-side
    reason the cache will rebuild although its signature matches (FlashInfer
    sources touched, cache moved). `option_problem`: the stage's options
    cannot work (blocked). `marker`: its in-progress marker fact, or None.
    `artifacts`: its manifest checked against the files (an ArtifactFact),
    when the signature matches: a valid signature over a damaged or unproven
    cache is never a noop."""
    address = stage.address
    mode = stage.mode
    depends = stage.depends(port, container) if mode != "skip" else ()
    before = sig.signature if sig.kind == "ok" else None
    observed = {"mode": mode, "signature": sig.kind, "stored": before,
                "marker": marker.owner_pid if marker else None, "cache_problem": cache_problem}
    if artifacts is not None:
        observed["artifacts"] = {"manifest": artifacts.kind, "files": artifacts.files,
                                 "damaged": list(artifacts.damaged)}
    common = dict(depends_on=depends, before=before, after=want if mode != "skip" else None, observed=observed)
    if mode == "skip":
        return Change(address, "noop", "skipped", f"skipped ({stage.key}: skip)", show=False,
                      **common)
    if runtime.status == "pending" and not option_problem:
        return Change(address, "run", "container_pending", runtime.problem, **common)
    if runtime.status != "ok":
        return Change(address, "blocked", "runtime_unavailable", f"{runtime.problem} (see check:runtime)", **common)
    if option_problem:
        return Change(address, "blocked", "invalid_options", option_problem, **common)
    if marker is not None and marker.kind == "ok":
        state, why = lock_liveness(marker, hostname)
        if state == "live":  # another apply is priming it: pending work, not a fault
            return Change(address, "run", "in_progress",
                          f"another run is priming it, {why}; an apply waits for it", **common)
    if mode == "rebuild":
        return Change(address, "run", "rebuild", f"rebuild requested ({stage.key}: rebuild)",
                      **common)
    if marker is not None:
        started = marker.started_at or "?"
        who = f"pid {marker.owner_pid}" if marker.kind == "ok" else "unreadable marker"
        return Change(address, "run", "partial",
                      f"partial cache: an earlier run was interrupted ({who}, started {started})", **common)
    if sig.kind == "missing":
        return Change(address, "run", "no_signature", "never primed (no signature.json)", **common)
    if sig.kind == "unparseable":
        return Change(address, "run", "signature_unreadable", f"signature.json unreadable ({sig.error})", **common)
    delta = signature_delta(sig.signature, want)
    if delta:
        return Change(address, "run", "signature_changed", "signature " + ", ".join(delta), **common)
    if artifacts is not None and artifacts.kind == "missing":
        return Change(address, "run", "manifest_missing",
                      "no artifact manifest to prove the cache whole (primed by an older sglprep, or removed): "
                      "prime again", **common)
    if artifacts is not None and artifacts.kind != "ok":
        return Change(address, "run", "manifest_unreadable", f"manifest.json unreadable ({artifacts.error})",
                      **common)
    if artifacts is not None and artifacts.problems:
        more = f" (and {len(artifacts.problems) - 1} more)" if len(artifacts.problems) > 1 else ""
        return Change(address, "run", "artifact_damaged", f"artifact damaged: {artifacts.problems[0]}{more}",
                      **common)
    if cache_problem:
        return Change(address, "run", "cache_stale", cache_problem, **common)
    return Change(address, "noop", "valid_signature", "valid_signature", **common)
