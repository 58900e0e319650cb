"""The ``radforge`` command line: one entry point, one subcommand per job.

Library code never prints; this module owns the terminal (progress from Ray Data, rich summaries)
and turns every failure into one clear line and a non-zero exit status (``--debug``: the traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("radforge")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
# Errors of libraries below us that have a better one-line explanation than their own message.
EXPLAINED = {
    "NoCredentialsError": "no object-storage credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
    "(or AWS_PROFILE, or run with an instance role)",
    "PartialCredentialsError": "incomplete object-storage credentials: set both AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY",
}


def _print_summary(title: str, rows: list[tuple[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for k, v in rows:
        table.add_row(k, str(v))
    Console().print(table)


def cmd_ingest(args: argparse.Namespace) -> int:
    from radforge.cli_progress import ingest_progress
    from radforge.config import parse_overrides
    from radforge.ingest.config import IngestConfig, load_config
    from radforge.ingest.pipeline import run_ingest

    cfg: IngestConfig = load_config(args.config, overrides=parse_overrides(args.set or []))
    cfg.deid.resolved_salt()  # a missing salt fails before Ray starts
    with ingest_progress(verbose=args.verbose) as hooks:
        summary = run_ingest(
            args.source,
            args.dataset,
            cfg,
            operator_report=args.operator_report,
            sink_cls=hooks.sink_cls,
            on_plan=hooks.on_plan,
        )
    if args.json:
        print(json.dumps(summary.to_dict(), sort_keys=True))
    else:
        rows: list[tuple[str, Any]] = [
            ("dataset", summary.dataset_uri),
            ("archive", summary.archive_id),
            ("committed part", summary.part_id or "nothing new to commit"),
            ("objects listed", summary.objects),
            ("headers read / reused", f"{summary.headers_read} / {summary.headers_reused} (inventory)"),
            ("series", summary.series),
        ]
        rows += [(f"  {k}", v) for k, v in sorted(summary.by_status.items())]
        rows += [(f"  reason: {k}", v) for k, v in sorted(summary.by_reason.items())]
        rows += [(f"  ingested, {k}", v) for k, v in sorted(summary.by_kind.items())]
        rows += [
            ("samples written", summary.samples_written),
            ("empty slices dropped", summary.slices_dropped),
            ("bytes written", f"{summary.bytes_written / 1e6:.1f} MB"),
            ("seconds", summary.seconds),
        ]
        _print_summary("radforge ingest", rows)
    return EXIT_OK


def cmd_dataset_verify(args: argparse.Namespace) -> int:
    from radforge.sharder.verify import verify_dataset

    report = verify_dataset(args.dataset)
    if args.json:
        print(json.dumps(report.to_dict(), sort_keys=True))
    else:
        for problem in report.problems:
            print(f"{problem.kind}: {problem.path} ({problem.detail})")
        state = "OK" if report.ok else f"{len(report.problems)} problem(s)"
        print(f"verified {report.shards_checked} shard(s), {report.samples} sample(s): {state}")
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_dataset_stats(args: argparse.Namespace) -> int:
    from radforge.sharder.stats import dataset_stats, format_stats

    stats = dataset_stats(args.dataset)
    print(json.dumps(stats, sort_keys=True) if args.json else format_stats(stats))
    return EXIT_OK


def cmd_dataset_list(args: argparse.Namespace) -> int:
    from radforge.sharder.listing import list_datasets
    from radforge.storage import resolve

    found = list_datasets(resolve(args.prefix))
    if args.json:
        for summary in found:
            print(json.dumps(summary.to_dict()))
        return EXIT_OK
    if not found:
        print(f"no radforge dataset at or directly below {args.prefix}")
    for x in found:
        print(
            f"{x.uri}  parts {x.parts}, archives {x.archives}, shards {x.shards}, "
            f"samples {x.samples}, {x.bytes / 1e6:.1f} MB"
        )
    return EXIT_OK


def cmd_dataset_export_index(args: argparse.Namespace) -> int:
    from radforge.sharder.commit_log import export_index
    from radforge.storage import resolve

    target, shards = export_index(resolve(args.dataset), resolve(args.out) if args.out else None)
    result = {"index": target.uri, "shards": shards}
    print(json.dumps(result) if args.json else f"wrote {target.uri}: {shards} shards")
    return EXIT_OK


def cmd_dataset_compact(args: argparse.Namespace) -> int:
    from radforge.sharder.compact import MIB, compact_dataset

    summary = compact_dataset(
        args.dataset,
        target_shard_bytes=max(1, round(args.target_shard_mb * MIB)),
        min_shard_bytes=None if args.min_shard_mb is None else round(args.min_shard_mb * MIB),
        compression=args.compression,
    )
    if args.json:
        print(json.dumps(summary.to_dict(), sort_keys=True))
        return EXIT_OK
    print(
        f"{summary.dataset_uri}: shards {summary.shards_before} -> {summary.shards_after}, "
        f"parts {summary.parts_before} -> {summary.parts_after} ({len(summary.compactions)} compaction(s), "
        f"{summary.seconds:.1f} s); replaced parts stay until `radforge dataset vacuum`"
    )
    return EXIT_OK


def _duration(text: str) -> float:
    from radforge.sharder.vacuum import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_dataset_vacuum(args: argparse.Namespace) -> int:
    from radforge.sharder.vacuum import vacuum_dataset

    summary = vacuum_dataset(args.dataset, older_than_s=args.older_than)
    if args.json:
        print(json.dumps(summary.to_dict(), sort_keys=True))
        return EXIT_OK
    print(
        f"{summary.dataset_uri}: removed {len(summary.removed)} replaced part(s), "
        f"{len(summary.waiting)} within the grace period, {len(summary.orphans)} orphan(s)"
    )
    return EXIT_OK


def cmd_dataset_export_nifti(args: argparse.Namespace) -> int:
    from radforge.sharder.torch_dataset import read_series_volume, write_nifti

    volume = read_series_volume(
        args.dataset, args.series_key, plane=args.plane, window=args.window, fill=args.fill
    )
    write_nifti(volume, args.out)
    kept = int(volume.kept.sum())
    summary = {
        "file": args.out,
        "plane": volume.plane,
        "window": volume.window,
        "shape": list(volume.array.shape),
        "spacing_mm": list(volume.spacing),
        "slices_stored": kept,
        "slices_filled": len(volume.kept) - kept,
        "fill": volume.fill,
        "uniform_spacing": volume.uniform_spacing,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary("export-nifti (slice, row, column)", list(summary.items()))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from radforge.config import parse_overrides
    from radforge.services.app.main import serve
    from radforge.services.app.settings import load_settings

    flags = {
        "host": args.host,
        "port": args.port,
        "state_dir": args.state_dir,
        "ray_address": args.ray_address,
        "database_url": args.database_url,
    }
    settings = load_settings(args.config, overrides={**parse_overrides(args.set or []), **flags})
    serve(settings)
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from radforge.trainer.checkpoint import CheckpointError
    from radforge.trainer.run_config import TrainConfigError, load_train_config

    try:
        cfg = load_train_config(args.config, overrides=args.overrides or [])
    except TrainConfigError as e:
        print(f"radforge: invalid configuration: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _train(cfg, no_ray=args.no_ray, as_json=args.json)
    except CheckpointError as e:
        print(f"radforge: {e}", file=sys.stderr)
        return EXIT_FAILED


def _train_progress(cfg: Any) -> Any:
    """A rich progress bar over the run's steps on stderr (rank 0 only): loss, images/s, data wait."""
    import os

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=os.environ.get("RANK", "0") != "0",
    )
    task = progress.add_task("train", total=cfg.steps, status="starting")

    def update(record: dict[str, Any]) -> None:
        status = (
            f"loss {record['loss']:.4f}  {record['images_per_s']:.1f} img/s  "
            f"data wait {record['data_wait_fraction']:.0%}"
        )
        progress.update(task, completed=record["step"], status=status)

    return progress, update


