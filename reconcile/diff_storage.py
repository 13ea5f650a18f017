"""Per-resource diffs for the host's storage: pure functions of desired + facts.

Nothing here does I/O. Each function takes desired values and fact objects
and returns one `Change`; the table tests in tests/test_diff_storage.py feed
facts in and read changes out.
"""
from __future__ import annotations

from .context import Owner
from .facts_host import DirFact, DiskFact, FileFact, LockFact, PointerFact, PortFact
from .locks import lock_liveness
from .plan_model import Change
from .state_layout import parent_dir
from .state_templates import DesiredFile, parse_managed, sha256_text

GIB = 1 << 30


def _q(path: str) -> str:
    import shlex

    return shlex.quote(path)


def _chown_fix(owner: Owner, path: str) -> str:
    return f"sudo chown {owner.spec} {_q(path)}"


# ---------------------------------------------------------------------- checks

def diff_storage_owner(owner: Owner, root: str, root_fact: DirFact, ancestor: DirFact,
                       ownership: str, path_facts: list | tuple = ()) -> Change:
    """`check:storage_owner`: can the owner reach and write the storage root?

    `path_facts`: the directories above the root (or above its nearest
    existing ancestor), which the owner must be able to traverse."""
    address = "check:storage_owner"
    observed = {"owner": owner.spec, "problem": bool(owner.problem), "root": root,
                "kind": root_fact.kind, "uid": root_fact.uid, "gid": root_fact.gid, "mode": root_fact.mode}
    after = {"owner": owner.spec, "source": owner.source, "root": root}
    if owner.problem:
        return Change(address, "blocked", "owner_unusable", owner.problem, observed=observed, after=after)
    closed = next((f for f in path_facts if not f.searchable_by(owner.uid, owner.gid)), None)
    if closed is not None:
        observed["closed"] = [closed.path, closed.uid, closed.gid, closed.mode]
        return Change(address, "blocked", "permissions_unexpected",
                      f"{owner.spec} cannot reach {root}: {closed.path} is {closed.uid}:{closed.gid} mode "
                      f"{closed.mode:04o} → choose a storage.root that {owner.spec} can reach "
                      f"(or let it traverse {closed.path})", observed=observed, after=after)
    if root_fact.kind == "missing":
        if ancestor.writable_by(owner.uid, owner.gid):
            return Change(address, "noop", "ok", f"owner {owner.spec} ({owner.source}); root {root} will be created",
                          observed=observed | {"ancestor": ancestor.path}, after=after, show=False)
        return Change(address, "blocked", "permissions_unexpected",
                      f"cannot create {root}: {ancestor.path} is not writable by {owner.spec} → "
                      f"sudo install -d -o {owner.uid} -g {owner.gid} {_q(root)}",
                      observed=observed | {"ancestor": ancestor.path}, after=after)
    if root_fact.kind != "dir":
        return Change(address, "blocked", "not_a_directory",
                      f"storage root {root} exists and is not a directory → move it away or change storage.root",
                      observed=observed, after=after)
    before = {"owner": f"{root_fact.uid}:{root_fact.gid}", "mode": f"{root_fact.mode:04o}"}
    mismatch = (root_fact.uid, root_fact.gid) != (owner.uid, owner.gid)
    if not root_fact.writable_by(owner.uid, owner.gid):
        fix = _chown_fix(owner, root) if mismatch else f"chmod u+rwx {_q(root)}"
        return Change(address, "blocked", "permissions_unexpected",
                      f"storage root {root} is {before['owner']} mode {before['mode']}, not writable by "
                      f"{owner.spec} → {fix}", before=before, after=after, observed=observed)
    if mismatch and ownership == "fail":
        return Change(address, "blocked", "owner_mismatch",
                      f"storage root owner {before['owner']}, want {owner.spec} → {_chown_fix(owner, root)}",
                      before=before, after=after, observed=observed)
    warnings = ()
    if mismatch:
        warnings = (f"storage root {root} is owned by {before['owner']}, not {owner.spec} (ownership: ignore)",)
    return Change(address, "noop", "ok", f"owner {owner.spec} ({owner.source})", before=before, after=after,
                  observed=observed, show=bool(warnings), warnings=warnings)


def diff_free_disk(disk: DiskFact, min_free_gib: float) -> Change:
    need = int(min_free_gib * GIB)
    ok = disk.free_bytes >= need
    before = {"path": disk.path, "free_bytes": disk.free_bytes}
    after = {"min_free_bytes": need}
    observed = {"path": disk.path, "ok": ok}
    if ok:
        return Change("check:free_disk", "noop", "ok", f"{disk.free_bytes / GIB:.1f} GiB free on {disk.path}",
                      before=before, after=after, observed=observed, show=False)
    return Change("check:free_disk", "blocked", "insufficient_disk",
                  f"{disk.free_bytes / GIB:.2f} GiB free on {disk.path}, need {min_free_gib:g} GiB → "
                  f"free space there or lower storage.min_free_gib", before=before, after=after, observed=observed)


