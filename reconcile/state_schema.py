"""The desired-state schema: keys, types, defaults, and validation.

Each key is declared once here, with its default. `validate()` walks a merged
document and raises `InputError` naming file, line and key for the first
problem; it never returns a half-valid state. `states/default.yaml` documents
every key declared here (a test keeps the two in step).
"""
from __future__ import annotations

import re
from typing import Any

from .errors import InputError
from .stages.catalog import default_modes, option_specs
from .state_spec import MODES, SETTINGS_FIELDS, S, Spec
from .state_yaml import KeyPath, Located, dotted

SLUG_RE = re.compile(r"^[a-z0-9._-]+$")
SETTING_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
OWNER_RE = re.compile(r"^(\d+):(\d+)$")
# SGLang parses these with human_readable_int: "8k" means 8000, not 8192.
HUMAN_READABLE_INT_SETTINGS = ("context_length", "max_prefill_tokens", "max_total_tokens")


class Invalid(Exception):
    """Raised by a type check; `validate` adds file, line and key."""


def _show(value: Any, raw: str | None) -> str:
    """The value as the user wrote it (`'on'`, not `True`)."""
    if value is None:
        return "null"
    if raw is not None:
        return repr(raw)
    return repr(value)


MAX_ID = 4294967294  # uid_t/gid_t, less (uid_t)-1 which means "no change"


def _owner_check(value: str) -> str | None:
    if value == "auto":
        return None
    m = OWNER_RE.match(value)
    if not m:
        return f"must be 'auto' or 'UID:GID' (numbers), got {value!r}"
    uid, gid = int(m.group(1)), int(m.group(2))
    if uid > MAX_ID or gid > MAX_ID:
        return f"uid and gid must be at most {MAX_ID}, got {value!r}"
    if uid == 0:
        return "must not be root (0): sglprep never writes the storage as root → name the user who owns it"
    return None


def _slug_check(value: str) -> str | None:
    if value == "auto":
        return None
    if not SLUG_RE.match(value) or value.startswith(".") or len(value) > 128:
        return f"must be 'auto' or up to 128 of [a-z0-9._-], not starting with '.', got {value!r}"
    return None


def _root_check(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    if len(value) > 4000 or any(len(part) > 255 for part in value.split("/")):
        return "is too long for a path (4000 characters, 255 per component)"
    return None


def _url_check(value: str) -> str | None:
    if value.startswith(("http://", "https://")) and len(value) > 8:
        return None
    return f"must be an http:// or https:// URL, got {value!r}"


def _gpus_check(value: Any) -> str | None:
    if value in ("all", "none"):
        return None
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                 for v in value):
        return None
    return f"must be 'all', 'none' or a list of device ids, got {value!r}"


