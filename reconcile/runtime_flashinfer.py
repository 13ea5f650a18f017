"""Direct FlashInfer JIT priming: one module per process, through FlashInfer itself.

`BUILD_SCRIPT` is run in the *runtime's* interpreter, one process per module:

    python -B -c BUILD_SCRIPT '{"kind": "decode", "head_dim": 128, ...}'

It builds exactly the JIT module that FlashInfer 0.7.2 builds inside `plan()`
of a paged-KV `BatchDecodeWithPagedKVCacheWrapper` (default
`use_tensor_cores=False`) or `BatchPrefillWithPagedKVCacheWrapper` (causal,
pos_encoding NONE, no sliding window, no logits soft cap, no fp16 QK
reduction), using the same `gen_*` function and arguments the wrapper's
cached helper uses, and the module's own `build_and_load()`:

* decode: `decode.py:2441-2451` `plan()` -> `get_batch_decode_module(q, kv, o,
  indptr.dtype, head_dim, head_dim, PosEncodingMode[...].value,
  window_left != -1, logits_soft_cap > 0)`; `decode.py:535-538` ->
  `gen_batch_decode_module(*args).build_and_load()`
  (`jit/attention/modules.py:949-993`).
* prefill: `prefill.py:3668-3697` `plan()` -> `get_batch_prefill_module(
  backend, q, kv, o, paged_kv_indptr.dtype, head_dim_qk, head_dim_vo, posenc,
  window_left >= 0, logits_soft_cap > 0, use_fp16_qk_reduction)`;
  `prefill.py:534-557`: for fa2 it builds
  `_gen_batch_prefill_primary_module(backend, *args)` (paged KV stride mode
  "equal", uri suffix `_kv_stride_equal`, `modules.py:1164-1192`); the
  independent-stride paged module is lazy (only built when K and V strides
  differ at run time), so it is not primed; any other backend (fa3) builds
  `gen_batch_prefill_module(backend, *args)` (`modules.py:1133-1161`, uri
  suffix `_sm90`).
* backend "auto" (prefill): `prefill.py:3668-3678` ->
  `flashinfer.utils.determine_attention_backend(device, 0, False, False, q, kv,
  head_dim_qk=, head_dim_vo=)` (`utils.py:574-629`). With no visible GPU the
  script applies the same rule to the archs FlashInfer compiles for.

Never `build_jit_specs`: its output is rebuilt by the runtime (measured).

The last line on stdout is

    FLASHINFER_MODULE {"name": ..., "path": ..., "seconds": ..., "cold": ..., ...}

Errors: traceback on stderr, exit status 1 (2 for a bad spec).

This module is stdlib only and never imports FlashInfer.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Optional

RESULT_PREFIX = "FLASHINFER_MODULE "

KINDS = ("decode", "prefill")
Q_DTYPES = ("bf16", "fp16")
KV_DTYPES = ("bf16", "fp16", "fp8_e4m3", "fp8_e5m2")
BACKENDS = ("fa2", "fa3", "auto")

DEFAULTS: Dict[str, Any] = {
    "kind": None,
    "head_dim": 128,
    "dtype": "bf16",
    "kv_dtype": None,
    "backend": "fa2",
    "num_qo_heads": 32,
    "num_kv_heads": 8,
    "page_size": 16,
}

# FlashInfer's filename_safe_dtype_map / filename_safe_dtype_map_kv
# (jit/utils.py:69-90) for the dtypes a spec can name.
_FILENAME_DTYPE = {"bf16": "bf16", "fp16": "f16", "fp8_e4m3": "e4m3", "fp8_e5m2": "e5m2"}


def normalize_spec(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The spec with defaults filled in (those of the state schema); raises ValueError."""
    out = dict(DEFAULTS)
    out.update({k: v for k, v in dict(spec).items() if v is not None})
    if out["kind"] not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {out['kind']!r}")
    if out["dtype"] not in Q_DTYPES:
        raise ValueError(f"dtype must be one of {Q_DTYPES}, got {out['dtype']!r}")
    if out["kv_dtype"] is not None and out["kv_dtype"] not in KV_DTYPES:
        raise ValueError(f"kv_dtype must be null or one of {KV_DTYPES}, got {out['kv_dtype']!r}")
    if out["backend"] not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {out['backend']!r}")
    for key in ("head_dim", "num_qo_heads", "num_kv_heads", "page_size"):
        if isinstance(out[key], bool) or not isinstance(out[key], int) or out[key] < 1:
            raise ValueError(f"{key} must be a positive integer, got {out[key]!r}")
    return out


