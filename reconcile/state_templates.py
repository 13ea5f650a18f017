"""Desired content of rendered-template files.

A managed file starts with one header line:

    # sglprep-managed: render=sha256:<key> content=sha256:<hash of the rest>

`render` is a hash of the template source and its context, `content` a hash of
the body as written. When both still match, the file is known to be what the
template would produce, so a converged `plan` never needs to import Jinja2.
Rendering is strict (StrictUndefined); values placed in shell lines go
through the `shq` filter (shlex.quote).
"""
from __future__ import annotations

from typing import NamedTuple

from .digest import sha256, sha256_hex

from .state_load import Desired, read_bytes, template_path

HEADER_PREFIX = "# sglprep-managed: "
RENDERER_VERSION = "1"


class DesiredFile(NamedTuple):
    rel: str  # path under the storage root
    template: str  # template name under templates/
    source: bytes  # template source
    context: dict

    @property
    def render_key(self) -> str:
        digest = sha256()
        digest.update(RENDERER_VERSION.encode() + b"\0" + self.source + b"\0")
        digest.update(repr(sorted(self.context.items())).encode())  # str/int values: a stable form
        return "sha256:" + digest.hexdigest()

    def render(self) -> str:
        """The whole file: header line plus rendered body (imports Jinja2)."""
        body = render_string(self.source.decode(), self.context, self.template)
        return header_line(self.render_key, body) + body


def sha256_text(text: str) -> str:
    return sha256_hex(text.encode())


def header_line(render_key: str, body: str) -> str:
    return f"{HEADER_PREFIX}render={render_key} content={sha256_text(body)}\n"


def parse_managed(text: str) -> tuple[str, str, str]:
    """(render key, recorded content hash, body); empty strings when no header."""
    first, sep, rest = text.partition("\n")
    if not first.startswith(HEADER_PREFIX):
        return "", "", text
    fields = dict(part.split("=", 1) for part in first[len(HEADER_PREFIX):].split() if "=" in part)
    return fields.get("render", ""), fields.get("content", ""), rest


def render_string(source: str, context: dict, name: str = "<template>") -> str:
    import shlex

    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)
    env.filters["shq"] = lambda value: shlex.quote(str(value))
    env.filters["sdq"] = systemd_quote
    try:
        return env.from_string(source).render(**context)
    except jinja2.TemplateError as exc:
        from .errors import InputError

        raise InputError(f"templates/{name}", getattr(exc, "lineno", None), None,
                         f"template error: {exc.message if hasattr(exc, 'message') else exc}") from None


def systemd_quote(value) -> str:
    """One word of a systemd ExecStart= line (systemd.service(5) quoting;
    `%` and `$` escaped so specifiers and variables are not expanded)."""
    text = str(value).replace("%", "%%").replace("$", "$$")
    if text and not any(c in text for c in " \t\"'\\;"):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
CRON_NAMES = {3: ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
              4: ("sun", "mon", "tue", "wed", "thu", "fri", "sat")}
CRON_MACROS = ("@reboot", "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def schedule_problem(schedule: str) -> str:
    """Why cron would not accept `schedule` ("" = it would): five fields of
    numbers, names, ranges, steps, lists and *, or one @macro."""
    import re

    if schedule.strip() in CRON_MACROS:
        return ""
    fields = schedule.split()
    if len(fields) != 5:
        return f"a cron schedule has 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}"
    for i, (field, (name, low, high)) in enumerate(zip(fields, CRON_FIELDS)):
        names = CRON_NAMES.get(i, ())
        for part in field.split(","):
            m = re.fullmatch(r"(\*|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/([0-9]+))?", part.lower())
            if not m or (m.group(2) is not None and int(m.group(2)) == 0):
                return f"{name} field {field!r} is not cron syntax"
            if m.group(1) == "*":
                continue
            for value in m.group(1).split("-"):
                number = names.index(value) + (1 if i == 3 else 0) if value in names else (
                    int(value) if value.isdigit() else None)
                if number is None or not low <= number <= high:
                    return f"{name} field {field!r}: {value!r} is not within {low}-{high}"
    return ""


def schedule_context(desired: Desired, sglprep_argv: list, user: str, textfile: str, schedule: str,
                     on_calendar: str, randomized_delay_s: int, cron_format: str = "system") -> dict:
    """Context of the crontab and systemd templates."""
    import os

    bin_dir = os.path.dirname(sglprep_argv[0])
    path = ":".join(dict.fromkeys([bin_dir, "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin",
                                   "/sbin", "/bin"]))
    return {
        "host": desired.host,
        "state": desired.state_path,
        "inventory": desired.inventory_path,  # "" when none was read: the entry names none either
        "sglprep_argv": sglprep_argv,
        "user": user,
        "cron_format": cron_format,
        "cron_user": f"{user} " if cron_format == "system" else "",
        "textfile": textfile,
        "schedule": schedule,
        "on_calendar": on_calendar,
        "randomized_delay_s": randomized_delay_s,
        "path": path,
        "lock": "/run/lock/sglprep-plan.lock" if user == "root" else f"/tmp/sglprep-plan.{user}.lock",
    }


def render_template(name: str, context: dict) -> str:
    return render_string(read_bytes(template_path(name)).decode(), context, name)


def prometheus_context(desired: Desired) -> dict:
    server = desired.data["server"]
    host = server["host"]
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return {
        "host": desired.host,
        "model_slug": desired.model_slug,
        "sglang_target": f"{host}:{server['port']}",
        "scrape_interval_s": desired.data["telemetry"]["scrape_interval_s"],
    }


def desired_files(desired: Desired) -> list[DesiredFile]:
    """The rendered files of this host: the Prometheus config, and the
    container's init script when sglprep provides the entrypoint."""
    from . import __version__
    from .state_layout import INIT_SCRIPT, PROMETHEUS_CONFIG

    wanted = [(PROMETHEUS_CONFIG, "prometheus.yml.j2", prometheus_context(desired))]
    runtime = desired.data["runtime"]
    if runtime["kind"] == "docker" and runtime["container"]["entrypoint"] == "sglprep" and \
            runtime["container"]["state"] == "running":
        wanted.append((INIT_SCRIPT, "init-run.sh.j2", {"sglprep_version": __version__}))
    return [DesiredFile(rel=rel, template=template, source=read_bytes(template_path(template)), context=context)
            for rel, template, context in wanted]
