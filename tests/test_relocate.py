"""relocate_build_tree against the real ninja binary: a FlashInfer-like JIT
cache (absolute paths, deps = gcc, depfiles) built under storage root A with
the package at P1, copied to B with the package at P2."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from reconcile.exec_relocate import (RelocateError, command_hash, edge_commands, murmurhash64a,
                                     relocate_build_tree)

NINJA = shutil.which("ninja")
pytestmark = pytest.mark.skipif(NINJA is None, reason="ninja not on PATH")

FAKECC = r'''
import os, sys
args = sys.argv[1:]
with open(os.environ["FAKECC_LOG"], "a") as log:
    log.write(" ".join(args) + "\n")
mode = args[0]
out = args[args.index("-o") + 1]
if mode == "link":
    objs = args[1:args.index("-o")]
    with open(out, "w") as f:
        f.write("SO\n" + "".join(open(o).read() for o in objs))
    sys.exit(0)
src = args[args.index("-c") + 1]
incs = [a[2:] for a in args if a.startswith("-I")]
deps = [src]
for line in open(src):
    if line.startswith("#include "):
        name = line.split()[1].strip('"')
        for d in incs:
            if os.path.exists(os.path.join(d, name)):
                deps.append(os.path.join(d, name))
                break
        else:
            sys.exit("header not found: " + name)
with open(out, "w") as f:
    f.write("OBJ " + open(src).read())
with open(args[args.index("--dep") + 1], "w") as f:
    f.write(out + ": " + " \\\n  ".join(deps) + "\n")
'''


def build_ninja(mod: str, pkg: str) -> str:
    # written the way FlashInfer's JIT writes it: absolute paths to the module
    # dir and to the package's sources/includes; plus escapes and scoping
    return textwrap.dedent(f"""\
        ninja_required_version = 1.3
        # a comment $
        cxx = {sys.executable} {pkg}/bin/fakecc.py
        common = -I{pkg}/include -I{mod} --tag '$$lit' --colon a$:b
        cflags = ${{common}} -DMOD=$
            {os.path.basename(mod)}

        rule compile
          command = $cxx compile $cflags -c $in -o $out --dep $out.d
          depfile = $out.d
          deps = gcc
          description = CC $out

        rule link
          command = $cxx link $in -o $out

        build {mod}/a.o: compile {pkg}/src/a.cu
        build {mod}/b.o: compile {mod}/b.cu
          cflags = $cflags -DEXTRA
        build {mod}/{os.path.basename(mod)}.so: link {mod}/a.o {mod}/b.o
        default {mod}/{os.path.basename(mod)}.so
        """)


MODS = ("mod_one", "mod_two")


@pytest.fixture
def tree(tmp_path):
    """Build two modules for real under A with the package at P1."""
    A = str(tmp_path / "storeA" / "cache")
    P1 = str(tmp_path / "site1" / "flashinfer")
    os.makedirs(f"{P1}/bin")
    os.makedirs(f"{P1}/src")
    os.makedirs(f"{P1}/include")
    with open(f"{P1}/bin/fakecc.py", "w") as f:
        f.write(FAKECC)
    with open(f"{P1}/src/a.cu", "w") as f:
        f.write('#include "hdr.h"\nint a;\n')
    with open(f"{P1}/include/hdr.h", "w") as f:
        f.write("// header\n")
    for m in MODS:
        d = f"{A}/{m}"
        os.makedirs(d)
        with open(f"{d}/config.inc", "w") as f:
            f.write("// generated\n")
        with open(f"{d}/b.cu", "w") as f:
            f.write('#include "hdr.h"\n#include "config.inc"\nint b;\n')
        with open(f"{d}/build.ninja", "w") as f:
            f.write(build_ninja(d, P1))
    log = str(tmp_path / "cc.log")
    env = dict(os.environ, FAKECC_LOG=log)
    for m in MODS:
        subprocess.run([NINJA, "-C", f"{A}/{m}"], check=True, env=env, capture_output=True)
    return {"tmp": tmp_path, "A": A, "P1": P1, "log": log, "env": env,
            "B": str(tmp_path / "storeB" / "jit-cache"), "P2": str(tmp_path / "site2" / "py" / "flashinfer")}


def ninja(t, d, *args):
    return subprocess.run([NINJA, *args, "-C", d], env=t["env"], capture_output=True, text=True)


def compiles(t):
    with open(t["log"]) as f:
        return f.read().splitlines()


def move(t):
    """Copy A -> B and P1 -> P2 without preserving mtimes; remove the old."""
    shutil.copytree(t["A"], t["B"], copy_function=shutil.copy)
    shutil.copytree(t["P1"], t["P2"], copy_function=shutil.copy)
    shutil.rmtree(t["A"])
    shutil.rmtree(t["P1"])


def read_log(path):
    with open(path) as f:
        lines = f.read().splitlines()
    assert lines[0] == "# ninja log v5"
    return {fields[3]: fields for fields in (ln.split("\t") for ln in lines[1:])}


def test_hash_matches_ninja(tree):
    for m in MODS:
        d = f"{tree['A']}/{m}"
        cmds = edge_commands(open(f"{d}/build.ninja").read())
        logged = read_log(f"{d}/.ninja_log")
        assert set(logged) == set(cmds) == {f"{d}/a.o", f"{d}/b.o", f"{d}/{m}.so"}
        for out, cmd in cmds.items():
            assert int(logged[out][4], 16) == murmurhash64a(cmd.encode()) == command_hash(cmd, 5)
        # the expansion itself: escapes, ${var}, continuation, edge scoping
        assert "--tag '$lit' --colon a:b -DMOD=" + m in cmds[f"{d}/a.o"]
        assert cmds[f"{d}/b.o"].endswith(f"-DEXTRA -c {d}/b.cu -o {d}/b.o --dep {d}/b.o.d")
        assert "-DEXTRA" not in cmds[f"{d}/a.o"]


def test_relocate_no_work_then_touch_rebuilds(tree):
    t = tree
    for m in MODS:
        assert "no work to do" in ninja(t, f"{t['A']}/{m}", "-n").stdout
    move(t)
    for m in MODS:  # unrelocated: ninja cannot use the copy
        r = ninja(t, f"{t['B']}/{m}", "-n")
        assert r.returncode != 0 or "no work to do" not in r.stdout

    summary = relocate_build_tree(t["B"], [(t["A"], t["B"]), (t["P1"], t["P2"])])
    assert summary["modules"] == 2
    assert summary["log_entries"] == 6
    assert summary["deps_records"] == 4
    for m in MODS:
        d = f"{t['B']}/{m}"
        text = open(f"{d}/build.ninja").read()
        assert t["A"] not in text and t["P1"] not in text
        r = ninja(t, d, "-n", "-d", "explain")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "ninja: no work to do." in r.stdout, r.stdout + r.stderr
        # the hashes now match the relocated commands
        cmds = edge_commands(text)
        for out, fields in read_log(f"{d}/.ninja_log").items():
            assert int(fields[4], 16) == murmurhash64a(cmds[out].encode())

    before = len(compiles(t))
    for m in MODS:
        r = ninja(t, f"{t['B']}/{m}")
        assert r.returncode == 0 and "no work to do" in r.stdout, r.stdout
    assert len(compiles(t)) == before  # the compiler never ran

    # changing a header at the new install path still rebuilds (checking is on)
    d = f"{t['B']}/mod_one"
    so = os.stat(f"{d}/mod_one.so").st_mtime_ns
    os.utime(f"{t['P2']}/include/hdr.h", ns=(so + 1_000,) * 2)
    r = ninja(t, d, "-n")
    assert "no work to do" not in r.stdout and "[3/3]" in r.stdout
    # and a source at P2 rebuilds exactly its object and the link
    os.utime(f"{t['P2']}/include/hdr.h", ns=(so,) * 2)
    os.utime(f"{t['P2']}/src/a.cu", ns=(so + 1_000,) * 2)
    before = len(compiles(t))
    r = ninja(t, d)
    assert r.returncode == 0, r.stdout + r.stderr
    ran = compiles(t)[before:]
    assert len(ran) == 2 and f"-c {t['P2']}/src/a.cu" in ran[0] and ran[1].startswith("link")
    assert "no work to do" in ninja(t, d, "-n").stdout


def test_naive_text_rewrite_is_not_enough(tree):
    t = tree
    move(t)
    d = f"{t['B']}/mod_one"
    text = open(f"{d}/build.ninja").read()
    with open(f"{d}/build.ninja", "w") as f:
        f.write(text.replace(t["A"], t["B"]).replace(t["P1"], t["P2"]))
    r = ninja(t, d, "-n")
    assert r.returncode == 0 and "no work to do" not in r.stdout


def test_truncated_deps_log_raises_and_writes_nothing(tree):
    t = tree
    move(t)
    d = f"{t['B']}/mod_two"
    with open(f"{d}/.ninja_deps", "rb") as f:
        data = f.read()
    with open(f"{d}/.ninja_deps", "wb") as f:
        f.write(data[:-6])
    snap = {p: open(p, "rb").read() for m in MODS for p in (f"{t['B']}/{m}/build.ninja", f"{t['B']}/{m}/.ninja_log")}
    with pytest.raises(RelocateError) as e:
        relocate_build_tree(t["B"], [(t["A"], t["B"]), (t["P1"], t["P2"])])
    assert "\n" not in str(e.value) and "truncated" in str(e.value)
    for p, content in snap.items():
        assert open(p, "rb").read() == content


def test_bad_versions_raise(tree):
    t = tree
    move(t)
    d = f"{t['B']}/mod_one"
    with open(f"{d}/.ninja_deps", "r+b") as f:
        f.seek(len(b"# ninjadeps\n"))
        f.write(b"\x03\x00\x00\x00")
    with pytest.raises(RelocateError, match="version 3"):
        relocate_build_tree(t["B"], [(t["A"], t["B"])])
    with open(f"{d}/.ninja_log", "w") as f:
        f.write("# ninja log v4\n")
    with pytest.raises(RelocateError, match="log version 4"):
        relocate_build_tree(t["B"], [(t["A"], t["B"])])


def test_symlinks_are_not_followed(tree):
    t = tree
    move(t)
    outside = t["tmp"] / "outside"
    outside.mkdir()
    (outside / "victim.d").write_text(f"x.o: {t['A']}/mod_one/b.cu\n")
    (outside / "build.ninja").write_text(f"rule r\n  command = {t['A']}/x\nbuild {t['A']}/y: r\n")
    os.utime(outside / "victim.d", ns=(1_000_000_000,) * 2)
    os.symlink(outside / "victim.d", f"{t['B']}/mod_one/evil.d")
    os.symlink(outside, f"{t['B']}/linked_module")
    before = {p.name: (p.read_text(), p.stat().st_mtime_ns) for p in outside.iterdir()}

    summary = relocate_build_tree(t["B"], [(t["A"], t["B"]), (t["P1"], t["P2"])])
    assert summary["modules"] == 2
    assert {p.name: (p.read_text(), p.stat().st_mtime_ns) for p in outside.iterdir()} == before
    assert os.path.islink(f"{t['B']}/mod_one/evil.d")
    for m in MODS:
        assert "no work to do" in ninja(t, f"{t['B']}/{m}", "-n").stdout

    # a symlinked .ninja_log is refused rather than written through
    os.replace(f"{t['B']}/mod_two/.ninja_log", outside / "log")
    os.symlink(outside / "log", f"{t['B']}/mod_two/.ninja_log")
    with pytest.raises(RelocateError, match="not a regular file"):
        relocate_build_tree(t["B"], [(t["A"], t["B"])])


def test_rapidhash_shapes():
    # v7 (ninja >= 1.13) hash: deterministic, 64-bit, all length branches
    for n in (0, 1, 3, 4, 8, 16, 17, 33, 48, 49, 95, 96, 97, 200):
        h = command_hash("x" * n, 7)
        assert 0 <= h < 1 << 64
    with pytest.raises(RelocateError):
        command_hash("x", 4)
