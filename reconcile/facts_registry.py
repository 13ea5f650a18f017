"""Cache bundles in an OCI registry, as facts: which bundle the registry has
for a stage's signature. Read-only (HEAD/GET on the OCI distribution API).

A bundle is an OCI artifact: an image manifest whose artifactType is
`application/vnd.sglprep.cache.v1`, a config blob with the stage, its
portable signature and provenance, and one tar+gzip layer of the stage's
artifacts with paths relative to the storage root. Its tag is the stage's
file name and a hash of the portable signature, so hosts with the same image
and GPU find the same bundle whatever their storage root.
"""
from __future__ import annotations

import base64
import json
import os
from typing import NamedTuple

ARTIFACT_TYPE = "application/vnd.sglprep.cache.v1"
CONFIG_TYPE = "application/vnd.sglprep.cache.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


class BundleFact(NamedTuple):
    kind: str  # present | missing | unreachable | disabled
    tag: str = ""
    digest: str = ""  # the manifest's digest
    size: int = 0  # the layer's size
    error: str = ""


def portable_signature(signature: dict) -> dict:
    """The signature as every host with the same image and GPU computes it:
    no storage root, HOME or host name is in a signature, and the device
    count and driver stay (a bundle for 8 GPUs is not one for 1)."""
    return dict(sorted(signature.items()))


def bundle_tag(file_name: str, signature: dict) -> str:
    from .digest import sha256_hex

    key = sha256_hex(json.dumps(portable_signature(signature), sort_keys=True, default=str).encode())
    return f"{file_name}-{key.split(':', 1)[1][:40]}"


def auth_header(registry: str, environ) -> dict:
    """Basic credentials from SGLPREP_REGISTRY_USERNAME/PASSWORD or the docker
    config (~/.docker/config.json auths); never logged."""
    user, password = environ.get("SGLPREP_REGISTRY_USERNAME"), environ.get("SGLPREP_REGISTRY_PASSWORD")
    if user and password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    config = os.path.join(environ.get("DOCKER_CONFIG") or os.path.join(environ.get("HOME", "/root"), ".docker"),
                          "config.json")
    try:
        with open(config, encoding="utf-8") as fh:
            auths = json.load(fh).get("auths", {})
    except (OSError, ValueError, AttributeError):
        return {}
    entry = auths.get(registry) or auths.get(f"https://{registry}") or {}
    return {"Authorization": f"Basic {entry['auth']}"} if isinstance(entry, dict) and entry.get("auth") else {}


