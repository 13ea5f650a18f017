"""Push and pull cache bundles (see facts_registry for the format).

Push happens only after a stage primed, verified and recorded its manifest;
a failed or partial cache is never pushed. Pull checks the manifest's and
every blob's digest, unpacks into a staging directory under the storage
root as the storage owner (regular files only, every path inside the
stage's own directories: no absolute path, no `..`, no link or device),
checks every file against the artifact manifest the bundle carries, and
only then moves the files into place. The stage's marker is still there
until the caller writes the signature, so a half-pulled bundle never looks
like a primed cache.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import time

from .digest import sha256_hex
from .facts_registry import ARTIFACT_TYPE, CONFIG_TYPE, LAYER_TYPE, MANIFEST_TYPE, Registry, portable_signature

MAX_BUNDLE = 64 << 30


class BundleError(Exception):
    pass


def _file_sha256(path: str) -> tuple[str, int]:
    import hashlib

    h, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def _chunks(path: str):
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            yield chunk


def _upload(registry: Registry, repository: str, data: bytes | str) -> str:
    """Upload a blob (bytes, or the path of a file streamed from disk) unless
    the registry has it; its digest."""
    import httpx

    if isinstance(data, str):
        digest, size = _file_sha256(data)
    else:
        digest, size = sha256_hex(data), len(data)
    try:
        head = registry.http.head(f"{registry.base}/{repository}/blobs/{digest}")
        if head.status_code == 200:
            return digest
        start = registry.http.post(f"{registry.base}/{repository}/blobs/uploads/")
        if start.status_code not in (201, 202):
            raise BundleError(f"registry {registry.registry}: start upload: HTTP {start.status_code}")
        location = start.headers.get("Location", "")
        if location.startswith("/"):
            location = registry.base.rsplit("/v2", 1)[0] + location
        sep = "&" if "?" in location else "?"
        done = registry.http.put(f"{location}{sep}digest={digest}",
                                 content=_chunks(data) if isinstance(data, str) else data,
                                 headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
        if done.status_code not in (201, 204):
            raise BundleError(f"registry {registry.registry}: upload {digest[:19]}: HTTP {done.status_code}")
    except httpx.HTTPError as exc:
        raise BundleError(f"registry {registry.registry}: {exc}") from None
    return digest


def pack(root: str, files: list, out) -> None:
    """tar+gzip of the manifest's files into the file object `out`, paths
    relative to the storage root."""
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=6) as tar:
        for item in files:
            path = os.path.join(root, item["path"])
            info = tar.gettarinfo(path, arcname=item["path"])
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as fh:
                tar.addfile(info, fh)


def _scratch(suffix: str):
    """A private temp file outside the storage root (the system's temp dir,
    O_EXCL, mode 0600), removed on close: bundles never sit in memory whole."""
    import tempfile

    return tempfile.NamedTemporaryFile(prefix="sglprep-bundle-", suffix=suffix)


def push(registry: Registry, repository: str, tag: str, root: str, stage: str, signature: dict, files: list,
         provenance: dict, fills: list = (), anchors: dict | None = None) -> str:
    """Push the bundle; its manifest digest. `fills`: other caches the stage
    filled (their files are in `files`); `anchors`: the absolute paths the
    cache records, so a pulling host can relocate it."""

    with _scratch(".tar.gz") as layer_file:
        pack(root, files, layer_file)
        layer_file.flush()
        layer_size = os.fstat(layer_file.fileno()).st_size
        return _push_with_layer(registry, repository, tag, stage, signature, files, provenance, fills, anchors,
                                layer_file.name, layer_size)


def _push_with_layer(registry, repository, tag, stage, signature, files, provenance, fills, anchors,
                     layer_path: str, layer_size: int) -> str:
    import httpx

    config = json.dumps({"schema_version": "1", "stage": stage, "tag": tag, "signature": signature, "files": files,
                         "fills": list(fills), "anchors": dict(anchors or {}), "provenance": provenance},
                        sort_keys=True).encode()
    layer_digest = _upload(registry, repository, layer_path)
    config_digest = _upload(registry, repository, config)
    manifest = {
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE, "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": LAYER_TYPE, "digest": layer_digest, "size": layer_size,
                    "annotations": {"org.opencontainers.image.title": f"{tag}.tar.gz"}}],
        "annotations": {"org.opencontainers.image.created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "dev.sglprep.stage": stage, "dev.sglprep.files": str(len(files)),
                        "dev.sglprep.version": provenance.get("sglprep_version", "")},
    }
    body = json.dumps(manifest, sort_keys=True).encode()
    try:
        resp = registry.http.put(f"{registry.base}/{repository}/manifests/{tag}", content=body,
                                 headers={"Content-Type": MANIFEST_TYPE})
    except httpx.HTTPError as exc:
        raise BundleError(f"registry {registry.registry}: {exc}") from None
    if resp.status_code not in (201, 200):
        raise BundleError(f"registry {registry.registry}: PUT manifest {tag}: HTTP {resp.status_code} "
                          f"{resp.text[:200]}")
    return sha256_hex(body)


def pull(registry: Registry, repository: str, tag: str, expected: str, root: str, allowed: tuple, owner,
         cache_dirs: dict | None = None, signature: dict | None = None) -> tuple[list, list, dict]:
    """Fetch, check and unpack the bundle `tag`: (files put in place, the
    caches it also fills, the anchors it recorded). `cache_dirs`: cache name
    -> dir, for the caches a bundle says its stage filled (their files may be
    unpacked there too)."""
    try:
        manifest, digest = registry.manifest(repository, tag)
    except LookupError:
        raise BundleError(f"bundle {tag} is gone from {registry.registry}") from None
    except (OSError, ValueError) as exc:
        raise BundleError(str(exc)) from None
    if expected and digest != expected:
        raise BundleError(f"bundle {tag} changed since the plan ({digest[:19]}, planned {expected[:19]})")
    try:
        layer_desc, config_desc = manifest["layers"][0], manifest["config"]
        if manifest.get("artifactType") != ARTIFACT_TYPE or layer_desc["mediaType"] != LAYER_TYPE:
            raise BundleError(f"{tag} is not an sglprep cache bundle")
        config_bytes = registry.blob(repository, config_desc["digest"], min(int(config_desc["size"]), 64 << 20))
        layer_digest, layer_size = layer_desc["digest"], min(int(layer_desc["size"]), MAX_BUNDLE)
    except (KeyError, TypeError, ValueError, IndexError):
        raise BundleError(f"bundle {tag}: malformed manifest") from None
    except OSError as exc:
        raise BundleError(str(exc)) from None
    if sha256_hex(config_bytes) != config_desc["digest"]:
        raise BundleError(f"bundle {tag}: digest mismatch ({sha256_hex(config_bytes)[:19]}, "
                          f"manifest says {config_desc['digest'][:19]})")
    try:
        config = json.loads(config_bytes)
    except ValueError:
        raise BundleError(f"bundle {tag}: its config is not JSON") from None
    def canonical(sig) -> str:
        return json.dumps(portable_signature(sig if isinstance(sig, dict) else {}), sort_keys=True, default=str)

    if signature is not None and canonical(config.get("signature")) != canonical(signature):
        raise BundleError(f"bundle {tag} was built for another signature than this host's")
    files = {f["path"]: f for f in config.get("files") or []}
    fills = [name for name in config.get("fills") or [] if name in (cache_dirs or {})]
    allowed = tuple(allowed) + tuple(cache_dirs[name] for name in fills)
    anchors = config.get("anchors") if isinstance(config.get("anchors"), dict) else {}
    with _scratch(".tar.gz") as layer_file:
        try:
            got = registry.blob_to(repository, layer_digest, layer_size, layer_file)
        except OSError as exc:
            raise BundleError(str(exc)) from None
        if got != layer_digest:
            raise BundleError(f"bundle {tag}: digest mismatch ({got[:19]}, manifest says {layer_digest[:19]})")
        layer_file.flush()
        return unpack(layer_file.name, root, allowed, owner, files), fills, anchors


def _safe_member(member: tarfile.TarInfo, allowed: tuple) -> str:
    name = member.name
    parts = name.split("/")
    if not member.isreg():
        raise BundleError(f"bundle member {name[:80]!r} is not a regular file (links and devices are refused)")
    if name.startswith("/") or ".." in parts or "" in parts or not name.startswith(allowed):
        raise BundleError(f"bundle member {name[:80]!r} escapes the stage's directories")
    return name


def unpack(layer: bytes | str, root: str, allowed: tuple, owner, files: dict) -> list:
    """Unpack a checked layer (bytes, or the path of a file) into place; see
    the module's docstring for what is refused."""
    import hashlib  # noqa: F401 - imported before privileges drop (file_digest uses it as the owner)

    from .facts_artifacts import digest as file_digest
    from .facts_host import linked_component

    allowed = tuple(a.rstrip("/") + "/" for a in allowed)
    source = {"name": layer} if isinstance(layer, str) else {"fileobj": io.BytesIO(layer)}
    try:
        tar = tarfile.open(mode="r:gz", **source)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"bundle layer is not a tar+gzip: {exc}") from None
    with tar:
        members = tar.getmembers()
        names = [_safe_member(m, allowed) for m in members]  # all checked before anything is written
        if set(names) != set(files):
            raise BundleError("bundle files differ from the artifact manifest it carries")
        staging = os.path.join(root, "profiles", f".bundle-{os.getpid()}-{os.urandom(4).hex()}")
        written = []
        with owner():
            os.mkdir(staging, 0o755)
            try:
                for member in members:
                    target = os.path.join(staging, member.name)
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    src = tar.extractfile(member)
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                    with os.fdopen(fd, "wb") as out:
                        shutil.copyfileobj(src, out)
                    os.utime(target, (member.mtime, member.mtime))
                    want = files[member.name]
                    if os.path.getsize(target) != want["size"] or file_digest(target, want["size"]) != want["sha256"]:
                        raise BundleError(f"bundle file {member.name} does not match its manifest")
                for member in members:  # all checked: put them in place
                    final = os.path.join(root, member.name)
                    rel_dir = os.path.dirname(member.name)
                    if linked_component(root, rel_dir):
                        raise BundleError(f"{rel_dir} has a symlink on its way: not writing through it")
                    os.makedirs(os.path.dirname(final), exist_ok=True)
                    os.replace(os.path.join(staging, member.name), final)
                    written.append(member.name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return written
