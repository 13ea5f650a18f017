"""Building blocks of the desired-state schema, with no dependencies: the
`Spec` type, the cache modes, the declared server settings, and the option
set every cache stage shares. Stage kinds (reconcile/stages/) declare their
own options with these; state_schema assembles the whole schema.
"""
from __future__ import annotations

from typing import Any, Callable

MODES = ("ensure", "rebuild", "skip")
KV_CACHE_DTYPES = ("auto", "fp8_e5m2", "fp8_e4m3", "mxfp8", "bf16", "bfloat16", "nvfp4", "fp4_mx_block16")


class Spec:
    """One key's type, default and constraints."""

    __slots__ = ("kind", "default", "choices", "minimum", "maximum", "exclusive_minimum", "fields", "item",
                 "check", "open_keys", "doc", "required", "key_check")

    def __init__(self, kind: str, default: Any = None, choices: tuple = (), minimum: float | None = None,
                 maximum: float | None = None, exclusive_minimum: bool = False, fields: dict | None = None,
                 item: "Spec | None" = None, check: Callable[[Any], str | None] | None = None,
                 open_keys: bool = False, doc: str = "", required: bool = False,
                 key_check: Callable[[str], str | None] | None = None):
        self.kind = kind  # str, int, number, bool, enum, map, dict, list, mode_or_map, setting, any
        self.default = default
        self.choices = choices
        self.minimum, self.maximum, self.exclusive_minimum = minimum, maximum, exclusive_minimum
        self.fields = fields or {}  # for kind=map
        self.item = item  # for list / dict values
        self.check = check  # extra check: message or None
        self.open_keys = open_keys  # map: unknown keys allowed (validated by `item`)
        self.doc = doc
        self.required = required  # in a map: the key must be given
        self.key_check = key_check  # dict: each key's check (message or None)


def S(**kw) -> Spec:  # noqa: N802 - short constructor keeps the schema table readable
    return Spec(**kw)


def stage_options(**extra: Spec) -> Spec:
    fields = {
        "mode": S(kind="enum", choices=MODES, default="ensure", doc="ensure | rebuild | skip"),
        "verify": S(kind="bool", default=False, doc="prove the cache warm after priming"),
        "timeout_s": S(kind="number", minimum=0, exclusive_minimum=True, default=None,
                       doc="stage timeout; default timeouts.stage_s"),
        "env": S(kind="dict", item=S(kind="str"), default={}, doc="extra environment for this stage's processes"),
    }
    fields.update(extra)
    return S(kind="mode_or_map", fields=fields)


SETTINGS_FIELDS: dict[str, Spec] = {
    "mem_fraction_static": S(kind="number", minimum=0, maximum=1, exclusive_minimum=True, default=0.94),
    "kv_cache_dtype": S(kind="enum", choices=KV_CACHE_DTYPES, default="fp8_e4m3"),
    "chunked_prefill_size": S(kind="int", default=4096,
                              check=lambda v: None if v == -1 or v > 0 else "must be -1 (off) or > 0"),
    "max_mamba_cache_size": S(kind="int", minimum=1, default=1),
    "context_length": S(kind="int", minimum=1, default=32768),
    "max_prefill_tokens": S(kind="int", minimum=1, default=32768),
    "max_total_tokens": S(kind="int", minimum=1, default=None),
    "cuda_graph": S(kind="bool", default=True),
}
