"""Cache bundles through a real OCI registry (Debian's docker-registry on
loopback): a host that compiled pushes, a host at another storage root
pulls instead of compiling, a tampered bundle is refused with nothing
written, a registry that is down means compiling here."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from test_stages import DENSE, Rig

from registry_fixture import free_port, needs_registry

PRIME = """
import json, os, time
d = os.environ["SGLPREP_CACHE_DIR"]
os.makedirs(os.path.join(d, "kernels"), exist_ok=True)
for i in range(3):
    open(os.path.join(d, "kernels", f"k{i}.bin"), "wb").write(os.urandom(2048))
with open(os.environ["COMPILE_LOG"], "a") as fh:
    fh.write(d + "\\n")
"""


@pytest.fixture
def hosts(registry):
    """Hosts at different storage roots with the same runtime and stage."""
    shared = Path(tempfile.mkdtemp(prefix="sglprep-bundle-shared-"))
    shared.chmod(0o755)
    (shared / "prime.py").write_text(PRIME)
    (shared / "prime.py").chmod(0o644)
    log = shared / "compiled.log"
    log.touch()
    log.chmod(0o666)
    made = []

    def make(registry_addr: str = registry[0], repository: str = "fleet"):
        base = Path(tempfile.mkdtemp(prefix="sglprep-bundle-"))
        base.chmod(0o755)
        rig = Rig(base, DENSE)
        rig.write(caches={"deep_gemm": "skip", "flashinfer": "skip", "inductor": "skip",
                          "custom": {"warm": {"command": [rig.state["runtime"]["python"], str(shared / "prime.py")],
                                              "env": {"COMPILE_LOG": str(log)}}}},
                  bundles={"registry": registry_addr, "repository": repository, "insecure": True, "timeout_s": 3})
        made.append(base)
        return rig

    yield make, log
    for base in made + [shared]:
        shutil.rmtree(base, ignore_errors=True)


def stage_result(proc, rig, name: str = "custom/warm") -> dict:
    return rig.prep_result(proc)[1]["stages"][name]


@needs_registry
def test_one_host_compiles_and_pushes_another_pulls(hosts):
    make, log = hosts
    a, b = make(), make()
    proc = a.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pushed = stage_result(proc, a)["artifacts"]["bundle"]
    assert pushed["pushed"].startswith("sha256:") and pushed["files"] == 3
    assert len(log.read_text().splitlines()) == 1

    doc = json.loads(b.run("plan", "--json").stdout)
    change = next(c for c in doc["changes"] if c["address"] == "stage:custom/warm")
    assert change["action"] == "run" and "; pull bundle sha256:" in change["message"]
    listed = json.loads(b.run("bundles", "list", "--json").stdout)
    [row] = [r for r in listed["stages"] if r["stage"] == "custom/warm"]
    assert row["present"] and row["tag"] == pushed["tag"] and row["tag"] in listed["tags"]
    proc = b.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pulled = stage_result(proc, b)["artifacts"]["bundle"]
    assert pulled["pulled"] == pushed["pushed"] and pulled["files"] == 3
    assert len(log.read_text().splitlines()) == 1, "the second host compiled instead of pulling"
    for name in ("k0.bin", "k1.bin", "k2.bin"):
        assert (b.root / "profiles/custom/warm/kernels" / name).read_bytes() == \
            (a.root / "profiles/custom/warm/kernels" / name).read_bytes()
    if os.geteuid() == 0:
        assert (b.root / "profiles/custom/warm/kernels/k0.bin").stat().st_uid == 4242
    assert b.run("plan", "--detailed-exitcode").returncode == 0  # pulled, proven, converged
    assert b.run("plan", "--verify", "--detailed-exitcode").returncode == 0
    # layers are streamed through private temp files, never left behind
    assert not list(Path(tempfile.gettempdir()).glob("sglprep-bundle-*.tar.gz"))


@needs_registry
def test_a_tampered_bundle_is_refused_and_nothing_of_it_is_written(hosts, registry):
    make, log = hosts
    a = make(repository="tamper")
    proc = a.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    blobs = registry[1] / "docker/registry/v2/blobs/sha256"

    def blob(digest: str) -> Path:
        hexed = digest.split(":", 1)[1]
        return blobs / hexed[:2] / hexed / "data"

    manifest = json.loads(blob(stage_result(proc, a)["artifacts"]["bundle"]["pushed"]).read_text())
    layer = blob(manifest["layers"][0]["digest"])
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    layer.write_bytes(bytes(data))
    b = make(repository="tamper")
    before = len(log.read_text().splitlines())
    proc = b.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warm = stage_result(proc, b)
    assert any("refused" in w and ("digest mismatch" in w or "gzip" in w.lower() or "does not match" in w)
               for w in warm["warnings"]), warm["warnings"]
    assert len(log.read_text().splitlines()) == before + 1  # compiled here instead
    assert not list((b.root / "profiles").glob(".bundle-*")), "a staging dir was left behind"


def test_bundle_members_that_escape_or_link_are_refused(tmp_path):
    from reconcile.exec_bundles import BundleError, unpack

    def layer(members):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, kind in members:
                info = tarfile.TarInfo(name)
                if kind == "link":
                    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                    tar.addfile(info)
                else:
                    info.size = 1
                    tar.addfile(info, io.BytesIO(b"x"))
        return buf.getvalue()

    root = tmp_path / "root"
    (root / "profiles").mkdir(parents=True)
    owner = __import__("contextlib").nullcontext
    for members in ([("profiles/custom/warm/../../../escape", "file")], [("/etc/evil", "file")],
                    [("profiles/custom/warm/link", "link")], [("profiles/triton/other", "file")]):
        with pytest.raises(BundleError):
            unpack(layer(members), str(root), ("profiles/custom/warm",), owner, {m[0]: {} for m in members})
    assert sorted(p.name for p in (root / "profiles").iterdir()) == []
    assert not (tmp_path / "escape").exists()


@needs_registry
def test_a_registry_that_is_down_means_compiling_here(hosts):
    make, log = hosts
    b = make(registry_addr=f"127.0.0.1:{free_port()}")
    doc = json.loads(b.run("plan", "--json").stdout)
    change = next(c for c in doc["changes"] if c["address"] == "stage:custom/warm")
    assert "compiles here: registry 127.0.0.1:" in change["message"]
    proc = b.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warm = stage_result(proc, b)
    assert "bundle" not in warm["artifacts"] or "pushed" not in warm["artifacts"]["bundle"]
    assert any("registry unreachable" in w or "not pushed" in w for w in warm["warnings"]), warm["warnings"]


@needs_registry
def test_a_bundle_for_another_signature_under_this_tag_is_refused(hosts, registry):
    from reconcile.exec_bundles import push
    from reconcile.facts_registry import Registry

    make, log = hosts
    a = make(repository="mislabelled")
    proc = a.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pushed = stage_result(proc, a)["artifacts"]["bundle"]
    sig = {"gpu": "some other GPU", "stage": "custom/warm"}  # the tag stays, the signature differs
    files = [{"path": str(p.relative_to(a.root)), "size": p.stat().st_size,
              "sha256": "sha256:" + __import__("hashlib").sha256(p.read_bytes()).hexdigest()}
             for p in sorted((a.root / "profiles/custom/warm").rglob("*.bin"))]
    push(Registry(registry[0], True, 3, {}), "mislabelled", pushed["tag"], str(a.root), "custom/warm", sig, files, {})
    b = make(repository="mislabelled")
    before = len(log.read_text().splitlines())
    proc = b.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warm = stage_result(proc, b)
    assert any("another signature" in w for w in warm["warnings"]), warm["warnings"]
    assert len(log.read_text().splitlines()) == before + 1


@needs_registry
def test_a_flashinfer_cache_pulled_to_another_root_is_relocated_and_builds_nothing(registry):
    """FlashInfer's build.ninja records the storage root and the package's
    install path (both differ on host B); the pulled cache is relocated
    (paths, .ninja_log hashes, .ninja_deps, mtimes) and judged as a local
    build is: ninja has no work, nothing is compiled on B."""
    from test_stages import direct_rig

    if shutil.which("ninja") is None:
        pytest.skip("ninja is not installed")
    made = []
    try:
        rigs = []
        for _ in range(2):
            base = Path(tempfile.mkdtemp(prefix="sglprep-fi-bundle-"))
            base.chmod(0o755)
            made.append(base)
            rig = Rig(base, DENSE)
            direct_rig(rig)
            rig.write(bundles={"registry": registry[0], "repository": "flashinfer", "insecure": True, "timeout_s": 5})
            rigs.append(rig)
        a, b = rigs
        proc = a.run("apply")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        fi_a = stage_result(proc, a, "flashinfer")
        assert fi_a["artifacts"]["bundle"]["pushed"] and all(m["cold"] for m in fi_a["artifacts"]["modules"])

        doc = json.loads(b.run("plan", "--json").stdout)
        change = next(c for c in doc["changes"] if c["address"] == "stage:flashinfer")
        assert "; pull bundle sha256:" in change["message"], change["message"]
        proc = b.run("apply")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        fi_b = stage_result(proc, b, "flashinfer")
        assert fi_b["artifacts"]["bundle"]["pulled"] == fi_a["artifacts"]["bundle"]["pushed"], fi_b["warnings"]
        assert "modules" not in fi_b["artifacts"], "host B built FlashInfer modules instead of using the bundle"
        moved = dict(map(tuple, fi_b["artifacts"]["relocated"]["moves"]))
        assert moved[str(a.root / "profiles")] == str(b.root / "profiles")
        assert fi_b["evidence"]["ok"] and {m["ninja"] for m in fi_b["evidence"]["modules"]} == {"clean"}, fi_b["evidence"]
        ninjas = list((b.root / "profiles/flashinfer").rglob("build.ninja"))
        assert len(ninjas) == 2
        for path in ninjas:
            text = path.read_text()
            assert str(a.root) not in text and str(a.base / "rt") not in text and str(b.root) in text
            dry = subprocess.run(["ninja", "-n", "-C", str(path.parent)], capture_output=True, text=True)
            assert "no work to do" in dry.stdout, dry.stdout
        assert b.run("plan", "--detailed-exitcode").returncode == 0
    finally:
        for base in made:
            if not os.environ.get("KEEP"):
                shutil.rmtree(base, ignore_errors=True)



@needs_registry
def test_a_standard_oras_client_lists_and_pulls_a_bundle(hosts, registry, tmp_path):
    """The bundle is a plain OCI artifact: oras (the OCI client) lists its tag
    and pulls its layer, and the layer holds the stage's files."""
    oras_client = pytest.importorskip("oras.client")
    make, _ = hosts
    a = make(repository="oras-check")
    proc = a.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pushed = stage_result(proc, a)["artifacts"]["bundle"]
    client = oras_client.OrasClient(hostname=registry[0], insecure=True)
    assert pushed["tag"] in client.get_tags(f"{registry[0]}/oras-check")
    [path] = client.pull(target=f"{registry[0]}/oras-check:{pushed['tag']}", outdir=str(tmp_path))
    assert Path(path).name == f"{pushed['tag']}.tar.gz"
    if Path(path).exists():  # oras keeps the layer as the titled file, or unpacks a tar+gzip it recognises
        with tarfile.open(path) as tar:
            tar.extractall(tmp_path)  # noqa: S202 - the layer this test just pushed
    for i in range(3):
        rel = f"profiles/custom/warm/kernels/k{i}.bin"
        assert (tmp_path / rel).read_bytes() == (a.root / rel).read_bytes()


