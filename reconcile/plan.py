"""Build the ordered plan for one host: gather the facts each resource needs,
run its diff, order the changes, and fingerprint the facts they relied on.

Order: checks → directories → files → stale locks/pointer → (container) →
(stages). A change names what it depends on; apply runs it only after those
succeeded.
"""
from __future__ import annotations

import os
import posixpath
from dataclasses import replace
from typing import NamedTuple

from . import __version__
from .diff_storage import (Owner, diff_directory, diff_file, diff_free_disk, diff_lock, diff_marker,
                           diff_pointer, diff_port, diff_storage_owner, resolve_owner, storage_root)
from .facts_host import HostFacts
from .plan_model import Change, Plan, fingerprint
from .state_layout import (DIRECTORIES, LOCKS_DIR, MARKERS_DIR, POINTER, TEMPLATED_FILES, lock_path,
                           marker_path)
from .state_load import Desired
from .state_templates import desired_files

CONTAINER_TELEMETRY = "/telemetry"


class Context(NamedTuple):
    """What every diff of one run shares: the resolved owner and root."""

    owner: Owner
    root: str
    hostname: str

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel)


def resolve_context(desired: Desired, facts: HostFacts) -> Context:
    ident = facts.identity()
    owner = resolve_owner(desired.data["storage"]["owner"], ident)
    root = storage_root(desired.data["storage"]["root"], owner, ident, facts.home_of)
    return Context(owner=owner, root=root, hostname=ident.hostname)


def ancestors(path: str) -> list[str]:
    """Every directory above `path`, from / down."""
    out = []
    while True:
        parent = posixpath.dirname(path)
        if parent == path:
            return out[::-1]
        out.append(parent)
        path = parent


def nearest_existing(facts: HostFacts, path: str):
    probe = path
    while True:
        parent = posixpath.dirname(probe)
        if parent == probe:
            return facts.directory(probe)
        fact = facts.directory(parent)
        if fact.kind != "missing":
            return fact
        probe = parent


def resource_addresses(desired: Desired, facts: HostFacts, ctx: Context) -> list[str]:
    """Every resource of this host, in plan order."""
    addresses = ["check:storage_owner", "check:free_disk"]
    addresses += [f"directory:{rel}" for rel in DIRECTORIES]
    addresses += [f"file:{rel}" for rel in TEMPLATED_FILES]
    for entry in facts.listdir(ctx.path(LOCKS_DIR)):
        if entry.endswith(".lock") and not entry.startswith("."):
            addresses.append(f"lock:{entry[: -len('.lock')]}")
    for entry in facts.listdir(ctx.path(MARKERS_DIR)):
        if entry.endswith(".json") and not entry.startswith("."):
            addresses.append(f"marker:{entry[: -len('.json')]}")
    addresses.append("pointer:container_run_meta.env")
    addresses.append(f"port:{desired.data['server']['port']}")
    return addresses


def diff_resource(address: str, desired: Desired, facts: HostFacts, ctx: Context,
                  own_pid: int | None = None) -> Change | None:
    """The change one resource needs, from the facts as `facts` sees them.

    Used to build the plan and, with fresh facts, by apply to re-check a
    change just before it acts. None: the resource does not exist (or is a
    lock held by `own_pid`, this apply's own).
    """
    kind, _, name = address.partition(":")
    storage = desired.data["storage"]
    if address == "check:storage_owner":
        root_fact = facts.directory(ctx.root)
        if root_fact.kind == "symlink":  # a symlinked root is the user's choice; judge its target
            root_fact = facts.directory(os.path.realpath(ctx.root))
        ancestor = nearest_existing(facts, ctx.root) if root_fact.kind == "missing" else root_fact
        path_facts = [facts.directory(p, follow=True) for p in ancestors(ancestor.path)]
        return diff_storage_owner(ctx.owner, ctx.root, root_fact, ancestor, storage["ownership"], path_facts)
    if address == "check:free_disk":
        return diff_free_disk(facts.free_disk(ctx.root), storage["min_free_gib"])
    if kind == "directory":
        return diff_directory(name, facts.directory(ctx.path(name)), ctx.owner, storage["ownership"])
    if kind == "file":
        want = {f.rel: f for f in desired_files(desired)}[name]
        change = diff_file(want, facts.file(ctx.path(name)), ctx.owner)
        return replace(change, observed=dict(change.observed or {}, render_key=want.render_key))
    if kind == "lock":
        lock = facts.lock_file(name, ctx.path(lock_path(name)))
        if lock.kind == "missing" or (own_pid is not None and lock.owner_pid == own_pid):
            return None
        return diff_lock(lock, ctx.hostname)
    if kind == "marker":
        marker = facts.lock_file(name, ctx.path(marker_path(name)))
        return None if marker.kind == "missing" else diff_marker(marker, ctx.hostname)
    if kind == "pointer":
        return diff_pointer(facts.pointer(ctx.path(POINTER), CONTAINER_TELEMETRY, ctx.path("telemetry")))
    if kind == "port":
        return diff_port(facts.port(int(name)), needed=False)
    raise ValueError(f"unknown resource address {address!r}")


def build_plan(desired: Desired, facts: HostFacts, own_pid: int | None = None) -> Plan:
    """The plan for `desired` on this host. `own_pid`: a lock held by this pid
    (apply's own run lock) is not a resource to act on."""
    ctx = resolve_context(desired, facts)
    changes = []
    for address in resource_addresses(desired, facts, ctx):
        change = diff_resource(address, desired, facts, ctx, own_pid)
        if change is not None:
            changes.append(change)
    parts = [__version__, desired.sources_sha, desired.host,
             [[c.address, c.action, c.observed] for c in changes]]
    warnings = list(desired.warnings)
    for change in changes:
        warnings.extend(change.warnings)
    return Plan(host=desired.host, state_file=desired.state_file, fingerprint=fingerprint(parts),
                changes=changes, warnings=warnings)
