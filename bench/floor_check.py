"""The floor: the checks of `sglprep plan` on a converged host, done as directly
as stdlib Python can, for bench/plan_bench.py to time against sglprep.

    python3 bench/floor_check.py ROOT UID:GID RENDER_KEY SIGNATURE_JSON [PORT [MIN_FREE_BYTES]]

ROOT: storage root. UID:GID: the storage owner. RENDER_KEY: the `render=` value
the prometheus.yml header must carry. SIGNATURE_JSON: the expected signature
object of every cache stage (its "stage" key is set per stage). Exit 0: converged;
2: something differs (printed on stderr); 1: bad arguments.

No argparse, no dataclasses, no pathlib: only what the checks need.
"""
import os
import sys
from stat import S_IMODE, S_ISDIR, S_ISLNK

DIRECTORIES = (
    "telemetry", "telemetry/logs", "telemetry/prometheus", "telemetry/jaeger", "telemetry/container_runs",
    "telemetry/sglprep",
    "profiles", "profiles/triton", "profiles/torchinductor", "profiles/flashinfer", "profiles/deep_gemm",
    "profiles/moe_configs", "profiles/.locks", "profiles/.in_progress", "models", "huggingface",
)
PROMETHEUS = "telemetry/prometheus/prometheus.yml"
HEADER_PREFIX = "# sglprep-managed: "
SIGNATURE_STAGES = ("deep_gemm", "moe_configs", "flashinfer", "torchinductor")
POINTER = "telemetry/container_run_meta.env"


def writable_by(st, uid, gid):
    if uid == 0:
        return True
    if uid == st.st_uid:
        bits = 0o300
    elif gid == st.st_gid:
        bits = 0o030
    else:
        bits = 0o003
    return S_IMODE(st.st_mode) & bits == bits


def port_listening(port):
    """The cheapest check of the same question sglprep asks: can 127.0.0.1:port
    be bound (SO_REUSEADDR, as the server will)?"""
    import socket

    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        return False
    except OSError:
        return True
    finally:
        sock.close()


def main(argv):
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 1
    root, owner, render_key, signature_json = argv[:4]
    port = int(argv[4]) if len(argv) > 4 else 30000
    min_free = int(argv[5]) if len(argv) > 5 else 1 << 30
    uid, _, gid = owner.partition(":")
    uid, gid = int(uid), int(gid)
    problems = []

    # check:storage_owner
    try:
        st = os.lstat(root)
        if not S_ISDIR(st.st_mode) or (st.st_uid, st.st_gid) != (uid, gid) or not writable_by(st, uid, gid):
            problems.append(f"storage root {root}")
    except OSError:
        problems.append(f"storage root {root} missing")

    # check:free_disk
    try:
        vfs = os.statvfs(root)
        if vfs.f_bavail * vfs.f_frsize < min_free:
            problems.append("free disk")
    except OSError:
        problems.append("free disk: statvfs failed")

    # directory:* (lstat, owner, mode)
    for rel in DIRECTORIES:
        try:
            st = os.lstat(f"{root}/{rel}")
        except OSError:
            problems.append(f"directory {rel} missing")
            continue
        if S_ISLNK(st.st_mode) or not S_ISDIR(st.st_mode) or (st.st_uid, st.st_gid) != (uid, gid) \
                or not writable_by(st, uid, gid):
            problems.append(f"directory {rel}")

    # file:telemetry/prometheus/prometheus.yml: header's render key and content hash
    import hashlib

    try:
        with open(f"{root}/{PROMETHEUS}", "rb") as fh:
            data = fh.read()
        first, _, body = data.partition(b"\n")
        fields = dict(f.split("=", 1) for f in first.decode()[len(HEADER_PREFIX):].split() if "=" in f)
        if not first.startswith(HEADER_PREFIX.encode()) or fields.get("render") != render_key \
                or fields.get("content") != "sha256:" + hashlib.sha256(body).hexdigest():
            problems.append(f"file {PROMETHEUS}")
    except OSError:
        problems.append(f"file {PROMETHEUS} missing")

    # cache signatures: profiles/<stage>/<slug>/signature.json
    import json

    want = json.loads(signature_json)
    slug = want["model_slug"]
    for stage in SIGNATURE_STAGES:
        try:
            with open(f"{root}/profiles/{stage}/{slug}/signature.json", "rb") as fh:
                got = json.loads(fh.read())
        except (OSError, ValueError):
            got = None
        if got != dict(want, stage=stage):
            problems.append(f"signature {stage}")

    # lock:* and marker:* (none on a converged host)
    for rel, suffix in (("profiles/.locks", ".lock"), ("profiles/.in_progress", ".json")):
        try:
            names = os.listdir(f"{root}/{rel}")
        except OSError:
            names = ()
        if any(n.endswith(suffix) and not n.startswith(".") for n in names):
            problems.append(f"leftovers in {rel}")

    # pointer:container_run_meta.env (absent)
    if os.path.lexists(f"{root}/{POINTER}"):
        problems.append(f"pointer {POINTER} present")

    # port:30000 (nobody listening)
    if port_listening(port):
        problems.append(f"port {port} busy")

    for problem in problems:
        print(f"floor: {problem}", file=sys.stderr)
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