@needs_registry
def test_registry_credentials_never_reach_plans_logs_or_json(hosts):
    make, _ = hosts
    secret = "s3cret-registry-password-4711"
    env = {"SGLPREP_REGISTRY_USERNAME": "fleet", "SGLPREP_REGISTRY_PASSWORD": secret}
    a = make(repository="creds")
    outputs = [a.run("plan", "--json", env=env), a.run("apply", env=env), a.run("bundles", "list", "--json", env=env)]
    assert outputs[1].returncode == 0, outputs[1].stdout + outputs[1].stderr
    for proc in outputs:
        assert secret not in proc.stdout + proc.stderr
    import base64

    encoded = base64.b64encode(f"fleet:{secret}".encode()).decode()
    for path in a.root.rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            data = path.read_bytes()
            assert secret.encode() not in data and encoded.encode() not in data, path


@needs_registry
def test_a_registry_with_token_auth_is_used_with_the_right_credentials_only(hosts, token_registry):
    make, log = hosts
    address, (user, password), counters = token_registry
    env = {"SGLPREP_REGISTRY_USERNAME": user, "SGLPREP_REGISTRY_PASSWORD": password}
    a, b = make(registry_addr=address, repository="tokens"), make(registry_addr=address, repository="tokens")
    proc = a.run("apply", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pushed" in stage_result(proc, a)["artifacts"]["bundle"]
    proc = b.run("apply", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pulled" in stage_result(proc, b)["artifacts"]["bundle"]
    assert len(log.read_text().splitlines()) == 1
    assert counters["challenges"] and counters["tokens"] and counters["forwarded"] and not counters["refused_tokens"]

    c = make(registry_addr=address, repository="tokens")  # no credentials: asked, refused, compiled here
    proc = c.run("apply", env={"HOME": str(c.base)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warm = stage_result(proc, c)
    assert "bundle" not in warm["artifacts"] and len(log.read_text().splitlines()) == 2
    assert any("HTTP 401" in w for w in warm["warnings"]), warm["warnings"]
    assert password not in proc.stdout + proc.stderr