def module_key(spec: Dict[str, Any]) -> str:
    """A stable short description for logs, e.g. ``decode hd128 bf16/bf16 fa2``."""
    s = dict(DEFAULTS)
    s.update({k: v for k, v in dict(spec).items() if v is not None})
    kv = spec.get("kv_dtype") or s["dtype"]
    return f"{s['kind']} hd{s['head_dim']} {s['dtype']}/{kv} {s['backend']}"


def module_name(spec: Dict[str, Any], backend: Optional[str] = None) -> Optional[str]:
    """The JIT module name (= cached_ops dir) FlashInfer 0.7.2 gives this spec.

    Computed without FlashInfer from `get_batch_decode_uri` /
    `get_batch_prefill_uri` plus the wrapper's stride suffix
    (`jit/attention/modules.py:136-185, 210-231, 407-431`). For a prefill spec
    with backend "auto", pass the backend it resolves to; otherwise None.
    """
    s = normalize_spec(spec)
    q = _FILENAME_DTYPE[s["dtype"]]
    kv = _FILENAME_DTYPE[s["kv_dtype"] or s["dtype"]]
    hd = s["head_dim"]
    common = (
        f"dtype_q_{q}_dtype_kv_{kv}_dtype_o_{q}_dtype_idx_i32_"
        f"head_dim_qk_{hd}_head_dim_vo_{hd}_posenc_0_use_swa_False_use_logits_cap_False"
    )
    if s["kind"] == "decode":
        return f"batch_decode_with_kv_cache_{common}"
    be = backend or s["backend"]
    if be == "fa2":
        return f"batch_prefill_with_kv_cache_{common}_f16qk_False_kv_stride_equal"
    if be == "fa3":
        return f"batch_prefill_with_kv_cache_{common}_f16qk_False_sm90"
    return None


def spec_argument(spec: Dict[str, Any]) -> str:
    """The JSON argument for BUILD_SCRIPT (normalized, key-sorted)."""
    return json.dumps(normalize_spec(spec), sort_keys=True)


def parse_result(text: str) -> Optional[Dict[str, Any]]:
    """The dict of the last FLASHINFER_MODULE line in `text` (stdout), or None."""
    found = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(RESULT_PREFIX):
            try:
                found = json.loads(line[len(RESULT_PREFIX):])
            except ValueError:
                continue
    return found


