"""The artifact manifest: what a stage produced, and the checks that prove
it whole later (facts_artifacts)."""
from __future__ import annotations

import json
import os
import struct

from reconcile import facts_artifacts as fa


def elf64(size: int, shoff: int, shnum: int = 4, shentsize: int = 64) -> bytes:
    head = bytearray(64)
    head[:4] = b"\x7fELF"
    head[4], head[5] = 2, 1  # 64-bit, little endian
    head[0x28:0x30] = struct.pack("<Q", shoff)
    head[0x3A:0x3C] = struct.pack("<H", shentsize)
    head[0x3C:0x3E] = struct.pack("<H", shnum)
    return bytes(head) + b"\0" * (size - 64)


def make(tmp_path):
    root = tmp_path / "root"
    mods = root / "profiles/flashinfer/ops/m1"
    mods.mkdir(parents=True)
    (mods / "m1.so").write_bytes(elf64(4096, 4096 - 256))
    (mods / "build.ninja").write_text("rule cc\n")
    (root / "profiles/flashinfer/ops/run.log").write_text("log\n")
    return root


def write_manifest(root, keep=lambda rel: not rel.endswith(".log")):
    files = fa.collect(str(root), ("profiles/flashinfer",), keep)
    path = root / "profiles/flashinfer/manifest.json"
    path.write_text(json.dumps({"files": files}))
    return str(path), files


def test_collect_lists_regular_files_with_hashes_and_elf_flags(tmp_path):
    root = make(tmp_path)
    os.symlink("/etc/passwd", root / "profiles/flashinfer/ops/link.so")
    os.mkfifo(root / "profiles/flashinfer/ops/fifo")
    _, files = write_manifest(root)
    assert [f["path"] for f in files] == ["profiles/flashinfer/ops/m1/build.ninja", "profiles/flashinfer/ops/m1/m1.so"]
    so = files[1]
    assert so["elf"] is True and so["size"] == 4096 and so["sha256"].startswith("sha256:")
    assert "elf" not in files[0]


def test_whole_cache_checks_clean_fast_and_full(tmp_path):
    root = make(tmp_path)
    manifest, _ = write_manifest(root)
    for full in (False, True):
        fact = fa.check(manifest, str(root), full)
        assert (fact.kind, fact.files, fact.problems) == ("ok", 2, ())


def test_truncated_missing_and_replaced_files_are_named(tmp_path):
    root = make(tmp_path)
    manifest, _ = write_manifest(root)
    so = root / "profiles/flashinfer/ops/m1/m1.so"
    so.write_bytes(b"")
    (root / "profiles/flashinfer/ops/m1/build.ninja").unlink()
    fact = fa.check(manifest, str(root))
    assert fact.problems == ("profiles/flashinfer/ops/m1/build.ninja is missing",
                             "profiles/flashinfer/ops/m1/m1.so is 0 bytes, was 4,096 bytes")
    assert fact.damaged == ("profiles/flashinfer/ops/m1/build.ninja", "profiles/flashinfer/ops/m1/m1.so")
    so.unlink()
    os.symlink("/etc/passwd", so)
    assert fa.check(manifest, str(root)).problems[1] == "profiles/flashinfer/ops/m1/m1.so is no longer a regular file"


def test_same_size_change_needs_a_hash_and_a_cut_elf_is_caught(tmp_path):
    root = make(tmp_path)
    manifest, _ = write_manifest(root)
    so = root / "profiles/flashinfer/ops/m1/m1.so"
    st = so.stat()
    data = bytearray(so.read_bytes())
    data[100] ^= 1
    so.write_bytes(bytes(data))
    os.utime(so, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fa.check(manifest, str(root)).problems == ()
    assert fa.check(manifest, str(root), full=True).problems == (
        "profiles/flashinfer/ops/m1/m1.so changed since it was primed (sha256 differs)",)
    so.write_bytes(elf64(4096, 8192))  # section headers past the end: a copy cut short
    assert fa.elf_whole(str(so), 4096) is False
    assert "not a whole ELF object" in fa.check(manifest, str(root)).problems[0]


def test_large_files_are_sampled(tmp_path, monkeypatch):
    monkeypatch.setattr(fa, "HASH_ALL_BELOW", 1000)
    monkeypatch.setattr(fa, "SAMPLE", 100)
    path = tmp_path / "big"
    path.write_bytes(os.urandom(5000))
    assert fa.digest(str(path), 5000).startswith("sha256s:")


def test_bad_manifests_are_unparseable_not_crashes(tmp_path):
    root = make(tmp_path)
    path = root / "m.json"
    for text in ("", "[1]", '{"files": [{"path": 1}]}', '{"files": [{"path": "../../etc/passwd", "size": 1}]}',
                 "[" * 100000):
        path.write_text(text)
        assert fa.check(str(path), str(root)).kind == "unparseable", text[:40]
    assert fa.check(str(root / "none.json"), str(root)).kind == "missing"
    os.mkfifo(root / "fifo.json")  # never blocks
    assert fa.check(str(root / "fifo.json"), str(root)).kind == "unparseable"
    os.symlink("/dev/zero", root / "zero.json")
    assert fa.check(str(root / "zero.json"), str(root)).kind == "unparseable"
