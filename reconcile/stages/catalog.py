"""Every stage kind, in the seeds' execution order. Adding a kind is one
module beside this one and one line in BUILTIN."""
from __future__ import annotations

from .custom import Custom
from .deep_gemm import DeepGemm
from .flashinfer import FlashInfer
from .inductor import Inductor
from .moe_tune import MoeTune
from .spec import Stage

BUILTIN: tuple = (
    DeepGemm,
    MoeTune,
    FlashInfer,
    Inductor,
)
CUSTOM = Custom


def stages(data: dict) -> list[Stage]:
    """The stages of a desired state: the built-ins in order, then custom
    stages by name."""
    out = [kind.select(data)(data) for kind in BUILTIN]
    return out + CUSTOM.instances(data)


def find(data: dict, name: str) -> Stage | None:
    return next((s for s in stages(data) if s.name == name), None)


def option_specs() -> dict:
    """`caches:` schema fields, one per kind (state_schema assembles them)."""
    fields = {kind.kind: kind.option_spec() for kind in BUILTIN}
    fields[CUSTOM.kind] = CUSTOM.option_spec()
    return fields


def default_modes() -> dict:
    return {kind.kind: kind.default_mode for kind in BUILTIN}


def cache_dirs() -> tuple:
    """Cache directories of the built-in kinds (under the storage root)."""
    return tuple(dict.fromkeys(kind.cache_dir for kind in BUILTIN))


def caches() -> dict:
    """Cache name (inspect, reset) -> (directory, the kind that primes it),
    in the storage layout's order."""
    from ..state_layout import DIRECTORIES

    out = {}
    for kind in BUILTIN:
        for name, rel in kind.caches.items():
            out[name] = (rel, kind.kind)
    order = {rel: i for i, rel in enumerate(DIRECTORIES)}
    return dict(sorted(out.items(), key=lambda item: order.get(item[1][0], len(order))))


def resource_types() -> dict:
    """Extra resource type -> the kind that plans and applies it."""
    return {rtype: kind for kind in BUILTIN for rtype in kind.resource_types}


def conditional_routing(ready: set, data: dict) -> dict:
    """Env routing allowed by the stages in `ready` (names whose cache is valid)."""
    env = {}
    for stage in stages(data):
        if stage.name in ready:
            env.update(stage.conditional_routing)
    return env