# ----------------------------------------------------------------- directories

def diff_directory(rel: str, fact: DirFact, owner: Owner, ownership: str, read_only: bool = False) -> Change:
    """`read_only`: sglprep never writes into it (models/): with `ownership:
    ignore`, any owner and mode that lets the owner read it is fine."""
    address = f"directory:{rel}"
    parent = parent_dir(rel)
    depends = (f"directory:{parent}",) if parent else ("check:storage_owner",)
    observed = {"kind": fact.kind, "uid": fact.uid, "gid": fact.gid, "mode": fact.mode}
    after = {"owner": owner.spec}
    if fact.kind == "missing":
        return Change(address, "create", "missing", f"owner {owner.spec}", depends_on=depends,
                      before=None, after=after | {"path": fact.path}, observed=observed)
    before = {"kind": fact.kind, "owner": f"{fact.uid}:{fact.gid}", "mode": f"{fact.mode:04o}"}
    if fact.kind == "symlink":
        return Change(address, "blocked", "symlink",
                      f"{fact.path} is a symlink → replace it with a directory (a bind mount works)",
                      depends_on=depends, before=before, after=after, observed=observed)
    if fact.kind == "not_dir":
        return Change(address, "blocked", "not_a_directory",
                      f"{fact.path} exists and is not a directory → move it away",
                      depends_on=depends, before=before, after=after, observed=observed)
    mismatch = (fact.uid, fact.gid) != (owner.uid, owner.gid)
    if read_only and ownership == "ignore" and (mismatch or not fact.writable_by(owner.uid, owner.gid)):
        if not fact.searchable_by(owner.uid, owner.gid):
            return Change(address, "blocked", "permissions_unexpected",
                          f"{fact.path} ({before['owner']} mode {before['mode']}) cannot be read by {owner.spec} → "
                          f"let {owner.spec} read it", depends_on=depends, before=before, after=after,
                          observed=observed)
        return Change(address, "noop", "read_only_ok",
                      f"owner {before['owner']} mode {before['mode']}: fine, sglprep only reads it "
                      f"(ownership: ignore)", depends_on=depends, before=before, after=after, observed=observed,
                      warnings=(f"{fact.path} is {before['owner']} mode {before['mode']}: sglprep only reads it",))
    if mismatch and (ownership == "fail" or not fact.writable_by(owner.uid, owner.gid)):
        return Change(address, "blocked", "owner_mismatch",
                      f"owner {before['owner']}, want {owner.spec} → {_chown_fix(owner, fact.path)}",
                      depends_on=depends, before=before, after=after, observed=observed)
    if not fact.writable_by(owner.uid, owner.gid):
        return Change(address, "blocked", "permissions_unexpected",
                      f"mode {before['mode']} is not writable by its owner → chmod u+rwx {_q(fact.path)}",
                      depends_on=depends, before=before, after=after, observed=observed)
    if mismatch:
        return Change(address, "noop", "owner_mismatch_ignored",
                      f"owner {before['owner']}, want {owner.spec} (ownership: ignore)", depends_on=depends,
                      before=before, after=after, observed=observed,
                      warnings=(f"{fact.path} is owned by {before['owner']}, not {owner.spec}",))
    return Change(address, "noop", "ok", f"owner {owner.spec}", depends_on=depends, before=before,
                  after=after, observed=observed, show=False)


# ----------------------------------------------------------------------- files

