#!/usr/bin/env python3
"""Time FlashInfer's paged-KV decode and FA2 prefill in a fresh process.

What a server process pays at start-up for the two JIT modules that
bench/gpu/run.sh has sglprep prime (caches.flashinfer.modules): the JIT build,
or the load of a cached build, happens inside `plan()`. Parameters, as in
Experiment B of gpu-cache-measurements.md and as sglprep's direct build
assumes them (runtime_flashinfer.py):

* decode: BatchDecodeWithPagedKVCacheWrapper(ws, "NHD") (use_tensor_cores
  False), bf16, 32 qo / 8 kv heads, head_dim 128, page 16, batch 8, kv_len 1024;
* prefill: BatchPrefillWithPagedKVCacheWrapper(ws, "NHD", backend="fa2"),
  causal, qo_len 128, same KV.

The JIT cache is wherever FLASHINFER_WORKSPACE_BASE points. Besides timings
the JSON says whether FlashInfer logged "Building JIT module" (it does only
for a missing .so) and which module .so files were rewritten during the run
(a silent rebuild of a moved cache or touched sources logs nothing, but it
rewrites the .so).

stdout: exactly one JSON line; everything else on stderr. Exit 0 on success,
1 on an error (the JSON then has "error").
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import time

T_START = time.time()
BUILD_RE = re.compile(r"Building JIT module (\S+?);?\s")


def workspace_cache() -> str:
    base = os.environ.get("FLASHINFER_WORKSPACE_BASE") or os.path.expanduser("~")
    return os.path.join(base, ".cache", "flashinfer")


def jit_logs() -> dict:
    """{path: size} of every flashinfer_jit.log under the workspace."""
    out = {}
    for path in glob.glob(os.path.join(workspace_cache(), "**", "flashinfer_jit.log"), recursive=True):
        try:
            out[path] = os.path.getsize(path)
        except OSError:
            pass
    return out


def new_log_text(before: dict) -> str:
    text = []
    for path, size in jit_logs().items():
        start = before.get(path, 0)
        try:
            with open(path, "rb") as fh:
                fh.seek(start)
                text.append(fh.read().decode("utf-8", errors="replace"))
        except OSError:
            pass
    return "".join(text)


def module_sos() -> dict:
    """{module name: (mtime_ns, size)} of every cached_ops/<name>/<name>.so."""
    out = {}
    for path in glob.glob(os.path.join(workspace_cache(), "**", "cached_ops", "*", "*.so"), recursive=True):
        name = os.path.basename(os.path.dirname(path))
        if os.path.basename(path) != f"{name}.so":
            continue
        try:
            st = os.stat(path)
            out[name] = (st.st_mtime_ns, st.st_size)
        except OSError:
            pass
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default="decode,prefill", help="decode, prefill or both (default both)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--kv-len", type=int, default=1024)
    ap.add_argument("--qo-len", type=int, default=128)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--num-qo-heads", type=int, default=32)
    ap.add_argument("--num-kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--no-check", action="store_true", help="skip the fp32 reference check")
    ap.add_argument("--t-launch", type=float, default=None,
                    help="unix time stamped by the caller just before exec (for launch->done)")
    ap.add_argument("--fast-exit", action="store_true", help="os._exit right after printing")
    ap.add_argument("--tag", default=None, help="free text copied into the JSON")
    args = ap.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]

    result: dict = {"tag": args.tag, "pid": os.getpid(), "t_start_unix": T_START, "t_launch_unix": args.t_launch,
                    "workspace_base": os.environ.get("FLASHINFER_WORKSPACE_BASE"),
                    "params": {"batch": args.batch, "kv_len": args.kv_len, "qo_len": args.qo_len,
                               "page_size": args.page_size, "num_qo_heads": args.num_qo_heads,
                               "num_kv_heads": args.num_kv_heads, "head_dim": args.head_dim, "dtype": "bf16"}}
    logs_before = jit_logs()
    sos_before = module_sos()
    result["modules_before"] = sorted(sos_before)
    rc = 0
    try:
        t0 = time.time()
        import torch
        result["import_torch_s"] = round(time.time() - t0, 3)
        result["torch_version"] = torch.__version__
        t0 = time.time()
        torch.cuda.init()
        dev = torch.device("cuda")
        torch.zeros(1, device=dev)
        torch.cuda.synchronize()
        result["cuda_init_s"] = round(time.time() - t0, 3)
        result["device"] = torch.cuda.get_device_name(0)
        t0 = time.time()
        import flashinfer
        result["import_flashinfer_s"] = round(time.time() - t0, 3)
        result["flashinfer_version"] = getattr(flashinfer, "__version__", None)

        b, kv_len, qo_len, ps = args.batch, args.kv_len, args.qo_len, args.page_size
        hq, hkv, hd = args.num_qo_heads, args.num_kv_heads, args.head_dim
        dtype = torch.bfloat16
        pages_per_req = (kv_len + ps - 1) // ps
        last_len = kv_len - (pages_per_req - 1) * ps
        num_pages = b * pages_per_req
        gen = torch.Generator(device=dev).manual_seed(0)
        k_cache = torch.randn(num_pages, ps, hkv, hd, device=dev, dtype=dtype, generator=gen)
        v_cache = torch.randn(num_pages, ps, hkv, hd, device=dev, dtype=dtype, generator=gen)
        kv_indptr = torch.arange(0, b + 1, device=dev, dtype=torch.int32) * pages_per_req
        kv_indices = torch.arange(0, num_pages, device=dev, dtype=torch.int32)
        kv_last = torch.full((b,), last_len, device=dev, dtype=torch.int32)
        ws = torch.zeros(128 * 1024 * 1024, dtype=torch.uint8, device=dev)

        def reference(q, causal: bool):
            """fp32 attention of q [b, s, hq, hd] over each request's kv_len keys."""
            k = k_cache.view(b, pages_per_req * ps, hkv, hd)[:, :kv_len].float()
            v = v_cache.view(b, pages_per_req * ps, hkv, hd)[:, :kv_len].float()
            rep = hq // hkv
            k = k.repeat_interleave(rep, dim=2).transpose(1, 2)
            v = v.repeat_interleave(rep, dim=2).transpose(1, 2)
            qf = q.float().transpose(1, 2)  # b, hq, s, hd
            s = qf.shape[2]
            scores = qf @ k.transpose(-1, -2) / (hd ** 0.5)
            if causal:  # bottom-right aligned: query i sees keys <= kv_len - s + i
                qi = torch.arange(s, device=dev)[:, None]
                kj = torch.arange(kv_len, device=dev)[None, :]
                scores = scores.masked_fill(kj > kv_len - s + qi, float("-inf"))
            out = torch.softmax(scores, dim=-1) @ v
            return out.transpose(1, 2)  # b, s, hq, hd

        def rel(a, ref):
            return float(((a.float() - ref).norm() / ref.norm().clamp_min(1e-12)).item())

        if "decode" in kinds:
            wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD")
            t0 = time.time()
            wrapper.plan(kv_indptr, kv_indices, kv_last, hq, hkv, hd, ps, q_data_type=dtype, kv_data_type=dtype)
            torch.cuda.synchronize()
            result["decode_plan_s"] = round(time.time() - t0, 3)
            # backend "auto" may route decode to cuDNN (no JIT module) where cudnn-frontend is installed
            try:
                result["decode_resolved_backend"] = str(getattr(wrapper, "resolved_backend", None))
            except Exception as exc:  # informative only
                result["decode_resolved_backend"] = f"unknown ({type(exc).__name__})"
            q = torch.randn(b, hq, hd, device=dev, dtype=dtype, generator=gen)
            t0 = time.time()
            out = wrapper.run(q, (k_cache, v_cache))
            torch.cuda.synchronize()
            result["decode_run_s"] = round(time.time() - t0, 3)
            if not args.no_check:
                result["decode_rel_err"] = rel(out, reference(q[:, None], False)[:, 0])
        if "prefill" in kinds:
            wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD", backend="fa2")
            qo_indptr = torch.arange(0, b + 1, device=dev, dtype=torch.int32) * qo_len
            t0 = time.time()
            wrapper.plan(qo_indptr, kv_indptr, kv_indices, kv_last, hq, hkv, hd, ps, causal=True,
                         q_data_type=dtype, kv_data_type=dtype)
            torch.cuda.synchronize()
            result["prefill_plan_s"] = round(time.time() - t0, 3)
            q = torch.randn(b * qo_len, hq, hd, device=dev, dtype=dtype, generator=gen)
            t0 = time.time()
            out = wrapper.run(q, (k_cache, v_cache))
            torch.cuda.synchronize()
            result["prefill_run_s"] = round(time.time() - t0, 3)
            if not args.no_check:
                result["prefill_rel_err"] = rel(out.view(b, qo_len, hq, hd), reference(q.view(b, qo_len, hq, hd), True))
        t_done = time.time()
        result["plans_s"] = round(result.get("decode_plan_s", 0.0) + result.get("prefill_plan_s", 0.0), 3)
        if args.t_launch:
            result["launch_to_done_s"] = round(t_done - args.t_launch, 3)
        result["start_to_done_s"] = round(t_done - T_START, 3)
    except Exception as exc:
        import traceback

        traceback.print_exc()
        result["error"] = f"{type(exc).__name__}: {exc}"
        rc = 1
    log_text = new_log_text(logs_before)
    built = BUILD_RE.findall(log_text + " ")
    result["jit_log_building"] = bool(built)
    result["jit_log_built_modules"] = built
    sos_after = module_sos()
    result["modules_after"] = sorted(sos_after)
    result["so_rewritten"] = sorted(n for n, st in sos_after.items() if n in sos_before and sos_before[n] != st)
    result["so_new"] = sorted(n for n in sos_after if n not in sos_before)
    result["rebuilt_silently"] = sorted(n for n in result["so_rewritten"] if n not in built)
    result["main_end_unix"] = time.time()
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()
    if args.fast_exit:
        sys.stderr.flush()
        os._exit(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
