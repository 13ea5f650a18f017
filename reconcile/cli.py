"""Command line: parse arguments and wire the rooms together, nothing more.

    sglprep [-f STATE] [-i INVENTORY] [--limit HOST] [--json] [--no-color] COMMAND
      plan     [--detailed-exitcode] [-o PLANFILE] [--textfile PATH]
      apply    [PLANFILE] [--only ADDRESS...]
      inspect  [--sizes]
      reset    [--cache NAME...] [--match-slug PREFIX] [--older-than DAYS] [--dry-run]
      validate
      render   TEMPLATE

Global options may also follow the command (`sglprep plan --json`).
"""
from __future__ import annotations

import argparse
import sys

from .errors import EXIT_CHANGES, EXIT_ERROR, EXIT_OK, InputError, SglprepError, StalePlanError

EXIT_CODES_HELP = """exit codes:
  plan    0 nothing to do (or changes without --detailed-exitcode)
          2 changes pending (--detailed-exitcode)
  any     1 invalid input, a fact could not be gathered, or a blocked change
  apply   0 every change succeeded; 3 saved plan is stale (nothing applied)
  any     4 another apply holds the run lock past timeouts.lock_s
  apply   10 deep_gemm, 11 moe_tune, 12 flashinfer, 13 inductor, 14 a custom stage:
             the first cache stage that failed, in execution order
  apply   130 SIGINT, 143 SIGTERM, 129 SIGHUP: interrupted (the running stage is recorded)
"""

