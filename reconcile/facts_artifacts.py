"""The warmth proof of a primed cache: what a stage produced, as a manifest
(relative path, size, mtime, sha256, whether it is a whole ELF object),
written beside its signature, and checked later without a GPU.

A signature says what a cache was built for; the manifest says the files are
still there and whole. `check(..., full=False)` is plan's fast path: a stat
per file, re-hashing only a file whose size matches but whose mtime moved.
`full=True` (`plan --verify`, apply) re-hashes everything and re-reads every
ELF header. Read-only: files are opened with O_NOFOLLOW, never through a
link, and nothing is written here.
"""
from __future__ import annotations

import os
import stat as stat_mod
from typing import NamedTuple

HASH_ALL_BELOW = 64 << 20  # larger files: sha256 of the first and last 4 MiB plus the size
SAMPLE = 4 << 20
MANIFEST_LIMIT = 64 << 20  # a manifest larger than this is not ours


class ArtifactFact(NamedTuple):
    path: str  # the manifest
    kind: str  # missing | ok | unparseable
    files: int = 0
    problems: tuple = ()  # "profiles/x.so is 0 bytes, was 1,234", one per damaged file
    damaged: tuple = ()  # their paths, relative to the storage root
    error: str = ""


def _open_nofollow(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))


def digest(path: str, size: int) -> str:
    """sha256 of the file (sampled above HASH_ALL_BELOW: "sha256s:")."""
    import hashlib

    fd = _open_nofollow(path)
    try:
        h = hashlib.sha256()
        if size <= HASH_ALL_BELOW:
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                h.update(chunk)
            return "sha256:" + h.hexdigest()
        h.update(os.pread(fd, SAMPLE, 0))
        h.update(os.pread(fd, SAMPLE, max(0, size - SAMPLE)))
        h.update(str(size).encode())
        return "sha256s:" + h.hexdigest()
    finally:
        os.close(fd)


def elf_whole(path: str, size: int) -> bool | None:
    """True: an ELF object whose section header table fits in the file;
    False: ELF magic but cut short; None: not ELF."""
    try:
        fd = _open_nofollow(path)
    except OSError:
        return None
    try:
        head = os.pread(fd, 64, 0)
    finally:
        os.close(fd)
    if head[:4] != b"\x7fELF":
        return None
    if len(head) < 52:
        return False
    little = head[5] == 1
    order = "little" if little else "big"
    if head[4] == 2:  # 64-bit
        if len(head) < 64:
            return False
        shoff = int.from_bytes(head[0x28:0x30], order)
        shentsize, shnum = int.from_bytes(head[0x3A:0x3C], order), int.from_bytes(head[0x3C:0x3E], order)
    else:
        shoff = int.from_bytes(head[0x20:0x24], order)
        shentsize, shnum = int.from_bytes(head[0x2E:0x30], order), int.from_bytes(head[0x30:0x32], order)
    return shoff + shentsize * shnum <= size


def walk_entries(top: str):
    """Every entry under `top` that is not a directory (os.DirEntry), one
    os.scandir walk: no symlink followed, unreadable directories skipped."""
    stack = [top]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                        continue
                except OSError:
                    continue
                yield entry


def collect(root: str, dirs: tuple, keep, known: dict | None = None) -> list:
    """Entries for every regular file under `dirs` (relative to `root`) that
    `keep(rel)` accepts; links and special files are not followed or listed.
    `known`: path -> an entry collected just before; one whose size and
    mtime_ns still match is reused instead of hashing the file again."""
    known = known or {}
    out = []
    for top in dirs:
        for entry in walk_entries(os.path.join(root, top)):
            if not entry.is_file(follow_symlinks=False):
                continue
            rel = os.path.relpath(entry.path, root)
            if not keep(rel):
                continue
            st = entry.stat(follow_symlinks=False)
            seen = known.get(rel)
            if seen and seen["size"] == st.st_size and seen["mtime_ns"] == st.st_mtime_ns:
                out.append(seen)
                continue
            item = {"path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                    "sha256": digest(entry.path, st.st_size)}
            if elf_whole(entry.path, st.st_size):
                item["elf"] = True
            out.append(item)
    return sorted(out, key=lambda item: item["path"])


def _size(n: int) -> str:
    return f"{n:,} bytes"


def check_entry(root: str, item: dict, full: bool) -> str:
    """"" when the file is as the manifest says, else why not."""
    rel = item["path"]
    path = os.path.join(root, rel)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"{rel} is missing"
    except OSError as exc:
        return f"{rel}: {exc.strerror}"
    if not stat_mod.S_ISREG(st.st_mode):
        return f"{rel} is no longer a regular file"
    if st.st_size != item["size"]:
        return f"{rel} is {_size(st.st_size)}, was {_size(item['size'])}"
    if item.get("elf") and (full or st.st_mtime_ns != item["mtime_ns"]) and not elf_whole(path, st.st_size):
        return f"{rel} is not a whole ELF object any more"
    if full or st.st_mtime_ns != item["mtime_ns"]:
        try:
            if digest(path, st.st_size) != item["sha256"]:
                return f"{rel} changed since it was primed (sha256 differs)"
        except OSError as exc:
            return f"{rel}: {exc.strerror}"
    return ""


def check(manifest_path: str, root: str, full: bool = False) -> ArtifactFact:
    """Read the manifest (no links, bounded) and check every file it lists."""
    import json

    try:
        fd = _open_nofollow(manifest_path)
    except FileNotFoundError:
        return ArtifactFact(manifest_path, "missing")
    except OSError as exc:
        return ArtifactFact(manifest_path, "unparseable", error=exc.strerror or str(exc))
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode) or st.st_size > MANIFEST_LIMIT:
            return ArtifactFact(manifest_path, "unparseable", error="not a regular file of sane size")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = json.loads(fh.read(MANIFEST_LIMIT + 1))
    except (OSError, ValueError, RecursionError) as exc:
        return ArtifactFact(manifest_path, "unparseable", error=str(exc)[:200])
    finally:
        os.close(fd)
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, dict) and isinstance(f.get("path"), str)
                                              and isinstance(f.get("size"), int) for f in files):
        return ArtifactFact(manifest_path, "unparseable", error="no 'files' list")
    problems, damaged = [], []
    for item in files:
        if item["path"].startswith("/") or ".." in item["path"].split("/"):
            return ArtifactFact(manifest_path, "unparseable", error=f"path outside the root: {item['path'][:80]}")
        problem = check_entry(root, item, full)
        if problem:
            problems.append(problem)
            damaged.append(item["path"])
    return ArtifactFact(manifest_path, "ok", files=len(files), problems=tuple(problems), damaged=tuple(damaged))
