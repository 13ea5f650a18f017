"""Custom stages (`caches.custom.<name>`): the user's own command primes
`profiles/custom/<name>`, optionally proven by a verify command. The
signature is the runtime, the user's `signature` values, the command's hash
and the stage's env; no model or tp unless the user puts them there."""
from __future__ import annotations

import re

from ..facts_host import tree_stats
from ..redaction import redact_argv
from ..state_spec import MODES, S
from .spec import Stage, StageFailed


NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*$")


def _name_check(name: str) -> str | None:
    return None if NAME_RE.match(name) else "custom stage names use [a-z0-9_-] and start with a letter"


class Custom(Stage):
    kind = "custom"
    exit_code = 14
    starts_server = False
    uses_sglang = False
    options = {
        "mode": S(kind="enum", choices=MODES, default="ensure"),
        "command": S(kind="list", item=S(kind="str"), required=True,
                     check=lambda v: None if v else "must name a program"),
        "env": S(kind="dict", item=S(kind="str"), default={}),
        "signature": S(kind="dict", item=S(kind="any"), default={}),
        "verify": S(kind="list", item=S(kind="str"), default=None),
        "timeout_s": S(kind="number", minimum=0, exclusive_minimum=True, default=None),
    }
    doc = "your own command, one cache dir per stage"

    def __init__(self, data: dict, name: str):
        super().__init__(data, name)
        self.short = name.split("/", 1)[1]
        self.cache_dir = f"profiles/custom/{self.short}"

    @classmethod
    def option_spec(cls):
        """`caches.custom`: a mapping of stage names to their settings."""
        return S(kind="dict", default={}, item=S(kind="map", fields=cls.options), key_check=_name_check)

    @classmethod
    def instances(cls, data: dict) -> list:
        return [cls(data, f"custom/{name}") for name in sorted(data["caches"]["custom"])]

    @property
    def opts(self) -> dict:
        return self.data["caches"]["custom"][self.short]

    @property
    def directory_dep(self) -> str:
        return "profiles"  # profiles/custom/<name> is the stage's own, created by it

    def signature_rel(self, slug: str) -> str:
        return f"{self.cache_dir}/signature.json"

    def signature(self, slug: str, runtime, known_settings) -> dict:
        import json

        from ..digest import sha256_hex

        from ..redaction import signed

        sig = runtime.signature()
        sig.update({key: signed(key, value) for key, value in self.opts["signature"].items()})
        sig["command_sha"] = sha256_hex(json.dumps(self.opts["command"]).encode())
        for key, value in sorted(self.opts["env"].items()):
            sig[f"env.{key}"] = signed(key, value)
        return sig

    def stage_env(self, run) -> dict:
        return {"SGLPREP_CACHE_DIR": run.rpath(self.cache_dir), "SGLPREP_STAGE": self.name}

    def prime(self, run, out, beat) -> None:
        argv = list(self.opts["command"])
        timeout = self.timeout()
        extra = self.stage_env(run)
        out.env = {**run.routing(), **extra}
        out.artifacts.update(argv=redact_argv(argv), cache_dir=run.artifact(self.cache_dir))
        before = tree_stats(run.path(self.cache_dir))
        from . import catalog

        routed = {name: rel for name, (rel, _) in catalog.caches().items()}
        routed_before = {name: tree_stats(run.path(rel)) for name, rel in routed.items()}
        beat.set("command")
        rc, tail, cleanup = run.run_command(argv, run.env(self, extra), run.rpath(self.cache_dir), timeout,
                                            (run.path(f"{self.cache_dir}/run.log"),))
        out.artifacts["cleanup"] = cleanup
        if rc is None:
            raise StageFailed("command_timeout", f"{argv[0]} still running after {timeout:g}s", log_tail=tail)
        if rc != 0:
            raise StageFailed("command_failed", f"{argv[0]} exited {rc}", exit_code=rc, log_tail=tail)
        after = tree_stats(run.path(self.cache_dir))
        out.artifacts["files"] = {"count": after.files, "bytes": after.bytes, "files_delta": after.files - before.files}
        out.artifacts["filled"] = sorted(name for name, rel in routed.items()
                                         if tree_stats(run.path(rel)) != routed_before[name])

    def fills(self, out) -> list:
        return list(out.artifacts.get("filled") or [])

    def artifact_dirs(self) -> tuple:
        return (self.cache_dir,)

    def verify(self, run, out, beat) -> dict:
        argv = list(self.opts["verify"])
        rc, tail, _ = run.run_command(argv, run.env(self, self.stage_env(run)), run.rpath(self.cache_dir),
                                      self.timeout())
        evidence = {"method": "the stage's verify command", "argv": argv, "exit_code": rc, "log_tail": tail,
                    "ok": rc == 0}
        if rc != 0:
            raise StageFailed("verify_failed", f"verify command {argv[0]} exited {rc}", evidence=evidence)
        return evidence
