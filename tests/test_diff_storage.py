"""Table tests for every storage resource's diff: facts in, change out."""
from __future__ import annotations

import pytest

from reconcile.context import Owner, resolve_owner, storage_root
from reconcile.diff_storage import (diff_directory, diff_file, diff_free_disk, diff_lock, diff_marker, diff_pointer,
                                    diff_port, diff_storage_owner)
from reconcile.facts_host import (DirFact, DiskFact, FileFact, Identity, LockFact, PointerFact, PortFact,
                                  ProcFact)
from reconcile.state_templates import DesiredFile, header_line

USER = Identity(uid=1000, gid=1000, is_root=False, sudo_uid=None, sudo_gid=None, hostname="gpu-01", home="/home/u")
ROOT_ID = USER._replace(uid=0, gid=0, is_root=True, home="/root")
SUDO_ID = ROOT_ID._replace(sudo_uid=1000, sudo_gid=1001)
OWNER = Owner(1000, 1000, "invoking user")


def d(kind="dir", uid=1000, gid=1000, mode=0o755, path="/srv/sgl/x"):
    return DirFact(path=path, kind=kind, uid=uid, gid=gid, mode=mode)


# ------------------------------------------------------------------ owner

@pytest.mark.parametrize("setting, ident, want", [
    ("auto", USER, (1000, 1000, "invoking user", False)),
    ("auto", SUDO_ID, (1000, 1001, "SUDO_UID/SUDO_GID", False)),
    ("auto", ROOT_ID, (0, 0, "root", True)),
    ("1001:1002", ROOT_ID, (1001, 1002, "storage.owner", False)),
    ("1000:1000", USER, (1000, 1000, "storage.owner", False)),
    ("1001:1001", USER, (1001, 1001, "storage.owner", True)),
])
def test_resolve_owner(setting, ident, want):
    owner = resolve_owner(setting, ident)
    assert (owner.uid, owner.gid, owner.source, bool(owner.problem)) == want


def test_storage_root_tilde_is_owner_home_under_sudo():
    owner = resolve_owner("auto", SUDO_ID)
    assert storage_root("~/sgl", owner, SUDO_ID, {1000: "/home/alice"}.get) == "/home/alice/sgl"
    assert storage_root("~/sgl", OWNER, USER, {}.get) == "/home/u/sgl"
    assert storage_root("/data//sgl/", OWNER, USER, {}.get) == "/data/sgl"


# ------------------------------------------------------- check:storage_owner

STORAGE_OWNER_CASES = [
    # id, owner, root fact, ancestor, ownership, action, reason, message
    ("owned", OWNER, d(), None, "fail", "noop", "ok", "owner 1000:1000 (invoking user)"),
    ("root-auto-no-sudo", resolve_owner("auto", ROOT_ID), d(), None, "fail", "blocked", "owner_unusable",
     "running as root with storage.owner: auto and no SUDO_UID; sglprep never writes the storage as root → "
     "set storage.owner: UID:GID, or run it through sudo from the owning user"),
    ("other-user", resolve_owner("1001:1001", USER), d(), None, "fail", "blocked", "owner_unusable",
     "storage.owner is 1001:1001 but sglprep runs as 1000:1000 → run it as that user, or as root "
     "(it then writes as 1001:1001)"),
    ("missing-creatable", OWNER, d(kind="missing", uid=-1, gid=-1, mode=0), d(path="/srv"), "fail", "noop", "ok",
     "owner 1000:1000 (invoking user); root /srv/sgl will be created"),
    ("missing-not-creatable", OWNER, d(kind="missing", uid=-1, gid=-1, mode=0), d(path="/srv", uid=0, gid=0),
     "fail", "blocked", "permissions_unexpected",
     "cannot create /srv/sgl: /srv is not writable by 1000:1000 → sudo install -d -o 1000 -g 1000 /srv/sgl"),
    ("root-owned", OWNER, d(uid=0, gid=0), None, "fail", "blocked", "permissions_unexpected",
     "storage root /srv/sgl is 0:0 mode 0755, not writable by 1000:1000 → sudo chown 1000:1000 /srv/sgl"),
    ("mismatch-writable-fail", OWNER, d(uid=0, gid=0, mode=0o777), None, "fail", "blocked", "owner_mismatch",
     "storage root owner 0:0, want 1000:1000 → sudo chown 1000:1000 /srv/sgl"),
    ("mismatch-writable-ignore", OWNER, d(uid=0, gid=0, mode=0o777), None, "ignore", "noop", "ok",
     "owner 1000:1000 (invoking user)"),
    ("not-writable-by-owner", OWNER, d(mode=0o555), None, "fail", "blocked", "permissions_unexpected",
     "storage root /srv/sgl is 1000:1000 mode 0555, not writable by 1000:1000 → chmod u+rwx /srv/sgl"),
    ("not-a-dir", OWNER, d(kind="not_dir"), None, "fail", "blocked", "not_a_directory",
     "storage root /srv/sgl exists and is not a directory → move it away or change storage.root"),
]


