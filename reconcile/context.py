"""Who acts and where: the storage owner, the storage root, and the `Context`
every diff and executor of one run shares.

Pure: `resolve_context` reads only the identity facts it is handed.
"""
from __future__ import annotations

import posixpath
from typing import NamedTuple


class Owner(NamedTuple):
    """Who owns the storage: resolved from storage.owner and the invoker."""

    uid: int
    gid: int
    source: str  # "invoking user", "SUDO_UID/SUDO_GID", "storage.owner"
    problem: str = ""  # non-empty: cannot act as this owner

    @property
    def spec(self) -> str:
        return f"{self.uid}:{self.gid}"


def resolve_owner(owner_setting: str, ident) -> Owner:
    if owner_setting == "auto":
        if not ident.is_root:
            return Owner(ident.uid, ident.gid, "invoking user")
        if ident.sudo_uid is not None:
            gid = ident.sudo_gid if ident.sudo_gid is not None else ident.sudo_uid
            return Owner(ident.sudo_uid, gid, "SUDO_UID/SUDO_GID")
        return Owner(0, 0, "root", problem=(
            "running as root with storage.owner: auto and no SUDO_UID; sglprep never writes the storage "
            "as root → set storage.owner: UID:GID, or run it through sudo from the owning user"))
    uid_text, _, gid_text = owner_setting.partition(":")
    uid, gid = int(uid_text), int(gid_text)
    if ident.is_root or (uid == ident.uid and gid == ident.gid):
        return Owner(uid, gid, "storage.owner")
    return Owner(uid, gid, "storage.owner", problem=(
        f"storage.owner is {uid}:{gid} but sglprep runs as {ident.uid}:{ident.gid} → run it as that user, "
        f"or as root (it then writes as {uid}:{gid})"))


def storage_root(root_setting: str, owner: Owner, ident, home_of) -> str:
    """Absolute storage root; `~` is the owner's home (the sudo caller's, under
    sudo); `{user}` is the invoking user's name (the sudo caller's)."""
    if "{user}" in root_setting:
        root_setting = root_setting.replace("{user}", getattr(ident, "user", "") or str(ident.uid))
    if root_setting == "~" or root_setting.startswith("~/"):
        home = ident.home
        if owner.uid != ident.uid or ident.is_root:
            home = home_of(owner.uid) or home
        root_setting = home.rstrip("/") + root_setting[1:]
    return posixpath.normpath(posixpath.abspath(root_setting))


class Context(NamedTuple):
    """What every diff of one run shares: the resolved owner and root, and how
    the runtime sees the storage (the same paths locally; the mounts in a
    container)."""

    owner: Owner
    root: str
    hostname: str
    runtime_kind: str = "local"

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def runtime_path(self, rel: str) -> str:
        if self.runtime_kind == "local":
            return self.path(rel)
        return "/" + rel  # the container mounts telemetry/, profiles/, models/ at /


def resolve_context(desired, facts) -> Context:
    ident = facts.identity()
    owner = resolve_owner(desired.data["storage"]["owner"], ident)
    root = storage_root(desired.data["storage"]["root"], owner, ident, facts.home_of)
    return Context(owner=owner, root=root, hostname=ident.hostname, runtime_kind=desired.data["runtime"]["kind"])