# Runs in the runtime's interpreter (any Python 3.8+), argv[1] is the JSON spec.
BUILD_SCRIPT = r'''
import json, os, sys, time, traceback

KV = {"bf16": "bfloat16", "fp16": "float16", "fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}


def bad_spec(msg):
    sys.stderr.write("sglprep flashinfer build: bad spec: %s\n" % msg)
    sys.exit(2)


def load_spec():
    if len(sys.argv) < 2:
        bad_spec("missing JSON argument")
    try:
        spec = json.loads(sys.argv[1])
    except ValueError as e:
        bad_spec("not JSON: %s" % e)
    if not isinstance(spec, dict):
        bad_spec("not a JSON object")
    kind = spec.get("kind")
    if kind not in ("decode", "prefill"):
        bad_spec("kind must be decode or prefill, got %r" % (kind,))
    dtype = spec.get("dtype") or "bf16"
    if dtype not in ("bf16", "fp16"):
        bad_spec("dtype must be bf16 or fp16, got %r" % (dtype,))
    kv_dtype = spec.get("kv_dtype") or dtype
    if kv_dtype not in KV:
        bad_spec("kv_dtype must be one of %s, got %r" % (sorted(KV), kv_dtype))
    backend = spec.get("backend") or "fa2"
    if backend not in ("fa2", "fa3", "auto"):
        bad_spec("backend must be fa2, fa3 or auto, got %r" % (backend,))
    head_dim = spec.get("head_dim", 128)
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
        bad_spec("head_dim must be a positive integer, got %r" % (head_dim,))
    return kind, dtype, kv_dtype, backend, head_dim


def resolve_prefill_backend(torch, q, kv, head_dim):
    # BatchPrefillWithPagedKVCacheWrapper.plan(), prefill.py:3668-3678
    try:
        has_gpu = bool(torch.cuda.is_available())
    except Exception:
        has_gpu = False
    if has_gpu:
        from flashinfer.utils import determine_attention_backend
        device = torch.device("cuda", torch.cuda.current_device())
        return determine_attention_backend(
            device, 0, False, False, q, kv, head_dim_qk=head_dim, head_dim_vo=head_dim
        ), "determine_attention_backend"
    # No visible GPU: utils.py:616-629 with is_sm90a_supported(device) replaced
    # by "every arch FlashInfer compiles for is SM9x" (FLASHINFER_CUDA_ARCH_LIST).
    from flashinfer.jit import current_compilation_context
    from flashinfer.utils import (is_fa3_backend_supported,
                                  is_fa3_prefill_head_dim_supported, version_at_least)
    archs = current_compilation_context.TARGET_CUDA_ARCHS
    cuda = getattr(getattr(torch, "version", None), "cuda", None)
    sm90 = bool(archs) and all(major == 9 for major, _ in archs) and bool(cuda) \
        and version_at_least(cuda, "12.3")
    if sm90 and is_fa3_backend_supported(0, False, False, q, kv) \
            and is_fa3_prefill_head_dim_supported(head_dim, head_dim):
        return "fa3", "target_archs"
    return "fa2", "target_archs"


def main():
    kind, dtype, kv_dtype, backend, head_dim = load_spec()
    import torch
    q = getattr(torch, KV[dtype])
    kv = getattr(torch, KV[kv_dtype])
    o = q                 # o_data_type None -> q_data_type
    idx = torch.int32     # paged_kv_indptr.dtype
    resolved_by = None
    if kind == "decode":
        # decode.py:2441-2451 -> decode.py:535-538
        from flashinfer.jit import gen_batch_decode_module
        via = "gen_batch_decode_module"
        jit_spec = gen_batch_decode_module(q, kv, o, idx, head_dim, head_dim, 0, False, False)
        backend_used = None
    else:
        if backend == "auto":
            backend, resolved_by = resolve_prefill_backend(torch, q, kv, head_dim)
        args = (q, kv, o, idx, head_dim, head_dim, 0, False, False, False)
        if backend == "fa2":
            # prefill.py:544-546: the wrapper's fa2 module is the equal-stride primary
            from flashinfer.jit.attention.modules import _gen_batch_prefill_primary_module
            via = "_gen_batch_prefill_primary_module"
            jit_spec = _gen_batch_prefill_primary_module(backend, *args)
        else:
            # prefill.py:554-556
            from flashinfer.jit import gen_batch_prefill_module
            via = "gen_batch_prefill_module"
            jit_spec = gen_batch_prefill_module(backend, *args)
        backend_used = backend
    name = jit_spec.name
    aot = bool(getattr(jit_spec, "is_aot", False))
    so_path = getattr(jit_spec, "jit_library_path", None)
    build_dir = getattr(jit_spec, "build_dir", None)
    cold = (not aot) and so_path is not None and not os.path.exists(str(so_path))
    t0 = time.monotonic()
    jit_spec.build_and_load()
    seconds = time.monotonic() - t0
    try:
        library = str(jit_spec.get_library_path())
    except Exception:
        library = str(so_path) if so_path is not None else None
    try:
        import flashinfer
        version = getattr(flashinfer, "__version__", None)
    except Exception:
        version = None
    result = {
        "name": name,
        "path": None if (aot or build_dir is None) else str(build_dir),
        "seconds": round(seconds, 3),
        "cold": bool(cold),
        "aot": aot,
        "library": library,
        "kind": kind,
        "backend": backend_used,
        "backend_resolved_by": resolved_by,
        "via": via,
        "flashinfer_version": version,
    }
    sys.stdout.flush()
    sys.stdout.write("FLASHINFER_MODULE " + json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()


try:
    main()
except SystemExit:
    raise
except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    sys.exit(1)
'''