@pytest.mark.parametrize("case", STORAGE_OWNER_CASES, ids=[c[0] for c in STORAGE_OWNER_CASES])
def test_storage_owner(case):
    _, owner, root_fact, ancestor, ownership, action, reason, message = case
    root_fact = root_fact._replace(path="/srv/sgl")
    change = diff_storage_owner(owner, "/srv/sgl", root_fact, ancestor or root_fact, ownership)
    assert (change.address, change.action, change.reason, change.message) == \
        ("check:storage_owner", action, reason, message)


def test_storage_owner_needs_a_traversable_path():
    closed = DirFact(path="/root", kind="dir", uid=0, gid=0, mode=0o700)
    change = diff_storage_owner(OWNER, "/root/sgl", d(path="/root/sgl"), None, "fail",
                                [DirFact(path="/", kind="dir", uid=0, gid=0, mode=0o755), closed])
    assert (change.action, change.reason, change.message) == ("blocked", "permissions_unexpected",
        "1000:1000 cannot reach /root/sgl: /root is 0:0 mode 0700 → choose a storage.root that 1000:1000 "
        "can reach (or let it traverse /root)")


def test_storage_owner_ignore_warns():
    change = diff_storage_owner(OWNER, "/srv/sgl", d(uid=0, gid=0, mode=0o777, path="/srv/sgl"), None, "ignore")
    assert change.warnings == ("storage root /srv/sgl is owned by 0:0, not 1000:1000 (ownership: ignore)",)
    assert change.show


@pytest.mark.parametrize("free, action, reason", [
    (5 << 30, "noop", "ok"),
    (1 << 30, "noop", "ok"),
    ((1 << 30) - 1, "blocked", "insufficient_disk"),
])
def test_free_disk(free, action, reason):
    change = diff_free_disk(DiskFact(path="/srv", free_bytes=free, total_bytes=10 << 30), 1)
    assert (change.action, change.reason) == (action, reason)
    # the exact free space is not part of the fingerprint, only whether it suffices
    assert change.observed == {"path": "/srv", "ok": action == "noop"}


def test_free_disk_message():
    change = diff_free_disk(DiskFact(path="/srv", free_bytes=1 << 29, total_bytes=10 << 30), 2)
    assert change.message == "0.50 GiB free on /srv, need 2 GiB → free space there or lower storage.min_free_gib"


# --------------------------------------------------------------- directories

