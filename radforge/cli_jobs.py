"""``radforge jobs`` and ``radforge sources``: the control plane driven from the command line.

A thin layer over :class:`radforge.client.ControlPlane`: arguments become API requests, replies
become plain aligned text (easy to read, ``grep`` and copy an id from) or, with ``--json``, the
API's own JSON (snake_case keys). Errors are :class:`radforge.client.ClientError`, one line each,
turned into ``radforge: ...`` and exit status 1 by :func:`radforge.cli.main`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from radforge.client import (
    DEFAULT_SERVER,
    MAX_LOG_LINES,
    SERVER_ENV,
    TERMINAL_STATES,
    ClientError,
    ControlPlane,
    absolute_uri,
)

EXIT_OK = 0
EXIT_FAILED = 1
FOLLOW_EVERY_S = 1.0  # how often `jobs logs -f` asks the service for news


# ---- rendering (pure) --------------------------------------------------------------------------
def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Rows as left-aligned columns two spaces apart, headers first (as ``docker ps`` prints)."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]


def progress_text(job: dict[str, Any]) -> str:
    """A job's progress in a few words: series and slices (ingest), steps (train), evaluations (eval)."""
    p = job.get("progress") or {}
    rate = p.get("samples_per_second") if job.get("state") == "running" else None  # current rates only
    if p.get("series_total") is not None or p.get("samples_written") is not None:
        series = f"{p.get('series_done') or 0}/{p['series_total']}" if p.get("series_total") else "?"
        text = f"series {series}, {p.get('samples_written') or 0} samples"
        return text + (f", {rate:.1f}/s" if rate else "")
    if p.get("step") is not None:
        text = f"step {p['step']}/{p.get('total_steps') or '?'}"
        if p.get("loss") is not None:
            text += f", loss {p['loss']:.4f}"
        if p.get("images_per_second"):
            text += f", {p['images_per_second']:.1f} img/s"
        return text
    if p.get("tasks_total"):
        return f"{p.get('phase') or 'eval'} {p.get('tasks_done') or 0}/{p['tasks_total']} evaluations"
    return str(p.get("phase") or "")