def diff_file(want: DesiredFile, fact: FileFact, owner: Owner, render=None) -> Change:
    """`file:<rel>`: the rendered template. `render` produces the full text when
    the cheap header check cannot prove the file current (defaults to
    `want.render`, which imports Jinja2)."""
    address = f"file:{want.rel}"
    depends = (f"directory:{parent_dir(want.rel)}",)
    key = want.render_key
    observed = {"kind": fact.kind}
    if fact.kind == "file":
        rec_key, rec_content, body = parse_managed(fact.text)
        actual = sha256_text(body)
        observed = {"kind": "file", "sha256": sha256_text(fact.text)}
        if rec_key == key and rec_content == actual:
            return Change(address, "noop", "ok", "content matches the template", depends_on=depends,
                          before={"sha256": sha256_text(fact.text)}, after={"render_key": key},
                          observed=observed, show=False)
    elif fact.kind in ("not_file", "unreadable"):
        return Change(address, "blocked", fact.kind,
                      f"{fact.path} is {'not a regular file' if fact.kind == 'not_file' else 'not readable'} "
                      f"→ move it away", depends_on=depends, observed=observed)
    text = (render or want.render)()
    after = {"sha256": sha256_text(text), "owner": owner.spec, "template": want.template}
    if fact.kind == "missing":
        return Change(address, "create", "missing", f"from templates/{want.template}", depends_on=depends,
                      after=after, observed=observed, diff=unified_diff("", text, want.rel))
    if fact.text == text:
        return Change(address, "noop", "ok", "content matches the template", depends_on=depends,
                      before={"sha256": sha256_text(fact.text)}, after=after, observed=observed, show=False)
    return Change(address, "update", "content_differs", f"content differs from templates/{want.template}",
                  depends_on=depends, before={"sha256": sha256_text(fact.text)}, after=after,
                  observed=observed, diff=unified_diff(fact.text, text, want.rel))


def unified_diff(old: str, new: str, rel: str) -> str:
    import difflib

    lines = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                 fromfile=f"a/{rel}" if old else "/dev/null", tofile=f"b/{rel}")
    out = []
    for line in lines:
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


# -------------------------------------------------------------- locks, markers

def diff_lock(lock: LockFact, hostname: str) -> Change:
    address = f"lock:{lock.name}"
    depends = ("check:storage_owner",)
    if lock.kind == "unparseable":
        return Change(address, "delete", "unparseable", f"unparseable lock file ({lock.error})",
                      depends_on=depends, before={"path": lock.path}, observed={"kind": lock.kind})
    before = {"owner_pid": lock.owner_pid, "started_at": lock.started_at, "host": lock.host,
              "command": lock.command}
    state, why = lock_liveness(lock, hostname)
    observed = before | {"state": state}
    if state == "stale":
        return Change(address, "delete", "stale", f"stale, {why}", depends_on=depends, before=before,
                      observed=observed)
    if state == "foreign":
        return Change(address, "blocked", "foreign_host",
                      f"{why}; cannot check it from here → confirm it is gone there, then rm {_q(lock.path)}",
                      depends_on=depends, before=before, observed=observed)
    # a live holder on this host is an apply at work, not a fault: plan says so
    # and exits as it would without it (cron must not raise an alarm for it)
    return Change(address, "noop", "held",
                  f"{why}: an apply is at work; what it changes is not in this plan yet",
                  depends_on=depends, before=before, observed=observed,
                  warnings=(f"{address} {why}: an apply is running; plan again when it ends",))


def diff_marker(marker: LockFact, hostname: str) -> Change:
    address = f"marker:{marker.name}"
    if marker.kind == "unparseable":
        return Change(address, "noop", "partial", f"unreadable marker ({marker.error}): partial cache",
                      before={"path": marker.path}, observed={"kind": marker.kind})
    before = {"owner_pid": marker.owner_pid, "started_at": marker.started_at}
    state, why = lock_liveness(marker, hostname)
    observed = before | {"state": state}
    if state == "live":
        return Change(address, "noop", "in_progress", f"stage {marker.name} in progress, {why}",
                      before=before, observed=observed)
    return Change(address, "noop", "partial",
                  f"partial cache: stage {marker.name} was interrupted ({why}, started {marker.started_at or '?'})",
                  before=before, observed=observed)


# --------------------------------------------------------------------- pointer

def diff_pointer(pointer: PointerFact, cont=None) -> Change:
    """`pointer:container_run_meta.env`. Stale when unparseable or its manifest
    is gone; with `cont` (the container's fact, docker runtime) also when the
    manifest names another container or that container is not running."""
    address = "pointer:container_run_meta.env"
    depends = ("directory:telemetry",)
    if pointer.kind == "missing":
        return Change(address, "noop", "absent", "absent (the container publishes it)", depends_on=depends,
                      observed={"kind": "missing"}, show=False)
    if pointer.kind == "unparseable":
        return Change(address, "delete", "stale", f"stale: unparseable ({pointer.error})", depends_on=depends,
                      before={"path": pointer.path}, observed={"kind": pointer.kind, "error": pointer.error})
    manifest_name = pointer.manifest_host or pointer.manifest_container
    owner = str(pointer.manifest.get("container_id", ""))
    before = {"manifest": manifest_name}
    observed = {"kind": "ok", "manifest": manifest_name, "manifest_exists": pointer.manifest_exists}
    if cont is not None:
        before["container_id"] = owner[:12] or None
        observed.update(container_id=owner, running=cont.id if cont.status == "running" else "")
    why = ""
    if not pointer.manifest_exists:
        why = f"manifest {manifest_name} is gone"
    elif cont is not None and cont.kind == "missing":
        why = "its container no longer exists"
    elif cont is not None and owner != cont.id:
        why = f"manifest belongs to container {owner[:12] or '?'}, not {cont.id[:12]}"
    elif cont is not None and cont.status != "running":
        why = f"its container is {cont.status}"
    if why:
        return Change(address, "delete", "stale", f"stale: {why}", depends_on=depends, before=before,
                      observed=observed)
    run_id = pointer.manifest.get("container_run_id") or pointer.manifest.get("run_id") or "?"
    return Change(address, "noop", "ok", f"manifest of run {run_id}", depends_on=depends, before=before,
                  observed=observed, show=False)


