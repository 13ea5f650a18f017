"""Benchmark `sglprep plan` on a converged host against a hand-written floor and
an idiomatic Ansible `--check` run, plus the one-million-files case.

    python3 bench/plan_bench.py [--runs N] [--ansible-runs N] [--quick] [--no-million]
                                [--sglprep CMD] [--no-fail] [--keep]

One run builds one converged storage root (sglprep apply + four cache signature
files), then times on it, interleaved and with the order rotated every iteration:

  startup        `python -c pass` (the interpreter's fixed cost, for reference)
  floor          bench/floor_check.py (stdlib-only, the same checks done directly)
  sglprep        `sglprep plan --detailed-exitcode` (exit 0 asserted)
  sglprep_1M     the same plan with 1,000,000 empty files under profiles/triton
                 (--million; the tree is cached in bench/results/million-tree/ and
                 renamed in and out of the root around each timed run)
  ansible        `ansible-playbook --check bench/ansible/converged.yml` (fewer runs)

Ratios (medians of this run) and targets:
  ansible / sglprep        >= 100   (sglprep at least 100x faster than Ansible)
  sglprep / floor          <= 2.7
  sglprep_1M / sglprep     <= 1.1

Prints a table and writes bench/results/plan_bench-<UTC timestamp>.json. Exits 1
when a target is missed (--no-fail: report only), 3 when the bench itself fails.
Wall time is time.perf_counter() around subprocess.run, stdout to /dev/null,
NO_COLOR=1. Stdlib only; ansible-core is pip-installed into
bench/results/ansible-venv when `ansible-playbook` is not on PATH (if that
fails the ansible row is reported missing).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
FLOOR = BENCH / "floor_check.py"
PLAYBOOK = BENCH / "ansible" / "converged.yml"
MILLION_CACHE = RESULTS / "million-tree"
MILLION_DIRS = 1000
FILES_PER_DIR = 1000
SIGNATURE_STAGES = ("deep_gemm", "moe_configs", "flashinfer", "torchinductor")

TARGETS = {  # name: (numerator, denominator, op, bound)
    "ansible/sglprep": ("ansible", "sglprep", ">=", 100.0),
    "sglprep/floor": ("sglprep", "floor", "<=", 2.7),
    "sglprep_1M/sglprep": ("sglprep_1M", "sglprep", "<=", 1.1),
}
LABELS = {
    "startup": "python -c pass",
    "floor": "floor_check.py",
    "sglprep": "sglprep plan",
    "sglprep_1M": "sglprep plan, 1M files",
    "ansible": "ansible-playbook --check",
}


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[plan_bench] {msg}", file=sys.stderr, flush=True)


PYCACHE = RESULTS / "pycache"
BYTECODE_CACHE = True  # set from --bytecode-cache
NO_SITE = False  # set from --no-site


def python() -> list:
    """The interpreter the Python subjects run under (with --no-site: `-S`, the
    site-packages directories on PYTHONPATH instead, so no .pth file runs)."""
    return [sys.executable, "-S"] if NO_SITE else [sys.executable]


def base_env() -> dict:
    """NO_COLOR=1 for every subject; with BYTECODE_CACHE, .pyc files are written
    to and read from bench/results/pycache (PYTHONPYCACHEPREFIX) even where the
    environment sets PYTHONDONTWRITEBYTECODE, as an installed package has its .pyc
    files from pip. Without it every run recompiles every imported module."""
    env = dict(os.environ, NO_COLOR="1")
    env.pop("FORCE_COLOR", None)
    if BYTECODE_CACHE:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    if NO_SITE:
        import site

        env["PYTHONPATH"] = os.pathsep.join([*site.getsitepackages(), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_checked(argv, what, env=None, expect=(0,), capture=True, cwd=REPO) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, cwd=cwd, env=env or base_env(), text=True,
                          stdout=subprocess.PIPE if capture else subprocess.DEVNULL, stderr=subprocess.PIPE)
    if proc.returncode not in expect:
        raise BenchError(f"{what}: `{shlex.join(map(str, argv))}` exited {proc.returncode}, expected "
                         f"{'/'.join(map(str, expect))}\n{proc.stdout or ''}{proc.stderr}")
    return proc


def timed(argv, env, what) -> float:
    """Wall seconds of one run; stdout to /dev/null; exit 0 asserted."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise BenchError(f"{what}: exited {proc.returncode} (expected 0: the root must stay converged)\n"
                         f"{proc.stderr.decode(errors='replace')}")
    return elapsed