RENDERABLE = ("prometheus.yml", "init-run.sh", "crontab", "systemd", "sglprep-plan.service", "sglprep-plan.timer")
DEFAULT_TEXTFILE = "/var/lib/node_exporter/textfile_collector/sglprep.prom"


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    parser.add_argument("-f", "--file", dest="state", metavar="STATE", default=d(None),
                        help="desired-state file (default: states/default.yaml)")
    parser.add_argument("-i", "--inventory", metavar="INVENTORY", default=d(None),
                        help="Ansible-format YAML inventory (default: inventory.yaml)")
    parser.add_argument("--limit", metavar="PATTERN", default=d("localhost"),
                        help="Ansible host pattern: a host, a group, gpu0*, gpus:!gpu03, gpus:&h200, gpus[0:2], "
                        "a,b (default: localhost); several hosts: one plan each")
    parser.add_argument("--json", action="store_true", default=d(False), help="machine-readable output on stdout")
    parser.add_argument("--no-color", action="store_true", default=d(False), help="plain text (also: NO_COLOR)")
    parser.add_argument("-e", "--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        default=d(None), help="override a state key for this run (dotted key, YAML value: "
                        "-e tp=2 -e caches.flashinfer=rebuild); repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sglprep", description="Make a GPU host ready to serve SGLang: "
                                     "observe it, diff it against a desired state, plan and apply.",
                                     epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _global_options(parser, suppress=False)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"sglprep {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("plan", help="show what apply would change (never writes, takes no lock)")
    _global_options(p, suppress=True)
    p.add_argument("--detailed-exitcode", action="store_true", help="exit 2 when there are changes")
    p.add_argument("-o", "--out", metavar="PLANFILE", help="save the plan for `sglprep apply PLANFILE`")
    p.add_argument("--textfile", metavar="PATH", help="also write node_exporter textfile metrics (atomically)")
    p.add_argument("--verify", action="store_true",
                   help="re-hash every primed artifact (default: sizes and mtimes; apply always re-hashes)")
    p.add_argument("--diff", action="store_true", help="also print the whole content of files to be created")

    p = sub.add_parser("apply", help="carry out the plan")
    _global_options(p, suppress=True)
    p.add_argument("planfile", nargs="?", metavar="PLANFILE", help="a plan saved by `plan -o`; refused if stale")
    p.add_argument("--only", nargs="+", metavar="ADDRESS", help="apply only these addresses (and what they need)")
    p.add_argument("--diff", action="store_true", help="also print the whole content of files to be created")
    p.add_argument("--auto-approve", action="store_true",
                   help="do not ask before applying (also implied when stdin is not a terminal: cron, Ansible)")

    from .stages.caches import CACHES

    p = sub.add_parser("inspect", help="snapshot of the kernel caches (the seeds' `caches inspect`)")
    _global_options(p, suppress=True)
    p.add_argument("--sizes", action="store_true", help="also count files, bytes, the newest files (one walk)")
    p.add_argument("--cache", nargs="+", action="extend", choices=list(CACHES), metavar="NAME",
                   help=f"only these caches, walked for sizes and newest files: {', '.join(CACHES)}")

    p = sub.add_parser("reset", help="delete cache entries (shows them first; --dry-run stops there)")
    _global_options(p, suppress=True)
    p.add_argument("--cache", nargs="+", action="extend", choices=list(CACHES), metavar="NAME",
                   help=f"caches to reset: {', '.join(CACHES)} (default: all)")
    p.add_argument("--match-slug", metavar="PREFIX", help="only entries whose name starts with PREFIX (model slugs)")
    p.add_argument("--older-than", type=float, metavar="DAYS", help="only entries whose newest file is older")
    p.add_argument("--dry-run", action="store_true", help="show what would be deleted, delete nothing")

    p = sub.add_parser("bundles", help="cache bundles in the OCI registry (state key bundles:)")
    _global_options(p, suppress=True)
    p.add_argument("action", choices=("list",), help="list: what the registry holds for this host's stages")

    p = sub.add_parser("validate", help="parse and validate state and inventory; print the merged desired state")
    _global_options(p, suppress=True)

    p = sub.add_parser("render", help="print a rendered template")
    _global_options(p, suppress=True)
    p.add_argument("template", choices=RENDERABLE, metavar="TEMPLATE", help=", ".join(RENDERABLE))
    p.add_argument("--textfile", default=DEFAULT_TEXTFILE, metavar="PATH",
                   help=f"crontab/systemd: where plan writes its metrics (default {DEFAULT_TEXTFILE})")
    p.add_argument("--schedule", default="17 3 * * *", help="crontab: the schedule (default: nightly at 03:17)")
    p.add_argument("--on-calendar", default="*-*-* 03:17:00", help="systemd timer OnCalendar= (default nightly)")
    p.add_argument("--randomized-delay", type=int, default=900, metavar="SECONDS",
                   help="systemd timer RandomizedDelaySec= (default 900)")
    p.add_argument("--user", help="crontab/systemd: the user the plan runs as (default: the storage owner when "
                   "storage.owner is UID:GID, else the invoking user)")
    p.add_argument("--cron-format", choices=("system", "user"), default="system",
                   help="crontab: a system line with a user field (/etc/cron.d, default) or a user crontab line")
    return parser


def main(argv: list | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SglprepError as exc:
        if args.command == "plan" and getattr(args, "textfile", None):
            try:
                _write_textfile(args.textfile, args.limit, None)
            except SglprepError:
                pass
        print(f"sglprep: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sglprep: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_ERROR
    except Exception as exc:  # a fault outside apply's own journaling: one line, never a traceback
        import os

        if os.environ.get("SGLPREP_DEBUG"):
            raise
        summary = " ".join(str(exc).split())[:300]
        print(f"sglprep: error: {args.command} failed: {type(exc).__name__}: {summary} "
              f"(SGLPREP_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_ERROR


def _load_all(args) -> list:
    """The desired state of every host `--limit` selects (an Ansible pattern)."""
    from .state_load import load_hosts

    return load_hosts(args.state, args.inventory, args.limit, getattr(args, "overrides", None) or ())


def _load(args):
    """The one host this command works on; a pattern that selects several is an error."""
    hosts = _load_all(args)
    if len(hosts) > 1:
        raise InputError(None, None, "--limit", f"{args.command} works on one host; {args.limit!r} selects "
                         f"{len(hosts)}: {', '.join(d.host for d in hosts[:5])}{', …' if len(hosts) > 5 else ''}")
    return hosts[0]


def _writer(args):
    from .report_text import Writer, use_color

    return Writer(sys.stdout, use_color(sys.stdout, args.no_color))


def _emit_json(doc: dict) -> None:
    import json

    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def _write_textfile(path: str, host: str, plan) -> None:
    from .report_textfile import write_textfile

    try:
        write_textfile(path, host, plan)
    except OSError as exc:
        raise InputError(path, None, None, f"cannot write textfile: {exc.strerror}") from None


def cmd_plan(args) -> int:
    hosts = _load_all(args)
    if len(hosts) > 1:
        return _plan_hosts(args, hosts)
    return _plan_one(args, hosts[0])


def _plan_hosts(args, hosts: list) -> int:
    """One plan per host, in inventory order; the exit code of the worst."""
    from .facts_host import HostFacts
    from .plan import build_plan

    if args.out or args.textfile:
        raise InputError(None, None, "--limit", "-o and --textfile write one host's plan: limit to one host")
    plans = [build_plan(desired, HostFacts(), verify=args.verify) for desired in hosts]
    if args.json:
        _emit_json([plan.to_json() for plan in plans])
    else:
        from .report_text import render_plan

        w = _writer(args)
        for i, plan in enumerate(plans):
            if i:
                w.line(("", ""))
            render_plan(plan, w, show_diff=args.diff)
    if any(plan.blocked for plan in plans):
        return EXIT_ERROR
    if args.detailed_exitcode and any(plan.pending for plan in plans):
        return EXIT_CHANGES
    return EXIT_OK


def _plan_one(args, desired) -> int:
    from .facts_host import HostFacts
    from .plan import build_plan

    plan = build_plan(desired, HostFacts(), verify=args.verify)
    if args.json:
        _emit_json(plan.to_json())
    else:
        from .report_text import render_plan

        render_plan(plan, _writer(args), show_diff=args.diff)
    if args.out:
        import json

        from .journal import atomic_write

        doc = plan.to_json()
        doc["sources_sha"] = desired.sources_sha
        try:
            atomic_write(args.out, json.dumps(doc, indent=2) + "\n", 0o600)
        except OSError as exc:
            raise InputError(args.out, None, None, f"cannot write plan: {exc.strerror}") from None
    if args.textfile:
        _write_textfile(args.textfile, args.limit, plan)
    if plan.blocked:
        return EXIT_ERROR
    if args.detailed_exitcode and plan.pending:
        return EXIT_CHANGES
    return EXIT_OK


def _load_saved_plan(path: str):
    from .plan_model import FORMAT_VERSION, Plan

    from .facts_host import read_json

    kind, data, error = read_json(path, 64 << 20, follow=True)
    if kind == "missing":
        raise InputError(path, None, None, "plan file not found")
    if kind != "ok":
        raise InputError(path, None, None, f"not a saved plan: {' '.join(error.split())}")
    if not isinstance(data, dict) or str(data.get("format_version", "")).split(".")[0] != FORMAT_VERSION:
        raise InputError(path, None, None, f"unsupported plan format_version {data.get('format_version')!r}"
                         if isinstance(data, dict) else "not a saved plan")
    problem = _saved_plan_problem(data)
    if problem:
        raise InputError(path, None, problem[0], f"not a saved plan: {problem[1]}")
    try:
        return Plan.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(path, None, None, f"not a saved plan: {type(exc).__name__}: {exc}") from None


def _saved_plan_problem(data: dict):
    """(key, problem) for the first field of a saved plan that has the wrong shape, else None."""
    for key in ("host", "state_file", "fingerprint"):
        if not isinstance(data.get(key), str):
            return key, "must be a string"
    if not isinstance(data.get("changes"), list):
        return "changes", "must be a list"
    for i, change in enumerate(data["changes"]):
        if not isinstance(change, dict):
            return f"changes[{i}]", "must be a mapping"
        for key in ("address", "action"):
            if not isinstance(change.get(key), str):
                return f"changes[{i}].{key}", "must be a string"
        if not isinstance(change.get("depends_on", []), list):
            return f"changes[{i}].depends_on", "must be a list"
    return None


def cmd_apply(args, argv=None) -> int:
    hosts = _load_all(args)
    if len(hosts) > 1:
        if args.planfile:
            raise InputError(args.planfile, None, "--limit", "a saved plan is one host's: limit to that host")
        codes = []
        for desired in hosts:  # one after the other, like Ansible's serial: 1
            if not args.json:
                print(f"== {desired.host}", flush=True)
            codes.append(_apply_one(args, desired, argv))
        return next((code for code in codes if code), EXIT_OK)
    return _apply_one(args, hosts[0], argv)


def _apply_one(args, desired, argv=None) -> int:
    from .exec_apply import apply_plan
    from .facts_host import HostFacts
    from .plan import build_plan, resolve_context

    saved = _load_saved_plan(args.planfile) if args.planfile else None
    facts = HostFacts()
    plan = build_plan(desired, facts, verify=True)  # apply re-hashes what the plan only stat'ed
    if saved is not None:
        if saved.host != plan.host:
            raise InputError(args.planfile, None, None, f"plan was made for host {saved.host!r}, not {plan.host!r}")
        if saved.fingerprint != plan.fingerprint:
            raise StalePlanError(
                f"Saved plan is stale: the host or the desired state changed since {args.planfile} was made "
                f"(fingerprint {saved.fingerprint[:19]}…, now {plan.fingerprint[:19]}…). Nothing was applied; "
                f"run `sglprep plan` again.")
    if args.only:
        unknown = [a for a in args.only if plan.find(a) is None]
        if unknown:
            raise InputError(None, None, "--only", f"no such resource in the plan: {', '.join(unknown)}")
    ctx = resolve_context(desired, facts)
    if not args.auto_approve and not args.json and _interactive() and (plan.pending or plan.blocked):
        from .report_text import render_plan

        render_plan(plan, _writer(args), show_diff=args.diff)
        print("\nDo you want to perform these actions?\n  sglprep will perform the actions described above.\n"
              "  Only 'yes' will be accepted to approve.\n")
        try:
            answer = input("  Enter a value: ").strip()
        except EOFError:
            answer = ""
        if answer != "yes":
            print("\nApply cancelled.")
            return EXIT_ERROR
        args.no_plan_echo = True
    command = "sglprep " + " ".join(sys.argv[1:] if argv is None else argv)
    from .report_text import StageProgress, use_color

    from . import exec_signals

    progress = StageProgress(sys.stderr, live=use_color(sys.stderr, args.no_color))
    exec_signals.install()  # SIGINT/SIGTERM/SIGHUP: the running stage records `interrupted`, apply journals
    try:
        report = apply_plan(plan, desired, ctx, only=args.only, command=command, progress=progress, facts=facts,
                            saved=saved is not None)
    finally:
        progress.close()
    # RESULT_STATUS even when prep_result.json could not be written (the stage files are then the record)
    result_lines = ([f"RESULT_JSON {report.result_json}"] if report.result_json else []) + \
        ([report.result_status] if report.result_status else [])
    if args.json:
        doc = report.to_json()
        doc["plan"] = plan.to_json()
        _emit_json(doc)
        for line in result_lines:  # stdout holds the JSON document only
            print(line, file=sys.stderr)
    else:
        from .report_text import render_apply, render_plan

        w = _writer(args)
        if getattr(args, "no_plan_echo", False):
            pass  # shown before the question
        elif plan.pending or plan.blocked:
            render_plan(plan, w, show_diff=args.diff)
        else:
            from .report_text import summary_line

            w.line((summary_line(plan), "bold"))
        render_apply(report, w)
        if report.interrupted:
            w.line((f"Apply interrupted by {report.interrupted}: the running stage is recorded as "
                    f"error_type interrupted; the next apply resumes it.", "bold red"))
        for line in result_lines:
            print(line)
    sys.stdout.flush()
    exec_signals.restore()
    return report.exit_code


def _interactive() -> bool:
    """Ask before applying only when a person is there: stdin and stdout
    are terminals (cron, Ansible and pipes never are)."""
    try:
        return sys.stdin.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def cmd_validate(args) -> int:
    hosts = _load_all(args)
    if len(hosts) > 1:
        from .redaction import redact

        for desired in hosts:
            for warning in desired.warnings:
                print(f"sglprep: warning: {warning}", file=sys.stderr)
        if args.json:
            _emit_json([{"host": d.host, "state_file": d.state_file, "model_slug": d.model_slug,
                         "desired": redact(d.data)} for d in hosts])
        else:
            import yaml

            for d in hosts:
                sys.stdout.write(f"# sglprep validate · {d.host} · {d.state_file}: valid\n")
                sys.stdout.write(yaml.safe_dump(redact(d.data), sort_keys=False, default_flow_style=False))
        return EXIT_OK
    desired = hosts[0]
    from .redaction import redact

    shown = redact(desired.data)
    doc = {"host": desired.host, "state_file": desired.state_file, "inventory_file": desired.inventory_file,
           "model_slug": desired.model_slug, "desired": shown}
    for warning in desired.warnings:
        print(f"sglprep: warning: {warning}", file=sys.stderr)
    if args.json:
        _emit_json(doc)
    else:
        import yaml

        sys.stdout.write(f"# sglprep validate · {desired.host} · {desired.state_file}: valid\n")
        sys.stdout.write(yaml.safe_dump(shown, sort_keys=False, default_flow_style=False))
    return EXIT_OK


def cmd_render(args) -> int:
    from .state_templates import desired_files, render_template, schedule_context

    desired = _load(args)
    if args.template in ("prometheus.yml", "init-run.sh"):
        from .state_layout import INIT_SCRIPT, PROMETHEUS_CONFIG

        rel = PROMETHEUS_CONFIG if args.template == "prometheus.yml" else INIT_SCRIPT
        found = [f for f in desired_files(desired) if f.rel == rel]
        if not found:
            raise InputError(desired.state_file, None, "runtime.container.entrypoint",
                             "init-run.sh is rendered only for runtime.kind: docker with entrypoint: sglprep")
        sys.stdout.write(found[0].render())
        return EXIT_OK
    from .state_templates import schedule_problem

    if args.template == "crontab" and (problem := schedule_problem(args.schedule)):
        raise InputError(None, None, "--schedule", problem)
    context = schedule_context(desired, _self_argv(), args.user or _run_as(desired), args.textfile,
                               args.schedule, args.on_calendar, args.randomized_delay, args.cron_format)
    if args.template == "crontab":
        sys.stdout.write(render_template("crontab.j2", context))
    elif args.template == "systemd":
        for unit in ("sglprep-plan.service", "sglprep-plan.timer"):
            sys.stdout.write(render_template(f"{unit}.j2", context) + "\n")
    else:
        sys.stdout.write(render_template(f"{args.template}.j2", context))
    return EXIT_OK


def _run_as(desired) -> str:
    """Who the scheduled plan runs as: the storage owner when the state names
    one (by name where the system knows it), else the invoking user."""
    import getpass

    owner = desired.data["storage"]["owner"]
    if owner != "auto":
        import pwd

        uid = int(owner.split(":", 1)[0])
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return str(uid)
    return getpass.getuser()


def _self_argv() -> list:
    """How cron or systemd should start this sglprep: its console script, or
    this interpreter with `-m reconcile`."""
    import os
    import shutil

    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "sglprep" and os.path.isfile(argv0):
        return [os.path.abspath(argv0)]
    found = shutil.which("sglprep")
    if found:
        return [os.path.abspath(found)]
    # a source checkout: the package is found through PYTHONPATH, set explicitly
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return ["/usr/bin/env", f"PYTHONPATH={package_parent}", sys.executable, "-m", "reconcile"]


def cmd_inspect(args) -> int:
    from .facts_host import HostFacts
    from .plan import build_plan, resolve_context
    from .stages.caches import cache_snapshot

    desired = _load(args)
    facts = HostFacts()
    plan = build_plan(desired, facts)
    snapshot = cache_snapshot(plan, facts, resolve_context(desired, facts), desired.data, desired.model_slug,
                              args.sizes, args.cache)
    if args.json:
        _emit_json(snapshot)
    else:
        from .report_text import render_inspect

        render_inspect(snapshot, desired.host, _writer(args))
    return EXIT_OK


def cmd_reset(args) -> int:
    from .facts_host import HostFacts
    from .plan import resolve_context
    from .stages.caches import reset_selection

    if args.older_than is not None and args.older_than < 0:
        raise InputError(None, None, "--older-than", f"must be >= 0 days, got {args.older_than:g}")
    desired = _load(args)
    facts = HostFacts()
    ctx = resolve_context(desired, facts)
    entries = reset_selection(ctx, args.cache, args.match_slug, args.older_than)
    if not args.json:
        from .report_text import render_reset

        render_reset(entries, desired.host, args.dry_run, _writer(args))
    if args.dry_run:
        if args.json:
            _emit_json({"format_version": "1", "host": desired.host, "dry_run": True,
                        "would_remove": [e._asdict() for e in entries],
                        "summary": {"entries": len(entries), "bytes": sum(e.bytes for e in entries)}})
        return EXIT_OK
    if owner_problem := ctx.owner.problem:
        raise InputError(None, None, "storage.owner", owner_problem)
    from .exec_reset import reset

    report = reset(entries, desired, ctx, say=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        _emit_json(report)
    else:
        sys.stdout.write(f"Reset complete: {report['summary']['entries']} removed, "
                         f"{report['summary']['errors']} errors.\n")
        if report["log_file"]:
            sys.stdout.write(f"Session log: {report['log_file']}\n")
    return EXIT_ERROR if report["errors"] else EXIT_OK


def cmd_bundles(args) -> int:
    """What the registry holds for this host's stages: the tag each active
    stage's signature maps to, and whether a bundle is there."""
    from .facts_host import HostFacts
    from .facts_registry import Registry, bundle_tag
    from .plan import resolve_context
    from .stages import catalog
    from .stages.plan import runtime_facts, want_signature

    desired = _load(args)
    settings = desired.data["bundles"]
    if not settings["registry"]:
        raise InputError(desired.state_file, None, "bundles.registry", "no registry is set: bundles are off")
    facts = HostFacts()
    ctx = resolve_context(desired, facts)
    runtime = runtime_facts(desired, facts, ctx)
    rows = []
    for stage in catalog.stages(desired.data):
        if stage.mode == "skip":
            continue
        if not stage.portable:
            rows.append({"stage": stage.name, "tag": None, "present": False, "digest": None,
                         "note": "not portable (its cache holds absolute paths)"})
            continue
        want = want_signature(stage, desired, runtime)
        if not want:
            rows.append({"stage": stage.name, "tag": None, "present": False, "digest": None,
                         "note": runtime.problem or "runtime not probed"})
            continue
        found = facts.bundle({**settings, "pull": True}, stage.file_name, want)
        rows.append({"stage": stage.name, "tag": bundle_tag(stage.file_name, want), "present": found.kind == "present",
                     "digest": found.digest or None, "size_bytes": found.size or None,
                     **({"note": found.error} if found.error else {})})
    try:
        tags = Registry(settings["registry"], settings["insecure"], settings["timeout_s"]).tags(settings["repository"])
    except OSError as exc:
        raise InputError(desired.state_file, None, "bundles.registry", str(exc)) from None
    doc = {"registry": settings["registry"], "repository": settings["repository"], "host": desired.host,
           "stages": rows, "tags": tags}
    if args.json:
        _emit_json(doc)
        return EXIT_OK
    print(f"sglprep bundles · {desired.host} · {settings['registry']}/{settings['repository']}: {len(tags)} bundle(s)")
    for row in rows:
        state = "present " + (row["digest"] or "")[:19] if row["present"] else (row.get("note") or "absent")
        print(f"  {row['stage']:<18} {row['tag'] or '-':<56} {state}")
    return EXIT_OK


COMMANDS = {"bundles": cmd_bundles, "plan": cmd_plan, "apply": cmd_apply, "validate": cmd_validate, "render": cmd_render,
            "inspect": cmd_inspect, "reset": cmd_reset}