def _train(cfg: Any, *, no_ray: bool, as_json: bool) -> int:
    progress, on_step = _train_progress(cfg)
    if no_ray:
        from radforge.trainer.loop import run_training

        with progress:
            summary = run_training(cfg, on_step=on_step)
        rows: list[tuple[str, Any]] = [  # snake_case keys: --json prints them as they are
            ("steps", summary.step),
            ("resumed_from", summary.resumed_from),
            ("checkpoint", summary.checkpoint),
            ("images_per_s", round(summary.images_per_s, 2)),
            ("data_wait_fraction", round(summary.data_wait_fraction, 4)),
        ]
    else:
        import threading

        from radforge.trainer.checkpoint import latest
        from radforge.trainer.loop import MetricsTail
        from radforge.trainer.ray_launcher import launch

        # Ray workers write metrics JSONL every metrics.flush_every steps: follow those files
        tail, done = MetricsTail(cfg.output), threading.Event()

        def follow() -> None:
            while not done.wait(2.0):
                for record in tail.poll():
                    on_step(record)

        follower = threading.Thread(target=follow, daemon=True)
        with progress:
            follower.start()
            try:
                result = launch(cfg)
            finally:
                done.set()
                follower.join()
            for record in tail.poll():
                on_step(record)
        if result.error is not None:
            raise result.error
        ref = latest(cfg.output)
        rows = [("steps", ref.step if ref else 0), ("checkpoint", ref.location.uri if ref else None)]
    if as_json:
        print(json.dumps(dict(rows)))
    else:
        _print_summary("radforge train", [(k.replace("_", " "), v) for k, v in rows])
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from radforge.trainer.checkpoint import CheckpointError
    from radforge.trainer.export import FORMATS, ExportError, export_backbone

    formats = args.format or list(FORMATS)
    hub = None
    try:
        result = export_backbone(args.checkpoint, args.out, formats=formats)
        if args.push_to_hub:
            from radforge.trainer.export_formats import push_to_hub

            hub = push_to_hub(result.folder, args.push_to_hub, private=args.private)
    except (CheckpointError, ExportError) as e:
        print(f"radforge: {e}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps({**dataclasses.asdict(result), "hub": hub and dataclasses.asdict(hub)}))
    else:
        rows = [("folder", result.folder), ("step", result.step), ("sha256", result.sha256)]
        rows += [(f"format {k}", v) for k, v in result.formats.items()]
        rows += [("hub commit", hub.commit_url)] if hub else []
        _print_summary("radforge export", rows)
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from radforge.cli_progress import eval_progress
    from radforge.trainer.checkpoint import CheckpointError
    from radforge.trainer.eval.backbone import BackboneLoadError
    from radforge.trainer.eval.report import full_scores
    from radforge.trainer.eval.run import backbone_name, evaluate
    from radforge.trainer.eval.tasks import TaskError

    sources = {}
    for item in args.backbone:
        name, _, path = item.rpartition("=")
        sources[name or backbone_name(path)] = path
    try:
        with eval_progress() as on_progress:  # a bar over the (backbone, task) evaluations, on stderr
            outcome = evaluate(
                sources,
                args.tasks,
                out=args.out,
                cache=args.cache,
                random_init=args.random_init,
                seed=args.seed,
                probes=[p.strip() for p in args.probes.split(",") if p.strip()],
                seeds=args.seeds,
                max_shots=args.max_shots,
                n_boot=args.bootstrap,
                on_progress=on_progress,
            )
    except (CheckpointError, BackboneLoadError, TaskError, ValueError) as e:
        print(f"radforge: {e}", file=sys.stderr)
        return EXIT_FAILED
    full = full_scores(outcome.results)
    if args.json:
        scores = {f"{t}/{p}/{b}": r.metrics for (t, p, b), r in full.items()}
        print(json.dumps({"report": str(outcome.report.markdown), "full": scores}))
    else:
        from radforge.trainer.eval.metrics import PRIMARY

        rows: list[tuple[str, Any]] = [
            (f"{t} / {p} / {b}", round(r.metrics[PRIMARY[r.kind]], 3)) for (t, p, b), r in full.items()
        ]
        rows += [("seconds", round(outcome.seconds, 1))]
        _print_summary("radforge eval (accuracy, or R2 for regression; full training set)", rows)
        if outcome.paired:  # against the random-init baseline, on the same test samples
            from radforge.trainer.eval.report import verdict_lines

            for line in verdict_lines(outcome.paired):
                print(line)
        print(f"Report: {outcome.report.markdown} (HTML: {outcome.report.html})")
    return EXIT_OK


# what `radforge env` reports: the distributions radforge's behaviour depends on
ENV_PACKAGES = (
    "radforge", "torch", "torchvision", "ray", "mosaicml-streaming", "numpy", "pydicom", "pylibjpeg",
    "SimpleITK", "nibabel", "pyarrow", "fsspec", "s3fs", "pydantic", "fastapi", "uvicorn",
    "transformers", "timm", "monai",
)  # fmt: skip


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def environment_report() -> dict[str, str]:
    """Versions of Python, the platform, CUDA (as torch was built) and :data:`ENV_PACKAGES`.

    Read from package metadata, so nothing heavy is imported (torch only for its CUDA build).
    """
    import platform

    out = {"python": platform.python_version(), "platform": platform.platform()}
    out.update({name: _version(name) for name in ENV_PACKAGES})
    if out["torch"] != "not installed":
        import torch

        out["torch_cuda_build"] = torch.version.cuda or "none (CPU build)"
        out["cuda_available"] = str(torch.cuda.is_available())
    return out


def cmd_env(args: argparse.Namespace) -> int:
    report = environment_report()
    if args.json:
        print(json.dumps(report))
    else:
        width = max(map(len, report))
        for name, value in report.items():
            print(f"{name:<{width}}  {value}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radforge",
        description="Turn hospital CT/MRI archives into radiology foundation models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    parser.add_argument("--version", action="version", version=f"radforge {_version('radforge')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    env = sub.add_parser("env", help="versions of radforge and the stack it runs on (for bug reports)")
    env.add_argument("--json", action="store_true", help="one JSON object")
    env.set_defaults(func=cmd_env)

    p = sub.add_parser("ingest", help="ingest a DICOM/NIfTI archive into an MDS dataset (Ray Data job)")
    p.add_argument("source", metavar="SOURCE_URI", help="archive folder or prefix (path, file://, s3://)")
    p.add_argument("dataset", metavar="DATASET_URI", help="dataset root (path, file://, s3://)")
    p.add_argument("--config", help="YAML file with ingest settings (see configs/ingest.yaml)")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. planes=[axial,coronal]"
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    p.add_argument(  # SUPPRESS: given before the command (radforge -v ingest), it is not reset here
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="Ray's INFO lines too"
    )
    p.add_argument(
        "--operator-report",
        metavar="URI",
        help="write the source objects of every skipped/quarantined series here (identifying paths: "
        "keep it in the hospital's trust zone; refused inside the dataset)",
    )
    p.set_defaults(func=cmd_ingest)

    d = sub.add_parser(
        "dataset", help="work with datasets: list, verify, stats, export-nifti, export-index, compact, vacuum"
    )
    dsub = d.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    ls = dsub.add_parser("list", help="the datasets at a prefix or directly below it, with their totals")
    ls.add_argument("prefix", metavar="URI_PREFIX")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=cmd_dataset_list)
    v = dsub.add_parser("verify", help="check every shard against the index and its hashes")
    v.add_argument("dataset", metavar="DATASET_URI")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_dataset_verify)
    s = dsub.add_parser("stats", help="counts by modality, plane, window, body part, archive; bytes")
    s.add_argument("dataset", metavar="DATASET_URI")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_dataset_stats)
    n = dsub.add_parser(
        "export-nifti", help="rebuild one series' volume from its slices as NIfTI (docs/data-format.md)"
    )
    n.add_argument("dataset", metavar="DATASET_URI")
    n.add_argument("series_key", metavar="SERIES_KEY", help="the series key (meta.series_key of its samples)")
    n.add_argument("out", metavar="OUT", help="output file, .nii or .nii.gz")
    n.add_argument(
        "--plane",
        choices=["axial", "coronal", "sagittal"],
        help="plane to stack (default: the acquired plane, else axial)",
    )
    n.add_argument("--window", default="raw", help="stored window to export (default raw: HU for CT)")
    n.add_argument(
        "--fill", type=float, help="value of dropped empty slices (default: -1024 for CT raw, else 0)"
    )
    n.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    n.set_defaults(func=cmd_dataset_export_nifti)
    x = dsub.add_parser(
        "export-index", help="write the whole root MDS index.json a stock StreamingDataset reads (any size)"
    )
    x.add_argument("dataset", metavar="DATASET_URI")
    x.add_argument("--out", help="where to write it (default DATASET_URI/index.json; shard paths relative)")
    x.add_argument("--json", action="store_true", help="print the result as one JSON line")
    x.set_defaults(func=cmd_dataset_export_index)
    c = dsub.add_parser("compact", help="rewrite small shards into large ones (one commit per run of parts)")
    c.add_argument("dataset", metavar="DATASET_URI")
    c.add_argument("--target-shard-mb", type=float, default=256.0, help="shard size before compression")
    c.add_argument(
        "--min-shard-mb", type=float, help="parts whose mean stored shard is smaller are rewritten (target/4)"
    )
    c.add_argument("--compression", help="codec of the new shards (default: that of the shards replaced)")
    c.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    c.set_defaults(func=cmd_dataset_compact)
    vac = dsub.add_parser("vacuum", help="delete files of parts compacted away more than a grace period ago")
    vac.add_argument("dataset", metavar="DATASET_URI")
    vac.add_argument(
        "--older-than", type=_duration, default=3600.0, help="grace period: 90s, 30m, 1h (default), 2d"
    )
    vac.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    vac.set_defaults(func=cmd_dataset_vacuum)

    sv = sub.add_parser("serve", help="run the control plane (API, scheduler, metrics, dashboard)")
    sv.add_argument("--host", help="address to listen on (default 127.0.0.1; others need a token)")
    sv.add_argument("--port", type=int, help="TCP port (default 8000)")
    sv.add_argument("--config", help="YAML file with service settings (see docs/control-plane.md)")
    sv.add_argument("--state-dir", help="database, job folders and embedded Ray info (default .radforge)")
    sv.add_argument(
        "--ray-address",
        help="http(s)://HEAD:8265 (Ray's Job Submission API) or HOST:PORT of a Ray cluster "
        "(default: an embedded local Ray)",
    )
    sv.add_argument(
        "--database-url",
        help="sqlite:///PATH (default: STATE_DIR/radforge.db) or postgresql://USER@HOST:PORT/DB",
    )
    sv.add_argument("--set", action="append", metavar="KEY=VALUE", help="a setting, e.g. max_running_jobs=4")
    sv.set_defaults(func=cmd_serve)

    t = sub.add_parser("train", help="self-supervised pretraining on Ray Train (or one process)")
    t.add_argument("--config", required=True, help="run YAML (see configs/tiny-cpu.yaml, docs/training.md)")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. steps=100")
    t.add_argument("--no-ray", action="store_true", help="train in this process (one CPU or GPU, no Ray)")
    t.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    t.set_defaults(func=cmd_train)

    x = sub.add_parser(
        "export", help="a checkpoint's teacher backbone for radforge, transformers and timm (docs/eval.md)"
    )
    x.add_argument("checkpoint", metavar="CHECKPOINT", help="run output, step folder or state.pt")
    x.add_argument("out", metavar="OUT", help="export folder: a subfolder per format (native/, hf/, timm/)")
    x.add_argument(
        "--format",
        action="append",
        choices=["native", "hf", "timm"],
        help="a format to write; repeat for several (default: all three)",
    )
    x.add_argument(
        "--push-to-hub",
        metavar="REPO",
        help="then upload OUT to this Hugging Face model repo (created if missing; token: HF_TOKEN or login)",
    )
    x.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    x.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    x.set_defaults(func=cmd_export)

    e = sub.add_parser("eval", help="frozen-feature evaluation (2D/3D tracks, few-shot) with a report")
    e.add_argument(
        "--backbone",
        action="append",
        required=True,
        metavar="[NAME=]PATH",
        help="an export folder or a checkpoint (run output, step folder, state.pt); repeat to compare",
    )
    e.add_argument("--random-init", action="store_true", help="add a random-init backbone of the same shape")
    e.add_argument("--tasks", required=True, metavar="SPEC", help="'builtin', task folder(s) or a suite file")
    e.add_argument("--out", default="eval-report", help="report folder (report.md, report.html, plots/)")
    e.add_argument("--cache", help="feature cache and built-in suite (default OUT/cache)")
    e.add_argument("--probes", default="linear,knn", help="comma-separated: linear, knn")
    e.add_argument("--seeds", type=int, default=3, help="seeds per few-shot size")
    e.add_argument("--max-shots", type=int, help="largest k before the full training set (default: all)")
    e.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    e.add_argument("--seed", type=int, default=0, help="seed of the random-init backbone")
    e.add_argument("--json", action="store_true", help="print full-set metrics as one JSON line")
    e.set_defaults(func=cmd_eval)

    from radforge.cli_jobs import add_parsers as add_client_parsers

    add_client_parsers(sub)  # jobs, sources: a client of `radforge serve` (radforge/client.py)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from radforge.client import ClientError
    from radforge.config import ConfigError
    from radforge.ingest.errors import SourceError
    from radforge.sharder.catalog import DatasetError
    from radforge.sharder.schema import SchemaVersionError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        status = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return status
    except BrokenPipeError:
        return _reader_gone()
    except ConfigError as e:
        return _fail(f"invalid configuration: {e}", EXIT_USAGE, debug=args.debug)
    except (SourceError, DatasetError, SchemaVersionError, ClientError) as e:
        return _fail(str(e), EXIT_FAILED, debug=args.debug)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED, debug=args.debug)
    except Exception as e:  # anything else: one line, not a traceback (--debug shows it)
        return _fail(describe_failure(e), EXIT_FAILED, debug=args.debug)


def describe_failure(error: BaseException) -> str:
    """One line for an unexpected failure: a known cause's explanation, else its type and first line.

    Credentials and query strings in the message are redacted.
    """
    from radforge.services.app.security import redact

    cause: BaseException | None = error
    while cause is not None:
        if type(cause).__name__ in EXPLAINED:
            return EXPLAINED[type(cause).__name__]
        cause = cause.__cause__ or cause.__context__
    first = (str(error).strip().splitlines() or [""])[0]
    return redact(f"{type(error).__name__}: {first}" if first else type(error).__name__)


def _fail(message: str, status: int, *, debug: bool) -> int:
    if debug:
        raise  # noqa: PLE0704  # re-raise the exception being handled: the traceback, as asked
    print(f"radforge: {message}", file=sys.stderr)
    return status


def _reader_gone() -> int:
    """Stdout's reader has gone (``radforge ... | head``): stop quietly, as ``cat`` would."""
    import os

    # later writes (the interpreter's final flush) go nowhere instead of raising again
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
