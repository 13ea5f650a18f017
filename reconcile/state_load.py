"""Load the desired state for one host: state file + inventory vars, validated.

Files named on the command line (or their defaults) are looked up relative to
the current directory first and then inside the installed package, so an
installed `sglprep` works from any directory.
"""
from __future__ import annotations

import os
import re
from typing import NamedTuple

from .digest import sha256
from .errors import InputError
from .state_schema import validate
from .state_yaml import Located, load_file

PACKAGE_DIR = os.path.dirname(os.path.realpath(__file__))
DEFAULT_STATE = "states/default.yaml"
DEFAULT_INVENTORY = "inventory.yaml"


def resolve_path(rel: str) -> str | None:
    """`rel` relative to the cwd, else to the installed package or source tree."""
    path = os.path.expanduser(rel)
    if os.path.isabs(path):
        return path if os.path.exists(path) else None
    if os.path.exists(path):
        return path
    candidates = []
    head = path.split(os.sep, 1)[0]
    if head in ("states", "templates"):
        candidates.append(os.path.join(PACKAGE_DIR, "data", path))
    candidates.append(os.path.join(os.path.dirname(PACKAGE_DIR), path))  # source checkout
    for cand in candidates:
        if os.path.exists(cand):
            return cand
    return None


def template_path(name: str) -> str:
    found = resolve_path(f"templates/{name}")
    if found is None:
        raise InputError(f"templates/{name}", None, None, "template not found (cwd or installed package)")
    return found


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


class Desired(NamedTuple):
    """The merged, validated desired state of one host."""

    host: str
    state_file: str  # as the user named it (or the default)
    inventory_file: str | None
    data: dict
    sources_sha: str  # sha256 over the state file and inventory bytes
    warnings: tuple = ()
    state_path: str = ""  # the state file read (absolute)
    inventory_path: str = ""  # the inventory read (absolute; "" when none)
    overrides: tuple = ()  # -e/--set KEY=VALUE of this run, as given

    @property
    def model_slug(self) -> str:
        slug = self.data["model"]["slug"]
        if slug != "auto":
            return slug
        return slug_from_path(self.data["model"]["path"])


def slug_from_path(model_path: str) -> str:
    base = model_path.rstrip("/").rsplit("/", 1)[-1] or "model"
    slug = re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-.")
    return slug or "model"


def parse_overrides(items: list) -> tuple[dict, dict]:
    """`-e KEY=VALUE` items → (nested overrides, origins). KEY is a dotted
    state key, VALUE is read as YAML (`tp=2` is an int, `x=[a,b]` a list)."""
    from .state_yaml import Origin, load_text

    nested: dict = {}
    origins: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise InputError(None, None, "--set", f"expected KEY=VALUE with a dotted state key, got {item!r}")
        value = load_text(text or "null", f"--set {key}").value if text.strip() else ""
        path = tuple(key.split("."))
        target = nested
        for part in path[:-1]:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[path[-1]] = value
        for i in range(1, len(path) + 1):
            origins[path[:i]] = Origin(f"-e {item}", 0)
    return nested, origins


def _inventory(inventory_arg: str | None):
    from .state_inventory import load_inventory

    inv_display = inventory_arg or DEFAULT_INVENTORY
    inv_path = resolve_path(inv_display)
    if inv_path is None and inventory_arg is not None:
        raise InputError(inv_display, None, None, "inventory file not found")
    return load_inventory(str(inv_path) if inv_path else None, inv_display), inv_display, inv_path


def load_hosts(state_arg: str | None, inventory_arg: str | None, pattern: str,
               overrides: list | tuple = ()) -> list:
    """The desired state of every host an Ansible pattern selects (--limit)."""
    inventory, inv_display, inv_path = _inventory(inventory_arg)
    return [load_desired(state_arg, inventory_arg, name, overrides, (inventory, inv_display, inv_path))
            for name in inventory.match(pattern)]


