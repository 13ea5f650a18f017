"""DeepGEMM: `sglang.compile_deep_gemm` compiles the JIT kernels for the
model's GEMM shapes into SGLANG_DG_CACHE_DIR, then exits (no requests)."""
from __future__ import annotations

import time

from ..facts_host import tree_stats
from ..redaction import redact_argv
from ..state_flags import server_argv as common_server_argv
from .spec import Stage, StageFailed


class DeepGemm(Stage):
    kind = "deep_gemm"
    cache_dir = "profiles/deep_gemm"
    caches = {"deep_gemm": "profiles/deep_gemm"}
    libraries = ("deep_gemm",)
    # DeepGEMM's M range follows chunked_prefill_size; memory bounds the sweep.
    settings = ("chunked_prefill_size", "kv_cache_dtype", "mem_fraction_static", "context_length",
                "max_prefill_tokens")
    default_mode = "ensure"
    exit_code = 10
    starts_server = True
    server_module = "sglang.compile_deep_gemm"
    doc = "DeepGEMM JIT kernels (sglang.compile_deep_gemm)"

    def server_argv(self) -> list:
        return common_server_argv(self.data, self.data["model"]["path"], ["--timeout", str(int(self.timeout()))])

    def flags_argv(self) -> list:
        # compile_deep_gemm's own --timeout is not a server flag: the parser
        # checks the server flags it shares
        return common_server_argv(self.data, self.data["model"]["path"], [])

    def prime(self, run, out, beat) -> None:
        timeout = self.timeout()
        compile_rel = self.log_rel(run.slug, "compile.log")
        argv = run.command(self)
        env = run.env(self, {"SGLANG_WARMUP_TIMEOUT": str(int(timeout))})
        out.env = run.routing()
        out.artifacts.update(argv=redact_argv(argv), cache_dir=run.artifact(self.cache_dir), compile_log=run.artifact(compile_rel))
        before = tree_stats(run.path(self.cache_dir))
        sink = run.sink(run.path(compile_rel))
        server = run.server(sink)
        beat.set("compile")
        server.start(argv, env)
        rc = None
        deadline = time.monotonic() + timeout + 60
        try:
            while rc is None and time.monotonic() < deadline:
                rc = server.proc.wait(1.0)
        finally:
            gone, how = server.teardown(run.teardown_s)
            sink.close()
            out.artifacts["cleanup"] = run.cleanup_record(gone, how)
        tail = server.scan.tail[-20:]
        if rc is None:
            raise StageFailed("readiness_timeout", f"compile_deep_gemm still running after {timeout:g}s",
                              compile_log_tail=tail)
        if rc != 0:
            err = server.exited_error(rc)
            raise StageFailed(err.error_type, str(err), compile_log_tail=tail)
        if not gone:
            raise StageFailed("cleanup_failed", f"compile_deep_gemm left processes behind ({how})")
        run.check_log(server)
        after = tree_stats(run.path(self.cache_dir))
        out.artifacts["cubins"] = {"count": after.files, "bytes": after.bytes, "files_delta": after.files - before.files,
                                   "disk_delta_bytes": after.bytes - before.bytes}
