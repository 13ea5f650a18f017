"""Secrets never leave the desired state in clear: not in plans, saved
plans, signatures, stage JSON, prep_result.json, last-apply.json, the
session log or `validate`'s output.

A secret is a value under a key that names one (`*TOKEN*`, `*SECRET*`,
`*PASSWORD*`, `*CREDENTIAL*`, `*_KEY`, `API_KEY`, ...), in any mapping
(`runtime.env.HF_TOKEN`, a custom stage's `env.API_KEY`,
`server.settings.api_key`), or the value after such a flag in an argv
(`--api-key X`). Where a secret must still be compared (a stage signature
holds its env), it is kept as its sha256, so a changed token still reruns
the stage without the token being written anywhere.
"""
from __future__ import annotations

import re

REDACTED = "<redacted>"
_SECRET = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|(^|_|-)KEY($|_|-)|APIKEY|AUTH")


def is_secret_key(name: str) -> bool:
    """Whether a key names a secret (`HF_TOKEN`, `api_key`, `env.AWS_SECRET_ACCESS_KEY`)."""
    return bool(_SECRET.search(str(name).rsplit(".", 1)[-1].upper()))


def redact(value):
    """A copy of `value` with every secret-named mapping value replaced."""
    if isinstance(value, dict):
        return {k: (REDACTED if is_secret_key(k) and v not in (None, "", False) else redact(v))
                for k, v in value.items()}
    if isinstance(value, list):
        if value and all(isinstance(v, str) for v in value):  # an argv: hide what follows --token etc.
            return redact_argv(value)
        return [redact(v) for v in value]
    return value


def redact_argv(argv: list, replace=lambda value: REDACTED) -> list:
    """An argv with the value after each secret-named flag replaced (by
    `replace(value)`: REDACTED, or fingerprint_secret for a signature)."""
    out, hide = [], False
    for item in argv:
        text = str(item)
        if hide:
            out.append(replace(text))
            hide = False
            continue
        flag, eq, value = text.partition("=")
        if text.startswith("--") and is_secret_key(flag[2:].replace("-", "_")):
            if eq:
                out.append(f"{flag}={replace(value)}")
                continue
            hide = True
        out.append(item)
    return out


def signed(key: str, value):
    """A value as a signature keeps it: a secret as its fingerprint."""
    if is_secret_key(key) and value not in (None, "", False):
        return fingerprint_secret(value)
    return value


def secret_values(data: dict) -> set:
    """Every secret string of a desired state (values under secret-named
    keys, values after secret-named flags), to scrub from logs."""
    found: set = set()

    def walk(value, key=""):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, list):
            marked = redact_argv(value, replace=lambda v: "\0") if all(isinstance(v, str) for v in value) else value
            for original, masked in zip(value, marked):
                if masked == "\0" or (isinstance(masked, str) and masked.endswith("=\0")):
                    found.add(str(original).split("=", 1)[-1])
                walk(original, key)
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool) and is_secret_key(key):
            found.add(str(value))

    walk(data)
    return {v for v in found if len(v) >= 4}


def fingerprint_secret(value) -> str:
    """What a signature keeps of a secret: enough to see it changed."""
    from .digest import sha256_hex

    return "secret:" + sha256_hex(str(value).encode())


def fingerprinted(value):
    """A copy with every secret-named value replaced by its fingerprint: for
    what must stay comparable but is shown or stored (the container's config
    label, which `docker inspect` prints)."""
    if isinstance(value, dict):
        return {k: (fingerprint_secret(v) if is_secret_key(k) and isinstance(v, (str, int, float))
                    and not isinstance(v, bool) else fingerprinted(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [fingerprinted(v) for v in value]
    return value
