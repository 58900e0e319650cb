"""``make demo``: the whole pipeline that exists, end to end, on embedded defaults.

Builds a sample archive (real DICOM/NIfTI files shipped in PyPI packages plus a synthetic export
with planted identifying values), starts a local Ray bound to 127.0.0.1, ingests the archive into
an MDS dataset in a local folder (the object store), verifies it, prints what it holds, compacts
its small shards into large ones (printing the shard count before and after), pretrains a tiny
ViT on it on the CPU (Ray Train), then evaluates the pretrained teacher against a random-init
backbone of the same shape on the built-in task suite (frozen features, linear and kNN probes,
few-shot curves) and prints where the report is.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

DEFAULT_ROOT = Path(".demo")
TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny-cpu.yaml"
# The demo's own salt: real deployments set RADFORGE_SALT to a secret (see docs/ingest.md).
DEMO_SALT = "radforge-demo-salt-not-secret"
DEMO_STEPS = 150  # a few minutes on a laptop CPU (the tiny recipe's schedule spans 200 steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="radforge-demo", description=__doc__)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder for archive and dataset")
    parser.add_argument("--steps", type=int, default=DEMO_STEPS, help="pretraining steps")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RADFORGE_SALT", DEMO_SALT)

    from rich.console import Console

    from radforge.cli import main as cli
    from radforge.synthetic import build_sample_archive

    console = Console()
    root = args.root.resolve()
    archive = root / "archive" / "sample-hospital-2026-11"
    dataset = root / "dataset"
    if not archive.exists():
        console.print(f"[bold]1. building the sample archive[/] in {archive}")
        build_sample_archive(str(archive))
    else:
        console.print(f"[bold]1. sample archive[/] already in {archive}")
    console.print(f"[bold]2. ingesting[/] into {dataset} (local Ray on 127.0.0.1)")
    status = cli(["ingest", str(archive), str(dataset)])
    if status:
        return status
    console.print("[bold]3. verifying[/] every shard against the index")
    status = cli(["dataset", "verify", str(dataset)])
    if status:
        return status
    console.print("[bold]4. what the dataset holds[/]")
    status = cli(["dataset", "stats", str(dataset)])
    if status:
        return status
    console.print("[bold]5. compacting[/] the write tasks' small shards into large ones (a new commit)")
    status = cli(["dataset", "compact", str(dataset)])
    if status:
        return status
    console.print(
        f"\nDataset ready at {dataset} — a stock streaming.StreamingDataset(local='{dataset}') reads it."
    )
    run = root / "run"
    console.print(f"[bold]6. pretraining a tiny ViT[/] on the dataset (CPU, Ray Train) into {run}")
    status = cli(
        [
            "train",
            "--config",
            str(TINY_CONFIG),
            f"data.mix.sources=[{{uri: {dataset}}}]",
            f"output={run}",
            f"data.cache_dir={root / 'cache'}",
            f"steps={args.steps}",
        ]
    )
    if status:
        return status
    from radforge.trainer.checkpoint import latest

    ref = latest(str(run))
    if ref is None:
        console.print(f"[red]no checkpoint was published under {run}[/]")
        return 1
    print(f"\nCheckpoint (step {ref.step}): {ref.location.uri}")
    report = root / "eval"
    console.print(
        f"[bold]7. evaluating[/] the pretrained teacher against a random-init ViT of the same shape "
        f"on the built-in suite (frozen features; linear and kNN probes; few-shot) into {report}"
    )
    status = cli(
        [
            "eval",
            "--backbone",
            f"pretrained={run}",
            "--random-init",
            "--tasks",
            "builtin",
            "--out",
            str(report),
            "--cache",
            str(root / "eval-cache"),
        ]
    )
    if status:
        return status
    print(f"\nEvaluation report: {report / 'report.md'} (HTML: {report / 'report.html'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