def _challenge(header: str) -> dict:
    """The parameters of a `WWW-Authenticate: Bearer realm=…,service=…,scope=…` challenge."""
    import re

    if not header.lower().startswith("bearer "):
        return {}
    return {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', header[len("bearer "):])}


def _registry_auth(basic: dict, timeout: float):
    """An httpx auth flow for the distribution spec's token auth: a request
    goes out with the last bearer token (or the basic credentials); a 401
    with a Bearer challenge fetches a token from the challenge's realm for
    its service and scope (with the basic credentials when there are any)
    and sends the request once more. Registries that take basic auth
    directly (docker-registry with htpasswd) never challenge for a token."""
    import httpx

    class RegistryAuth(httpx.Auth):
        def __init__(self):
            self.token = ""

        def auth_flow(self, request):
            if self.token:
                request.headers["Authorization"] = f"Bearer {self.token}"
            elif basic:
                request.headers.update(basic)
            response = yield request
            if response.status_code != 401:
                return
            params = _challenge(response.headers.get("WWW-Authenticate", ""))
            if not params.get("realm", "").startswith(("https://", "http://")):
                return
            query = {k: params[k] for k in ("service", "scope") if params.get(k)}
            try:
                got = httpx.get(params["realm"], params=query, headers=basic, timeout=timeout, trust_env=False)
                token = got.json().get("token") or got.json().get("access_token") if got.status_code == 200 else ""
            except (httpx.HTTPError, ValueError, AttributeError):
                token = ""
            if not token:
                return
            self.token = token
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

    return RegistryAuth()


class Registry:
    """The OCI distribution API of one registry, through httpx (basic and
    bearer-token auth)."""

    def __init__(self, registry: str, insecure: bool, timeout_s: float, environ=None):
        self.registry = registry
        self.base = f"{'http' if insecure else 'https'}://{registry}/v2"
        self.timeout = timeout_s
        self.headers = auth_header(registry, os.environ if environ is None else environ)
        self._http = None

    @property
    def http(self):
        import httpx

        if self._http is None:
            self._http = httpx.Client(timeout=self.timeout, trust_env=False,
                                      auth=_registry_auth(self.headers, self.timeout))
        return self._http

    def manifest(self, repository: str, reference: str) -> tuple[dict, str]:
        """(manifest, its digest); raises LookupError when absent, OSError when unreachable."""
        import httpx

        try:
            resp = self.http.get(f"{self.base}/{repository}/manifests/{reference}",
                                 headers={"Accept": MANIFEST_TYPE})
        except httpx.HTTPError as exc:
            raise OSError(f"registry {self.registry}: {exc}") from None
        if resp.status_code == 404:
            raise LookupError(reference)
        if resp.status_code != 200:
            raise OSError(f"registry {self.registry}: GET manifest {reference}: HTTP {resp.status_code}")
        from .digest import sha256_hex

        digest = sha256_hex(resp.content)
        return json.loads(resp.content), digest

    def blob(self, repository: str, digest: str, limit: int) -> bytes:
        import httpx

        try:
            with self.http.stream("GET", f"{self.base}/{repository}/blobs/{digest}", follow_redirects=True) as resp:
                if resp.status_code != 200:
                    raise OSError(f"registry {self.registry}: GET blob {digest[:19]}: HTTP {resp.status_code}")
                data = bytearray()
                for chunk in resp.iter_bytes():
                    data += chunk
                    if len(data) > limit:
                        raise OSError(f"blob {digest[:19]} is larger than its manifest says")
                return bytes(data)
        except httpx.HTTPError as exc:
            raise OSError(f"registry {self.registry}: {exc}") from None

    def blob_to(self, repository: str, digest: str, limit: int, out) -> str:
        """Stream a blob into the file object `out` (at most `limit` bytes);
        the sha256 of what came."""
        import hashlib

        import httpx

        h, size = hashlib.sha256(), 0
        try:
            with self.http.stream("GET", f"{self.base}/{repository}/blobs/{digest}", follow_redirects=True) as resp:
                if resp.status_code != 200:
                    raise OSError(f"registry {self.registry}: GET blob {digest[:19]}: HTTP {resp.status_code}")
                for chunk in resp.iter_bytes(1 << 20):
                    size += len(chunk)
                    if size > limit:
                        raise OSError(f"blob {digest[:19]} is larger than its manifest says")
                    h.update(chunk)
                    out.write(chunk)
        except httpx.HTTPError as exc:
            raise OSError(f"registry {self.registry}: {exc}") from None
        return "sha256:" + h.hexdigest()

    def tags(self, repository: str) -> list:
        import httpx

        try:
            resp = self.http.get(f"{self.base}/{repository}/tags/list")
        except httpx.HTTPError as exc:
            raise OSError(f"registry {self.registry}: {exc}") from None
        if resp.status_code == 404:
            return []
        if resp.status_code != 200:
            raise OSError(f"registry {self.registry}: tags: HTTP {resp.status_code}")
        return sorted((resp.json() or {}).get("tags") or [])


def bundle_fact(settings: dict, file_name: str, signature: dict, environ=None) -> BundleFact:
    """Whether the registry of `settings` (the state's `bundles:`) has the
    bundle for this stage and signature."""
    if not settings.get("registry") or not settings.get("pull"):
        return BundleFact("disabled")
    tag = bundle_tag(file_name, signature)
    registry = Registry(settings["registry"], settings["insecure"], settings["timeout_s"], environ)
    try:
        manifest, digest = registry.manifest(settings["repository"], tag)
    except LookupError:
        return BundleFact("missing", tag=tag)
    except (OSError, ValueError) as exc:
        return BundleFact("unreachable", tag=tag, error=str(exc)[:200])
    layers = manifest.get("layers") or [{}]
    return BundleFact("present", tag=tag, digest=digest, size=int(layers[0].get("size") or 0))
