"""``make demo`` end to end: archive -> ingest -> verify -> stats -> pretraining -> evaluation report."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from PIL import Image

from radforge.demo import main
from radforge.sharder.verify import verify_dataset
from tests.support import read_all

TASKS = (
    "organ_2d",
    "modality_2d",
    "plane_2d",
    "position_2d",
    "lesion_2d",
    "region_3d",
    "plane_real_2d",
    "position_real_2d",
)


def test_demo_runs_the_whole_pipeline(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--root", str(tmp_path), "--steps", "20"]) == 0
    out = capsys.readouterr().out
    dataset, run, report = tmp_path / "dataset", tmp_path / "run", tmp_path / "eval"
    assert verify_dataset(str(dataset)).ok
    before, after = map(int, re.search(r"shards (\d+) -> (\d+)", out).groups())  # type: ignore[union-attr]
    assert after < before  # compacted before training (the write tasks' small shards)
    samples = read_all(dataset)
    assert {s["meta"]["modality"] for s in samples.values()} == {"CT", "MR"}
    latest = json.loads((run / "checkpoints" / "latest").read_text())["dir"]
    assert (run / "checkpoints" / latest / "state.pt").is_file()
    assert f"Checkpoint (step 20): {run / 'checkpoints' / latest}" in out  # it says where the checkpoint is
    assert f"Evaluation report: {report / 'report.md'}" in out  # and where the report is
    assert "Verdict: pretrained beats random_init on " in out  # the paired differences' verdict

    # the report is complete: a row per task and probe, a score with an interval for both backbones
    md = (report / "report.md").read_text()
    assert md.splitlines()[2].startswith("**Verdict: pretrained beats random_init on ")  # the report opens so
    scores = md.split("## Scores", 1)[1].split("\n## ", 1)[0]  # its table (the deltas' table comes first)
    header = next(line for line in scores.splitlines() if line.startswith("| task |"))
    assert header == "| task | track | probe | metric | pretrained | random_init |"
    for task in TASKS:
        for probe in ("linear", "knn"):
            row = next(
                line
                for line in scores.splitlines()
                if line.startswith(f"| {task} |") and f"| {probe} |" in line
            )
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert all("[" in c and "]" in c for c in cells[4:6]), row
    results = json.loads((report / "results.json").read_text())
    full = [r for r in results["results"] if r["shots"] == "full"]
    assert {(r["task"], r["probe"], r["backbone"]) for r in full} == {
        (t, p, b) for t in TASKS for p in ("linear", "knn") for b in ("pretrained", "random_init")
    }
    assert all(
        not math.isnan(r["metrics"]["accuracy" if r["kind"] == "classification" else "r2"]) for r in full
    )
    assert {r["shots"] for r in results["results"]} >= {1, 2, 4, "full"}  # few-shot points
    # plots: one valid PNG per task, referenced by both the Markdown and the HTML report
    page = (report / "report.html").read_text()
    for task in TASKS:
        png = report / "plots" / f"{task}.png"
        with Image.open(png) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
        assert f"plots/{task}.png" in md and f'src="plots/{task}.png"' in page