def local_time(value: str | None) -> str:
    """An API timestamp (ISO 8601, UTC) in the local time zone, to the second; empty for None."""
    if not value:
        return ""
    return datetime.fromisoformat(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def duration_text(seconds: float | None) -> str:
    """``1h02m``, ``3m07s`` or ``12.3s``; empty for None."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def job_rows(jobs: Sequence[dict[str, Any]]) -> list[str]:
    """The ``radforge jobs list`` table."""
    rows = [
        (
            j["id"],
            j["kind"],
            j["state"] + (" (cancelling)" if j.get("cancel_requested") and j["state"] == "running" else ""),
            progress_text(j),
            local_time(j.get("created_at")),
            duration_text(j.get("duration_seconds")),
        )
        for j in jobs
    ]
    return format_table(["ID", "KIND", "STATE", "PROGRESS", "CREATED", "DURATION"], rows)


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def job_details(job: dict[str, Any]) -> list[str]:
    """The ``radforge jobs show`` lines: one ``field: value`` each, progress/result/spec flattened."""
    fields: list[tuple[str, Any]] = [
        ("id", job["id"]),
        ("kind", job["kind"]),
        ("state", job["state"]),
        ("progress", progress_text(job)),
        ("error", job.get("error")),
        ("origin", job.get("origin")),
        ("source_id", job.get("source_id")),
        ("archive", job.get("archive")),
        ("priority", job.get("priority")),
        ("cancel_requested", job.get("cancel_requested") or None),
        ("created", local_time(job.get("created_at"))),
        ("started", local_time(job.get("started_at"))),
        ("finished", local_time(job.get("finished_at"))),
        ("duration", duration_text(job.get("duration_seconds"))),
        ("exit_code", job.get("exit_code")),
    ]
    for section in ("result", "spec"):
        for key, value in sorted((job.get(section) or {}).items()):
            fields.append((f"{section}.{key}", _compact(value)))
    return [f"{k}: {v}" for k, v in fields if v not in (None, "")]


def source_rows(sources: Sequence[dict[str, Any]]) -> list[str]:
    """The ``radforge sources list`` table."""
    rows = [
        (
            s["name"],
            s["id"],
            s["uri"],
            s["dataset_uri"],
            f"every {s['interval_seconds']:g}s" if s.get("interval_seconds") else f"cron {s.get('cron')}",
            "yes" if s["enabled"] else "no",
            local_time(s.get("last_poll_at")),
            s.get("last_error") or "",
        )
        for s in sources
    ]
    headers = ["NAME", "ID", "URI", "DATASET", "SCHEDULE", "ENABLED", "LAST POLL", "LAST ERROR"]
    return format_table(headers, rows)


def source_details(source: dict[str, Any]) -> list[str]:
    """The ``radforge sources show`` lines."""
    skip = {"config"}
    lines = [f"{k}: {_compact(v)}" for k, v in source.items() if k not in skip and v is not None]
    return lines + [f"config.{k}: {_compact(v)}" for k, v in sorted((source.get("config") or {}).items())]


# ---- commands ----------------------------------------------------------------------------------
def _client(args: argparse.Namespace) -> ControlPlane:
    return ControlPlane.from_environment(args.server)


def _print_json(value: Any) -> None:
    print(json.dumps(value, sort_keys=True))


def _print_lines(lines: Sequence[str]) -> None:
    for line in lines:
        print(line)


def _emit(args: argparse.Namespace, value: Any, render: Callable[[Any], list[str]]) -> int:
    """``value`` as the API's JSON with ``--json``, else as the lines ``render`` makes of it."""
    if args.json:
        _print_json(value)
    else:
        _print_lines(render(value))
    return EXIT_OK


def _overrides(items: Sequence[str] | None) -> dict[str, Any]:
    from radforge.config import parse_overrides

    return parse_overrides(items or [])


def job_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The request body of ``radforge jobs submit KIND ...`` (local paths made absolute)."""
    spec: dict[str, Any]
    if args.kind == "ingest":
        spec = {"source_uri": absolute_uri(args.source), "dataset_uri": absolute_uri(args.dataset)}
        if args.set:
            spec["config"] = _overrides(args.set)
    elif args.kind == "train":
        spec = {"config_uri": absolute_uri(args.config), "output_uri": absolute_uri(args.output)}
        spec["overrides"] = list(args.overrides or [])
    elif args.kind == "compact":
        spec = {"dataset_uri": absolute_uri(args.dataset), "target_shard_mb": args.target_shard_mb}
        for key in ("min_shard_mb", "compression"):
            if getattr(args, key) is not None:
                spec[key] = getattr(args, key)
    else:
        spec = {
            "backbone_uri": absolute_uri(args.backbone),
            "tasks": args.tasks if args.tasks == "builtin" else absolute_uri(args.tasks),
            "output_uri": absolute_uri(args.out),
            "random_init": not args.no_random_init,
            "probes": [p.strip() for p in args.probes.split(",") if p.strip()],
        }
        for key in ("seeds", "max_shots", "bootstrap", "seed"):
            if getattr(args, key) is not None:
                spec[key] = getattr(args, key)
    return {"kind": args.kind, **spec, "priority": args.priority}


def cmd_jobs_submit(args: argparse.Namespace) -> int:
    job = _client(args).submit_job(job_spec(args))
    if args.json:
        _print_json(job)
    else:
        print(f"submitted {job['kind']} job {job['id']} ({job['state']})")
        print(f"follow it: radforge jobs logs -f {job['id']}", file=sys.stderr)
    return EXIT_OK


def cmd_jobs_list(args: argparse.Namespace) -> int:
    page = _client(args).list_jobs(
        kind=args.kind,
        states=args.state or [],
        source_id=args.source_id,
        limit=args.limit,
        offset=args.offset,
    )
    if args.json:
        _print_json(page)
        return EXIT_OK
    if not page["items"]:
        print("no jobs" + (" match" if args.kind or args.state or args.source_id else ""))
        return EXIT_OK
    _print_lines(job_rows(page["items"]))
    shown = page["offset"] + len(page["items"])
    if shown < page["total"] or page["offset"]:
        print(
            f"jobs {page['offset'] + 1}-{shown} of {page['total']} (--offset {shown} for more)",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_jobs_show(args: argparse.Namespace) -> int:
    return _emit(args, _client(args).job(args.job_id), job_details)


def cmd_jobs_logs(args: argparse.Namespace) -> int:
    client = _client(args)
    if not args.follow:
        _print_lines(client.job_logs(args.job_id, lines=args.lines))
        return EXIT_OK
    for item in client.follow_logs(args.job_id, lines=args.lines, every=FOLLOW_EVERY_S):
        if isinstance(item, str):
            print(item, flush=True)
            continue
        ended = f"job {item['id']} {item['state']}"
        print(ended + (f": {item['error']}" if item.get("error") else ""), file=sys.stderr)
        return EXIT_OK if item["state"] == "succeeded" else EXIT_FAILED
    raise AssertionError("follow_logs ends with the ended job")  # pragma: no cover


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    job = _client(args).cancel_job(args.job_id)
    if args.json:
        _print_json(job)
    elif job["state"] in TERMINAL_STATES:
        print(f"job {job['id']} {job['state']}")
    else:  # running: SIGTERM sent, it ends as cancelled
        print(f"job {job['id']} is stopping (cancel requested; it ends as cancelled)")
    return EXIT_OK


def cmd_sources_list(args: argparse.Namespace) -> int:
    return _emit(args, _client(args).list_sources(), lambda s: source_rows(s) if s else ["no sources"])


def source_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The request body of ``radforge sources add``."""
    spec: dict[str, Any] = {
        "name": args.name,
        "uri": absolute_uri(args.uri),
        "dataset_uri": absolute_uri(args.dataset),
        "interval_seconds": args.interval,
        "cron": args.cron,
        "priority": args.priority,
        "enabled": not args.disabled,
        "ready_marker": args.ready_marker,
        "rescan_ingested": args.rescan_ingested,
        "max_attempts": args.max_attempts,
    }
    if args.set:
        spec["config"] = _overrides(args.set)
    return {k: v for k, v in spec.items() if v is not None}


def cmd_sources_add(args: argparse.Namespace) -> int:
    source = _client(args).create_source(source_spec(args))
    if args.json:
        _print_json(source)
    else:
        print(f"watching {source['uri']} as source {source['name']} ({source['id']})")
    return EXIT_OK


def cmd_sources_show(args: argparse.Namespace) -> int:
    client = _client(args)
    return _emit(args, client.source(client.source_id(args.source)), source_details)


def cmd_sources_update(args: argparse.Namespace) -> int:
    changes = {
        "enabled": args.enabled,
        "priority": args.priority,
        "interval_seconds": args.interval,
        "cron": args.cron,
        "max_attempts": args.max_attempts,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        raise ClientError(
            "nothing to change: give --enable/--disable, --priority, --interval, --cron or --max-attempts"
        )
    client = _client(args)
    return _emit(args, client.update_source(client.source_id(args.source), changes), source_details)


def cmd_sources_remove(args: argparse.Namespace) -> int:
    client = _client(args)
    source_id = client.source_id(args.source)
    client.delete_source(source_id)
    if args.json:
        _print_json({"removed": source_id})
    else:
        print(f"stopped watching source {args.source} ({source_id}); its jobs and datasets stay")
    return EXIT_OK


def poll_rows(result: dict[str, Any]) -> list[str]:
    """The ``radforge sources poll`` table: the decision for each archive found."""
    rows = [
        (a["name"], "submit" if a["submit"] else "skip", a["reason"], a.get("job_id"))
        for a in result["archives"]
    ]
    return format_table(["ARCHIVE", "DECISION", "REASON", "JOB"], rows) if rows else ["no archives found"]


def cmd_sources_poll(args: argparse.Namespace) -> int:
    client = _client(args)
    return _emit(args, client.poll_source(client.source_id(args.source)), poll_rows)


# ---- parsers -----------------------------------------------------------------------------------
def _client_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server", metavar="URL", help=f"the control plane (default ${SERVER_ENV}, else {DEFAULT_SERVER})"
    )
    common.add_argument("--json", action="store_true", help="print the API's JSON (snake_case keys)")
    return common


def add_parsers(sub: Any) -> None:
    """Add ``jobs`` and ``sources`` to the ``radforge`` command's subparsers."""
    common = _client_options()
    token_help = (
        "Token: $RADFORGE_API_TOKEN, else the file in $RADFORGE_API_TOKEN_FILE, else the token "
        "`radforge serve` generated in $RADFORGE_STATE_DIR/api-token (default .radforge/api-token)."
    )
    jobs = sub.add_parser(
        "jobs", help="submit, list, show, follow and cancel control-plane jobs", epilog=token_help
    )
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)

    submit = jsub.add_parser("submit", help="submit an ingest, train, eval or compact job")
    ksub = submit.add_subparsers(dest="kind", metavar="KIND", required=True)
    kinds = []
    ing = ksub.add_parser("ingest", parents=[common], help="ingest an archive into a dataset")
    ing.add_argument("source", metavar="SOURCE_URI", help="archive root (path, file://, s3://)")
    ing.add_argument("dataset", metavar="DATASET_URI", help="dataset root")
    ing.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="an ingest setting, e.g. planes=[axial]"
    )
    kinds.append(ing)
    tr = ksub.add_parser("train", parents=[common], help="a pretraining run (docs/training.md)")
    tr.add_argument(
        "--config", required=True, help="run YAML the service can read (e.g. configs/tiny-cpu.yaml)"
    )
    tr.add_argument("--output", required=True, metavar="URI", help="checkpoints, resolved config and metrics")
    tr.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. steps=100")
    kinds.append(tr)
    ev = ksub.add_parser(
        "eval", parents=[common], help="frozen-feature evaluation with a report (docs/eval.md)"
    )
    ev.add_argument("--backbone", required=True, metavar="URI", help="an export folder or a checkpoint")
    ev.add_argument(
        "--tasks", required=True, metavar="SPEC", help="'builtin', task folder(s) or a suite file"
    )
    ev.add_argument("--out", required=True, metavar="DIR", help="report folder (a local or shared path)")
    ev.add_argument("--no-random-init", action="store_true", help="no random-init baseline backbone")
    ev.add_argument("--probes", default="linear,knn", help="comma-separated: linear, knn")
    ev.add_argument("--seeds", type=int, help="seeds per few-shot size (default 3)")
    ev.add_argument("--max-shots", type=int, help="largest k before the full training set (default: all)")
    ev.add_argument("--bootstrap", type=int, help="bootstrap resamples for the intervals (default 1000)")
    ev.add_argument("--seed", type=int, help="seed of the random-init backbone (default 0)")
    kinds.append(ev)
    co = ksub.add_parser(
        "compact",
        parents=[common],
        help="rewrite a dataset's small shards into large ones (docs/data-format.md)",
    )
    co.add_argument("dataset", metavar="DATASET_URI", help="dataset root")
    co.add_argument("--target-shard-mb", type=float, default=256.0, help="size of the shards written")
    co.add_argument("--min-shard-mb", type=float, help="parts whose shards are smaller are compacted")
    co.add_argument("--compression", help="the new shards' compression (default: the dataset's)")
    kinds.append(co)
    for k in kinds:
        k.add_argument("--priority", type=int, default=0, help="higher starts first (-1000..1000)")
        k.set_defaults(func=cmd_jobs_submit)

    ls = jsub.add_parser("list", parents=[common], help="jobs, newest first")
    ls.add_argument("--kind", choices=["ingest", "train", "eval", "compact"])
    ls.add_argument(
        "--state", action="append", choices=["queued", "running", "succeeded", "failed", "cancelled"]
    )
    ls.add_argument("--source-id", help="jobs a watched source submitted")
    ls.add_argument("--limit", type=int, default=50, help="jobs per page (1..500)")
    ls.add_argument("--offset", type=int, default=0, help="jobs to skip")
    ls.set_defaults(func=cmd_jobs_list)
    show = jsub.add_parser("show", parents=[common], help="one job: state, progress, result or error")
    show.add_argument("job_id", metavar="JOB_ID")
    show.set_defaults(func=cmd_jobs_show)
    logs = jsub.add_parser("logs", parents=[common], help="the job's log; -f follows it until the job ends")
    logs.add_argument("job_id", metavar="JOB_ID")
    logs.add_argument(
        "-n", "--lines", type=int, default=100, help=f"last lines to print (1..{MAX_LOG_LINES})"
    )
    logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="print new lines until the job ends; exit 0 if it succeeded",
    )
    logs.set_defaults(func=cmd_jobs_logs)
    cancel = jsub.add_parser("cancel", parents=[common], help="cancel a queued or running job")
    cancel.add_argument("job_id", metavar="JOB_ID")
    cancel.set_defaults(func=cmd_jobs_cancel)

    sources = sub.add_parser(
        "sources", help="watched bucket prefixes the scheduler ingests", epilog=token_help
    )
    ssub = sources.add_subparsers(dest="sources_command", metavar="ACTION", required=True)
    sl = ssub.add_parser("list", parents=[common], help="every source, with its schedule and last poll")
    sl.set_defaults(func=cmd_sources_list)
    add = ssub.add_parser("add", parents=[common], help="watch a prefix: each folder below it is an archive")
    add.add_argument("name", metavar="NAME", help="unique name, e.g. hospital-a")
    add.add_argument("uri", metavar="URI", help="prefix to watch (path, file://, s3://)")
    add.add_argument("dataset", metavar="DATASET_URI", help="dataset the archives go into")
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument("--interval", type=float, metavar="SECONDS", help="poll every SECONDS")
    when.add_argument("--cron", metavar="EXPR", help="poll at cron times (5 fields, UTC)")
    add.add_argument("--priority", type=int, help="priority of the jobs it submits")
    add.add_argument("--ready-marker", metavar="NAME", help="only archives holding this object are complete")
    add.add_argument("--rescan-ingested", action="store_true", help="re-ingest archives that gained objects")
    add.add_argument("--max-attempts", type=int, help="failed jobs per archive before giving up (default 3)")
    add.add_argument("--disabled", action="store_true", help="add it without polling it yet")
    add.add_argument("--set", action="append", metavar="KEY=VALUE", help="an ingest setting for its jobs")
    add.set_defaults(func=cmd_sources_add)
    for name, helptext, func in (
        ("show", "one source: schedule, last poll, lag, error", cmd_sources_show),
        ("remove", "stop watching a source (its jobs and datasets stay)", cmd_sources_remove),
        ("poll", "poll a source now; prints the decision for each archive", cmd_sources_poll),
    ):
        p = ssub.add_parser(name, parents=[common], help=helptext)
        p.add_argument("source", metavar="ID_OR_NAME")
        p.set_defaults(func=func)
    up = ssub.add_parser("update", parents=[common], help="enable/disable a source, change its schedule")
    up.add_argument("source", metavar="ID_OR_NAME")
    onoff = up.add_mutually_exclusive_group()
    onoff.add_argument("--enable", dest="enabled", action="store_const", const=True)
    onoff.add_argument("--disable", dest="enabled", action="store_const", const=False)
    up.add_argument("--priority", type=int)
    every = up.add_mutually_exclusive_group()
    every.add_argument("--interval", type=float, metavar="SECONDS")
    every.add_argument("--cron", metavar="EXPR")
    up.add_argument("--max-attempts", type=int)
    up.set_defaults(func=cmd_sources_update)
