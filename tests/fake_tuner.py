"""Test double of SGLang's fused-MoE Triton tuner
(benchmark/kernels/fused_moe_triton/tuning_fused_moe_triton.py): one batch size
per run, writes `E=…,N=…,device_name=…[,dtype=…][,block_shape=[…]].json` into the
current directory, named the way the SGLang test double looks configs up.

FAKE_TUNER_FAIL=1 makes it exit 1 without writing anything.
"""
import argparse
import json
import os
import sys

from sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe_triton_config import get_config_file_name


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--tp-size", type=int, default=1)
    p.add_argument("--ep-size", type=int, default=1)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--tune", action="store_true")
    args = p.parse_args()
    print(f"tuning batch size {args.batch_size} for {args.model}", flush=True)
    if os.environ.get("FAKE_TUNER_FAIL") == "1":
        print("RuntimeError: triton autotune failed", file=sys.stderr)
        return 1
    with open(os.path.join(args.model, "config.json")) as fh:
        cfg = json.load(fh)
    experts = cfg.get("num_experts") or cfg.get("num_local_experts")
    n = cfg["moe_intermediate_size"] // max(args.tp_size // args.ep_size, 1)
    dtype = args.dtype if args.dtype not in ("auto", "") else None
    block = (cfg.get("quantization_config") or {}).get("weight_block_size") if dtype == "fp8_w8a8" else None
    name = get_config_file_name(experts // args.ep_size, n, dtype, block)
    with open(name, "w") as fh:
        json.dump({str(args.batch_size): {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128,
                                           "GROUP_SIZE_M": 1, "num_warps": 4, "num_stages": 3}}, fh)
    print(f"Writing best config to {name}...", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
