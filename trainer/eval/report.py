"""The evaluation report: ``results.json``, ``report.md``, ``report.html`` and few-shot plots (PNG).

The main table has one row per (task, probe) and one column per backbone: the task's primary
metric (accuracy, or R2 for regression) on the full training set with its 95% bootstrap interval.
With a baseline (the random-init backbone of ``radforge eval --random-init``), a "paired differences"
table gives, per task and probe, each backbone's primary metric minus the baseline's on the same test
samples with a paired bootstrap 95% interval, and a verdict line counts the probes won with the
interval excluding zero. A further table lists every metric. Each task gets a plot of the primary
metric against the number of shots (mean and min-max over seeds), one line per backbone and probe.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radforge.trainer.eval.fewshot import FULL
from radforge.trainer.eval.metrics import N_BOOT, PRIMARY, PairedDifference, paired_bootstrap
from radforge.trainer.eval.tracks import ProbeResult

RESULTS = "results.json"
MARKDOWN = "report.md"
HTML = "report.html"
PLOTS = "plots"


@dataclass(frozen=True)
class Report:
    """Paths of a written report."""

    folder: Path
    markdown: Path
    html: Path
    results: Path
    plots: dict[str, Path]  # task -> PNG


@dataclass(frozen=True)
class PairedResult:
    """One backbone minus the baseline on one task and probe (full training set, same test samples)."""

    task: str
    probe: str
    backbone: str
    baseline: str
    difference: PairedDifference

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: the difference, its interval as [lo, hi] and the verdict."""
        d = self.difference
        return {
            "task": self.task,
            "probe": self.probe,
            "backbone": self.backbone,
            "baseline": self.baseline,
            "metric": d.metric,
            "n_test": d.n_test,
            "diff": d.diff,
            "ci": list(d.ci),
            "verdict": d.verdict,
        }


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def full_scores(results: Sequence[ProbeResult]) -> dict[tuple[str, str, str], ProbeResult]:
    """(task, probe, backbone) -> the result on the full training set."""
    return {(r.task, r.probe, r.backbone): r for r in results if r.shots == FULL}


