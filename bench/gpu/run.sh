#!/usr/bin/env bash
# sglprep on a real GPU: prime FlashInfer (direct module builds) and a
# torch.compile'd decoder block (custom stage) through `sglprep apply`, then
# measure what the primed caches save in fresh processes.
#
#   bash bench/gpu/run.sh          # from the repository root, as root, with $OUT set
#
# Everything it writes for the reader goes under $OUT (see bench/gpu/README.md);
# scratch state lives under $BENCH_BASE (/tmp/sglprep-gpu). It keeps going after
# a failed step, records the failure, and ends with $OUT/summary.json.
# The whole run stays under BENCH_BUDGET_S seconds (default 540): optional
# repeat runs are skipped when they would not fit.
#
# Overrides (for a local dry run without a GPU, see README.md):
#   BENCH_PY           runtime python and sglprep's python (/opt/torch/.venv/bin/python3)
#   BENCH_SITE         where the wheels are installed (/tmp/site)
#   BENCH_WHL_DIR      wheels to install (.whl)
#   BENCH_BASE         scratch root (/tmp/sglprep-gpu), removed at start
#   BENCH_OWNER        storage owner (1000:1000)
#   BENCH_CUDA_HOME    (/usr/local/cuda)
#   BENCH_SHAPES       compile_block shapes (1x1024,8x128,32x1)
#   BENCH_CB_ARGS      extra compile_block args, e.g. "--cpu --small"
#   BENCH_SKIP_FI      1: no FlashInfer workloads (no GPU / no FlashInfer here)
#   BENCH_STUB_SGLANG  auto (default): if check:runtime is blocked only because sglang is not
#                      installed, add an empty sglang dist-info to BENCH_SITE and re-plan
#                      (recorded in summary.json); 0: never
#   BENCH_BUDGET_S     wall-time budget of the whole script (540)
set -u
export PYTHONUNBUFFERED=1 NO_COLOR=1 LC_ALL=C.UTF-8

T0=$(date +%s.%N)
REPO=$PWD
HERE=$REPO/bench/gpu
PY=${BENCH_PY:-/opt/torch/.venv/bin/python3}
SITE=${BENCH_SITE:-/tmp/site}
WHL_DIR=${BENCH_WHL_DIR:-$REPO/.whl}
BASE=${BENCH_BASE:-/tmp/sglprep-gpu}
OWNER=${BENCH_OWNER:-1000:1000}
CUDA_HOME_DIR=${BENCH_CUDA_HOME:-/usr/local/cuda}
SHAPES=${BENCH_SHAPES:-1x1024,8x128,32x1}
CB_ARGS=${BENCH_CB_ARGS:-}
SKIP_FI=${BENCH_SKIP_FI:-0}
STUB_SGLANG=${BENCH_STUB_SGLANG:-auto}
BUDGET_S=${BENCH_BUDGET_S:-540}
RESERVE_S=45   # kept for the touched-sources plan, inspect and the summary
OUT=${OUT:-/tmp/bench-gpu-out}

