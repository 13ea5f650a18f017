"""The desired SGLang container, as canonical data, and its config hash.

Like docker compose's `com.docker.compose.config-hash`, the canonical config
(sorted, with host paths resolved) is hashed into the label
`sglprep.config-hash`; the config itself rides along in `sglprep.config` so a
replace can name what differs (image, a mount, an env key).
"""
from __future__ import annotations

import posixpath

from .digest import sha256_hex
from .state_flags import cache_env

LABEL_MANAGED = "sglprep.managed-by"
LABEL_HASH = "sglprep.config-hash"
LABEL_CONFIG = "sglprep.config"
INIT_SCRIPT_HOST = "telemetry/sglprep/init-run.sh"
INIT_SCRIPT_CONTAINER = "/opt/sglprep/init-run.sh"
HF_CONTAINER = "/huggingface"
MOUNTS = (("telemetry", "/telemetry"), ("profiles", "/profiles"), ("models", "/models"),
          ("huggingface", HF_CONTAINER))


def container_config(data: dict, root: str, owner_spec: str, init_script_sha: str, host: str) -> dict:
    """The canonical desired config (pure)."""
    c = data["runtime"]["container"]
    uid, _, gid = owner_spec.partition(":")
    mounts = [{"source": posixpath.join(root, rel), "target": target, "read_only": False} for rel, target in MOUNTS]
    if c["entrypoint"] == "sglprep":
        mounts.append({"source": posixpath.join(root, INIT_SCRIPT_HOST), "target": INIT_SCRIPT_CONTAINER,
                       "read_only": True})
    mounts += [{"source": m["source"], "target": m["target"], "read_only": m["read_only"]} for m in c["mounts"]]
    env = cache_env("/profiles")
    env.update({
        "HF_HOME": HF_CONTAINER,
        "RUN_FILE_UID": uid, "RUN_FILE_GID": gid,
        "HOST_TELEMETRY_ROOT": posixpath.join(root, "telemetry"),
        "HOST_PROFILES_ROOT": posixpath.join(root, "profiles"),
        "HOST_MODELS_ROOT": posixpath.join(root, "models"),
        "HOST_HF_ROOT": posixpath.join(root, "huggingface"),
        "SGLPREP_IMAGE": c["image"],
        "SGLPREP_HOST": host,
        "SGLPREP_PROMETHEUS_LISTEN": prometheus_listen(data["telemetry"]["prometheus_url"]),
    })
    env.update(c["env"])
    return {
        "image": c["image"],
        "name": c["name"],
        "user": owner_spec,
        "network": c["network"],
        "gpus": c["gpus"],
        "cap_add": sorted(c["cap_add"]),
        "mounts": sorted(mounts, key=lambda m: m["target"]),
        "env": dict(sorted(env.items())),
        "entrypoint": c["entrypoint"],
        "command": ["/bin/sh", INIT_SCRIPT_CONTAINER] if c["entrypoint"] == "sglprep" else None,
        "init_script": init_script_sha if c["entrypoint"] == "sglprep" else None,
    }


def prometheus_listen(url: str) -> str:
    """host:port Prometheus listens on, from telemetry.prometheus_url."""
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    return rest if ":" in rest.rsplit("]", 1)[-1] else f"{rest}:{443 if url.startswith('https') else 80}"


def config_hash(config: dict) -> str:
    import json

    return sha256_hex(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())


def config_delta(old: dict, new: dict) -> list[str]:
    """What differs, in words: `image a → b`, `env X changed`, `mount /models changed`."""
    out = []
    for key in ("image", "user", "network", "gpus", "cap_add", "entrypoint", "command", "init_script"):
        if old.get(key) != new.get(key):
            if key in ("image", "user", "network", "entrypoint"):
                out.append(f"{key} {old.get(key)} → {new.get(key)}")
            elif key == "init_script":
                out.append("init script changed")
            else:
                out.append(f"{key} changed")
    old_env, new_env = old.get("env") or {}, new.get("env") or {}
    for key in sorted(set(old_env) | set(new_env)):
        if key not in old_env:
            out.append(f"env {key} added")
        elif key not in new_env:
            out.append(f"env {key} removed")
        elif old_env[key] != new_env[key]:
            out.append(f"env {key} changed")
    old_m = {m["target"]: m for m in old.get("mounts") or []}
    new_m = {m["target"]: m for m in new.get("mounts") or []}
    for target in sorted(set(old_m) | set(new_m)):
        if old_m.get(target) != new_m.get(target):
            what = "added" if target not in old_m else "removed" if target not in new_m else "changed"
            out.append(f"mount {target} {what}")
    return out or ["config changed"]
