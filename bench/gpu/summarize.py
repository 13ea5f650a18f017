#!/usr/bin/env python3
"""Collect what bench/gpu/run.sh left in OUT into OUT/summary.json and print it.

    python3 bench/gpu/summarize.py OUT

Stdlib only. Missing files are reported as such, never fatal: the summary of a
run that stopped early says how far it got.
"""
from __future__ import annotations

import glob
import json
import os
import statistics
import sys

# gpu-cache-measurements.md (H100, torch 2.11, FlashInfer 0.7.2.post1), seconds
REFERENCE = {
    "flashinfer": {
        "decode_plan_s": {"cold": 16.66, "warm": [0.032, 0.022]},
        "prefill_plan_s": {"cold": 31.73, "warm": [0.044]},
        "launch_to_done_s": {"cold_decode": 28.5, "cold_prefill_decode_cached": 39.8,
                             "warm_decode": [9.9, 7.9], "warm_prefill": [9.5]},
        "touched_decode_plan_s": 16.46,
        "import_flashinfer_s": [2.7, 3.9],
    },
    "compile_block": {
        "compile_s": {"cold": [15.36, 17.79], "warm": [2.15, 2.51]},
        "per_shape_warm": {"1x1024": [1.26, 1.34], "8x128": [0.39, 0.72], "32x1": [0.45, 0.38]},
        "launch_to_ready_s": {"cold": [29.3, 36.9], "warm": [16.0, 16.8]},
        "import_torch_s": [7, 12],
    },
}


