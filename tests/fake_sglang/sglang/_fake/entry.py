"""Process entry points of the fake: ``launch_server`` and ``compile_deep_gemm``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import List

from sglang._fake.common import env_float, failures, http_log, record_launch, setup_logging
from sglang._fake.server import Engine, FatalStartup, Terminate, install_signal_handlers


def launch_server_main(argv: List[str]) -> int:
    from sglang.srt.server_args import prepare_server_args

    record_launch("sglang.launch_server", argv)
    args = prepare_server_args(argv)  # SystemExit(2) on a bad flag, like argparse
    setup_logging(args.log_level, args.dp_size)
    install_signal_handlers(failures())
    engine = Engine(args, "sglang.launch_server", argv=argv)
    code = 0
    try:
        engine.start_child()
        engine.load()
        engine.run_named_warmups()
        engine.start_http()
        engine.warmup_thread()
        engine.wait_until_stopped()
    except Terminate:
        http_log().info("Shutting down")
        code = 0
    except FatalStartup as exc:
        code = exc.code
    finally:
        engine.shutdown()
    http_log().info(f"Finished server process [{os.getpid()}]")
    return code


def _disable_graphs(raw: str | None) -> str:
    cfg = json.loads(raw) if raw else {}
    for phase in ("decode", "prefill"):
        section = cfg.get(phase)
        if not isinstance(section, dict):
            section = {}
        section["backend"] = "disabled"
        cfg[phase] = section
    return json.dumps(cfg)


def compile_deep_gemm_main(argv: List[str]) -> int:
    from sglang.srt.server_args import ServerArgs

    record_launch("sglang.compile_deep_gemm", argv)
    # A plain ArgumentParser() like the real module: --config is accepted and ignored.
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    parser.add_argument("--timeout", type=int, default=3600)
    ns = parser.parse_args(argv)
    server_args = ServerArgs.from_cli_args(ns)

    os.environ["SGLANG_IN_DEEPGEMM_PRECOMPILE_STAGE"] = "1"
    os.environ["SGLANG_ENABLE_JIT_DEEPGEMM"] = "1"
    os.environ["SGLANG_CHUNKED_PREFIX_CACHE_THRESHOLD"] = "0"
    server_args.enable_torch_compile = False
    server_args.cuda_graph_config = _disable_graphs(server_args.cuda_graph_config)
    server_args.watchdog_timeout = ns.timeout
    server_args.warmups = "compile-deep-gemm"

    setup_logging(server_args.log_level, server_args.dp_size)
    install_signal_handlers(failures())
    print("Begin DeepGEMM Kernels compilation...", flush=True)
    engine = Engine(server_args, "sglang.compile_deep_gemm", compile_stage=True, argv=argv)
    engine.deadline = time.time() + ns.timeout
    code = 0
    try:
        engine.start_child()
        engine.load()
        engine.run_named_warmups()
        engine.start_http()
        engine.warmup_thread()
        while True:
            if engine.fatal:
                engine.die_hard()
            engine._check_deadline()
            try:
                status, _ = engine._request("GET", "/v1/models", timeout=5)
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        dp = max(server_args.dp_size, 1)
        body = {
            "input_ids": [0, 1, 2, 3] if dp == 1 else [[0, 1, 2, 3]] * dp,
            "sampling_params": {"max_new_tokens": 8, "temperature": 0},
        }
        status, resp = engine._request("POST", "/generate", body, timeout=600)
        if status != 200:
            raise RuntimeError(f"DeepGEMM compile request failed: {status} {resp.decode(errors='replace')}")
        engine._sleep(env_float("FAKE_SGLANG_DG_FINAL_S", 0.1))  # the real one sleeps 10 s
        print("DeepGEMM Kernels compilation finished successfully.", flush=True)
    except Terminate:
        code = 0
    except FatalStartup as exc:
        code = exc.code
    except Exception as exc:  # TimeoutError and friends: traceback, exit 1
        sys.stderr.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        code = 1
    finally:
        engine.shutdown()
    return code