# --------------------------------------------------------------------- orphans

def orphans_of(marker: LockFact, processes: dict, hostname: str, lock_held: bool | None = None) -> list:
    """The processes a stage recorded in its marker that still run although
    the apply that started them is gone: (pid, pgid, cmdline). `processes`:
    pid -> ProcFact. A pid now used by another process (it started later than
    recorded) is not ours and is left alone. `lock_held`: whether a live
    process holds the flock of the stage's lock (its writer holds it for as
    long as it runs); False settles it even when the writer's pid was reused."""
    if marker.kind != "ok":
        return []
    writer_gone = lock_liveness(marker, hostname)[0] == "stale" or lock_held is False
    if not writer_gone or lock_held is True:
        return []
    out = []
    for pid, pgid, created in marker.processes:
        proc = processes.get(pid)
        if proc is not None and proc.alive and abs(proc.create_time - created) <= 1.0:
            out.append((pid, pgid, " ".join(proc.cmdline)[:120]))
    return out


def diff_orphans(stage: str, orphans: list, teardown_s: float) -> Change | None:
    """`orphans:<stage>`: what a killed apply left running (a warm-up server
    on the strict port, a custom stage's command): stopped before anything
    else of that stage runs."""
    if not orphans:
        return None
    pid, _, cmd = orphans[0]
    more = f" and {len(orphans) - 1} more" if len(orphans) > 1 else ""
    return Change(f"orphans:{stage}", "delete", "apply_killed",
                  f"stop pid {pid} ({cmd or '?'}){more}: started by an apply that was killed",
                  depends_on=("check:storage_owner",), before={"processes": [list(o) for o in orphans]},
                  observed={"processes": [[p, g] for p, g, _ in orphans], "teardown_s": teardown_s})


# ------------------------------------------------------------------ temp files

def diff_tempfiles(leftovers: list) -> Change | None:
    """`tempfiles:leftover`: temp files of atomic writes whose writer is gone
    (a crash between write and rename). `leftovers`: (path, pid, alive)."""
    stale = sorted(path for path, _, alive in leftovers if not alive)
    if not stale:
        return None
    names = ", ".join(p.rsplit("/", 1)[-1] for p in stale[:2]) + (", …" if len(stale) > 2 else "")
    return Change("tempfiles:leftover", "delete", "writer_gone",
                  f"{len(stale)} temp file(s) left by writers that are gone ({names})",
                  depends_on=("check:storage_owner",), before={"paths": stale}, observed={"paths": stale})


# ------------------------------------------------------------------------ port

def diff_port(port: PortFact, needed: bool, orphans: dict | None = None) -> Change:
    """`orphans`: pid -> the orphans:<stage> address that stops it."""
    address = f"port:{port.port}"
    if port.state == "free":
        return Change(address, "noop", "free", "free", observed={"state": "free"}, show=False)
    if port.pid and port.pid in (orphans or {}):
        return Change(address, "noop", "orphan", f"busy, held by pid {port.pid}, an orphan that "
                      f"{orphans[port.pid]} stops first", depends_on=(orphans[port.pid],),
                      observed={"state": "busy", "pid": port.pid})
    holder = f"pid {port.pid}" if port.pid else "an unknown process"
    if port.user:
        holder += f" ({port.user})"
    if port.cmdline:
        holder += f": {' '.join(port.cmdline)[:100]}"
    before = {"pid": port.pid, "user": port.user, "cmdline": list(port.cmdline)}
    observed = {"state": "busy", "pid": port.pid}
    if needed:
        fix = f"stop it (kill {port.pid})" if port.pid else f"find it with: ss -ltnp 'sport = :{port.port}'"
        return Change(address, "blocked", "port_busy",
                      f"port_busy: held by {holder} → {fix}; warm-ups use this port only (no fallback)",
                      before=before, observed=observed)
    return Change(address, "noop", "busy", f"busy, held by {holder}; no warm-up needs it now",
                  before=before, observed=observed)