SCHEMA = S(kind="map", fields={
    "version": S(kind="int", default=1, check=lambda v: None if v == 1 else f"must be 1, got {v}"),
    "storage": S(kind="map", fields={
        "root": S(kind="str", default="~/sglang-observability", check=_root_check),
        "owner": S(kind="str", default="auto", check=_owner_check),
        "ownership": S(kind="enum", choices=("fail", "ignore"), default="fail"),
        "min_free_gib": S(kind="number", minimum=0, default=1),
    }),
    "runtime": S(kind="map", fields={
        "kind": S(kind="enum", choices=("docker", "local"), default="docker"),
        "python": S(kind="str", default="python3"),
        "env": S(kind="dict", item=S(kind="str"), default={}),
        "container": S(kind="map", fields={
            "name": S(kind="str", default="sglang-dev",
                      check=lambda v: None if re.match(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$", v)
                      else f"is not a valid container name: {v!r}"),
            "image": S(kind="str", default="lmsysorg/sglang:dev"),
            "entrypoint": S(kind="enum", choices=("sglprep", "image"), default="sglprep"),
            "network": S(kind="str", default="host"),
            "gpus": S(kind="any", default="all", check=_gpus_check),
            "cap_add": S(kind="list", item=S(kind="str"), default=["SYS_ADMIN"]),
            "state": S(kind="enum", choices=("running", "absent"), default="running"),
            "env": S(kind="dict", item=S(kind="str"), default={}),
            "mounts": S(kind="list", default=[], item=S(kind="map", fields={
                "source": S(kind="str", required=True, check=lambda v: None if v.startswith("/")
                            else f"must be an absolute host path, got {v!r}"),
                "target": S(kind="str", required=True, check=lambda v: None if v.startswith("/")
                            else f"must be an absolute container path, got {v!r}"),
                "read_only": S(kind="bool", default=True),
            })),
        }),
    }),
    "model": S(kind="map", fields={
        "path": S(kind="str", default="/models/Qwen/Qwen3-Next-80B-A3B-Thinking-FP8"),
        "slug": S(kind="str", default="auto", check=_slug_check),
    }),
    "tp": S(kind="int", minimum=1, default=1),
    "server": S(kind="map", fields={
        "host": S(kind="str", default="127.0.0.1"),
        "port": S(kind="int", minimum=1, maximum=65535, default=30000),
        "settings": S(kind="map", fields=SETTINGS_FIELDS, open_keys=True, item=S(kind="setting")),
        "extra_args": S(kind="list", item=S(kind="str"), default=[]),
    }),
    # one entry per stage kind, declared by the kind itself (reconcile/stages/)
    "caches": S(kind="map", fields=option_specs()),
    "telemetry": S(kind="map", fields={
        "prometheus_url": S(kind="str", default="http://127.0.0.1:9090", check=_url_check),
        "probe": S(kind="bool", default=True),
        "scrape_interval_s": S(kind="int", minimum=1, default=5),
        "prometheus": S(kind="map", fields={
            "state": S(kind="enum", choices=("unmanaged", "running", "absent"), default="unmanaged",
                       doc="runtime.kind local: sglprep runs Prometheus as the storage owner (running), stops "
                           "it (absent), or leaves it to you (unmanaged)"),
            "binary": S(kind="str", default="prometheus", doc="the Prometheus server binary (a name on PATH, or a path)"),
        }),
    }),
    "timeouts": S(kind="map", fields={
        "lock_s": S(kind="number", minimum=0, default=600),
        "readiness_s": S(kind="number", minimum=0, exclusive_minimum=True, default=3600),
        "stage_s": S(kind="number", minimum=0, exclusive_minimum=True, default=3600),
        "teardown_s": S(kind="number", minimum=0, exclusive_minimum=True, default=10),
        "pointer_s": S(kind="number", minimum=0, exclusive_minimum=True, default=120),
    }),
    "heartbeat_s": S(kind="number", minimum=0, exclusive_minimum=True, default=60),
    "bundles": S(kind="map", fields={
        "registry": S(kind="str", default=None, doc="host:port of an OCI registry; unset: no bundles"),
        "repository": S(kind="str", default="sglprep-caches",
                        check=lambda v: None if re.match(r"^[a-z0-9]+(?:[._/-][a-z0-9]+)*$", v)
                        else f"is not an OCI repository name: {v!r}"),
        "pull": S(kind="bool", default=True, doc="pull a bundle instead of compiling when the registry has one"),
        "push": S(kind="bool", default=True, doc="push what this host compiled and verified"),
        "insecure": S(kind="bool", default=False, doc="plain HTTP (a registry on loopback)"),
        "timeout_s": S(kind="number", minimum=0, exclusive_minimum=True, default=10),
    }),
    "inventory": S(kind="map", fields={
        "hash_behaviour": S(kind="enum", choices=("replace", "merge"), default="replace",
                            doc="how `sglprep:` mappings from several inventory levels combine (Ansible's)"),
    }),
})

# Cache defaults as the state file documents them (a bare mode per stage).
CACHE_DEFAULT_MODES = default_modes()


def defaults(spec: Spec = SCHEMA) -> Any:
    """The fully defaulted document for `spec`."""
    if spec.kind == "map":
        return {k: defaults(v) for k, v in spec.fields.items()}
    if spec.kind == "mode_or_map":
        return {k: defaults(v) for k, v in spec.fields.items()}
    if isinstance(spec.default, (dict, list)):
        return type(spec.default)(spec.default)
    return spec.default


def default_document() -> dict:
    doc = defaults()
    for stage, mode in CACHE_DEFAULT_MODES.items():
        doc["caches"][stage]["mode"] = mode
    return doc


def all_key_paths(spec: Spec = SCHEMA, prefix: tuple = ()) -> list[tuple]:
    """Every declared key path (for documentation checks)."""
    out = []
    for name, sub in spec.fields.items():
        path = prefix + (name,)
        out.append(path)
        if sub.kind in ("map", "mode_or_map"):
            out.extend(all_key_paths(sub, path))
    return out


# ---------------------------------------------------------------- validation

def validate(doc: Located) -> dict:
    """Validate and normalise `doc.value` against the schema; return the document.

    Cache entries given as a bare mode are expanded to `{mode: …, …defaults}`.
    """
    return _check(SCHEMA, doc.value, (), doc)


def _fail(doc: Located, path: KeyPath, message: str) -> InputError:
    origin = doc.origin(path)
    return InputError(origin.file, origin.line, dotted(path) or None, message)


def _check(spec: Spec, value: Any, path: KeyPath, doc: Located) -> Any:
    raw = doc.raw.get(path)
    try:
        if spec.kind == "map":
            return _check_map(spec, value, path, doc)
        if spec.kind == "mode_or_map":
            if isinstance(value, dict):
                return _check_map(spec, value, path, doc)
            mode = _scalar(S(kind="enum", choices=MODES), value, raw)
            out = defaults(spec)
            out["mode"] = mode
            return out
        if spec.kind == "dict":
            if value is None:
                return {}
            if not isinstance(value, dict):
                raise Invalid(f"must be a mapping, got {_show(value, raw)}")
            if spec.key_check is not None:
                for name in value:
                    problem = spec.key_check(str(name))
                    if problem:
                        raise _fail(doc, path + (name,), problem)
            return {k: _check(spec.item, v, path + (k,), doc) for k, v in value.items()}
        if spec.kind == "list":
            if not isinstance(value, list):
                raise Invalid(f"must be a list, got {_show(value, raw)}")
            out = [_check(spec.item, v, path + (i,), doc) for i, v in enumerate(value)]
            problem = spec.check(out) if spec.check is not None else None
            if problem:
                raise Invalid(problem)
            return out
        if spec.kind == "setting":
            return _check_setting(value, raw, path)
        out = _scalar(spec, value, raw)
        if spec.check is not None and out is not None:
            problem = spec.check(out)
            if problem:
                raise Invalid(problem)
        return out
    except Invalid as exc:
        raise _fail(doc, path, str(exc)) from None


def _check_map(spec: Spec, value: Any, path: KeyPath, doc: Located) -> dict:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise Invalid(f"must be a mapping, got {_show(value, doc.raw.get(path))}")
    out = {}
    for key, sub in value.items():
        if key in spec.fields:
            out[key] = _check(spec.fields[key], sub, path + (key,), doc)
        elif spec.open_keys:
            if not SETTING_NAME_RE.match(key):
                raise _fail(doc, path + (key,), "setting names use lower_snake_case (they become --kebab-case flags)")
            out[key] = _check(spec.item, sub, path + (key,), doc)
        else:
            raise _fail(doc, path + (key,), _unknown_key_message(key, spec))
    for key, sub in spec.fields.items():
        if key not in out:
            if sub.required:
                raise _fail(doc, path, f"missing required key '{key}'")
            out[key] = defaults(sub)
    return out


def _unknown_key_message(key: str, spec: Spec) -> str:
    import difflib

    known = sorted(spec.fields)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key{hint}; expected one of {', '.join(known)}"


def _scalar(spec: Spec, value: Any, raw: str | None) -> Any:
    kind = spec.kind
    if value is None and spec.default is None and kind not in ("enum", "bool"):
        return None
    if kind == "any":
        return value
    if kind == "str":
        if isinstance(value, str):
            return value
        raise Invalid(f"must be a string, got {_show(value, raw)}")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise Invalid(f"must be true or false, got {_show(value, raw)}")
    if kind == "enum":
        if isinstance(value, str) and value in spec.choices:
            return value
        return_hint = ""
        if isinstance(value, bool):
            return_hint = " (YAML reads on/off/yes/no as booleans; quote the word or use a mode name)"
        raise Invalid(f"must be one of {', '.join(spec.choices)}, got {_show(value, raw)}{return_hint}")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and re.match(r"^\s*\d+(\.\d+)?\s*[kKmMgG]i?\s*$", value):
                raise Invalid(f"must be a plain integer, got {value!r} (SGLang reads SI suffixes as powers "
                              f"of 1000: '8k' is 8000, not 8192; write the number)")
            raise Invalid(f"must be an integer, got {_show(value, raw)}")
        if abs(value) > 1 << 53:
            raise Invalid(f"must be at most {1 << 53}, got {_show(value, raw)}")
        _bounds(spec, value)
        return value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(f"must be a number, got {_show(value, raw)}")
        import math

        if isinstance(value, float) and not math.isfinite(value):
            raise Invalid(f"must be a finite number, got {_show(value, raw)}")
        if abs(value) > 1e15:
            raise Invalid(f"must be at most 1e15, got {_show(value, raw)}")
        _bounds(spec, value)
        return value
    raise AssertionError(f"unknown spec kind {kind}")


def _bounds(spec: Spec, value: float) -> None:
    if spec.minimum is not None:
        if spec.exclusive_minimum and value <= spec.minimum:
            raise Invalid(f"must be > {spec.minimum:g}, got {value}")
        if not spec.exclusive_minimum and value < spec.minimum:
            raise Invalid(f"must be >= {spec.minimum:g}, got {value}")
    if spec.maximum is not None and value > spec.maximum:
        raise Invalid(f"must be <= {spec.maximum:g}, got {value}")


def _check_setting(value: Any, raw: str | None, path: KeyPath) -> Any:
    """A server setting not declared above: any scalar or list of scalars."""
    name = path[-1]
    if name in HUMAN_READABLE_INT_SETTINGS:
        return _scalar(S(kind="int", minimum=1), value, raw)
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list) and all(isinstance(v, (int, float, str)) and not isinstance(v, bool)
                                       for v in value):
        return value
    if value is None:
        return None
    raise Invalid(f"must be a scalar or a list of scalars, got {_show(value, raw)}")
