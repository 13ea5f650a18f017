"""The container runtime against a real Docker engine.

Images are built locally (no registry is reachable): a busybox-static rootfs
imported with `docker import`, run with the host's Python bind-mounted
read-only where a stage must run inside the container.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
import yaml

from runtime_fixture import make_runtime

REPO = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0
OWNER = (4242, 4242) if IS_ROOT else (os.getuid(), os.getgid())
BUSYBOX_IMAGE = "sglprep-test/busybox:1"
ENTRY_IMAGE = "sglprep-test/own-entrypoint:1"


def engine_up() -> bool:
    try:
        from reconcile.facts_docker import engine_fact

        return engine_fact(os.environ).reachable
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not engine_up() and not os.environ.get("CI"),
                                reason="no Docker engine (CI starts one)")


def _is_static(path: str) -> bool:
    """A dynamically linked ELF names its interpreter (ld-linux) near the start."""
    with open(path, "rb") as fh:
        return b"ld-linux" not in fh.read(8192)


def busybox_binary() -> Path:
    """A statically linked busybox: the host's (Debian's busybox-static), or
    one fetched with apt-get download."""
    found = shutil.which("busybox")
    if found and _is_static(found):
        return Path(found)
    work = Path(tempfile.mkdtemp())
    subprocess.run(["apt-get", "download", "busybox-static"], cwd=work, check=True, capture_output=True)
    deb = next(work.glob("busybox-static*.deb"))
    subprocess.run(["dpkg", "-x", str(deb), str(work / "x")], check=True)
    return work / "x" / "bin" / "busybox"


def build_image(tag: str, extra: dict | None = None, changes: tuple = ()) -> None:
    """docker import of a busybox rootfs (every applet linked), with the host's
    Python layout prepared as mount points."""
    work = Path(tempfile.mkdtemp())
    root = work / "rootfs"
    for d in ("bin", "etc", "tmp", "usr/bin", "usr/lib", "usr/lib64", "opt"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    bb = busybox_binary()
    shutil.copy(bb, root / "bin" / "busybox")
    applets = subprocess.run([str(root / "bin" / "busybox"), "--list"], capture_output=True, text=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "lib").symlink_to("usr/lib")
    (root / "lib64").symlink_to("usr/lib64")
    (root / "usr/bin/python3").symlink_to("python3.11")
    (root / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\n")
    for rel, text in (extra or {}).items():
        (root / rel).write_text(text)
    with tarfile.open(work / "rootfs.tar", "w") as tar:
        tar.add(root, arcname=".")
    cmd = ["docker", "import"]
    for change in changes:
        cmd += ["--change", change]
    subprocess.run(cmd + [str(work / "rootfs.tar"), tag], check=True, capture_output=True)
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def images():
    build_image(BUSYBOX_IMAGE)
    own = (REPO / "templates" / "init-run.sh.j2").read_text().replace("{{ sglprep_version }}", "test")
    own = own.replace('printf \'  "entrypoint": "sglprep",\\n\'', 'printf \'  "entrypoint": "image",\\n\'')
    build_image(ENTRY_IMAGE, {"opt/entry.sh": own}, changes=('ENTRYPOINT ["/bin/sh", "/opt/entry.sh"]',))
    yield


class Host:
    def __init__(self, base: Path):
        self.base = base
        self.root = base / "host" / "root"
        self.name = f"sglprep-test-{os.getpid()}-{base.name[-6:].lower().replace('_', '')}"
        (base / "host").mkdir()
        self.root.mkdir()
        (self.root / "models").mkdir()
        for p in (base / "host", self.root, self.root / "models"):
            if IS_ROOT:
                os.chown(p, *OWNER)
        self.state = {
            "version": 1,
            "storage": {"root": str(self.root), **({"owner": f"{OWNER[0]}:{OWNER[1]}"} if IS_ROOT else {})},
            "runtime": {"kind": "docker", "python": "python3",
                        "container": {"name": self.name, "image": BUSYBOX_IMAGE, "gpus": "none", "cap_add": []}},
            "caches": {"deep_gemm": "skip", "moe_tune": "skip", "flashinfer": "skip", "inductor": "skip"},
            "telemetry": {"probe": False},
            "timeouts": {"pointer_s": 30, "teardown_s": 2, "readiness_s": 30, "stage_s": 60, "lock_s": 2},
            "heartbeat_s": 1,
        }
        self.write()

    def write(self, **over) -> None:
        def merge(a, b):
            out = dict(a)
            for k, v in b.items():
                out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
            return out

        self.state = merge(self.state, over)
        (self.base / "s.yaml").write_text(yaml.safe_dump(self.state, sort_keys=False))

    def run(self, *args, env=None):
        full = {k: v for k, v in os.environ.items() if k not in ("SUDO_UID", "SUDO_GID")}
        full.update(NO_COLOR="1", PYTHONPATH=str(REPO), **(env or {}))
        return subprocess.run([sys.executable, "-m", "reconcile", "-f", "s.yaml", *args], cwd=self.base, env=full,
                              capture_output=True, text=True, timeout=300)

    def inspect(self) -> dict:
        out = subprocess.run(["docker", "inspect", self.name], capture_output=True, text=True)
        return json.loads(out.stdout)[0] if out.returncode == 0 else {}

    def pointer(self) -> dict:
        path = self.root / "telemetry/container_run_meta.env"
        return dict(line.split("=", 1) for line in path.read_text().splitlines()) if path.exists() else {}


@pytest.fixture
def host(images):
    base = Path(tempfile.mkdtemp(prefix="sglprep-docker-"))
    base.chmod(0o755)
    h = Host(base)
    yield h
    subprocess.run(["docker", "rm", "-f", h.name], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def change(doc: dict, address: str) -> dict:
    return next(c for c in doc["changes"] if c["address"] == address)


def test_container_lifecycle_create_noop_replace_stop_start(host):
    doc = json.loads(host.run("plan", "--json").stdout)
    assert change(doc, f"container:{host.name}")["action"] == "create"
    assert change(doc, "file:telemetry/sglprep/init-run.sh")["action"] == "create"

    proc = host.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    info = host.inspect()
    assert info["State"]["Running"]
    assert info["Config"]["User"] == f"{OWNER[0]}:{OWNER[1]}"
    assert info["Config"]["Labels"]["sglprep.managed-by"] == "sglprep"
    assert info["Config"]["Labels"]["sglprep.config-hash"].startswith("sha256:")
    env = dict(e.split("=", 1) for e in info["Config"]["Env"])
    assert env["SGLANG_DG_CACHE_DIR"] == "/profiles/deep_gemm" and env["RUN_FILE_UID"] == str(OWNER[0])
    assert env["HOST_PROFILES_ROOT"] == str(host.root / "profiles")
    targets = {m["Destination"]: m for m in info["Mounts"]}
    assert {"/telemetry", "/profiles", "/models", "/huggingface", "/opt/sglprep/init-run.sh"} <= set(targets)
    assert targets["/opt/sglprep/init-run.sh"]["RW"] is False

    # the container published its pointer; its manifest names this container
    pointer = host.pointer()
    manifest = json.loads(Path(pointer["CONTAINER_RUN_META_JSON_HOST"]).read_text())
    assert pointer["CONTAINER_RUN_META_JSON"] == f"/telemetry/container_runs/{manifest['container_run_id']}.json"
    assert manifest["container_id"] == info["Id"]
    assert manifest["paths"]["host"]["profiles_root"] == str(host.root / "profiles")
    assert set(manifest["profile_cache"]["start"]) >= {"schema_version", "triton", "flashinfer", "deep_gemm"}
    assert manifest["profile_cache"]["start"]["flashinfer"]["valid"] is False
    assert manifest["profile_cache"]["start"]["flashinfer"]["reason"] == "no signature"
    # no telemetry binaries in this image: each surface says it is expected, none is running
    assert manifest["services"] == []
    assert manifest["telemetry_surfaces"]["prometheus"]["state"] == "expected"
    assert manifest["paths"]["container"]["prep_result"] == \
        f"/telemetry/container_runs/{manifest['container_run_id']}/prep_result.json"
    assert "git_revision" in manifest
    if IS_ROOT:  # written by the container as the storage owner
        assert Path(pointer["CONTAINER_RUN_META_JSON_HOST"]).stat().st_uid == OWNER[0]

    # converged: nothing to do, the container is not touched
    started = info["State"]["StartedAt"]
    assert host.run("plan", "--detailed-exitcode").returncode == 0
    proc = host.run("apply")
    assert proc.returncode == 0 and "nothing to do" in proc.stdout
    again = host.inspect()
    assert (again["Id"], again["State"]["StartedAt"]) == (info["Id"], started)

    # an env change replaces it and says why
    host.write(runtime={"container": {"env": {"SGLPREP_TEST": "1"}}})
    doc = json.loads(host.run("plan", "--json").stdout)
    c = change(doc, f"container:{host.name}")
    assert (c["action"], c["message"]) == ("replace", "env SGLPREP_TEST added")
    assert host.run("apply").returncode == 0
    replaced = host.inspect()
    assert replaced["Id"] != info["Id"]
    assert json.loads(Path(host.pointer()["CONTAINER_RUN_META_JSON_HOST"]).read_text())["container_id"] == \
        replaced["Id"]

    # stopped: start it; the stale pointer goes before the start and a fresh one appears
    subprocess.run(["docker", "stop", "-t", "1", host.name], check=True, capture_output=True)
    old_pointer = host.pointer()
    doc = json.loads(host.run("plan", "--json").stdout)
    assert change(doc, f"container:{host.name}")["action"] == "update"
    assert change(doc, "pointer:container_run_meta.env")["action"] == "delete"
    assert host.run("apply").returncode == 0
    assert host.inspect()["State"]["Running"]
    assert host.pointer()["CONTAINER_RUN_META_JSON"] != old_pointer["CONTAINER_RUN_META_JSON"]
    assert host.run("plan", "--detailed-exitcode").returncode == 0

    # state: absent stops and removes it
    host.write(runtime={"container": {"state": "absent"}})
    doc = json.loads(host.run("plan", "--json").stdout)
    assert change(doc, f"container:{host.name}")["action"] == "delete"
    assert host.run("apply").returncode == 0
    assert host.inspect() == {}


def test_manifest_from_another_container_is_rejected(host):
    assert host.run("apply").returncode == 0
    pointer = host.root / "telemetry/container_run_meta.env"
    manifest = host.root / "telemetry/container_runs/container-run-other.json"
    manifest.write_text(json.dumps({"container_run_id": "container-run-other", "container_id": "f" * 64}))
    pointer.write_text(f"CONTAINER_RUN_META_JSON=/telemetry/container_runs/container-run-other.json\n"
                       f"CONTAINER_RUN_META_JSON_HOST={manifest}\n")
    if IS_ROOT:
        os.chown(pointer, *OWNER)
        os.chown(manifest, *OWNER)
    doc = json.loads(host.run("plan", "--json").stdout)
    c = change(doc, "pointer:container_run_meta.env")
    assert c["action"] == "delete"
    assert c["message"] == f"stale: manifest belongs to container ffffffffffff, not {host.inspect()['Id'][:12]}"


def test_unreachable_engine_is_blocked(host):
    proc = host.run("plan", env={"DOCKER_HOST": "unix:///tmp/sglprep-no-such-engine.sock"})
    assert proc.returncode == 1
    assert f"! container  {host.name}" in proc.stdout
    assert "blocked: Docker engine unreachable at unix:///tmp/sglprep-no-such-engine.sock" in proc.stdout
    proc = host.run("apply", env={"DOCKER_HOST": "unix:///tmp/sglprep-no-such-engine.sock"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


def test_unmanaged_container_with_the_name_is_blocked(host):
    subprocess.run(["docker", "run", "-d", "--name", host.name, BUSYBOX_IMAGE, "sleep", "300"], check=True,
                   capture_output=True)
    proc = host.run("plan")
    assert proc.returncode == 1 and "sglprep does not manage it" in proc.stdout


def test_missing_image_fails_to_pull_with_a_clear_error(host):
    host.write(runtime={"container": {"image": "sglprep-test/does-not-exist:1"}})
    doc = json.loads(host.run("plan", "--json").stdout)
    assert change(doc, f"container:{host.name}")["message"] == \
        "image sglprep-test/does-not-exist:1 (pulls sglprep-test/does-not-exist:1)"
    proc = host.run("apply")
    assert proc.returncode == 1
    assert f"failed    container:{host.name}  cannot pull sglprep-test/does-not-exist:1" in proc.stdout


def test_image_with_its_own_entrypoint_publishes_the_pointer(host):
    host.write(runtime={"container": {"image": ENTRY_IMAGE, "entrypoint": "image"}})
    doc = json.loads(host.run("plan", "--json").stdout)
    assert not any(c["address"] == "file:telemetry/sglprep/init-run.sh" for c in doc["changes"])
    proc = host.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads(Path(host.pointer()["CONTAINER_RUN_META_JSON_HOST"]).read_text())
    assert manifest["entrypoint"] == "image" and manifest["container_id"] == host.inspect()["Id"]


def test_a_stage_runs_inside_the_container_as_the_storage_owner(host):
    shared = host.base / "shared"  # the fake SGLang runtime, mounted at the same path in the container
    shared.mkdir()
    env = make_runtime(shared / "rt")
    fake = shared / "fake_sglang"
    shutil.copytree(REPO / "tests" / "fake_sglang", fake)
    env["PYTHONPATH"] = f"{fake}:{shared / 'rt' / 'site'}"
    env["PATH"] = f"{shared / 'rt' / 'bin'}:/usr/bin:/bin"
    for p in [shared, *shared.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o055)
    (host.root / "models" / "demo").mkdir()
    (host.root / "models" / "demo" / "config.json").write_text(json.dumps(
        {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "max_position_embeddings": 131072,
         "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
         "num_hidden_layers": 2, "vocab_size": 32000}))
    if IS_ROOT:
        for p in (host.root / "models" / "demo", host.root / "models" / "demo" / "config.json"):
            os.chown(p, *OWNER)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ro = [{"source": p, "target": p, "read_only": True} for p in ("/usr/lib", "/usr/lib64", str(shared))]
    ro.append({"source": "/usr/bin/python3.11", "target": "/usr/bin/python3.11", "read_only": True})
    ro.append({"source": shutil.which("ninja"), "target": "/usr/bin/ninja", "read_only": True})  # FlashInfer JIT
    host.write(runtime={"env": env, "container": {"mounts": ro}}, model={"path": "/models/demo"},
               server={"port": port, "settings": {"kv_cache_dtype": "fp8_e4m3"}},
               caches={"flashinfer": {"mode": "ensure", "attention_backend": "flashinfer"}})
    doc = json.loads(host.run("plan", "--json").stdout)
    assert change(doc, "stage:flashinfer")["action"] == "run"
    assert change(doc, "stage:flashinfer")["message"] == f"probed once container:{host.name} runs"

    proc = host.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "RESULT_STATUS ok deep_gemm:skipped moe_tune:skipped flashinfer:ok " \
                                           "inductor:skipped"
    manifest = json.loads(Path(host.pointer()["CONTAINER_RUN_META_JSON_HOST"]).read_text())
    run_dir = host.root / "telemetry/container_runs" / manifest["container_run_id"]
    result = json.loads((run_dir / "prep_result.json").read_text())
    assert result["run"]["run_id"] == manifest["container_run_id"]
    fi = result["stages"]["flashinfer"]
    assert fi["status"] == "ok" and fi["artifacts"]["cleanup"]["killed"]
    assert fi["artifacts"]["workspace_dir"]["container_path"] == "/profiles/flashinfer"
    assert result["run"]["settings"]["env"]["FLASHINFER_WORKSPACE_BASE"] == "/profiles/flashinfer"
    cache = host.root / "profiles/flashinfer/.cache/flashinfer"
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".so") for p in files)
    assert {(p.stat().st_uid, p.stat().st_gid) for p in files} == {OWNER}, "cache files must belong to the owner"
    log = Path(manifest["paths"]["container"]["log_file"].replace("/telemetry", str(host.root / "telemetry"), 1))
    assert "[OPTIMIZE flashinfer] starting" in log.read_text()

    # converged: the second apply neither starts a server nor touches the container
    info = host.inspect()
    assert host.run("plan", "--detailed-exitcode").returncode == 0
    proc = host.run("apply")
    assert proc.returncode == 0 and "nothing to do" in proc.stdout
    again = host.inspect()
    assert (again["Id"], again["State"]["StartedAt"]) == (info["Id"], info["State"]["StartedAt"])


def test_custom_stage_runs_in_the_container(host):
    """Custom stages get the same seam as the built-ins: docker exec as the owner."""
    script = host.base / "warm.py"
    script.write_text("import os\nd = os.environ['SGLPREP_CACHE_DIR']\n"
                      "open(os.path.join(d, 'kernels.bin'), 'w').write(os.environ['TORCHINDUCTOR_CACHE_DIR'])\n")
    script.chmod(0o644)
    ro = [{"source": p, "target": p, "read_only": True} for p in ("/usr/lib", "/usr/lib64", str(host.base))]
    ro.append({"source": "/usr/bin/python3.11", "target": "/usr/bin/python3.11", "read_only": True})
    bin_dir = host.base / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/usr/bin/python3\nprint('NVIDIA H100 80GB HBM3, 9.0, 580.159.04')\n")
    smi.chmod(0o755)
    host.write(runtime={"env": {"PATH": f"{bin_dir}:/usr/bin:/bin"}, "container": {"mounts": ro}},
               caches={"custom": {"blk": {"command": ["python3", str(script)], "signature": {"v": 1}}}})
    proc = host.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1].endswith("custom/blk:ok")
    out = host.root / "profiles/custom/blk/kernels.bin"
    assert out.read_text() == "/profiles/torchinductor"  # routed as the container sees it
    assert (out.stat().st_uid, out.stat().st_gid) == OWNER
    assert host.run("plan", "--detailed-exitcode").returncode == 0


PROM_IMAGE = "sglprep-test/prometheus:1"


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus is not installed")
def test_the_container_starts_prometheus_as_the_owner_and_records_it(host):  # and node_exporter
    """An image with Prometheus: the init script starts it on the configured
    port with its TSDB under telemetry/prometheus/<run_id>/, as the storage
    owner, and the manifest records the service and the live surface."""
    work = Path(tempfile.mkdtemp())
    try:
        build_image(PROM_IMAGE)
        prom_bin = work / "prometheus"
        shutil.copy(shutil.which("prometheus"), prom_bin)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ro = [{"source": p, "target": p, "read_only": True} for p in ("/usr/lib", "/usr/lib64")]
        ro.append({"source": str(prom_bin), "target": "/usr/bin/prometheus", "read_only": True})
        exporter = shutil.which("prometheus-node-exporter")  # Debian's node_exporter, when installed
        if exporter:
            ro.append({"source": exporter, "target": "/usr/bin/prometheus-node-exporter", "read_only": True})
        prom_bin.chmod(0o755)
        work.chmod(0o755)
        host.write(runtime={"container": {"image": PROM_IMAGE, "mounts": ro}},
                   telemetry={"prometheus_url": f"http://127.0.0.1:{port}"})
        proc = host.run("apply")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        manifest = json.loads(Path(host.pointer()["CONTAINER_RUN_META_JSON_HOST"]).read_text())
        [prom] = [s for s in manifest["services"] if s["name"] == "prometheus"]
        assert prom["status"] == "running" and prom["url"] == f"http://127.0.0.1:{port}" and prom["pid"] > 0
        assert manifest["telemetry_surfaces"]["prometheus"] == {"state": "live", "warning": None}
        assert manifest["telemetry_surfaces"]["jaeger"]["state"] == "expected"
        import httpx

        if exporter:
            [node] = [s for s in manifest["services"] if s["name"] == "node_exporter"]
            assert node["status"] == "running" and manifest["telemetry_surfaces"]["node_exporter"]["state"] == "live"
            assert "node_" in httpx.get("http://127.0.0.1:9100/metrics", timeout=5).text

        ready = httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=5)
        assert ready.status_code == 200
        tsdb = host.root / "telemetry/prometheus" / manifest["container_run_id"]
        assert tsdb.is_dir()
        if IS_ROOT:
            assert tsdb.stat().st_uid == OWNER[0]
    finally:
        subprocess.run(["docker", "rm", "-f", host.name], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
