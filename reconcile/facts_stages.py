"""Facts the cache stages need: stored signatures, the model's config, the
FlashInfer JIT cache as ninja sees it, and the installed SGLang's verdict on
the server flags. All read-only; the only processes started are `ninja -n`
(a dry run) and the runtime's own argument parser.
"""
from __future__ import annotations

import json
import os
from typing import NamedTuple

from .facts_runtime import Prober


class SignatureFact(NamedTuple):
    """A stage's `signature.json`: what its cache was built for."""

    path: str
    kind: str  # missing | ok | unparseable
    signature: dict = {}
    written_at: str = ""
    error: str = ""
    fills: tuple = ()  # caches (inspect names) the stage also filled, e.g. triton for a custom stage


class ModelFact(NamedTuple):
    path: str  # config.json as read on the host
    kind: str  # ok | missing | unparseable
    max_context: int = 0  # max_position_embeddings (0 when absent)
    error: str = ""


def signature_fact(path: str) -> SignatureFact:
    from .facts_host import read_json

    kind, data, error = read_json(path, 4 << 20)
    if kind == "ok" and not (isinstance(data, dict) and isinstance(data.get("signature"), dict)):
        kind, error = "unparseable", "no 'signature' object"
    if kind != "ok":
        return SignatureFact(path=path, kind=kind, error=error)
    fills = tuple(str(f) for f in data.get("fills") or () if isinstance(f, str)) \
        if isinstance(data.get("fills"), list) else ()
    return SignatureFact(path=path, kind="ok", signature=data["signature"], written_at=str(data.get("written_at", "")),
                         fills=fills)


def model_fact(config_path: str) -> ModelFact:
    from .facts_host import read_json

    kind, data, error = read_json(config_path, 16 << 20, follow=True)  # HF snapshots link config.json to a blob
    if kind == "ok" and not isinstance(data, dict):
        kind, error = "unparseable", "not a JSON object"
    if kind != "ok":
        return ModelFact(path=config_path, kind=kind, error=error)
    text_config = data.get("text_config") if isinstance(data.get("text_config"), dict) else {}
    max_ctx = data.get("max_position_embeddings") or text_config.get("max_position_embeddings") or 0
    return ModelFact(path=config_path, kind="ok", max_context=int(max_ctx) if isinstance(max_ctx, int) else 0)


# ------------------------------------------------------------------ FlashInfer

class FlashInferModule(NamedTuple):
    name: str
    has_so: bool
    so_mtime: float  # 0.0 without a .so
    names_own_dir: bool  # build.ninja refers to the directory it sits in
    named_dir: str  # the module directory build.ninja refers to ("" if none found)
    ninja: str  # clean | dirty | unknown (no ninja / no build.ninja)
    work: int  # lines `ninja -n` would run


