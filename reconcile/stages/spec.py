"""The `Stage` base class: a cache stage's spec and its default behaviour.

A subclass per kind sets the class attributes and overrides what differs.
Instances are bound to one desired state (`data`) and are cheap to build;
they do no I/O of their own. Plan-time methods are pure functions of the
desired state and the facts they are handed; `prime()` and `verify()` run
inside a `StageRun` (stages/runner.py), which owns the processes, the lock,
the marker and the session log.
"""
from __future__ import annotations

from ..redaction import fingerprint_secret, redact_argv, signed
from ..state_flags import server_argv as common_server_argv
from ..state_spec import stage_options


class StageFailed(Exception):
    """A stage failed with one of the seeds' error types (stage JSON `error_type`)."""

    def __init__(self, error_type: str, message: str, **details):
        super().__init__(message)
        self.error_type, self.details = error_type, details


class Stage:
    """One cache-priming job. Class attributes are the kind's spec."""

    kind: str = ""  # the key under `caches:` (custom stages: `custom`)
    cache_dir: str = ""  # relative to the storage root
    caches: dict = {}  # cache name (inspect/reset) -> directory it primes
    libraries: tuple = ()  # runtime packages whose version is in the signature (`<lib>_version`)
    settings: tuple = ()  # declared server settings that shape its kernels
    signed_options: tuple = ()  # its own `caches.<kind>` options in the signature
    options: dict = {}  # its own keys under `caches.<kind>` (besides mode, verify, timeout_s, env)
    default_mode: str = "skip"
    exit_code: int = 14
    starts_server: bool = False  # needs the port, the server flags and a model
    uses_sglang: bool = True  # needs sglang in the runtime and a readable model config
    server_module: str = "sglang.launch_server"
    own_depends: tuple = ()  # addresses besides the common ones (before the server's)
    conditional_routing: dict = {}  # env var -> dir under profiles/, routed only once this cache is valid
    resource_types: tuple = ()  # extra resource types this kind plans and applies (e.g. `flashinfer`)
    portable: bool = True  # its cache can travel in a bundle to another host (relocated by relocate())
    doc: str = ""

    def __init__(self, data: dict, name: str | None = None):
        self.data = data
        self.name = name or self.kind

    # ------------------------------------------------------------ spec
    @classmethod
    def option_spec(cls):
        """The schema of `caches.<kind>`: a bare mode or a mapping."""
        return stage_options(**cls.options)

    @classmethod
    def select(cls, data: dict) -> type:
        """The class that handles this kind under `data` (a kind with
        variants, like FlashInfer's `via`, returns the variant)."""
        return cls

    @property
    def opts(self) -> dict:
        return self.data["caches"][self.kind]

    @property
    def mode(self) -> str:
        return self.opts["mode"]

    @property
    def address(self) -> str:
        return f"stage:{self.name}"

    @property
    def file_name(self) -> str:
        """The stage's name in lock, marker and stage JSON file names."""
        return self.name.replace("/", ".")

    @property
    def key(self) -> str:
        """Its dotted state key (`caches.deep_gemm`, `caches.custom.x`)."""
        return "caches." + self.name.replace("/", ".")

    @property
    def directory_dep(self) -> str:
        return self.cache_dir

    def signature_rel(self, slug: str) -> str:
        return f"{self.cache_dir}/{slug}/signature.json"

    def manifest_rel(self, slug: str) -> str:
        """The artifact manifest, beside the signature."""
        return self.signature_rel(slug).rsplit("/", 1)[0] + "/manifest.json"

    def artifact_dirs(self) -> tuple:
        """Where this stage's artifacts live (relative to the storage root)."""
        return tuple(dict.fromkeys((*self.caches.values(), self.cache_dir)))

    def keeps(self, rel: str) -> bool:
        """Whether a file is one of this stage's artifacts (in its manifest):
        not its bookkeeping (signature, manifest, logs, locks, temp files)."""
        name = rel.rsplit("/", 1)[-1]
        return not (name in ("signature.json", "manifest.json") or name.endswith((".log", ".lock", ".tmp", ".new"))
                    or name.startswith(".write_test"))

    def bundle_keeps(self, rel: str) -> bool:
        """Whether a bundle carries this file: by default what the artifact
        manifest lists; a kind whose cache needs more than its artifacts to
        be warm elsewhere (FlashInfer's build trees) says so here."""
        return self.keeps(rel)

    def anchors(self, run) -> dict:
        """Absolute paths (as the runtime sees them) that this stage's cache
        records inside its files; a bundle carries them so the pulling host
        can relocate. Most caches record none."""
        return {}

    def relocate(self, run, anchors: dict, out) -> None:
        """Make a pulled cache valid at this host's paths (`anchors`: the
        pushing host's). Runs before the stage's checks; nothing by default."""

    def pulled_problem(self, run) -> str:
        """Whether a pulled (and relocated) cache is warm here, judged as after
        a local build ("" = warm). The artifact manifest it carried has
        already been checked file by file."""
        return ""

    def fills(self, out) -> list:
        """Caches of other kinds this run filled (inspect names), kept in the
        signature so inspect can say who primed them."""
        return []

    def repair_targets(self, damaged: tuple) -> tuple:
        """What to remove so that priming rebuilds the damaged artifacts."""
        return tuple(damaged)

    def log_rel(self, slug: str, name: str) -> str:
        return f"{self.cache_dir}/{slug}/{name}"

    def timeout(self) -> float:
        return self.opts.get("timeout_s") or self.data["timeouts"]["stage_s"]

    def depends(self, port: int, container: str = "") -> tuple:
        deps = [f"directory:{self.directory_dep}", "directory:profiles/.locks", "directory:profiles/.in_progress",
                "check:runtime", "check:free_disk"]
        deps += [f"container:{container}"] if container else []
        deps += list(self.own_depends)
        deps.append(f"orphans:{self.file_name}")  # only when a killed apply left some (else dropped)
        if self.starts_server:
            deps += ["check:gpu_count", "check:model", "check:server_flags", f"port:{port}",
                     "directory:telemetry/container_runs", "directory:telemetry/logs"]
        return tuple(deps)

    # ------------------------------------------------------------ plan time (pure)
    def signature(self, slug: str, runtime, known_settings) -> dict:
        """The signature this stage's cache must have been built for: the model
        and tp, the runtime (GPU, driver, CUDA, torch, triton, sglang), its
        libraries, the settings and options that shape its kernels, its env.
        `known_settings`: the declared server settings (others are free-form
        flags, which count for every stage that starts a server)."""
        sig = {"model_slug": slug, "tp": self.data["tp"]}
        sig.update(runtime.signature())
        for lib in self.libraries:
            sig[f"{lib}_version"] = runtime.version(lib)
        settings = self.data["server"]["settings"]
        for key in self.settings:
            sig[key] = settings.get(key)
        if self.starts_server:
            for key in sorted(k for k in settings if k not in known_settings):
                sig[key] = signed(key, settings[key])
            if self.data["server"]["extra_args"]:
                sig["extra_args"] = redact_argv(self.data["server"]["extra_args"], replace=fingerprint_secret)
        for key in self.signed_options:
            sig[key] = self.opts.get(key)
        for key, value in sorted(self.opts.get("env", {}).items()):
            sig[f"env.{key}"] = signed(key, value)
        return sig

    def launch_flags(self) -> list:
        """This stage's own flags for `sglang.launch_server`."""
        return ["--enable-metrics", "--watchdog-timeout", str(int(self.timeout()))]

    def server_argv(self) -> list:
        """Arguments of the priming server (after `python -m <server_module>`)."""
        return common_server_argv(self.data, self.data["model"]["path"], self.launch_flags())

    def verify_argv(self) -> list:
        """Arguments of the `sglang.launch_server` restart that verify uses."""
        return common_server_argv(self.data, self.data["model"]["path"], Stage.launch_flags(self)
                                  + self.launch_extra())

    def launch_extra(self) -> list:
        return []

    def flags_argv(self) -> list:
        """The argv SGLang's server parser must accept (check:server_flags)."""
        return self.server_argv()

    def option_problem(self, runtime) -> str:
        """Why this stage's options cannot work here ("" = they can). Blocks the stage."""
        if self.uses_sglang and runtime.status == "ok" and not runtime.version("sglang"):
            return f"sglang is not installed in runtime python {self.data['runtime']['python']!r}"
        return ""

    def checks(self, runtime, kind: str) -> list:
        """Preflight checks of this kind (`check:*` changes), once per plan."""
        return []

    # ------------------------------------------------------------ plan time (facts)
    def observe(self, facts, ctx, runtime) -> str:
        """A host-side reason the cache would rebuild although its signature
        matches ("" = none). Read-only; only FlashInfer has one today."""
        return ""

    def resources(self, facts, ctx, runtime) -> list:
        """Extra changes of `resource_types` this stage plans (before the stages)."""
        return []

    def diff_resource(self, address: str, facts, ctx, runtime):
        """Re-diff one of this kind's extra resources (apply's re-check)."""
        return None

    def apply_resource(self, change) -> str:
        """Carry out one of this kind's extra resources (as the storage owner)."""
        raise NotImplementedError(change.address)

    # ------------------------------------------------------------ apply time
    def prime(self, run, out, beat) -> None:
        """Fill the cache (inside the run's lock and marker). Raise StageFailed."""
        raise NotImplementedError(self.kind)

    def verify(self, run, out, beat) -> dict:
        """Prove the cache warm (`verify: true`): the evidence, or StageFailed.
        The default restarts the server with SGLANG_CRASH_ON_JIT_COMPILE=1."""
        return run.verify_restart(self, beat)
