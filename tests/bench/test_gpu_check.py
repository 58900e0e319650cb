"""``python -m bench.gpu_check --dry-run``: every phase of the one-call GPU check runs on the CPU.

The GPU check (bench/gpu_check.py) is meant for a first, unattended session on a GPU machine: it
must not be the first time its code paths run. The dry run takes them all at tiny sizes (the CUDA
kernels and NCCL aside: FSDP2 runs on a one-rank gloo group), in a subprocess as on the GPU machine,
and must report every phase ``ok`` with figures that make sense, and never import Ray.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.gpu_check import PHASES

REPO = Path(__file__).resolve().parents[2]


def _finite_numbers(x: Any) -> bool:
    if isinstance(x, dict):
        return all(_finite_numbers(v) for v in x.values())
    if isinstance(x, list):
        return all(_finite_numbers(v) for v in x)
    if isinstance(x, bool) or x is None:
        return True
    return not isinstance(x, float) or math.isfinite(x)


@pytest.mark.slow
def test_dry_run_reports_every_phase_ok(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--dry-run", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    result = json.loads(last)  # the final single JSON line
    assert result == json.loads((out / "gpu_check.json").read_text())
    assert result["bench"] == "gpu_check" and result["dry_run"] is True
    assert result["ray_imported"] is False
    phases = result["phases"]
    assert list(phases) == list(PHASES)
    failed = {k: v.get("error") or v for k, v in phases.items() if v["status"] != "ok"}
    assert not failed, failed
    assert _finite_numbers(result), result

    precision = phases["precision"]
    for variant in ("fp32", "bf16_autocast", "fsdp2_bf16"):
        v = precision[variant]
        assert v["same_initial_weights_as_fp32"], variant
        assert set(v["terms"]) == {"loss", "dino", "ibot", "koleo", "sigreg"}
        # the teacher is m teacher + (1 - m) student, sharded too
        assert v["ema_identity_max_diff"] < 1e-5, variant
    assert precision["bf16_autocast"]["term_diff_vs_fp32"]["dino"] < 0.1  # same weights, same batch

    recipes = phases["recipes"]
    for key in ("vit_b", "vit_l", "vit_g_fsdp2"):
        assert recipes[key]["fits"], recipes[key]
        assert recipes[key]["step_ms"] > 0 and recipes[key]["images_per_s"] > 0

    wait = phases["data_wait"]
    assert 0.0 <= wait["data_wait_fraction"] < 1.0 and wait["images_per_s"] > 0

    learning = phases["learning"]
    assert set(learning["checks"]) == {"loss_falls", "cls_std_above_0.5", "teacher_entropy_above_1",
                                       "prototypes_in_use"}  # fmt: skip

    resume = phases["resume"]
    assert resume["resumed_from"] == resume["k"]
    assert resume["bit_exact"] is True, resume

    compiled = phases["compile"]
    assert compiled["eager_step_ms"] > 0 and compiled["compiled_step_ms"] > 0

    summary = (out / "gpu_check.md").read_text()
    for name in PHASES:
        assert f"| {name} | ok |" in summary


def test_budget_skips_phases_that_no_longer_fit(tmp_path: Path) -> None:
    """A spent budget records the phases as skipped (and still writes both files) instead of running them."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--dry-run", "--out", str(out), "--budget-s", "1",
         "--phases", "resume,compile"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    phases = json.loads(proc.stdout.strip().splitlines()[-1])["phases"]
    assert {k: v["status"] for k, v in phases.items()} == {"resume": "skipped", "compile": "skipped"}
    assert "| resume | skipped |" in (out / "gpu_check.md").read_text()
