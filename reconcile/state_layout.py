"""The storage layout the seeds define, as pure data.

Everything sglprep creates lives under `storage.root`. Paths here are relative
to that root; they are also the names in resource addresses
(`directory:profiles/flashinfer`).
"""
from __future__ import annotations

# Parents come before children; the planner relies on this order only for
# display, dependencies are derived from the paths themselves.
DIRECTORIES: tuple[str, ...] = (
    "telemetry",
    "telemetry/logs",
    "telemetry/prometheus",
    "telemetry/jaeger",
    "telemetry/container_runs",
    "telemetry/sglprep",
    "profiles",
    "profiles/triton",
    "profiles/torchinductor",
    "profiles/flashinfer",
    "profiles/deep_gemm",
    "profiles/moe_configs",
    "profiles/.locks",
    "profiles/.in_progress",
    "models",
    "huggingface",
)

# Directories sglprep creates but never writes into: the model store (often
# NFS or a shared, root-owned, read-only tree). With `ownership: ignore`,
# another owner or no write permission there is fine.
READ_ONLY_DIRS: tuple[str, ...] = ("models",)

LOCKS_DIR = "profiles/.locks"
MARKERS_DIR = "profiles/.in_progress"
POINTER = "telemetry/container_run_meta.env"
PROMETHEUS_CONFIG = "telemetry/prometheus/prometheus.yml"
LOGS_DIR = "telemetry/logs"
RUNS_DIR = "telemetry/container_runs"

INIT_SCRIPT = "telemetry/sglprep/init-run.sh"
LAST_APPLY = "telemetry/sglprep/last-apply.json"

def parent_dir(rel: str) -> str | None:
    """The managed parent directory of `rel`, or None for a top-level one."""
    head, sep, _ = rel.rpartition("/")
    return head if sep else None


def lock_path(name: str) -> str:
    return f"{LOCKS_DIR}/{name}.lock"


def marker_path(stage: str) -> str:
    return f"{MARKERS_DIR}/{stage}.json"
