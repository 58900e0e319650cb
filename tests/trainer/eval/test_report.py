"""The eval report and the eval job's result, from a real tiny pretraining run's export and checkpoint.

The report opens with the verdict line ``radforge eval`` prints, then per-task deltas with paired
intervals, keeps one colour per backbone (checked in the PNGs' pixels and the HTML), and names the
run behind each backbone: checkpoint, step, datasets (redacted), config hash.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from radforge.cli import main as cli_main
from radforge.services.jobs import eval as eval_job
from radforge.services.jobs.progress import RESULT, SPEC
from radforge.trainer import checkpoint as ckpt
from radforge.trainer.eval.builtin import build_builtin_suite
from radforge.trainer.eval.report import (
    BASELINE_COLOUR,
    DELTAS_PLOT,
    NO_BASELINE,
    PALETTE,
    backbone_colours,
    verdict_lines,
)
from radforge.trainer.eval.run import RANDOM_INIT, evaluate
from radforge.trainer.export import export_backbone
from radforge.trainer.loop import run_training
from radforge.trainer.run_config import config_sha256, run_provenance
from tests.trainer.support import ingest_tiny, tiny_run

SMALL = {"n_volumes": 12, "size": 32, "slices": 12, "real": False}
FAST = ["--seeds", "2", "--max-shots", "2", "--bootstrap", "50"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> dict[str, Any]:
    """A 2-step tiny run on an ingested dataset, its export, and a small built-in task."""
    root = tmp_path_factory.mktemp("report")
    dataset = ingest_tiny(root, str(root / "dataset"))
    run = root / "run"
    run_training(tiny_run(dataset, str(run), root, "steps=2", "checkpoint.every=2"))
    export = root / "export"
    export_backbone(str(run), str(export), formats=["native"])
    (task,) = [p for p in build_builtin_suite(root / "tasks", **SMALL) if p.name == "plane_2d"]
    ref = ckpt.latest(str(run))
    assert ref is not None
    config = (Path(ref.location.path) / ckpt.CONFIG).read_text()
    return {"root": root, "dataset": dataset, "run": run, "export": export, "task": task, "config": config}


def _colour_pixels(png: Path, colour: str) -> int:
    """Pixels of exactly ``colour`` (#rrggbb) in ``png``."""
    rgb = np.asarray(Image.open(png).convert("RGB"))
    target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)
    return int(np.all(rgb == target, axis=-1).sum())


