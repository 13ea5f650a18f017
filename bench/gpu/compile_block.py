#!/usr/bin/env python3
"""Compile a 2-layer Llama-style decoder with torch.compile at a few static shapes.

Used two ways by bench/gpu/run.sh:

* as sglprep's custom stage `compile_block` (caches.custom.compile_block.command):
  sglprep starts it with TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR routed to
  profiles/torchinductor and profiles/triton, cwd = SGLPREP_CACHE_DIR, so the
  compile fills the caches a server would read;
* as the "workload": a fresh process pointed at the primed dirs or at empty
  ones, to measure what priming saves.

The model is the one of Experiment A in gpu-cache-measurements.md: hidden 4096,
32 q heads, 8 kv heads, head_dim 128, SwiGLU 14336, bf16, 436 M parameters;
each layer does RMSNorm, fused QKV, RoPE, repeat_kv,
F.scaled_dot_product_attention(is_causal=True), o_proj, RMSNorm and SwiGLU.
It runs under torch.compile(model, dynamic=False) and torch.no_grad(), one
graph per shape (B x S). As in the reference, every shape first runs eagerly
once (warms cuBLAS/SDPA), then "compile" is the wall time of the first compiled
call of every shape (trace, FX cache lookup or full Inductor compile, kernel
load, first execution, sync).

stdout: exactly one JSON line. Everything else (warnings, Inductor logs) goes
to stderr. Exit 0 on success, 1 on error (the JSON line then has "error").

Local test without a GPU:  python3 bench/gpu/compile_block.py --cpu --small
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

T_START = time.time()


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        b, _, s = item.partition("x")
        if not (b.isdigit() and s.isdigit()) or int(b) < 1 or int(s) < 1:
            raise argparse.ArgumentTypeError(f"shape {item!r} is not BxS (e.g. 8x128)")
        shapes.append((int(b), int(s)))
    if not shapes:
        raise argparse.ArgumentTypeError("no shapes given")
    return shapes


def count_files(path: str | None) -> int | None:
    if not path or not os.path.isdir(path):
        return None if not path else 0
    n = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        n += 1
        except OSError:
            continue
    return n


def build_model(torch, cfg: dict, device, dtype):
    nn = torch.nn
    F = torch.nn.functional
    hidden, nq, nkv, hd, inter = cfg["hidden"], cfg["nq"], cfg["nkv"], cfg["hd"], cfg["inter"]

    class RMSNorm(nn.Module):
        def __init__(self, dim: int, eps: float = 1e-5):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

        def forward(self, x):
            xf = x.float()
            xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
            return xf.to(x.dtype) * self.weight

    def rotate_half(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def repeat_kv(x, n_rep: int):
        if n_rep == 1:
            return x
        b, h, s, d = x.shape
        return x[:, :, None, :, :].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            kw = dict(bias=False, device=device, dtype=dtype)
            self.input_norm = RMSNorm(hidden)
            self.qkv_proj = nn.Linear(hidden, (nq + 2 * nkv) * hd, **kw)
            self.o_proj = nn.Linear(nq * hd, hidden, **kw)
            self.post_norm = RMSNorm(hidden)
            self.gate_up_proj = nn.Linear(hidden, 2 * inter, **kw)
            self.down_proj = nn.Linear(inter, hidden, **kw)

        def forward(self, x, cos, sin):
            b, s, _ = x.shape
            h = self.input_norm(x)
            q, k, v = self.qkv_proj(h).split([nq * hd, nkv * hd, nkv * hd], dim=-1)
            q = q.view(b, s, nq, hd).transpose(1, 2)
            k = k.view(b, s, nkv, hd).transpose(1, 2)
            v = v.view(b, s, nkv, hd).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            k = repeat_kv(k, nq // nkv)
            v = repeat_kv(v, nq // nkv)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            o = o.transpose(1, 2).reshape(b, s, nq * hd)
            x = x + self.o_proj(o)
            h = self.post_norm(x)
            gate, up = self.gate_up_proj(h).chunk(2, dim=-1)
            return x + self.down_proj(F.silu(gate) * up)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Layer() for _ in range(cfg["layers"])])
            inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))
            self.register_buffer("inv_freq", inv, persistent=False)

        def forward(self, x):
            s = x.shape[1]
            t = torch.arange(s, device=x.device, dtype=torch.float32)
            freqs = torch.outer(t, self.inv_freq)
            emb = torch.cat((freqs, freqs), dim=-1)
            cos = emb.cos().to(x.dtype)[None, None]
            sin = emb.sin().to(x.dtype)[None, None]
            for layer in self.layers:
                x = layer(x, cos, sin)
            return x

    return Decoder().eval()


def inductor_counters(torch) -> dict:
    """FX graph / AOTAutograd cache hits and misses, or None where the counter
    names are not what this script expects (Counter returns 0 for any key, so
    presence is checked, not the value)."""
    out = {"fx_hits": None, "fx_misses": None, "aot_hits": None, "aot_misses": None}
    try:
        from torch._dynamo.utils import counters
    except Exception:
        return out
    ind = counters.get("inductor", {}) if hasattr(counters, "get") else {}
    if "fxgraph_cache_hit" in ind or "fxgraph_cache_miss" in ind:
        out["fx_hits"] = int(ind.get("fxgraph_cache_hit", 0))
        out["fx_misses"] = int(ind.get("fxgraph_cache_miss", 0))
    aot = counters.get("aot_autograd", {}) if hasattr(counters, "get") else {}
    if "autograd_cache_hit" in aot or "autograd_cache_miss" in aot:
        out["aot_hits"] = int(aot.get("autograd_cache_hit", 0))
        out["aot_misses"] = int(aot.get("autograd_cache_miss", 0))
    out["fx_bypass"] = int(ind.get("fxgraph_cache_bypass", 0)) if ind else None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", type=parse_shapes, default=parse_shapes("1x1024,8x128,32x1"),
                    help="static shapes BxS, comma-separated (default 1x1024,8x128,32x1)")
    ap.add_argument("--mode", default="default",
                    help="torch.compile mode (default: none given, i.e. Inductor's default)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--cpu", action="store_true", help="run on CPU in float32 (local testing)")
    ap.add_argument("--small", action="store_true", help="tiny model (hidden 256, 4/2 heads, hd 64, ffn 512)")
    ap.add_argument("--no-eager", action="store_true", help="skip the eager forward per shape before compiling")
    ap.add_argument("--t-launch", type=float, default=None,
                    help="unix time stamped by the caller just before exec (for launch->ready)")
    ap.add_argument("--fast-exit", action="store_true",
                    help="os._exit(0) right after printing (skips Inductor's slow pool shutdown)")
    ap.add_argument("--tag", default=None, help="free text copied into the JSON")
    args = ap.parse_args(argv)

    result: dict = {"tag": args.tag, "shapes": [f"{b}x{s}" for b, s in args.shapes], "mode": args.mode,
                    "pid": os.getpid(), "cwd": os.getcwd(), "t_start_unix": T_START, "t_launch_unix": args.t_launch,
                    "env": {k: os.environ.get(k) for k in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR",
                                                           "CUDA_CACHE_PATH", "SGLPREP_CACHE_DIR",
                                                           "TORCHINDUCTOR_COMPILE_THREADS", "HOME")}}
    ind_dir, tri_dir = os.environ.get("TORCHINDUCTOR_CACHE_DIR"), os.environ.get("TRITON_CACHE_DIR")
    result["files_before"] = {"inductor": count_files(ind_dir), "triton": count_files(tri_dir)}
    rc = 0
    try:
        t0 = time.time()
        import torch
        result["import_torch_s"] = round(time.time() - t0, 3)
        result["torch_version"] = torch.__version__
        cfg = dict(hidden=4096, nq=32, nkv=8, hd=128, inter=14336, layers=args.layers, rope_theta=500000.0)
        if args.small:
            cfg.update(hidden=256, nq=4, nkv=2, hd=64, inter=512)
        result["model"] = cfg
        if args.cpu:
            device, dtype = torch.device("cpu"), torch.float32
        else:
            if not torch.cuda.is_available():
                raise RuntimeError("CUDA is not available (use --cpu for a CPU run)")
            device, dtype = torch.device("cuda"), torch.bfloat16
        result["device"] = "cpu" if args.cpu else torch.cuda.get_device_name(0)
        result["dtype"] = str(dtype).replace("torch.", "")
        try:
            import torch._inductor.config as icfg
            result["inductor_config"] = {"fx_graph_cache": getattr(icfg, "fx_graph_cache", None),
                                         "bundle_triton_into_fx_graph_cache":
                                             getattr(icfg, "bundle_triton_into_fx_graph_cache", None),
                                         "compile_threads": getattr(icfg, "compile_threads", None)}
        except Exception as exc:  # pragma: no cover - informative only
            result["inductor_config"] = {"error": repr(exc)}

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize()

        t0 = time.time()
        torch.manual_seed(0)
        if device.type == "cuda":
            torch.cuda.init()
        with torch.no_grad():
            model = build_model(torch, cfg, device, dtype)
        sync()
        result["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
        result["model_build_s"] = round(time.time() - t0, 3)

        inputs = {}
        gen = torch.Generator(device=device).manual_seed(1)
        for b, s in args.shapes:
            inputs[(b, s)] = torch.randn(b, s, cfg["hidden"], device=device, dtype=dtype, generator=gen)

        eager = {}
        t0 = time.time()
        if not args.no_eager:
            with torch.no_grad():
                for shape, x in inputs.items():
                    eager[shape] = model(x)
            sync()
        result["eager_s"] = round(time.time() - t0, 3)

        compile_kwargs = {"dynamic": False}
        if args.mode and args.mode != "default":
            compile_kwargs["mode"] = args.mode
        compiled = torch.compile(model, **compile_kwargs)
        per_shape, rel_err = {}, {}
        t_compile = time.time()
        with torch.no_grad():
            for shape, x in inputs.items():
                t1 = time.time()
                y = compiled(x)
                sync()
                key = f"{shape[0]}x{shape[1]}"
                per_shape[key] = round(time.time() - t1, 3)
                if shape in eager:
                    ref = eager[shape].float()
                    rel_err[key] = float(((y.float() - ref).norm() / ref.norm().clamp_min(1e-12)).item())
        t_ready = time.time()
        result["compile_s"] = round(t_ready - t_compile, 3)
        result["per_shape"] = per_shape
        result["rel_err_vs_eager"] = rel_err
        if args.t_launch:
            result["launch_to_ready_s"] = round(t_ready - args.t_launch, 3)
        result["start_to_ready_s"] = round(t_ready - T_START, 3)
        result.update(inductor_counters(torch))
    except Exception as exc:
        import traceback

        traceback.print_exc()
        result["error"] = f"{type(exc).__name__}: {exc}"
        rc = 1
    result["files_after"] = {"inductor": count_files(ind_dir), "triton": count_files(tri_dir)}
    result["main_end_unix"] = time.time()
    line = json.dumps(result, sort_keys=True)
    cache_dir = os.environ.get("SGLPREP_CACHE_DIR")
    if cache_dir and os.path.isdir(cache_dir):
        # the custom stage's own cache dir: a record of what was compiled and how long it took
        try:
            tmp = os.path.join(cache_dir, ".compile_block.json.tmp")
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(line + "\n")
            os.replace(tmp, os.path.join(cache_dir, "compile_block.json"))
        except OSError as exc:
            print(f"compile_block: cannot write {cache_dir}/compile_block.json: {exc}", file=sys.stderr)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    if args.fast_exit:
        sys.stderr.flush()
        os._exit(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