# ------------------------------------------------------------------- set-up

class Fixture:
    """A converged storage root in bench/results/run-*/ (same filesystem as the
    million-file cache, so the tree can be renamed in and out)."""

    def __init__(self, sglprep: list, owner_arg: str):
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="run-", dir=RESULTS))
        os.chmod(self.work, 0o755)
        self.is_root = os.geteuid() == 0
        if self.is_root:
            uid, _, gid = owner_arg.partition(":")
            self.uid, self.gid = int(uid), int(gid)
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
        parent = self.work / "storage"
        parent.mkdir()
        if self.is_root:
            os.chown(parent, self.uid, self.gid)  # the owner creates the root itself
        self.root = parent / "root"
        self.state = self.work / "state.yaml"
        owner_line = f', owner: "{self.uid}:{self.gid}"' if self.is_root else ""
        # Every cache stage skipped: with an active stage, plan probes the
        # runtime (starts its Python, nvidia-smi), which this bench leaves out.
        # Skipped stages read no signature.json.
        self.state.write_text(f"version: 1\nstorage: {{root: {json.dumps(str(self.root))}{owner_line}}}\n"
                              "caches: {deep_gemm: skip, moe_tune: skip, flashinfer: skip, inductor: skip}\n"
                              "runtime: {kind: local}\n")
        self.sglprep = sglprep
        self.swapped = False

    def cli(self, *args) -> list:
        return self.sglprep + ["-f", str(self.state), *args]

    def converge(self) -> None:
        log(f"converging {self.root} (owner {self.uid}:{self.gid})")
        run_checked(self.cli("apply"), "sglprep apply")
        doc = json.loads(run_checked(self.cli("validate", "--json"), "sglprep validate").stdout)
        data = doc["desired"]
        self.slug = doc["model_slug"]
        self.port = int(data["server"]["port"])
        self.min_free_bytes = int(float(data["storage"]["min_free_gib"]) * (1 << 30))
        server_host = data["server"]["host"]
        if server_host in ("0.0.0.0", "::", ""):
            server_host = "127.0.0.1"
        self.template_vars = {"host": doc["host"], "model_slug": self.slug,
                              "sglang_target": f"{server_host}:{self.port}",
                              "scrape_interval_s": data["telemetry"]["scrape_interval_s"]}
        rendered = run_checked(self.cli("render", "prometheus.yml"), "sglprep render").stdout
        on_disk = (self.root / "telemetry/prometheus/prometheus.yml").read_text()
        if rendered != on_disk:
            raise BenchError("applied prometheus.yml differs from `sglprep render prometheus.yml`")
        self.header = rendered.partition("\n")[0]
        fields = dict(f.split("=", 1) for f in self.header.split()[2:] if "=" in f)
        self.render_key = fields["render"]
        self.signature = {"model_slug": self.slug, "model_path": data["model"]["path"], "tp": data["tp"],
                          "torch_version": "2.9.1", "sglang_version": "0.5.5", "cuda_version": "12.9",
                          "gpu": "NVIDIA GH200 480GB"}
        for stage in SIGNATURE_STAGES:
            d = self.root / "profiles" / stage / self.slug
            d.mkdir()
            f = d / "signature.json"
            f.write_text(json.dumps(dict(self.signature, stage=stage), indent=2, sort_keys=True) + "\n")
            if self.is_root:
                os.chown(d, self.uid, self.gid)
                os.chown(f, self.uid, self.gid)
        run_checked(self.cli("plan", "--detailed-exitcode"), "sglprep plan on the converged root")
        run_checked(self.floor_argv(), "floor_check.py on the converged root")

    def floor_argv(self) -> list:
        return [*python(), str(FLOOR), str(self.root), f"{self.uid}:{self.gid}", self.render_key,
                json.dumps(self.signature, separators=(",", ":")), str(self.port), str(self.min_free_bytes)]

    def ansible_vars(self) -> Path:
        path = self.work / "ansible-vars.json"
        path.write_text(json.dumps(dict(self.template_vars, storage_root=str(self.root), storage_uid=self.uid,
                                        storage_gid=self.gid, min_free_bytes=self.min_free_bytes,
                                        server_port=self.port, prometheus_header=self.header,
                                        signature_base=self.signature)))
        return path

    # million-file tree, renamed in and out of profiles/triton
    def attach_tree(self, tree: Path) -> None:
        os.chown(tree, self.uid, self.gid)
        os.chmod(tree, 0o755)
        self.tree = tree
        self.aside = self.work / "triton-empty"

    def swap_in(self) -> None:
        os.rename(self.root / "profiles/triton", self.aside)
        os.rename(self.tree, self.root / "profiles/triton")
        self.swapped = True

    def swap_out(self) -> None:
        if self.swapped:
            os.rename(self.root / "profiles/triton", self.tree)
            os.rename(self.aside, self.root / "profiles/triton")
            self.swapped = False

    def cleanup(self, keep: bool) -> None:
        self.swap_out()
        if keep:
            log(f"kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def million_tree() -> Path:
    """1000 dirs x 1000 empty files, made once and reused while COMPLETE says so."""
    tree = MILLION_CACHE / "triton"
    marker = MILLION_CACHE / "COMPLETE"
    want = {"dirs": MILLION_DIRS, "files_per_dir": FILES_PER_DIR}
    try:
        if json.loads(marker.read_text()) == want and tree.is_dir() and \
                len(os.listdir(tree)) == MILLION_DIRS:
            log(f"reusing {MILLION_DIRS * FILES_PER_DIR:,} files in {tree}")
            return tree
    except (OSError, ValueError):
        pass
    marker.unlink(missing_ok=True)
    tree.mkdir(parents=True, exist_ok=True)
    log(f"creating {MILLION_DIRS * FILES_PER_DIR:,} empty files under {tree} (once; cached)")
    t0 = time.perf_counter()
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    names = [f"f{j:04d}" for j in range(FILES_PER_DIR)]
    for i in range(MILLION_DIRS):
        sub = tree / f"d{i:04d}"
        sub.mkdir(exist_ok=True)  # resumable: O_CREAT without O_EXCL
        dfd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name in names:
                os.close(os.open(name, flags, 0o644, dir_fd=dfd))
        finally:
            os.close(dfd)
        if (i + 1) % 100 == 0:
            done = (i + 1) * FILES_PER_DIR
            rate = done / (time.perf_counter() - t0)
            log(f"  {done:>9,} files  ({rate:,.0f}/s)")
    marker.write_text(json.dumps(want) + "\n")
    log(f"created in {time.perf_counter() - t0:.1f} s")
    return tree


def find_ansible(install: bool) -> tuple[str | None, str]:
    exe = shutil.which("ansible-playbook")
    if exe:
        return exe, "PATH"
    venv = RESULTS / "ansible-venv"
    exe = venv / "bin" / "ansible-playbook"
    if exe.exists():
        return str(exe), str(venv)
    if not install:
        return None, "ansible-playbook not found (--no-install-ansible)"
    log(f"ansible-playbook not found; pip install ansible-core into {venv}")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "ansible-core"], check=True,
                       stdout=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError) as exc:
        return None, f"pip install ansible-core failed: {exc}"
    return (str(exe), str(venv)) if exe.exists() else (None, "ansible-playbook missing after install")