def headline_scores(results: Sequence[ProbeResult]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Backbone -> task -> probe -> primary metric on the full training set (None when undefined)."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for (task, probe, backbone), r in full_scores(results).items():
        value = float(r.metrics[PRIMARY[r.kind]])
        out.setdefault(backbone, {}).setdefault(task, {})[probe] = value if math.isfinite(value) else None
    return out


def paired_differences(
    results: Sequence[ProbeResult], *, baseline: str, n_boot: int = N_BOOT, seed: int = 0
) -> list[PairedResult]:
    """Every other backbone minus ``baseline`` per (task, probe), paired on the same test samples.

    Uses the full-training-set results' test predictions; the bootstrap draws the same test indices
    for every backbone of a (task, probe) (one ``seed``). Empty when the baseline was not evaluated.
    """
    full = full_scores(results)
    out = []
    for (task, probe, name), r in full.items():
        base = full.get((task, probe, baseline))
        if name == baseline or base is None:
            continue
        if r.predictions is None or base.predictions is None or r.targets is None or base.targets is None:
            raise ValueError(f"{task}/{probe}: no test predictions to pair ({name}, {baseline})")
        if not np.array_equal(r.targets, base.targets):
            raise ValueError(f"{task}/{probe}: {name} and {baseline} were scored on different test samples")
        diff = paired_bootstrap(r.kind, r.targets, r.predictions, base.predictions, n_boot=n_boot, seed=seed)
        out.append(PairedResult(task, probe, name, baseline, diff))
    return out


def verdict_lines(paired: Sequence[PairedResult]) -> list[str]:
    """One line per backbone: probes won / lost with the paired interval excluding zero, of all."""
    lines = []
    for name in dict.fromkeys(p.backbone for p in paired):
        mine = [p for p in paired if p.backbone == name]
        wins = sum(p.difference.verdict == "win" for p in mine)
        losses = sum(p.difference.verdict == "loss" for p in mine)
        lines.append(
            f"Verdict: {name} beats {mine[0].baseline} on {wins} of {len(mine)} probes (task x probe) with "
            f"the paired 95% interval above zero; loses on {losses}; the other {len(mine) - wins - losses} "
            "are inside the noise."
        )
    return lines


def _paired_table(paired: Sequence[PairedResult]) -> list[list[str]]:
    rows = [["task", "probe", "backbone", "metric", "n test", "difference", "paired 95% interval", "verdict"]]
    for p in paired:
        d = p.difference
        interval = f"[{d.ci[0]:+.3f}, {d.ci[1]:+.3f}]" if all(map(math.isfinite, d.ci)) else "n/a"
        diff = f"{d.diff:+.3f}" if math.isfinite(d.diff) else "n/a"
        rows.append([p.task, p.probe, p.backbone, d.metric, str(d.n_test), diff, interval, d.verdict])
    return rows


def curves(
    results: Sequence[ProbeResult],
) -> dict[str, dict[tuple[str, str], list[tuple[int | str, float, float, float]]]]:
    """Map task -> (backbone, probe) -> [(shots, mean, min, max) of the primary metric over seeds]."""
    grouped: dict[tuple[str, str, str, int | str], list[float]] = {}
    for r in results:
        grouped.setdefault((r.task, r.backbone, r.probe, r.shots), []).append(r.metrics[PRIMARY[r.kind]])
    out: dict[str, dict[tuple[str, str], list[tuple[int | str, float, float, float]]]] = {}
    for (task, backbone, probe, shots), values in grouped.items():
        v = np.asarray(values, dtype=np.float64)
        out.setdefault(task, {}).setdefault((backbone, probe), []).append(
            (shots, float(np.nanmean(v)), float(np.nanmin(v)), float(np.nanmax(v)))
        )
    for lines in out.values():
        for pts in lines.values():
            pts.sort(key=lambda p: math.inf if p[0] == FULL else float(p[0]))
    return out


def plot_task(
    task: str,
    lines: dict[tuple[str, str], list[tuple[int | str, float, float, float]]],
    *,
    metric: str,
    path: Path,
) -> Path:
    """One few-shot figure: primary metric vs shots (log2 axis; 'full' last)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = sorted(
        {p[0] for pts in lines.values() for p in pts}, key=lambda s: math.inf if s == FULL else float(s)
    )
    pos = {s: i for i, s in enumerate(shots)}
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for (backbone, probe), pts in sorted(lines.items()):
        xs = [pos[p[0]] for p in pts]
        ax.plot(
            xs,
            [p[1] for p in pts],
            marker="o",
            label=f"{backbone} / {probe}",
            linestyle="-" if probe == "linear" else "--",
        )
        ax.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts], alpha=0.15)
    ax.set_xticks(range(len(shots)), [str(s) for s in shots])
    ax.set_xlabel("training examples per class (per target bin for regression)")
    ax.set_ylabel(metric)
    ax.set_title(task)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def _tables(
    results: Sequence[ProbeResult], backbones: Sequence[str]
) -> tuple[list[list[str]], list[list[str]]]:
    full = full_scores(results)
    tasks = list(dict.fromkeys(r.task for r in results))
    probes = list(dict.fromkeys(r.probe for r in results))
    main = [["task", "track", "probe", "metric", *backbones]]
    detail = [["task", "probe", "backbone", "n train", "n test", "metrics"]]
    for task in tasks:
        for probe in probes:
            row_results = [full.get((task, probe, b)) for b in backbones]
            first = next((r for r in row_results if r is not None), None)
            if first is None:
                continue
            metric = PRIMARY[first.kind]
            cells = []
            for r in row_results:
                if r is None:
                    cells.append("")
                    continue
                lo, hi = (r.ci or {}).get(metric, (math.nan, math.nan))
                cells.append(f"{_fmt(r.metrics[metric])} [{_fmt(lo)}, {_fmt(hi)}]")
                detail.append(
                    [
                        task,
                        probe,
                        r.backbone,
                        str(r.n_train),
                        str(r.n_test),
                        ", ".join(f"{k} {_fmt(v)}" for k, v in r.metrics.items()),
                    ]
                )
            main.append([task, first.track, probe, metric, *cells])
    return main, detail


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(
    folder: str | Path,
    results: Sequence[ProbeResult],
    *,
    backbones: dict[str, dict[str, Any]],
    settings: dict[str, Any],
    paired: Sequence[PairedResult] = (),
    title: str = "radforge evaluation",
) -> Report:
    """Write results, tables and plots under ``folder``; ``backbones`` maps names to their provenance.

    ``paired`` (from :func:`paired_differences`) adds the paired-differences table and verdict lines.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(backbones)
    plots = {}
    for task, lines in curves(results).items():
        kind = next(r.kind for r in results if r.task == task)
        plots[task] = plot_task(task, lines, metric=PRIMARY[kind], path=folder / PLOTS / f"{task}.png")
    main, detail = _tables(results, names)
    results_path = folder / RESULTS
    results_path.write_text(
        json.dumps(
            {
                "backbones": backbones,
                "settings": settings,
                "paired_differences": [p.to_dict() for p in paired],
                "verdicts": verdict_lines(paired),
                "results": [r.to_dict() for r in results],
            },
            indent=1,
            default=str,
        )
    )
    intro = (
        "Frozen backbones, probes on the full training set: primary metric with its 95% bootstrap "
        "interval over test samples (accuracy for classification, R2 for regression; higher is better)."
    )
    paired_intro = (
        "Each backbone minus the baseline on the same test samples (primary metric, full training set), "
        "with a paired bootstrap 95% interval: test indices resampled once per draw, both metrics on it. "
        "win / loss: the interval excludes zero; tie: it does not."
    )
    paired_md = (
        [
            "## Paired differences",
            "",
            paired_intro,
            "",
            *verdict_lines(paired),
            "",
            _markdown_table(_paired_table(paired)),
            "",
        ]
        if paired
        else []
    )
    paired_html = (
        [
            "<h2>Paired differences</h2>",
            f"<p>{html.escape(paired_intro)}</p>",
            *[f"<p><b>{html.escape(line)}</b></p>" for line in verdict_lines(paired)],
            _html_table(_paired_table(paired)),
        ]
        if paired
        else []
    )
    provenance = [["backbone", *sorted({k for v in backbones.values() for k in v})]]
    provenance += [[n, *[str(backbones[n].get(k, "")) for k in provenance[0][1:]]] for n in names]
    md = [
        f"# {title}",
        "",
        intro,
        "",
        _markdown_table(main),
        "",
        *paired_md,
        "## Backbones",
        "",
        _markdown_table(provenance),
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(settings, indent=1),
        "```",
        "",
        "## Few-shot curves",
        "",
    ]
    md += [f"![{t}]({PLOTS}/{t}.png)" for t in plots]
    md += ["", "## All metrics (full training set)", "", _markdown_table(detail), ""]
    (folder / MARKDOWN).write_text("\n".join(md))
    style = "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;font:13px sans-serif}"
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(intro)}</p>",
        _html_table(main),
        *paired_html,
        "<h2>Backbones</h2>",
        _html_table(provenance),
        "<h2>Settings</h2>",
        f"<pre>{html.escape(json.dumps(settings, indent=1))}</pre>",
        "<h2>Few-shot curves</h2>",
    ]
    body += [f'<img src="{PLOTS}/{t}.png" alt="{html.escape(t)}">' for t in plots]
    body += ["<h2>All metrics (full training set)</h2>", _html_table(detail)]
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
    page += f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    (folder / HTML).write_text(page)
    return Report(
        folder=folder, markdown=folder / MARKDOWN, html=folder / HTML, results=results_path, plots=plots
    )