def load_desired(state_arg: str | None, inventory_arg: str | None, limit: str,
                 overrides: list | tuple = (), loaded=None) -> Desired:
    inventory, inv_display, inv_path = loaded or _inventory(inventory_arg)
    host = inventory.host(limit)
    if not host.is_local:
        raise InputError(inventory.file, None, None,
                         f"host '{limit}' is remote; this version reconciles only the local host "
                         f"(use --limit localhost, or run sglprep on {limit} itself)")

    if state_arg is not None:
        state_display = state_arg
        state_path = resolve_path(state_arg)
    elif host.state_file:
        state_display = host.state_file
        base = os.path.dirname(inv_path) if inv_path else os.getcwd()
        candidate = os.path.expanduser(host.state_file)
        state_path = candidate if os.path.isabs(candidate) else os.path.join(base, candidate)
        if not os.path.exists(state_path):
            state_path = resolve_path(host.state_file)
        if state_path is None or not os.path.exists(state_path):
            o = host.state_file_origin
            raise InputError(o.file if o else inventory.file, o.line if o else None, "sglprep_state",
                             f"state file {host.state_file!r} not found")
    else:
        state_display = DEFAULT_STATE
        state_path = resolve_path(DEFAULT_STATE)
    if state_path is None:
        raise InputError(state_display, None, None, "state file not found")

    doc = load_file(str(state_path), state_display)
    if not isinstance(doc.value, dict):
        raise InputError(state_display, 1, None, "the state file must be a mapping of keys")
    if not doc.value:  # a truncated or emptied file must not plan the full default state
        raise InputError(state_display, 1, None, "the state file is empty: write at least `version: 1` and the "
                         "keys to manage (states/default.yaml documents every key)")
    behaviour = _hash_behaviour(doc)
    if behaviour != "replace":  # the state asks for Ansible's hash_behaviour=merge of `sglprep` mappings
        host = inventory.host(limit, behaviour)
    _merge_overrides(doc, host.overrides, host.override_origins)
    if overrides:  # the command line wins over the state file and the inventory
        nested, origins = parse_overrides(list(overrides))
        _merge_overrides(doc, nested, origins)
    data = validate(doc)

    digest = sha256()
    digest.update(read_bytes(state_path))
    if inv_path is not None:
        digest.update(b"\0inventory\0")
        digest.update(read_bytes(inv_path))
    digest.update(f"\0host\0{limit}".encode())
    for item in overrides:
        digest.update(f"\0set\0{item}".encode())
    return Desired(host=limit, state_file=state_display, inventory_file=inv_display if inv_path else None,
                   data=data, sources_sha="sha256:" + digest.hexdigest(),
                   warnings=tuple(inventory.warnings), state_path=os.path.abspath(state_path),
                   inventory_path=os.path.abspath(inv_path) if inv_path else "", overrides=tuple(overrides))


def _hash_behaviour(doc: Located) -> str:
    """How the inventory's `sglprep` mappings combine across levels:
    `inventory.hash_behaviour` in the state, else ANSIBLE_HASH_BEHAVIOUR,
    else Ansible's default, replace (validated with the rest of the state)."""
    inv = doc.value.get("inventory")
    value = inv.get("hash_behaviour") if isinstance(inv, dict) else None
    if value is None:
        value = os.environ.get("ANSIBLE_HASH_BEHAVIOUR", "replace").lower()
    return "merge" if value == "merge" else "replace"


def _merge_overrides(doc: Located, overrides: dict, origins: dict, prefix: tuple = ()) -> None:
    """Deep-merge inventory overrides into the state document, keeping origins."""
    target = doc.value
    for part in prefix:
        target = target[part]
    for key, value in overrides.items():
        path = prefix + (key,)
        current = target.get(key) if isinstance(target, dict) else None
        if isinstance(value, dict) and isinstance(current, str) and path[:1] == ("caches",) and len(path) == 2:
            current = target[key] = {"mode": current}  # a bare mode becomes its mapping form
        if isinstance(value, dict) and isinstance(current, dict):
            _merge_overrides(doc, value, origins, path)
            continue
        target[key] = value
        for p in [p for p in doc.origins if p[: len(path)] == path]:
            doc.origins.pop(p, None)
            doc.raw.pop(p, None)
        origin = origins.get(path)
        if origin is not None:
            doc.origins[path] = origin
        _record_origins(doc, value, path, origins)


def _record_origins(doc: Located, value, path: tuple, origins: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            child = path + (k,)
            if child in origins:
                doc.origins[child] = origins[child]
            _record_origins(doc, v, child, origins)

