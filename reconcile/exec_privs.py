"""Run writes as the storage owner.

sglprep never writes into the storage root as root. Run as root, every write
happens inside `as_owner(uid, gid)`: supplementary groups, effective gid and
effective uid are switched to the owner's for the duration and restored
afterwards, so files are created by the owner with the owner's permission
checks (a root-owned directory stays unwritable). Not root, the process
already is the owner (the storage_owner check guarantees it).
"""
from __future__ import annotations

import os
from contextlib import contextmanager


@contextmanager
def as_owner(uid: int, gid: int):
    if os.geteuid() != 0 or uid == 0:
        yield
        return
    saved_groups = os.getgroups()
    saved_gid = os.getegid()
    os.setgroups([gid])
    os.setegid(gid)
    try:
        os.seteuid(uid)
        try:
            yield
        finally:
            os.seteuid(0)
    finally:
        os.setegid(saved_gid)
        os.setgroups(saved_groups)