DIRECTORY_CASES = [
    ("missing", "profiles/flashinfer", d(kind="missing", uid=-1, gid=-1, mode=0), "fail",
     "create", "missing", "owner 1000:1000", ("directory:profiles",)),
    ("missing-top", "models", d(kind="missing", uid=-1, gid=-1, mode=0), "fail",
     "create", "missing", "owner 1000:1000", ("check:storage_owner",)),
    ("ok", "models", d(), "fail", "noop", "ok", "owner 1000:1000", ("check:storage_owner",)),
    ("symlink", "models", d(kind="symlink"), "fail", "blocked", "symlink",
     "/srv/sgl/x is a symlink → replace it with a directory (a bind mount works)", ("check:storage_owner",)),
    ("not-dir", "models", d(kind="not_dir"), "fail", "blocked", "not_a_directory",
     "/srv/sgl/x exists and is not a directory → move it away", ("check:storage_owner",)),
    ("other-owner", "models", d(uid=0, gid=0), "fail", "blocked", "owner_mismatch",
     "owner 0:0, want 1000:1000 → sudo chown 1000:1000 /srv/sgl/x", ("check:storage_owner",)),
    ("other-owner-ignore-unwritable", "models", d(uid=0, gid=0), "ignore", "blocked", "owner_mismatch",
     "owner 0:0, want 1000:1000 → sudo chown 1000:1000 /srv/sgl/x", ("check:storage_owner",)),
    ("other-owner-ignore-writable", "models", d(uid=0, gid=0, mode=0o777), "ignore", "noop",
     "owner_mismatch_ignored", "owner 0:0, want 1000:1000 (ownership: ignore)", ("check:storage_owner",)),
    ("group-differs", "models", d(gid=0), "fail", "blocked", "owner_mismatch",
     "owner 1000:0, want 1000:1000 → sudo chown 1000:1000 /srv/sgl/x", ("check:storage_owner",)),
    ("read-only", "profiles/.locks", d(mode=0o555), "fail", "blocked", "permissions_unexpected",
     "mode 0555 is not writable by its owner → chmod u+rwx /srv/sgl/x", ("directory:profiles",)),
]


@pytest.mark.parametrize("case", DIRECTORY_CASES, ids=[c[0] for c in DIRECTORY_CASES])
def test_directory(case):
    _, rel, fact, ownership, action, reason, message, depends = case
    change = diff_directory(rel, fact, OWNER, ownership)
    assert (change.address, change.action, change.reason, change.message, change.depends_on) == \
        (f"directory:{rel}", action, reason, message, depends)
    assert change.show == (action != "noop" or reason != "ok")


def test_directory_create_after_names_path_and_owner():
    change = diff_directory("models", d(kind="missing", path="/srv/sgl/models"), OWNER, "fail")
    assert change.after == {"owner": "1000:1000", "path": "/srv/sgl/models"}
    assert change.before is None


# --------------------------------------------------------------------- files

WANT = DesiredFile(rel="telemetry/prometheus/prometheus.yml", template="prometheus.yml.j2",
                   source=b"port: {{ port }}\n", context={"port": 30000})


def managed(body: str, key: str | None = None) -> str:
    return header_line(key or WANT.render_key, body) + body


def no_render():
    raise AssertionError("a current file must be judged without rendering")


def test_file_current_is_noop_without_rendering():
    fact = FileFact(path="/p", kind="file", text=managed("port: 30000\n"))
    change = diff_file(WANT, fact, OWNER, render=no_render)
    assert (change.action, change.reason, change.show) == ("noop", "ok", False)


def test_file_missing_is_create_with_diff():
    change = diff_file(WANT, FileFact(path="/p", kind="missing"), OWNER)
    assert (change.action, change.reason) == ("create", "missing")
    assert change.depends_on == ("directory:telemetry/prometheus",)
    assert change.diff.splitlines()[:3] == ["--- /dev/null", "+++ b/telemetry/prometheus/prometheus.yml",
                                            "@@ -0,0 +1,2 @@"]
    assert "+port: 30000" in change.diff.splitlines()


def test_file_hand_edited_is_update_with_diff():
    fact = FileFact(path="/p", kind="file", text=managed("port: 30000\n").replace("30000", "31000"))
    change = diff_file(WANT, fact, OWNER)
    assert (change.action, change.reason) == ("update", "content_differs")
    assert "-port: 31000" in change.diff.splitlines() and "+port: 30000" in change.diff.splitlines()


def test_file_desired_changed_is_update():
    old = managed("port: 29000\n", key="sha256:old")
    change = diff_file(WANT, FileFact(path="/p", kind="file", text=old), OWNER)
    assert change.action == "update"
    assert "-port: 29000" in change.diff.splitlines()


