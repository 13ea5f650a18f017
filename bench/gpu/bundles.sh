#!/usr/bin/env bash
# Bundles on a real GPU: host A (storage root A, FlashInfer installed at site A)
# compiles FlashInfer (direct module builds) and a torch.compile'd block (custom
# stage) and pushes them to a registry on loopback; host B (another storage
# root, FlashInfer installed at another path) pulls, relocates and verifies.
# Then fresh workload processes on B must build nothing.
#
#   OUT=/tmp/out bash bench/gpu/bundles.sh     # repository root, as root, on the GPU machine
#
# Needs in $BENCH_CARRY (default .gpu-carry/, git-ignored):
#   fisite.tar.xz        the unpacked flashinfer-python 0.7.2.post1 and apache-tvm-ffi wheels
#   docker-registry.xz   Debian's docker-registry binary (xz)
#   deps/                wheels of sglprep's own dependencies, used only if the runtime lacks them
# Results: $OUT/bundles_summary.json (and the logs beside it). See bench/README.md.
set -u
export PYTHONUNBUFFERED=1 NO_COLOR=1 LC_ALL=C.UTF-8
REPO=$PWD
HERE=$REPO/bench/gpu
PY=${BENCH_PY:-/opt/torch/.venv/bin/python3}
CARRY=${BENCH_CARRY:-$REPO/.gpu-carry}
OUT=${OUT:-/tmp/bench-bundles-out}
BASE=${BENCH_BASE:-/tmp/sglprep-bundles}
OWNER=${BENCH_OWNER:-1000:1000}
OUID=${OWNER%%:*} OGID=${OWNER##*:}
CUDA_HOME_DIR=${BENCH_CUDA_HOME:-/usr/local/cuda}
SHAPES=${BENCH_SHAPES:-1x1024,8x128,32x1}
PORT=${BENCH_REGISTRY_PORT:-5055}
mkdir -p "$OUT"
rm -rf "$BASE"
mkdir -p "$BASE"
LOG=$OUT/bundles.log
: >"$LOG"
log() { echo "[$(date -u +%T)] $*" | tee -a "$LOG"; }
now() { date +%s.%N; }

# ---------------------------------------------------------------- set-up
SITE_A=$BASE/a/site SITE_B=$BASE/installs/elsewhere/site-b
ROOT_A=$BASE/a/host/root ROOT_B=$BASE/b/another/place/host/root
mkdir -p "$SITE_A" "$(dirname "$SITE_B")" "$(dirname "$ROOT_A")" "$(dirname "$ROOT_B")" "$BASE/bin" "$BASE/home"
tar -C "$SITE_A" -xJf "$CARRY/fisite.tar.xz" || { log "STOP: no FlashInfer in $CARRY"; exit 2; }
cp -a "$SITE_A" "$SITE_B"
chmod -R a+rX "$BASE/a/site" "$BASE/installs"
chown "$OWNER" "$(dirname "$ROOT_A")" "$(dirname "$ROOT_B")" "$BASE/home"
xz -dc "$CARRY/docker-registry.xz" >"$BASE/bin/docker-registry" && chmod 755 "$BASE/bin/docker-registry"
install -m 0644 "$HERE/compile_block.py" "$HERE/flashinfer_workload.py" "$BASE/bin/"
SGPATH=$REPO
if ! "$PY" -c 'import yaml, jinja2, psutil, httpx, rich' 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --target "$BASE/deps" "$CARRY"/deps/*.whl >>"$LOG" 2>&1
  SGPATH=$REPO:$BASE/deps
  log "sglprep's dependencies from the carried wheels"
fi
cat >"$BASE/registry.yml" <<EOF
version: 0.1
storage: {filesystem: {rootdirectory: $BASE/registry}}
http: {addr: 127.0.0.1:$PORT}
EOF
"$BASE/bin/docker-registry" serve "$BASE/registry.yml" >"$BASE/registry.log" 2>&1 &
REG_PID=$!
trap 'kill $REG_PID 2>/dev/null' EXIT
"$PY" - "$PORT" <<'EOF' || log "WARNING: the registry did not answer (see $BASE/registry.log)"
import sys, time, urllib.request
for _ in range(100):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v2/", timeout=1)
        sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit(1)
EOF
# sglang is not installed on this machine and no stage here starts a server: an empty
# dist-info keeps check:runtime from blocking (metadata only)
for s in "$SITE_A" "$SITE_B"; do
  mkdir -p "$s/sglang-0.0.0+benchstub.dist-info"
  printf 'Metadata-Version: 2.1\nName: sglang\nVersion: 0.0.0+benchstub\n' >"$s/sglang-0.0.0+benchstub.dist-info/METADATA"
  chmod -R a+rX "$s/sglang-0.0.0+benchstub.dist-info"
done
mkdir -p "$BASE/model"
echo '{"model_type": "llama", "architectures": ["LlamaForCausalLM"], "max_position_embeddings": 131072}' \
  >"$BASE/model/config.json"
chmod -R a+rX "$BASE/model" "$BASE/bin"
RT_PATH=$CUDA_HOME_DIR/bin:$(dirname "$PY"):/usr/local/bin:/usr/bin:/bin

state() {  # NAME ROOT SITE
  cat >"$BASE/$1.yaml" <<EOF
version: 1
storage: {root: $2, owner: "$OWNER", min_free_gib: 1}
runtime:
  kind: local
  python: $PY
  env: {PYTHONPATH: $3, PATH: "$RT_PATH", CUDA_HOME: $CUDA_HOME_DIR}
model: {path: $BASE/model}
caches:
  deep_gemm: skip
  moe_tune: skip
  inductor: skip
  flashinfer:
    mode: ensure
    via: direct
    verify: true
    max_parallel: 2
    jobs_per_module: 8
    modules:
      - {kind: decode, head_dim: 128, dtype: bf16, backend: fa2}
      - {kind: prefill, head_dim: 128, dtype: bf16, backend: fa2}
  custom:
    compile_block:
      command: ["$PY", "$BASE/bin/compile_block.py", --shapes, "$SHAPES"]
      signature: {block: llama-2L-4096, shapes: "$SHAPES"}
      env: {TORCHINDUCTOR_COMPILE_THREADS: "16"}
bundles: {registry: "127.0.0.1:$PORT", repository: bench/caches, insecure: true, timeout_s: 60}
telemetry: {probe: false}
timeouts: {stage_s: 400, lock_s: 30}
EOF
}
state a "$ROOT_A" "$SITE_A"
state b "$ROOT_B" "$SITE_B"
if command -v setpriv >/dev/null 2>&1; then
  ASUSER=(setpriv --reuid="$OUID" --regid="$OGID" --clear-groups --)
else
  ASUSER=("$PY" -c 'import os, sys
u, g = (int(x) for x in sys.argv[1].split(":"))
os.setgroups([]); os.setgid(g); os.setuid(u)
os.execvp(sys.argv[2], sys.argv[2:])' "$OWNER")
fi
SG() { local name=$1; shift; env PYTHONPATH="$SGPATH" "$PY" -m reconcile -f "$BASE/$name.yaml" "$@"; }

timed() {  # LABEL CMD...: run, keep stdout+stderr in $BASE/LABEL.out, record seconds
  local label=$1; shift
  local t0; t0=$(now)
  "$@" >"$BASE/$label.out" 2>&1
  local rc=$?
  echo "$label $rc $(python3 -c "print(round($(now) - $t0, 2))")" >>"$BASE/times.txt"
  log "$label rc=$rc $(tail -1 "$BASE/times.txt" | cut -d' ' -f3)s"
  return $rc
}

# ---------------------------------------------------------------- A compiles and pushes
timed plan_a SG a plan --no-color
timed apply_a SG a apply --auto-approve --no-color
# ---------------------------------------------------------------- B pulls
timed plan_b SG b plan --no-color
timed apply_b SG b apply --auto-approve --no-color
timed converged_b SG b plan --detailed-exitcode --no-color
timed verify_b SG b plan --verify --detailed-exitcode --no-color
timed list_b SG b bundles list --json

# ---------------------------------------------------------------- fresh workloads on B
P=$ROOT_B/profiles
WENV=(HOME="$BASE/home" PATH="$RT_PATH" CUDA_HOME="$CUDA_HOME_DIR" PYTHONPATH="$SITE_B" PYTHONUNBUFFERED=1
      TORCHINDUCTOR_COMPILE_THREADS=16 TORCHINDUCTOR_CACHE_DIR="$P/torchinductor" TRITON_CACHE_DIR="$P/triton"
      FLASHINFER_WORKSPACE_BASE="$P/flashinfer" CUDA_CACHE_PATH="$P/nv")
find "$P/flashinfer" -name '*.so' -printf '%T@ %p\n' | sort >"$BASE/so_before.txt"
timed fi_workload_b "${ASUSER[@]}" env -i "${WENV[@]}" \
  "$PY" "$BASE/bin/flashinfer_workload.py" --t-launch "$(now)" --tag fi_b --fast-exit
timed cb_workload_b "${ASUSER[@]}" env -i "${WENV[@]}" \
  "$PY" "$BASE/bin/compile_block.py" --t-launch "$(now)" --tag cb_b --fast-exit --shapes "$SHAPES"
find "$P/flashinfer" -name '*.so' -printf '%T@ %p\n' | sort >"$BASE/so_after.txt"
timed plan_b_after SG b plan --detailed-exitcode --no-color

# ---------------------------------------------------------------- summary
"$PY" - "$BASE" "$ROOT_A" "$ROOT_B" >"$OUT/bundles_summary.json" <<'EOF'
import glob, json, os, sys
base, root_a, root_b = sys.argv[1:4]

def result(label):
    out = open(os.path.join(base, f"{label}.out")).read()
    path = next((ln.split(" ", 1)[1] for ln in out.splitlines() if ln.startswith("RESULT_JSON ")), None)
    if not path:
        return {"error": out[-2000:]}
    doc = json.load(open(path))
    keep = {}
    for name, st in doc.get("stages", {}).items():
        art = st.get("artifacts", {})
        keep[name] = {k: st.get(k) for k in ("status", "duration_s", "error_type", "warnings", "errors")}
        keep[name].update({k: art.get(k) for k in ("bundle", "relocated", "manifest", "files_delta")})
        keep[name]["modules_built"] = [m.get("name", "")[:40] for m in art.get("modules") or []]
        keep[name]["evidence_ninja"] = sorted({m.get("ninja") for m in (st.get("evidence") or {}).get("modules", [])})
    return {"status": doc.get("status"), "stages": keep}

def last_json(label):
    for line in reversed(open(os.path.join(base, f"{label}.out")).read().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return None

times = {}
for line in open(os.path.join(base, "times.txt")):
    label, rc, secs = line.split()
    times[label] = {"rc": int(rc), "s": float(secs)}
fi = last_json("fi_workload_b") or {}
cb = last_json("cb_workload_b") or {}
summary = {
    "times": times,
    "apply_a": result("apply_a"), "apply_b": result("apply_b"),
    "plan_b": [ln for ln in open(os.path.join(base, "plan_b.out")).read().splitlines() if "stage:" in ln],
    "so_unchanged_on_b": open(os.path.join(base, "so_before.txt")).read() == open(os.path.join(base, "so_after.txt")).read(),
    "fi_workload_b": {k: fi.get(k) for k in ("jit_log_building", "so_rewritten", "rebuilt_silently", "t_total_s",
                                             "wall_s", "ok", "error") if k in fi} or fi,
    "cb_workload_b": {k: cb.get(k) for k in cb if k.startswith(("fx_", "aot_", "ok", "error", "wall", "t_", "compile"))} or cb,
    "ratio_apply_b_over_a": round(times["apply_b"]["s"] / times["apply_a"]["s"], 3) if times.get("apply_a", {}).get("s") else None,
}
print(json.dumps(summary, indent=1, sort_keys=True))
EOF
cat "$OUT/bundles_summary.json" | tee -a "$LOG" | head -c 6000
for f in apply_a apply_b plan_b; do tail -c 200000 "$BASE/$f.out" >"$OUT/$f.out"; done
cat "$BASE"/fi_workload_b.out "$BASE"/cb_workload_b.out "$BASE/registry.log" 2>/dev/null | tail -c 300000 >"$OUT/workloads_b.out"
