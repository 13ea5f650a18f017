"""TorchInductor: a warm-up server with `--enable-torch-compile`; torch.compile
runs during decode CUDA-graph capture and fills TORCHINDUCTOR_CACHE_DIR (and
Triton's cache beside it)."""
from __future__ import annotations

from ..facts_host import tree_stats
from .spec import Stage


class Inductor(Stage):
    kind = "inductor"
    cache_dir = "profiles/torchinductor"
    caches = {"triton": "profiles/triton", "torchinductor": "profiles/torchinductor"}
    # the captured batch sizes follow the memory fraction and chunked prefill size
    settings = ("cuda_graph", "mem_fraction_static", "chunked_prefill_size", "kv_cache_dtype", "context_length")
    default_mode = "skip"
    exit_code = 13
    starts_server = True
    doc = "torch.compile (Inductor + Triton) during CUDA-graph capture"

    def launch_extra(self) -> list:
        return ["--enable-torch-compile"]

    def launch_flags(self) -> list:
        return super().launch_flags() + self.launch_extra()

    def option_problem(self, runtime) -> str:
        problem = super().option_problem(runtime)
        if problem:
            return problem
        if self.data["server"]["settings"].get("cuda_graph") is False:
            return ("server.settings.cuda_graph is false: torch.compile runs only during decode "
                    "CUDA-graph capture, so the inductor stage would compile nothing → enable cuda_graph")
        return ""

    def prime(self, run, out, beat) -> None:
        before = tree_stats(run.path(self.cache_dir))
        out.artifacts["cache_dir"] = run.artifact(self.cache_dir)
        run.warmup(self, out, beat, log_files=(run.path(self.log_rel(run.slug, "warmup.log")),))
        after = tree_stats(run.path(self.cache_dir))
        out.artifacts["files"] = {"count": after.files, "bytes": after.bytes, "files_delta": after.files - before.files}