def read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def load_json(path: str):
    text = read(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def last_json_line(path: str):
    text = read(path)
    if not text:
        return None
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def steps(out: str) -> dict:
    res = {}
    for line in (read(os.path.join(out, "steps.tsv")) or "").splitlines():
        parts = line.split("\t")
        if not parts or not parts[0]:
            continue
        parts += [""] * (6 - len(parts))
        name, t0, t1, wall, rc, note = parts[:6]
        res[name] = {"wall_s": float(wall) if wall else None, "rc": int(rc) if rc.lstrip("-").isdigit() else None,
                     "note": note or None, "t0": float(t0) if t0 else None}
    return res


def meta(out: str) -> dict:
    res = {}
    for line in (read(os.path.join(out, "meta.env")) or "").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            res[k] = v
    return res


def plan_view(doc) -> dict | None:
    if not isinstance(doc, dict):
        return None
    changes = doc.get("changes") or []
    view = {"summary": doc.get("summary"), "causes": doc.get("causes"),
            "blocked": [f"{c.get('address')}: {c.get('message')}" for c in changes if c.get("action") == "blocked"],
            "stages": {}, "not_noop": []}
    for c in changes:
        addr = c.get("address", "")
        if addr.startswith("stage:"):
            view["stages"][addr] = {"action": c.get("action"), "reason": c.get("reason"), "message": c.get("message")}
        elif c.get("action") != "noop":
            view["not_noop"].append(f"{addr}: {c.get('action')} {c.get('reason')}")
    return view


def stage_entries(prep: dict | None, run_dir: str) -> dict:
    """{stage name: stage JSON} from prep_result.json, else from stages/*.json."""
    found = {}
    stages = (prep or {}).get("stages")
    if isinstance(stages, dict):
        found.update(stages)
    elif isinstance(stages, list):
        for s in stages:
            if isinstance(s, dict):
                found[s.get("stage") or s.get("name") or str(len(found))] = s
    for path in sorted(glob.glob(os.path.join(run_dir, "stages", "*.json"))):
        name = os.path.basename(path)[:-5]
        doc = load_json(path)
        if isinstance(doc, dict) and name not in found and name.replace(".", "/", 1) not in found:
            found[name] = doc
    return found


def stage_view(doc: dict) -> dict:
    ev = doc.get("evidence") if isinstance(doc.get("evidence"), dict) else None
    view = {k: doc.get(k) for k in ("status", "ran", "duration_s", "error_type", "reason") if k in doc}
    view["errors"] = doc.get("errors") or []
    view["warnings"] = doc.get("warnings") or []
    if ev is not None:
        view["evidence_ok"] = ev.get("ok")
        view["evidence_method"] = ev.get("method")
        mods = ev.get("modules")
        if isinstance(mods, list):
            view["evidence_modules"] = [{k: m.get(k) for k in ("name", "has_so", "ninja", "names_own_dir")
                                         if isinstance(m, dict)} for m in mods]
    arts = doc.get("artifacts")
    if isinstance(arts, dict):
        keep = {k: v for k, v in arts.items() if k in ("modules", "builds", "file_count", "file_delta", "files",
                                                       "argv", "cleanup")}
        if keep:
            view["artifacts"] = keep
    return view


def pick(d: dict, needle: str):
    for k, v in d.items():
        if needle in k:
            return k, v
    return None, None


def med(values):
    vals = [v for v in values if isinstance(v, (int, float))]
    return round(statistics.median(vals), 3) if vals else None


def ratio(a, b):
    return round(a / b, 1) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0 else None


FI_KEYS = ("decode_resolved_backend", "decode_plan_s", "prefill_plan_s", "plans_s", "decode_run_s", "prefill_run_s", "import_torch_s",
           "cuda_init_s", "import_flashinfer_s", "launch_to_done_s", "jit_log_building", "jit_log_built_modules",
           "so_new", "so_rewritten", "rebuilt_silently", "decode_rel_err", "prefill_rel_err", "error")
CB_KEYS = ("compile_s", "per_shape", "fx_hits", "fx_misses", "aot_hits", "aot_misses", "import_torch_s",
           "model_build_s", "eager_s", "launch_to_ready_s", "files_before", "files_after", "error")


def workload(out: str, st: dict, name: str, keys) -> dict:
    doc = last_json_line(os.path.join(out, f"{name}.out")) or {}
    view = {k: doc.get(k) for k in keys if k in doc}
    s = st.get(name, {})
    view["wall_s"] = s.get("wall_s")
    view["rc"] = s.get("rc")
    if s.get("note"):
        view["note"] = s["note"]
    if isinstance(doc.get("main_end_unix"), (int, float)) and s.get("t0") and s.get("wall_s"):
        view["exit_after_main_s"] = round(s["t0"] + s["wall_s"] - doc["main_end_unix"], 3)
    if "rel_err_vs_eager" in doc and isinstance(doc["rel_err_vs_eager"], dict) and doc["rel_err_vs_eager"]:
        view["max_rel_err_vs_eager"] = max(doc["rel_err_vs_eager"].values())
    err_text = read(os.path.join(out, f"{name}.err")) or ""
    if "Building JIT module" in err_text:
        view["stderr_building_jit"] = True
    if not doc:
        view["error"] = f"no JSON output (rc={s.get('rc')})"
        if err_text:
            view["stderr_tail"] = err_text.strip().splitlines()[-5:]
    return view


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = argv[0] if argv else os.environ.get("OUT", ".")
    st, mt = steps(out), meta(out)
    s = {"out": os.path.abspath(out), "stopped": mt.get("stopped"), "env": {}, "steps": st}
    env_txt = read(os.path.join(out, "env.txt")) or ""
    missing = []
    for line in env_txt.splitlines():
        if "==" in line and not line.startswith("#"):
            k, v = line.split("==", 1)
            s["env"][k.strip()] = v.strip()
        elif line.endswith(": not installed"):
            missing.append(line.split(":", 1)[0])
    s["env"]["not_installed"] = missing
    s["env"]["owner_check"] = (read(os.path.join(out, "owner_check.txt")) or "").strip() or None
    s["env"]["sglang_stub_used"] = mt.get("sglang_stub_used") == "1"

    # a. plan + cold apply
    cold_plan = load_json(os.path.join(out, "plan_cold_stub.out")) or load_json(os.path.join(out, "plan_cold.out"))
    s["plan_cold"] = plan_view(cold_plan)
    run_dir = os.path.join(out, "apply_cold_run")
    prep = load_json(os.path.join(run_dir, "prep_result.json"))
    status_line = next((l for l in reversed((read(os.path.join(out, "apply_cold.out")) or "").splitlines())
                        if l.startswith("RESULT_STATUS")), None)
    stages = {k: stage_view(v) for k, v in stage_entries(prep, run_dir).items() if isinstance(v, dict)}
    s["apply_cold"] = {**{k: st.get("apply_cold", {}).get(k) for k in ("wall_s", "rc", "note")},
                       "result_status": status_line, "prep_status": (prep or {}).get("status"),
                       "prep_duration_s": ((prep or {}).get("run") or {}).get("duration_s"),
                       "stages": stages}
    fi_name, fi_stage = pick(stages, "flashinfer")
    cb_name, cb_stage = pick(stages, "compile_block")

    # b. second apply
    before, after = mt.get("prep_results_before_second"), mt.get("prep_results_after_second")
    s["apply_second"] = {**{k: st.get("apply_second", {}).get(k) for k in ("wall_s", "rc")},
                         "nothing_to_do": mt.get("second_nothing_to_do") == "1",
                         "prep_results_before": int(before) if (before or "").isdigit() else None,
                         "prep_results_after": int(after) if (after or "").isdigit() else None}
    sizes = load_json(os.path.join(out, "inspect_sizes.out"))
    if isinstance(sizes, dict):
        s["apply_cold"]["cache_sizes"] = {k: {"files": v.get("file_count"), "bytes": v.get("size_bytes"),
                                              "valid": v.get("valid")}
                                          for k, v in sizes.items() if isinstance(v, dict)}
    conv = load_json(os.path.join(out, "plan_converged.out"))
    s["plan_converged"] = {**{k: st.get("plan_converged", {}).get(k) for k in ("wall_s", "rc")},
                           "summary": (conv or {}).get("summary")}

    # c. workloads
    def runs(prefix, keys):
        names = sorted(n for n in st if n.startswith(prefix) and st[n].get("rc") is not None)
        return {n: workload(out, st, n, keys) for n in names}

    fi = {"primed": runs("fi_primed_", FI_KEYS), "empty": runs("fi_empty_", FI_KEYS),
          "touched": runs("fi_touched_", FI_KEYS)}
    cb = {"primed": runs("cb_primed_", CB_KEYS), "empty": runs("cb_empty_", CB_KEYS)}
    s["workloads"] = {"flashinfer": fi, "compile_block": cb}

    def m(group, key):
        return med(r.get(key) for r in group.values() if not r.get("error"))

    cmp_fi = {}
    for key in ("decode_plan_s", "prefill_plan_s", "plans_s", "launch_to_done_s", "import_flashinfer_s",
                "import_torch_s"):
        cmp_fi[key] = {"primed": m(fi["primed"], key), "empty": m(fi["empty"], key), "touched": m(fi["touched"], key)}
    cmp_fi["plans_ratio_empty_over_primed"] = ratio(cmp_fi["plans_s"]["empty"], cmp_fi["plans_s"]["primed"])
    cmp_fi["launch_to_done_saved_s"] = (round(cmp_fi["launch_to_done_s"]["empty"] - cmp_fi["launch_to_done_s"]["primed"], 2)
                                        if cmp_fi["launch_to_done_s"]["empty"] is not None
                                        and cmp_fi["launch_to_done_s"]["primed"] is not None else None)
    cmp_fi["reference"] = REFERENCE["flashinfer"]
    cmp_cb = {}
    for key in ("compile_s", "launch_to_ready_s", "import_torch_s"):
        cmp_cb[key] = {"primed": m(cb["primed"], key), "empty": m(cb["empty"], key)}
    cmp_cb["compile_ratio_empty_over_primed"] = ratio(cmp_cb["compile_s"]["empty"], cmp_cb["compile_s"]["primed"])
    cmp_cb["launch_to_ready_saved_s"] = (round(cmp_cb["launch_to_ready_s"]["empty"] - cmp_cb["launch_to_ready_s"]["primed"], 2)
                                         if cmp_cb["launch_to_ready_s"]["empty"] is not None
                                         and cmp_cb["launch_to_ready_s"]["primed"] is not None else None)
    cmp_cb["reference"] = REFERENCE["compile_block"]
    s["comparison"] = {"flashinfer": cmp_fi, "compile_block": cmp_cb}

    # d. touched sources
    touched = load_json(os.path.join(out, "plan_touched.out"))
    tv = plan_view(touched) or {}
    _, fi_touched = pick(tv.get("stages") or {}, "flashinfer")
    s["plan_touched"] = {**{k: st.get("plan_touched", {}).get(k) for k in ("wall_s", "rc")},
                         "touched_files": int(mt["touched_files"]) if mt.get("touched_files", "").isdigit() else None,
                         "flashinfer_stage": fi_touched, "summary": tv.get("summary"),
                         "changed_flashinfer_cache": {"0": False, "1": True}.get(mt.get("touched_plan_changed_cache"))}

    # checks: what this benchmark is meant to show
    fi_primed_runs = [r for r in fi["primed"].values()]
    cb_primed_runs = [r for r in cb["primed"].values()]
    msg = ((fi_touched or {}).get("message") or "") + " " + ((fi_touched or {}).get("reason") or "")
    checks = {
        "cold_apply_exit_0": s["apply_cold"]["rc"] == 0,
        "flashinfer_stage_ok": (fi_stage or {}).get("status") == "ok",
        "flashinfer_verify_evidence_ok": (fi_stage or {}).get("evidence_ok") is True,
        "custom_stage_ok": (cb_stage or {}).get("status") == "ok",
        "second_apply_nothing_to_do": s["apply_second"]["nothing_to_do"],
        "second_apply_no_new_prep_result": (s["apply_second"]["rc"] == 0 and before is not None
                                            and before == after),
        "converged_plan_exit_0": s["plan_converged"]["rc"] == 0,
        "primed_flashinfer_no_build": bool(fi_primed_runs) and all(
            not r.get("error") and not r.get("jit_log_building") and not r.get("so_rewritten")
            and not r.get("so_new") for r in fi_primed_runs),
        "primed_flashinfer_plans_under_1s": bool(fi_primed_runs) and all(
            isinstance(r.get("plans_s"), (int, float)) and r["plans_s"] < 1.0 for r in fi_primed_runs),
        "primed_compile_block_all_fx_hits": bool(cb_primed_runs) and all(
            not r.get("error") and r.get("fx_misses") == 0 and (r.get("fx_hits") or 0) > 0 for r in cb_primed_runs),
        "touched_plan_runs_flashinfer": (fi_touched or {}).get("action") == "run",
        "touched_reason_names_newer_sources": "newer" in msg,
        "touched_plan_left_cache_alone": s["plan_touched"]["changed_flashinfer_cache"] is False,
    }
    if mt.get("skip_fi") == "1":
        for k in ("primed_flashinfer_no_build", "primed_flashinfer_plans_under_1s"):
            checks[k] = None
    s["checks"] = checks
    s["ok"] = all(v is not False for v in checks.values())
    s["key"] = {
        "cold_apply_wall_s": s["apply_cold"]["wall_s"],
        "flashinfer_stage_s": (fi_stage or {}).get("duration_s"),
        "custom_stage_s": (cb_stage or {}).get("duration_s"),
        "second_apply_wall_s": s["apply_second"]["wall_s"],
        "converged_plan_wall_s": s["plan_converged"]["wall_s"],
        "touched_plan_wall_s": s["plan_touched"]["wall_s"],
        "fi_plans_s_primed_vs_empty": [cmp_fi["plans_s"]["primed"], cmp_fi["plans_s"]["empty"]],
        "fi_launch_to_done_s_primed_vs_empty": [cmp_fi["launch_to_done_s"]["primed"],
                                                cmp_fi["launch_to_done_s"]["empty"]],
        "cb_compile_s_primed_vs_empty": [cmp_cb["compile_s"]["primed"], cmp_cb["compile_s"]["empty"]],
        "cb_launch_to_ready_s_primed_vs_empty": [cmp_cb["launch_to_ready_s"]["primed"],
                                                 cmp_cb["launch_to_ready_s"]["empty"]],
        "fi_plans_ratio": cmp_fi["plans_ratio_empty_over_primed"],
        "cb_compile_ratio": cmp_cb["compile_ratio_empty_over_primed"],
        "stage_names": [fi_name, cb_name],
    }
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as fh:
        fh.write(json.dumps(s, indent=1, default=str) + "\n")
    # printed compactly, without the per-step table and the reference figures, so that
    # the check and key lines below stay in view
    short = {k: v for k, v in s.items() if k != "steps"}
    short["comparison"] = {k: {kk: vv for kk, vv in v.items() if kk != "reference"}
                           for k, v in s["comparison"].items()}
    print("SUMMARY " + json.dumps(short, default=str))
    print("SUMMARY_CHECKS " + json.dumps(checks))
    print("SUMMARY_KEY " + json.dumps(s["key"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