def ansible_env() -> dict:
    env = base_env()
    if NO_SITE:
        env.pop("PYTHONPATH")  # ansible runs in its own interpreter, with its own site
    env.update(ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_LOCALHOST_WARNING="False",
               ANSIBLE_RETRY_FILES_ENABLED="False")
    import locale

    if locale.getpreferredencoding(False).lower().replace("-", "") != "utf8":
        env["LC_ALL"] = "C.UTF-8"  # ansible-core refuses a non-UTF-8 locale
    return env


# ------------------------------------------------------------------ statistics

def median(xs: list) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def p90(xs: list) -> float:
    s = sorted(xs)
    return s[max(0, -(-9 * len(s) // 10) - 1)]  # nearest rank


def machine_info() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""
    return {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "nproc": os.cpu_count(),
            "python": platform.python_version(), "python_executable": sys.executable,
            "machine": platform.machine(), "kernel": platform.release(),
            "git_head": git("rev-parse", "--short", "HEAD"),
            "reconcile_uncommitted_changes": bool(git("status", "--porcelain", "--", "reconcile"))}


# ------------------------------------------------------------------------ main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, help="runs of each fast subject (default 30; 10 with --quick)")
    ap.add_argument("--ansible-runs", type=int, help="ansible-playbook runs (default 3; 1 with --quick; 0: skip)")
    ap.add_argument("--quick", action="store_true", help="fewer runs, no million-file case")
    ap.add_argument("--million", action=argparse.BooleanOptionalAction, default=None,
                    help="time plan with 1,000,000 files under profiles/triton (default: on, off with --quick)")
    ap.add_argument("--sglprep", metavar="CMD",
                    help="sglprep command to time, e.g. an installed console script "
                         "(default: sys.executable -m reconcile, run from the repository root)")
    ap.add_argument("--owner", default="1000:1000", help="storage owner UID:GID when run as root (default 1000:1000)")
    ap.add_argument("--no-install-ansible", dest="install_ansible", action="store_false",
                    help="do not pip-install ansible-core when ansible-playbook is missing")
    ap.add_argument("--bytecode-cache", action=argparse.BooleanOptionalAction, default=True,
                    help="let every subject cache bytecode in bench/results/pycache (default: on; off measures "
                         "what PYTHONDONTWRITEBYTECODE=1, if set here, costs)")
    ap.add_argument("--no-site", action="store_true",
                    help="run the Python subjects with -S and site-packages on PYTHONPATH: no .pth file runs at "
                         "start-up (a sandbox may inject one that imports certifi into every interpreter)")
    ap.add_argument("--no-fail", action="store_true", help="exit 0 even when a target is missed")
    ap.add_argument("--keep", action="store_true", help="keep the converged root (bench/results/run-*)")
    args = ap.parse_args(argv)
    global BYTECODE_CACHE, NO_SITE
    BYTECODE_CACHE = args.bytecode_cache
    NO_SITE = args.no_site
    runs = args.runs or (10 if args.quick else 30)
    ansible_runs = args.ansible_runs if args.ansible_runs is not None else (1 if args.quick else 3)
    million = args.million if args.million is not None else not args.quick
    sglprep = shlex.split(args.sglprep) if args.sglprep else [*python(), "-m", "reconcile"]
    if args.sglprep:  # subjects run from the repository root: make the command absolute
        found = os.path.abspath(sglprep[0]) if "/" in sglprep[0] else shutil.which(sglprep[0])
        if not found or not os.access(found, os.X_OK):
            print(f"plan_bench: error: --sglprep {sglprep[0]!r}: not an executable", file=sys.stderr)
            return 3
        sglprep[0] = found

    fx = Fixture(sglprep, args.owner)
    try:
        return run_bench(fx, args, runs, ansible_runs, million)
    except BenchError as exc:
        print(f"plan_bench: error: {exc}", file=sys.stderr)
        return 3
    finally:
        fx.cleanup(args.keep)


def run_bench(fx: Fixture, args, runs: int, ansible_runs: int, million: bool) -> int:
    fx.converge()
    env = base_env()
    commands = {
        "startup": [*python(), "-c", "pass"],
        "floor": fx.floor_argv(),
        "sglprep": fx.cli("plan", "--detailed-exitcode"),
    }
    missing = {}

    if million:
        fx.attach_tree(million_tree())
        commands["sglprep_1M"] = commands["sglprep"]
        fx.swap_in()
        try:
            run_checked(commands["sglprep"], "sglprep plan with the million-file tree")
        finally:
            fx.swap_out()

    ansible_exe = None
    if ansible_runs > 0:
        ansible_exe, where = find_ansible(args.install_ansible)
        if ansible_exe is None:
            missing["ansible"] = where
            log(f"ansible row missing: {where}")
    if ansible_exe:
        aenv = ansible_env()
        commands["ansible"] = [ansible_exe, "-i", "localhost,", "-c", "local", "--check", str(PLAYBOOK),
                               "-e", f"@{fx.ansible_vars()}"]
        version = run_checked([ansible_exe, "--version"], "ansible-playbook --version", env=aenv).stdout
        log(f"ansible: {version.splitlines()[0]} ({where})")
        out = run_checked(commands["ansible"], "ansible-playbook --check (validation run)", env=aenv).stdout
        recap = out[out.rfind("PLAY RECAP"):]
        if "changed=0" not in recap or "failed=0" not in recap:
            raise BenchError(f"the playbook does not see a converged root:\n{out}")

    for s in ("startup", "floor", "sglprep"):  # warm-up, untimed: page cache, bytecode cache
        timed(commands[s], env, s)

    # Interleave: every iteration runs each fast subject once, ansible on
    # `ansible_runs` evenly spaced iterations; the order rotates each time.
    subjects = [s for s in ("startup", "floor", "sglprep", "sglprep_1M") if s in commands]
    iterations = max(runs, ansible_runs if "ansible" in commands else 0)
    ansible_at = {i * iterations // ansible_runs for i in range(ansible_runs)} if "ansible" in commands else set()
    times = {s: [] for s in subjects + (["ansible"] if ansible_at else [])}
    log(f"timing: {runs} runs of {', '.join(subjects)}" +
        (f"; {len(ansible_at)} of ansible" if ansible_at else ""))
    for i in range(iterations):
        order = (subjects if i < runs else []) + (["ansible"] if i in ansible_at else [])
        k = i % len(order)
        order = order[k:] + order[:k]
        if i % 2:
            order.reverse()
        for s in order:
            if s == "ansible":
                times[s].append(timed(commands[s], aenv, s))
            elif s == "sglprep_1M":
                fx.swap_in()
                try:
                    times[s].append(timed(commands[s], env, s))
                finally:
                    fx.swap_out()
            else:
                times[s].append(timed(commands[s], env, s))
        if (i + 1) % 10 == 0 or i in ansible_at:
            log(f"  iteration {i + 1}/{iterations}")

    stats = {s: {"runs": len(v), "median_s": median(v), "p90_s": p90(v), "min_s": min(v), "samples_s": v}
             for s, v in times.items()}
    ratios = {}
    for name, (num, den, op, bound) in TARGETS.items():
        if num in stats and den in stats:
            value = stats[num]["median_s"] / stats[den]["median_s"]
            ok = value >= bound if op == ">=" else value <= bound
            ratios[name] = {"value": value, "target": f"{op} {bound:g}", "met": ok}
        else:
            reason = missing.get(num) or missing.get(den) or "not run (--quick / --no-million / 0 runs)"
            ratios[name] = {"value": None, "target": f"{op} {bound:g}", "met": None, "missing": reason}
    if "startup" in stats:  # informative: what is left once the interpreter's own start is taken off
        st = stats["startup"]["median_s"]
        if stats["floor"]["median_s"] > st:
            ratios["(sglprep-startup)/(floor-startup)"] = {
                "value": (stats["sglprep"]["median_s"] - st) / (stats["floor"]["median_s"] - st),
                "target": "info", "met": None}

    print_report(stats, ratios)
    print(f"(bytecode cache: {'on, ' + str(PYCACHE.relative_to(REPO)) if BYTECODE_CACHE else 'off'}; "
          f"PYTHONDONTWRITEBYTECODE in the environment: {os.environ.get('PYTHONDONTWRITEBYTECODE') or 'unset'}"
          f"{'; Python subjects run with -S (--no-site)' if NO_SITE else ''})")
    doc = {"machine": machine_info(), "runs": runs, "bytecode_cache": BYTECODE_CACHE, "no_site": NO_SITE,
           "env_PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", ""), "ansible_runs": len(times.get("ansible", [])),
           "million": million, "million_files": MILLION_DIRS * FILES_PER_DIR if million else 0,
           "commands": {s: shlex.join(map(str, c)) for s, c in commands.items()},
           "stats": stats, "ratios": ratios, "missing": missing}
    out = RESULTS / f"plan_bench-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(REPO)}")
    missed = [n for n, r in ratios.items() if r["met"] is False]
    if missed:
        print(f"target missed: {', '.join(missed)}")
        return 0 if args.no_fail else 1
    return 0


def print_report(stats: dict, ratios: dict) -> None:
    print(f"\n{'subject':<28}{'runs':>5}{'median ms':>12}{'p90 ms':>10}{'min ms':>10}")
    for s, st in stats.items():
        print(f"{LABELS[s]:<28}{st['runs']:>5}{st['median_s'] * 1e3:>12.1f}{st['p90_s'] * 1e3:>10.1f}"
              f"{st['min_s'] * 1e3:>10.1f}")
    print(f"\n{'ratio (medians)':<36}{'measured':>10}  {'target':<8}  result")
    for name, r in ratios.items():
        if r["value"] is None:
            print(f"{name:<36}{'-':>10}  {r['target']:<8}  missing: {r['missing']}")
        else:
            result = "info" if r["met"] is None else ("met" if r["met"] else "MISSED")
            print(f"{name:<36}{r['value']:>10.2f}  {r['target']:<8}  {result}")


if __name__ == "__main__":
    sys.exit(main())