OUID=${OWNER%%:*}
OGID=${OWNER##*:}
PYDIR=$(dirname "$PY")
RT_PATH=${BENCH_RUNTIME_PATH:-$CUDA_HOME_DIR/bin:$PYDIR:/usr/bin:/bin}
ROOT=$BASE/root
STATE=$BASE/state.yaml
INV=$BASE/inventory.yaml
MODEL=$BASE/model
BIN=$BASE/bin
HOMEDIR=$BASE/home
EMPTY=$BASE/empty
PROFILES=$ROOT/profiles
read -r -a CB_EXTRA <<<"$CB_ARGS"

mkdir -p "$OUT"
: >"$OUT/steps.tsv"
: >"$OUT/meta.env"
exec > >(tee -a "$OUT/run.log") 2>&1
TEE_PID=$!

log() { printf '[bench %6.1fs] %s\n' "$(elapsed)" "$*"; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
remaining() { awk -v a="$T0" -v b="$(date +%s.%N)" -v t="$BUDGET_S" 'BEGIN{printf "%d", t-(b-a)}'; }
meta() { printf '%s=%s\n' "$1" "$2" >>"$OUT/meta.env"; }

# step NAME TIMEOUT_S CMD...: run CMD with stdout/stderr in $OUT/NAME.out/.err,
# its wall time and exit status in steps.tsv. The timeout is clipped so that
# RESERVE_S stays for the end; returns CMD's status (124/137 on timeout).
step() {
  local name=$1 tmo=$2 rem t0 t1 rc
  shift 2
  rem=$(( $(remaining) - RESERVE_S ))
  case $name in plan_touched*|inspect*|summary*) rem=$(( $(remaining) - 5 )) ;; esac
  (( tmo > rem )) && tmo=$rem
  if (( tmo < 5 )); then
    log "step $name: skipped, out of time budget"
    printf '%s\t\t\t\t\tskipped: budget\n' "$name" >>"$OUT/steps.tsv"
    return 99
  fi
  log "step $name (timeout ${tmo}s): $*"
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$tmo" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"
  rc=$?
  t1=$(date +%s.%N)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$t0" "$t1" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')" \
    "$rc" "$([[ $rc == 124 || $rc == 137 ]] && echo "timeout ${tmo}s")" >>"$OUT/steps.tsv"
  log "step $name: rc=$rc wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')s"
  return $rc
}

# fits EST_S: is there time for an optional step of about EST_S seconds?
fits() { (( $(remaining) - RESERVE_S >= $1 )); }

# sglprep itself: as root, from this checkout, with the bench's state and inventory
# (arrays, not functions, so that `timeout` can run them)
SG=(env PYTHONPATH="$REPO" "$PY" -m reconcile -f "$STATE" -i "$INV")

# ASUSER CMD...: run CMD as the storage owner, no supplementary groups
if command -v setpriv >/dev/null 2>&1; then
  ASUSER=(setpriv --reuid="$OUID" --regid="$OGID" --clear-groups --)
else
  ASUSER=("$PY" -c 'import os, sys
u, g = (int(x) for x in sys.argv[1].split(":"))
os.setgroups([]); os.setgid(g); os.setuid(u)
os.execvp(sys.argv[2], sys.argv[2:])' "$OWNER")
fi

finish() {
  log "summary"
  "$PY" "$HERE/summarize.py" "$OUT" || python3 "$HERE/summarize.py" "$OUT" || log "summarize.py failed"
  log "done; outputs in $OUT"
  exec >&- 2>&-
  wait "$TEE_PID" 2>/dev/null
}

fail_early() {  # MESSAGE [STATUS]: a precondition failed: say why, summarize what there is, stop
  log "STOP: $1"
  meta stopped "$1"
  finish
  exit "${2:-3}"
}

log "repo=$REPO out=$OUT python=$PY site=$SITE base=$BASE owner=$OWNER budget=${BUDGET_S}s"
meta t0 "$T0"
meta python "$PY"
meta owner "$OWNER"
meta root "$ROOT"
meta state "$STATE"
meta shapes "$SHAPES"
meta cb_args "$CB_ARGS"
meta budget_s "$BUDGET_S"

[[ -x $PY ]] || fail_early "no runtime python at $PY (set BENCH_PY)" 2

# ---------------------------------------------------------------- environment
{
  echo "## date"; date -u +%FT%TZ
  echo "## uname"; uname -a
  echo "## nproc"; nproc
  echo "## id"; id
  echo "## nvidia-smi"; nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv 2>&1 | head -5
  echo "## python"; "$PY" -VV 2>&1
  echo "## nvcc"; "$CUDA_HOME_DIR/bin/nvcc" --version 2>&1 | tail -2
  echo "## ninja"; command -v ninja; ninja --version 2>&1
  echo "## packages (metadata, no imports)"
  PYTHONPATH="$SITE" "$PY" - <<'EOF' 2>&1
from importlib import metadata
# sglprep's deps, then FlashInfer's import-time deps (its wheel is installed with --no-deps)
for n in ("torch", "triton", "flashinfer-python", "apache-tvm-ffi", "pyyaml", "jinja2", "psutil", "httpx", "rich",
          "sglang", "filelock", "ninja", "numpy", "packaging", "requests", "click", "einops", "tabulate", "tqdm",
          "nvidia-ml-py", "cuda-python", "cuda-bindings", "typing-extensions"):
    try:
        print(f"{n}=={metadata.version(n)}")
    except Exception:
        print(f"{n}: not installed")
EOF
  echo "## venv permissions"; ls -ld "$PYDIR/.." "$PYDIR" "$PY" 2>&1
} >"$OUT/env.txt" 2>&1

# ---------------------------------------------------------------- wheels
if [[ ${BENCH_KEEP_SITE:-0} != 1 ]]; then rm -rf "$SITE"; fi
mkdir -p "$SITE"
shopt -s nullglob
WHEELS=("$WHL_DIR"/*.whl)
shopt -u nullglob
meta wheels "$(printf '%s ' "${WHEELS[@]##*/}")"
if (( ${#WHEELS[@]} )); then
  step install_wheels 180 "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "${WHEELS[@]}" \
    || log "WARNING: wheel install failed (see $OUT/install_wheels.err); FlashInfer steps will fail"
else
  log "WARNING: no wheels in $WHL_DIR; FlashInfer steps will fail"
  meta wheels_missing 1
fi
chmod -R a+rX "$SITE" 2>/dev/null

# ---------------------------------------------------------------- imports
# sglprep's own deps, in the interpreter that runs it (as root)
if ! "$PY" -c 'import yaml, jinja2, psutil' >"$OUT/deps_check.txt" 2>&1; then
  cat "$OUT/deps_check.txt"
  fail_early "sglprep needs pyyaml, jinja2 and psutil in $PY: $(tail -1 "$OUT/deps_check.txt")" 2
fi
for mod in httpx rich; do
  "$PY" -c "import $mod" 2>/dev/null || { log "note: $mod not importable in $PY (optional here)"; meta "missing_$mod" 1; }
done
PYTHONPATH="$SITE" "$PY" -c 'import importlib.util as u, sys
for m in ("flashinfer", "tvm_ffi", "torch", "triton"):
    print(m, "found" if u.find_spec(m) else "MISSING")' >"$OUT/runtime_modules.txt" 2>&1
cat "$OUT/runtime_modules.txt"

# ---------------------------------------------------------------- scratch layout
rm -rf "$BASE"
install -d -m 0755 -o "$OUID" -g "$OGID" "$BASE" "$HOMEDIR" "$EMPTY"
install -d -m 0755 "$MODEL" "$BIN"
install -m 0644 "$HERE/compile_block.py" "$HERE/flashinfer_workload.py" "$BIN/"
cat >"$MODEL/config.json" <<'EOF'
{
  "architectures": ["LlamaForCausalLM"],
  "model_type": "llama",
  "hidden_size": 4096,
  "intermediate_size": 14336,
  "num_hidden_layers": 2,
  "num_attention_heads": 32,
  "num_key_value_heads": 8,
  "head_dim": 128,
  "max_position_embeddings": 131072,
  "rope_theta": 500000.0,
  "torch_dtype": "bfloat16",
  "vocab_size": 128256
}
EOF
chmod 0644 "$MODEL/config.json"

# Can the storage owner use the runtime python, torch, the wheels and the scripts?
# (stdlib only: no `import torch`, which would cost ~10 s). Exit 1: it cannot.
UCHECK='import importlib.util as u, os, sys
bad, warn = [], []
for m in ("torch", "flashinfer"):
    try:
        s = u.find_spec(m)
    except Exception as exc:
        s, why = None, repr(exc)
    else:
        why = "not importable"
    if s is None:
        (bad if m == "torch" else warn).append(m + ": " + why)
        continue
    d = list(s.submodule_search_locations)[0]
    if not os.access(d, os.R_OK | os.X_OK) or not os.listdir(d):
        bad.append(m + ": cannot read " + d)
    lib = os.path.join(d, "lib")
    if m == "torch" and os.path.isdir(lib):
        unreadable = [f for f in os.listdir(lib) if not os.access(os.path.join(lib, f), os.R_OK)]
        if unreadable:
            bad.append("torch: unreadable " + os.path.join(lib, unreadable[0]))
for f in sys.argv[1:]:
    if not os.access(f, os.R_OK):
        bad.append("cannot read " + f)
print("uid %d gid %d: %s%s" % (os.getuid(), os.getgid(), "PROBLEMS: " + "; ".join(bad) if bad else "ok",
                               ("; warnings: " + "; ".join(warn)) if warn else ""))
sys.exit(1 if bad else 0)'
"${ASUSER[@]}" env -i HOME="$HOMEDIR" PATH="$RT_PATH" PYTHONPATH="$SITE" "$PY" -c "$UCHECK" \
  "$BIN/compile_block.py" "$BIN/flashinfer_workload.py" >"$OUT/owner_check.txt" 2>&1
UCHECK_RC=$?
cat "$OUT/owner_check.txt"
if (( UCHECK_RC != 0 )); then
  fail_early "uid $OUID cannot use $PY and its packages: $(tail -1 "$OUT/owner_check.txt") (stages and workloads run as the storage owner $OWNER; make the venv world-readable, e.g. chmod -R a+rX /opt/torch, or set BENCH_OWNER to a uid that can use it)" 3
fi
grep -q 'warnings:' "$OUT/owner_check.txt" && log "WARNING: $(sed 's/.*warnings: //' "$OUT/owner_check.txt") (FlashInfer steps will fail)"

# ---------------------------------------------------------------- state
CB_CMD="[\"$PY\", \"$BIN/compile_block.py\", --shapes, \"$SHAPES\""
for a in "${CB_EXTRA[@]}"; do CB_CMD+=", \"$a\""; done
CB_CMD+="]"
cat >"$INV" <<'EOF'
all:
  hosts:
    localhost:
      ansible_connection: local
EOF
cat >"$STATE" <<EOF
# written by bench/gpu/run.sh
version: 1
storage: {root: $ROOT, owner: "$OWNER"}
runtime:
  kind: local
  python: $PY
  env: {PYTHONPATH: $SITE, PATH: "$RT_PATH", CUDA_HOME: $CUDA_HOME_DIR}
model: {path: $MODEL}
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
      mode: ensure
      command: $CB_CMD
      signature: {block: llama-2L-4096, shapes: "$SHAPES", mode: default}
      env: {TORCHINDUCTOR_COMPILE_THREADS: "16"}
telemetry: {probe: false}
timeouts: {stage_s: 300, lock_s: 30}
EOF
cp "$STATE" "$OUT/state.yaml"
step validate 60 "${SG[@]}" validate --no-color || log "WARNING: the state does not validate (see $OUT/validate.err)"

# plan_blocked FILE: the blocked changes of a plan JSON, one per line
plan_blocked() {
  "$PY" - "$1" <<'EOF'
import json, sys
try:
    doc = json.load(open(sys.argv[1]))
except Exception as exc:
    print(f"(no plan JSON: {exc})")
    sys.exit(0)
for c in doc.get("changes", []):
    if c.get("action") == "blocked":
        print(f"{c.get('address')}: {c.get('reason')}: {c.get('message')}")
EOF
}

# ---------------------------------------------------------------- a. plan + cold apply
step plan_cold 120 "${SG[@]}" plan --json --no-color
plan_blocked "$OUT/plan_cold.out" | tee "$OUT/plan_cold.blocked"
if grep -q '^check:runtime: .*sglang is not installed' "$OUT/plan_cold.blocked" && [[ $STUB_SGLANG != 0 ]]; then
  log "check:runtime is blocked because sglang is not installed although no stage needs it;"
  log "adding an empty sglang dist-info to $SITE (metadata only) and planning again (recorded as sglang_stub_used)"
  mkdir -p "$SITE/sglang-0.0.0+benchstub.dist-info"
  printf 'Metadata-Version: 2.1\nName: sglang\nVersion: 0.0.0+benchstub\n' \
    >"$SITE/sglang-0.0.0+benchstub.dist-info/METADATA"
  chmod -R a+rX "$SITE/sglang-0.0.0+benchstub.dist-info"
  meta sglang_stub_used 1
  step plan_cold_stub 120 "${SG[@]}" plan --json --no-color
  plan_blocked "$OUT/plan_cold_stub.out" | tee "$OUT/plan_cold_stub.blocked"
fi

step apply_cold 480 "${SG[@]}" apply --no-color
RESULT_JSON=$(sed -n 's/^RESULT_JSON //p' "$OUT/apply_cold.out" | tail -1)
meta apply_cold_result_json "$RESULT_JSON"
grep '^RESULT_STATUS' "$OUT/apply_cold.out" | tail -1
if [[ -n $RESULT_JSON && -f $RESULT_JSON ]]; then
  cp -r "$(dirname "$RESULT_JSON")" "$OUT/apply_cold_run"
else
  log "WARNING: apply printed no RESULT_JSON (see $OUT/apply_cold.out)"
fi
SESSION_LOG=$(sed -n 's/^Session log: //p' "$OUT/apply_cold.out" | tail -1)
if [[ -n $SESSION_LOG && -f $SESSION_LOG ]]; then
  tail -c 3000000 "$SESSION_LOG" >"$OUT/apply_cold.session.log"
fi
mkdir -p "$OUT/signatures"
while IFS= read -r f; do
  rel=${f#"$PROFILES"/}
  cp "$f" "$OUT/signatures/${rel//\//__}"
done < <(find "$PROFILES" -name signature.json 2>/dev/null)
find "$PROFILES" -path '*/cached_ops/*/*.so' -printf '%TY-%Tm-%Td %TT %s %p\n' 2>/dev/null \
  >"$OUT/flashinfer_so_after_apply.txt"
step inspect_sizes 60 "${SG[@]}" inspect --sizes --json --no-color

# ---------------------------------------------------------------- b. second apply
count_results() { find "$ROOT/telemetry" -name prep_result.json 2>/dev/null | wc -l; }
meta prep_results_before_second "$(count_results)"
step apply_second 120 "${SG[@]}" apply --no-color
meta prep_results_after_second "$(count_results)"
if grep -q 'Apply complete: nothing to do\.' "$OUT/apply_second.out"; then meta second_nothing_to_do 1
else meta second_nothing_to_do 0; log "WARNING: the second apply did something (see $OUT/apply_second.out)"; fi
step plan_converged 60 "${SG[@]}" plan --json --detailed-exitcode --no-color

# ---------------------------------------------------------------- c. workloads
WENV=(HOME="$HOMEDIR" PATH="$RT_PATH" CUDA_HOME="$CUDA_HOME_DIR" PYTHONPATH="$SITE" PYTHONUNBUFFERED=1
      TORCHINDUCTOR_COMPILE_THREADS=16)
PRIMED=(TORCHINDUCTOR_CACHE_DIR="$PROFILES/torchinductor" TRITON_CACHE_DIR="$PROFILES/triton"
        FLASHINFER_WORKSPACE_BASE="$PROFILES/flashinfer" CUDA_CACHE_PATH="$PROFILES/nv")

# empty_env N: fresh empty cache dirs (owned by the storage owner) for run N
empty_env() {
  local d=$EMPTY/$1
  install -d -m 0755 -o "$OUID" -g "$OGID" "$d" "$d/inductor" "$d/triton" "$d/flashinfer" "$d/nv"
  EMPTYENV=(TORCHINDUCTOR_CACHE_DIR="$d/inductor" TRITON_CACHE_DIR="$d/triton" FLASHINFER_WORKSPACE_BASE="$d/flashinfer"
            CUDA_CACHE_PATH="$d/nv")
}

# workload NAME TIMEOUT SCRIPT ENV... -- ARGS...: a fresh process as the storage owner
workload() {
  local name=$1 tmo=$2 script=$3
  shift 3
  local envs=()
  while (( $# )) && [[ $1 != -- ]]; do envs+=("$1"); shift; done
  (( $# )) && shift
  step "$name" "$tmo" "${ASUSER[@]}" env -i "${WENV[@]}" "${envs[@]}" "$PY" "$BIN/$script" \
    --t-launch "$(date +%s.%N)" --tag "$name" --fast-exit "$@"
}

fi_primed() { workload "fi_primed_$1" 150 flashinfer_workload.py "${PRIMED[@]}" --; }
fi_empty() { empty_env "fi$1"; workload "fi_empty_$1" 240 flashinfer_workload.py "${EMPTYENV[@]}" --; }
cb_primed() { workload "cb_primed_$1" 150 compile_block.py "${PRIMED[@]}" -- --shapes "$SHAPES" "${CB_EXTRA[@]}"; }
cb_empty() { empty_env "cb$1"; workload "cb_empty_$1" 200 compile_block.py "${EMPTYENV[@]}" -- --shapes "$SHAPES" \
  "${CB_EXTRA[@]}"; }

# rough costs (s) from gpu-cache-measurements.md, to skip what does not fit
EST_FI_PRIMED=25 EST_FI_EMPTY=100 EST_CB_PRIMED=35 EST_CB_EMPTY=60
[[ $SKIP_FI == 1 ]] && meta skip_fi 1
if [[ $SKIP_FI != 1 ]]; then fits $EST_FI_PRIMED && fi_primed 1; fits $EST_FI_EMPTY && fi_empty 1; fi
fits $EST_CB_PRIMED && cb_primed 1
fits $EST_CB_EMPTY && cb_empty 1
if [[ $SKIP_FI != 1 ]]; then fits $EST_FI_PRIMED && fi_primed 2; fi
fits $EST_CB_PRIMED && cb_primed 2
fits $EST_CB_EMPTY && cb_empty 2
if [[ $SKIP_FI != 1 ]]; then fits $((EST_FI_EMPTY + 20)) && fi_empty 2; fi

# ---------------------------------------------------------------- d. touched sources
FI_DIR=$(PYTHONPATH="$SITE" "$PY" -c 'import importlib.util as u
s = u.find_spec("flashinfer")
print(list(s.submodule_search_locations)[0] if s else "")' 2>/dev/null)
meta flashinfer_dir "$FI_DIR"
if [[ -n $FI_DIR && -d $FI_DIR/data ]]; then
  meta touched_files "$(find "$FI_DIR/data" -type f | wc -l)"
  find "$FI_DIR/data" -type f -exec touch {} +
  log "touched every file under $FI_DIR/data (as a re-install would)"
  so_list() { find "$PROFILES" -path '*/cached_ops/*/*.so' -printf '%T@ %s %p\n' 2>/dev/null | sort; }
  so_list >"$OUT/flashinfer_so_before_touched_plan.txt"
  step plan_touched 60 "${SG[@]}" plan --json --no-color
  so_list >"$OUT/flashinfer_so_after_touched_plan.txt"
  if cmp -s "$OUT/flashinfer_so_before_touched_plan.txt" "$OUT/flashinfer_so_after_touched_plan.txt"; then
    meta touched_plan_changed_cache 0
  else
    meta touched_plan_changed_cache 1
  fi
  # does the prediction hold? a workload on the primed cache now (FlashInfer rebuilds silently)
  if [[ $SKIP_FI != 1 ]] && fits $((EST_FI_EMPTY + 10)); then
    workload fi_touched_1 200 flashinfer_workload.py "${PRIMED[@]}" --
  fi
else
  log "WARNING: FlashInfer package dir not found under $SITE; no touched-sources plan"
  meta touched_files 0
fi

# ---------------------------------------------------------------- e. summary
meta t_end "$(date +%s.%N)"
finish