def flashinfer_modules(cached_ops: str, runtime_cached_ops: str, ninja: str | None, prober=None) -> tuple:
    """Every module dir under `cached_ops` (host path); `runtime_cached_ops` is
    the same directory as the runtime sees it, which build.ninja must name.
    `ninja -n` (the runtime's ninja: a binary the owner controls) runs through
    `prober`, as the storage owner with the owner's environment, never as root."""
    try:
        names = sorted(n for n in os.listdir(cached_ops) if n != "tmp" and not n.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return ()
    out = []
    for name in names:
        module_dir = os.path.join(cached_ops, name)
        if not os.path.isdir(module_dir):
            continue
        try:
            so_mtime = os.stat(os.path.join(module_dir, f"{name}.so")).st_mtime
            has_so = True
        except OSError:
            so_mtime, has_so = 0.0, False
        try:
            with open(os.path.join(module_dir, "build.ninja"), encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except OSError:
            out.append(FlashInferModule(name, has_so, so_mtime, False, "", "unknown", 0))
            continue
        own = runtime_cached_ops.rstrip("/") + "/" + name
        named = _named_module_dir(text, name)
        names_own = _ninja_escape(own) + "/" in text or own + "/" in text
        state, work = "unknown", 0
        if ninja and names_own and prober is not None:
            state, work = _ninja_dry_run(ninja, module_dir, prober)
        out.append(FlashInferModule(name, has_so, so_mtime, names_own, named, state, work))
    return tuple(out)


def _ninja_escape(path: str) -> str:
    return path.replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def _named_module_dir(text: str, name: str) -> str:
    """The `…/cached_ops/<name>` directory the build file's outputs live in."""
    marker = f"/cached_ops/{name}/"
    for line in text.splitlines():
        if line.startswith("build ") and marker in line:
            head = line[len("build "):].split(marker, 1)[0]
            return head.replace("$ ", " ").replace("$:", ":").replace("$$", "$") + marker.rstrip("/")
    return ""


def _ninja_dry_run(ninja: str, module_dir: str, prober) -> tuple[str, int]:
    rc, out, _ = prober([ninja, "-n", "-C", module_dir])
    if rc in (124, 126, 127):  # timed out, not executable, not found: unknown, not dirty
        return "unknown", 0
    if rc != 0:
        return "dirty", 1
    if "no work to do" in out:
        return "clean", 0
    work = sum(1 for line in out.splitlines() if line.startswith("["))
    return ("dirty", work) if work else ("clean", 0)


def flashinfer_build_locks(cached_ops: str) -> tuple:
    """(lock path, held) for each build lock in `cached_ops/tmp/`. FlashInfer
    takes them with flock (filelock); a lock nobody holds is left over from a
    build whose process is gone. Testing takes the lock for an instant and
    gives it back; the file is not changed."""
    import fcntl

    tmp = os.path.join(cached_ops, "tmp")
    try:
        names = sorted(n for n in os.listdir(tmp) if n.endswith(".lock"))
    except OSError:
        return ()
    out = []
    for name in names:
        path = os.path.join(tmp, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            held = False
        except OSError:
            held = True
        finally:
            os.close(fd)
        out.append((path, held))
    return tuple(out)


def flashinfer_cache_problem(modules: tuple, sources_mtime: float = 0.0) -> str:
    """Why FlashInfer would rebuild this cache although it exists ("" = warm).

    `sources_mtime`: the newest mtime under FlashInfer's package data; where
    ninja could not dry-run a module, a .so older than that is stale too."""
    missing = [m.name for m in modules if not m.has_so]
    moved = [m for m in modules if m.named_dir and not m.names_own_dir]
    dirty = [m for m in modules if m.ninja == "dirty" or
             (m.ninja == "unknown" and m.has_so and sources_mtime and m.so_mtime < sources_mtime)]
    if moved:
        old = moved[0].named_dir.rsplit("/", 1)[0]
        return f"cache moved from {old}: FlashInfer would rebuild {len(moved)} module(s) ({moved[0].name})"
    if dirty:
        return (f"sources newer than the build: ninja has work in {len(dirty)} module(s) "
                f"(e.g. {dirty[0].name}); FlashInfer would silently rebuild them")
    if missing:
        return f"incomplete build: {len(missing)} module(s) without their .so (e.g. {missing[0]})"
    return ""


# --------------------------------------------------------------- server flags

VALIDATE_FLAGS_SCRIPT = r'''
import contextlib, io, json, sys
from sglang.srt.server_args import prepare_server_args
rejected, failed = {}, {}
for stage, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            prepare_server_args(argv)
    except SystemExit as exc:
        if exc.code in (0, None):
            continue
        lines = [l for l in err.getvalue().splitlines() if l.strip()]
        rejected[stage] = lines[-1] if lines else "exit %s" % exc.code
    except Exception as exc:
        failed[stage] = "%s: %s" % (type(exc).__name__, exc)
print(json.dumps({"rejected": rejected, "failed": failed}))
'''


class FlagCheck(NamedTuple):
    """SGLang's own parser on each server stage's argv. `ran`: the parser
    could be run at all (`cause` says why not); `rejected`: stage -> the
    parser's error line (the flags are wrong); `failed`: stage -> an error
    that is not about the flags (the runtime is)."""

    ran: bool
    cause: str = ""
    rejected: dict = {}
    failed: dict = {}


def validate_server_flags(python: str, prober: Prober, argvs: dict) -> FlagCheck:
    """Run the installed SGLang's parser on `argvs` (stage -> argv)."""
    if not argvs:
        return FlagCheck(ran=True)
    rc, out, err = prober([python, "-B", "-c", VALIDATE_FLAGS_SCRIPT, json.dumps(argvs)])
    if rc == 0:
        try:
            data = json.loads(out.strip().splitlines()[-1])
            return FlagCheck(ran=True, rejected=dict(data.get("rejected") or {}), failed=dict(data.get("failed") or {}))
        except (ValueError, IndexError, AttributeError):
            pass
    last = (err or out).strip().splitlines()[-1:] or [f"exit {rc}"]
    return FlagCheck(ran=False, cause=last[0][:300])