def test_file_without_header_but_same_body_is_update_of_header_only():
    change = diff_file(WANT, FileFact(path="/p", kind="file", text="port: 30000\n"), OWNER)
    assert change.action == "update"
    changed = [ln for ln in change.diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    assert len(changed) == 1 and changed[0].startswith("+# sglprep-managed: render=")


def test_file_not_regular_is_blocked():
    change = diff_file(WANT, FileFact(path="/p", kind="not_file"), OWNER, render=no_render)
    assert (change.action, change.reason, change.message) == \
        ("blocked", "not_file", "/p is not a regular file → move it away")


# ------------------------------------------------------------ locks, markers

STARTED = "2026-11-22T10:00:00Z"
STARTED_EPOCH = 1795341600.0  # 2026-11-22T10:00:00Z


def lock(pid=4242, alive=False, create_time=0.0, host="gpu-01", cmd=("sglprep", "apply"), kind="ok"):
    return LockFact(name="deep_gemm", path="/srv/sgl/profiles/.locks/deep_gemm.lock", kind=kind, owner_pid=pid,
                    started_at=STARTED, host=host, command="sglprep apply",
                    process=ProcFact(pid=pid, alive=alive, create_time=create_time, cmdline=cmd),
                    error="Expecting value: line 1 column 1 (char 0)" if kind == "unparseable" else "")


LOCK_CASES = [
    ("dead-pid", lock(), "delete", "stale", "stale, pid 4242 gone"),
    ("reused-pid", lock(alive=True, create_time=STARTED_EPOCH + 3600), "delete", "stale",
     "stale, pid 4242 was reused (process started 2026-11-22T11:00:00Z, lock taken 2026-11-22T10:00:00Z)"),
    ("live", lock(alive=True, create_time=STARTED_EPOCH - 5), "noop", "held",
     "held by live pid 4242 (sglprep apply) since 2026-11-22T10:00:00Z: an apply is at work; what it changes is not "
     "in this plan yet"),
    ("foreign-host", lock(host="gpu-02"), "blocked", "foreign_host",
     "held by pid 4242 on host gpu-02; cannot check it from here → confirm it is gone there, then rm "
     "/srv/sgl/profiles/.locks/deep_gemm.lock"),
    ("unparseable", lock(kind="unparseable"), "delete", "unparseable",
     "unparseable lock file (Expecting value: line 1 column 1 (char 0))"),
]


@pytest.mark.parametrize("case", LOCK_CASES, ids=[c[0] for c in LOCK_CASES])
def test_lock(case):
    _, fact, action, reason, message = case
    change = diff_lock(fact, "gpu-01")
    assert (change.address, change.action, change.reason, change.message) == \
        ("lock:deep_gemm", action, reason, message)


def test_lock_reports_before_values():
    change = diff_lock(lock(), "gpu-01")
    assert change.before == {"owner_pid": 4242, "started_at": STARTED, "host": "gpu-01", "command": "sglprep apply"}


@pytest.mark.parametrize("fact, reason, message", [
    (lock(alive=True, create_time=STARTED_EPOCH), "in_progress",
     "stage deep_gemm in progress, held by live pid 4242 (sglprep apply) since 2026-11-22T10:00:00Z"),
    (lock(), "partial", "partial cache: stage deep_gemm was interrupted (pid 4242 gone, started 2026-11-22T10:00:00Z)"),
])
def test_marker(fact, reason, message):
    change = diff_marker(fact, "gpu-01")
    assert (change.address, change.action, change.reason, change.message) == \
        ("marker:deep_gemm", "noop", reason, message)
    assert change.show


# ------------------------------------------------------------------- pointer

POINTER_CASES = [
    ("absent", PointerFact(path="/p", kind="missing"), "noop", "absent", False),
    ("unparseable", PointerFact(path="/p", kind="unparseable", error="no CONTAINER_RUN_META_JSON line"),
     "delete", "stale", True),
    ("manifest-gone", PointerFact(path="/p", kind="ok", manifest_container="/telemetry/container_runs/r1.json",
                                  manifest_exists=False), "delete", "stale", True),
    ("ok", PointerFact(path="/p", kind="ok", manifest_host="/srv/sgl/telemetry/container_runs/r1.json",
                       manifest_exists=True, manifest={"container_run_id": "r1"}), "noop", "ok", False),
]


@pytest.mark.parametrize("case", POINTER_CASES, ids=[c[0] for c in POINTER_CASES])
def test_pointer(case):
    _, fact, action, reason, show = case
    change = diff_pointer(fact)
    assert (change.address, change.action, change.reason, change.show) == \
        ("pointer:container_run_meta.env", action, reason, show)


def test_pointer_manifest_gone_message():
    fact = PointerFact(path="/p", kind="ok", manifest_container="/telemetry/container_runs/r1.json")
    assert diff_pointer(fact).message == "stale: manifest /telemetry/container_runs/r1.json is gone"


# ---------------------------------------------------------------------- port

BUSY = PortFact(port=30000, state="busy", pid=777, user="ubuntu",
                cmdline=("python", "-m", "sglang.launch_server", "--port", "30000"))


@pytest.mark.parametrize("fact, needed, action, reason, message", [
    (PortFact(port=30000, state="free"), True, "noop", "free", "free"),
    (BUSY, False, "noop", "busy",
     "busy, held by pid 777 (ubuntu): python -m sglang.launch_server --port 30000; no warm-up needs it now"),
    (BUSY, True, "blocked", "port_busy",
     "port_busy: held by pid 777 (ubuntu): python -m sglang.launch_server --port 30000 → stop it (kill 777); "
     "warm-ups use this port only (no fallback)"),
    (PortFact(port=30000, state="busy"), True, "blocked", "port_busy",
     "port_busy: held by an unknown process → find it with: ss -ltnp 'sport = :30000'; "
     "warm-ups use this port only (no fallback)"),
])
def test_port(fact, needed, action, reason, message):
    change = diff_port(fact, needed)
    assert (change.address, change.action, change.reason, change.message) == ("port:30000", action, reason, message)


# ------------------------------------------------------------ FlashInfer cache

def test_flashinfer_cache_problem_variants():
    from reconcile.facts_stages import FlashInferModule, flashinfer_cache_problem

    ok = FlashInferModule("decode", True, 100.0, True, "/p/cached_ops/decode", "clean", 0)
    assert flashinfer_cache_problem((ok,)) == ""
    assert flashinfer_cache_problem((ok._replace(ninja="dirty", work=5),)) == (
        "sources newer than the build: ninja has work in 1 module(s) (e.g. decode); "
        "FlashInfer would silently rebuild them")
    assert flashinfer_cache_problem((ok._replace(names_own_dir=False, named_dir="/old/cached_ops/decode"),)) == (
        "cache moved from /old/cached_ops: FlashInfer would rebuild 1 module(s) (decode)")
    assert flashinfer_cache_problem((ok._replace(has_so=False, so_mtime=0.0),)) == (
        "incomplete build: 1 module(s) without their .so (e.g. decode)")
    # no ninja in the runtime: fall back to the package data's newest mtime
    unknown = ok._replace(ninja="unknown")
    assert flashinfer_cache_problem((unknown,), sources_mtime=50.0) == ""
    assert flashinfer_cache_problem((unknown,), sources_mtime=200.0).startswith("sources newer than the build")


def test_read_only_models_dir_with_ownership_ignore():
    """A root-owned, read-only models/ (NFS, a shared model store) is normal
    when sglprep only reads it: with ownership: ignore it never blocks."""
    ro = DirFact(path="/srv/sgl/models", kind="dir", uid=0, gid=0, mode=0o755)
    change = diff_directory("models", ro, OWNER, "ignore", read_only=True)
    assert (change.action, change.reason) == ("noop", "read_only_ok")
    assert change.message == "owner 0:0 mode 0755: fine, sglprep only reads it (ownership: ignore)"
    assert change.warnings
    assert diff_directory("models", ro, OWNER, "fail", read_only=True).action == "blocked"
    assert diff_directory("profiles", ro._replace(path="/srv/sgl/profiles"), OWNER, "ignore").action == "blocked"
    closed = ro._replace(mode=0o700)
    assert diff_directory("models", closed, OWNER, "ignore", read_only=True).reason == "permissions_unexpected"


def test_storage_root_user_placeholder_is_the_invoking_user():
    assert storage_root("/tmp/demo-{user}", OWNER, USER._replace(user="alice"), {}.get) == "/tmp/demo-alice"
    sudo = SUDO_ID._replace(user="bob")  # under sudo, identity() names the sudo caller
    assert storage_root("/tmp/demo-{user}", resolve_owner("auto", sudo), sudo, {}.get) == "/tmp/demo-bob"
