"""Diff of `container:<name>` and of the pointer against the running container:
pure functions of the desired config and the engine's facts."""
from __future__ import annotations

from .facts_docker import ContainerFact, EngineFact, ImageFact
from .plan_model import Change
from .redaction import fingerprinted
from .state_container import LABEL_CONFIG, LABEL_HASH, LABEL_MANAGED, config_delta

CONTAINER_DEPENDS = ("directory:telemetry", "directory:telemetry/container_runs", "directory:telemetry/logs",
                     "directory:profiles", "directory:models", "directory:huggingface",
                     "pointer:container_run_meta.env")


def diff_container(want: dict, want_hash: str, state: str, engine: EngineFact, cont: ContainerFact,
                   image: ImageFact, extra_depends: tuple = ()) -> Change:
    address = f"container:{want['name']}"
    depends = CONTAINER_DEPENDS + tuple(extra_depends)
    observed = {"engine": engine.reachable, "kind": cont.kind, "id": cont.id, "status": cont.status,
                "hash": cont.labels.get(LABEL_HASH, ""), "image_id": cont.image_id, "want_image_id": image.id}
    after = {"config_hash": want_hash, "image": want["image"]} if state == "running" else None
    before = None
    if cont.kind == "present":
        before = {"id": cont.id[:12], "status": cont.status, "config_hash": cont.labels.get(LABEL_HASH, ""),
                  "image_id": cont.image_id}
    common = dict(depends_on=depends, before=before, after=after, observed=observed)
    if not engine.reachable:
        return Change(address, "blocked", "engine_unreachable",
                      f"Docker engine unreachable at {engine.endpoint} ({engine.error}) → start it "
                      f"(e.g. systemctl start docker) or set runtime.kind: local", **common)
    if cont.kind == "present" and cont.labels.get(LABEL_MANAGED) != "sglprep":
        return Change(address, "blocked", "not_managed",
                      f"a container named {want['name']} exists and sglprep does not manage it → remove or rename "
                      f"it (docker rm -f {want['name']}), or set runtime.container.name", **common)
    if state == "absent":
        if cont.kind == "missing":
            return Change(address, "noop", "absent", "absent", show=False, **common)
        return Change(address, "delete", "state_absent", f"stop and remove ({cont.status})", **common)
    pull = f" (pulls {want['image']})" if image.kind == "missing" else ""
    if cont.kind == "missing":
        return Change(address, "create", "missing", f"image {want['image']}{pull}", **common)
    if cont.labels.get(LABEL_HASH) != want_hash:
        import json

        try:
            old = json.loads(cont.labels.get(LABEL_CONFIG, "{}"))
        except ValueError:
            old = {}
        return Change(address, "replace", "config_changed", ", ".join(config_delta(old, fingerprinted(want))) + pull,
                      **common)
    if image.kind == "present" and image.id and cont.image_id and image.id != cont.image_id:
        return Change(address, "replace", "image_changed",
                      f"image {want['image']} now points to {image.id[7:19]} (container runs {cont.image_id[7:19]})",
                      **common)
    if cont.status != "running":
        return Change(address, "update", "not_running", f"start ({cont.status})", **common)
    return Change(address, "noop", "ok", f"running {cont.id[:12]}, config matches", show=False, **common)