def test_report_opens_with_the_verdict_then_deltas_colours_and_provenance(
    pretrained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = ["eval", "--backbone", f"pretrained={pretrained['export']}", "--random-init"]
    args += ["--tasks", str(pretrained["task"]), "--out", str(out), *FAST]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    written = json.loads((out / "results.json").read_text())
    paired = written["paired_differences"]
    assert [(p["probe"], p["backbone"], p["baseline"]) for p in paired] == [
        (probe, "pretrained", RANDOM_INIT) for probe in ("linear", "knn")
    ]

    # the verdict: the line the command printed, first after the title, with counts that add up
    (verdict,) = written["verdicts"]
    assert verdict in printed.splitlines()
    markdown = (out / "report.md").read_text()
    assert markdown.splitlines()[:3] == ["# radforge evaluation", "", f"**{verdict}**"]
    wins = sum(p["verdict"] == "win" for p in paired)
    losses = sum(p["verdict"] == "loss" for p in paired)
    assert written["verdict"] == [
        {
            "backbone": "pretrained", "baseline": RANDOM_INIT, "wins": wins, "losses": losses,
            "ties": 2 - wins - losses, "probes": 2, "line": verdict,
        }
    ]  # fmt: skip
    assert f"beats {RANDOM_INIT} on {wins} of 2 probes" in verdict

    # per-task deltas: each (task, probe)'s difference and paired interval, before the scores
    sections = [markdown.index(f"## {s}") for s in ("Per-task deltas", "Scores", "Provenance")]
    assert sections == sorted(sections)
    for p in paired:
        row = (
            f"| plane_2d | {p['probe']} | pretrained | accuracy | {p['n_test']} | {p['diff']:+.3f} | "
            f"[{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}] | {p['verdict']} |"
        )
        assert row in markdown
        assert p["ci"][0] <= p["diff"] <= p["ci"][1]

    # one colour per backbone: the baseline grey, the pretrained one the palette's first, everywhere
    colours = {"pretrained": PALETTE[0], RANDOM_INIT: BASELINE_COLOUR}
    assert written["colours"] == colours
    page = (out / "report.html").read_text()
    for name, colour in colours.items():
        assert f'<span class="swatch" style="background:{colour}"></span>{name}' in page
    fewshot, deltas = out / "plots" / "plane_2d.png", out / "plots" / DELTAS_PLOT
    assert _colour_pixels(fewshot, PALETTE[0]) > 50 and _colour_pixels(fewshot, BASELINE_COLOUR) > 50
    assert _colour_pixels(deltas, PALETTE[0]) > 20  # the pretrained backbone's dots and bars
    assert f"![paired differences](plots/{DELTAS_PLOT})" in markdown and f'src="plots/{DELTAS_PLOT}"' in page

    # provenance: the run behind the export (checkpoint, step of steps, dataset, config hash)
    info = written["backbones"]["pretrained"]
    assert info["step"] == 2 and info["steps"] == 2
    assert info["datasets"] == [pretrained["dataset"]]
    assert info["config_sha256"] == config_sha256(pretrained["config"])
    assert info["checkpoint"] == str(pretrained["run"] / "checkpoints" / "step-00000002")
    provenance = markdown[markdown.index("## Provenance") : markdown.index("## Settings")]
    (row,) = [line for line in provenance.splitlines() if line.startswith("| pretrained |")]
    for cell in (info["checkpoint"], "2 of 2", pretrained["dataset"], info["config_sha256"][:16]):
        assert f"| {cell} |" in row
    assert re.search(r"\| random_init \| random init of the same shape \(seed 0\) \|", provenance)


def test_a_checkpoint_gives_the_same_provenance_and_no_baseline_no_verdict(
    pretrained: dict[str, Any], tmp_path: Path
) -> None:
    outcome = evaluate(
        {"run": str(pretrained["run"])},
        str(pretrained["task"]),
        out=tmp_path / "out",
        seeds=2,
        max_shots=2,
        n_boot=50,
    )
    assert outcome.paired == []
    markdown = outcome.report.markdown.read_text()
    assert markdown.splitlines()[2] == f"**{NO_BASELINE}**" and "## Per-task deltas" not in markdown
    assert outcome.report.deltas_plot is None
    info = json.loads(outcome.report.results.read_text())["backbones"]["run"]
    assert info["config_sha256"] == config_sha256(pretrained["config"])
    assert (info["step"], info["steps"], info["datasets"]) == (2, 2, [pretrained["dataset"]])


def test_eval_job_result_carries_the_verdict_and_paired_differences(
    pretrained: dict[str, Any], tmp_path: Path
) -> None:
    job = tmp_path / "job"
    job.mkdir()
    spec = {
        "kind": "eval",
        "backbone_uri": str(pretrained["export"]),
        "tasks": str(pretrained["task"]),
        "output_uri": str(tmp_path / "report"),
        "seeds": 2,
        "max_shots": 2,
        "bootstrap": 50,
    }
    (job / SPEC).write_text(json.dumps(spec))
    assert eval_job.run(str(job)) == 0
    result = json.loads((job / RESULT).read_text())
    report = json.loads((tmp_path / "report" / "results.json").read_text())
    assert result["paired_differences"] == report["paired_differences"]
    assert result["verdict"] == report["verdict"] and len(result["verdict"]) == 1
    assert result["verdict"][0]["line"] == report["verdicts"][0]
    assert set(result["paired_differences"][0]) == {
        "task", "probe", "backbone", "baseline", "metric", "n_test", "diff", "ci", "verdict",
    }  # fmt: skip
    # snake_case throughout (the backbone, task and probe names used as keys here are too)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", k) for k in _all_keys(result)), sorted(_all_keys(result))


def _all_keys(obj: Any) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _all_keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in _all_keys(v)}
    return set()


def test_run_provenance_redacts_dataset_credentials() -> None:
    uri = "s3://key:secret@bucket/ct?X-Amz-Signature=abc"
    config = f"data:\n  mix:\n    sources:\n    - uri: {uri}\nsteps: 7\n"
    assert run_provenance(config) == {
        "datasets": ["s3://***@bucket/ct?***"],
        "steps": 7,
        "config_sha256": config_sha256(config),
    }


def test_colours_are_stable_and_the_baseline_is_grey() -> None:
    colours = backbone_colours(["a", RANDOM_INIT, "b"], baseline=RANDOM_INIT)
    assert colours == {"a": PALETTE[0], "b": PALETTE[1], RANDOM_INIT: BASELINE_COLOUR}
    assert backbone_colours(["a"]) == {"a": PALETTE[0]}
    assert verdict_lines([]) == []
