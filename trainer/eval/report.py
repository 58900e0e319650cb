"""The evaluation report: ``results.json``, ``report.md``, ``report.html`` and plots (PNG).

The report opens with the verdict: per backbone, how many probes (task x probe) it wins against
the baseline (the random-init backbone of ``radforge eval --random-init``) with the paired 95%
interval above zero, loses, or ties (:func:`verdict_lines`, the lines ``radforge eval`` prints). Then
the per-task deltas: each backbone's primary metric (accuracy, or R2 for regression) minus the
baseline's on the same test samples, with a paired bootstrap 95% interval, as a table and a plot.
Then the scores (one row per task and probe, one column per backbone: the primary metric on the full
training set with its 95% bootstrap interval), the provenance of each backbone (checkpoint, step of
the configured steps, the run's datasets with credentials redacted, the run config's sha256, the
weights' hash, the shape), the settings, one few-shot plot per task (primary metric against shots,
mean and min-max over seeds) and every metric. Each backbone has one colour in every plot and in the
HTML tables (:func:`backbone_colours`; the baseline is grey).
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
DELTAS_PLOT = "paired-differences.png"  # under PLOTS, beside the few-shot plots ({task}.png)
BASELINE_COLOUR = "#7f7f7f"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
HASH_SHOWN = 16  # hex digits of a hash in the report's tables (the weights' column too)
# provenance columns in this order; other keys follow, sorted
PROVENANCE = (
    "source", "checkpoint", "step", "steps", "datasets", "config_sha256", "weights", "embed_dim", "depth",
    "patch", "input",
)  # fmt: skip


@dataclass(frozen=True)
class Report:
    """Paths of a written report."""

    folder: Path
    markdown: Path
    html: Path
    results: Path
    plots: dict[str, Path]  # task -> few-shot PNG
    deltas_plot: Path | None = None  # the per-task deltas (with a baseline)


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


@dataclass(frozen=True)
class Verdict:
    """One backbone against the baseline: probes won / lost with the paired interval excluding zero."""

    backbone: str
    baseline: str
    wins: int
    losses: int
    probes: int  # task x probe pairs compared

    @property
    def ties(self) -> int:
        return self.probes - self.wins - self.losses

    def line(self) -> str:
        """The sentence ``radforge eval`` prints and the report opens with."""
        return (
            f"Verdict: {self.backbone} beats {self.baseline} on {self.wins} of {self.probes} probes (task x "
            f"probe) with the paired 95% interval above zero; loses on {self.losses}; the other {self.ties} "
            "are inside the noise."
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (snake_case keys), the sentence included."""
        return {
            "backbone": self.backbone,
            "baseline": self.baseline,
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "probes": self.probes,
            "line": self.line(),
        }


def verdicts(paired: Sequence[PairedResult]) -> list[Verdict]:
    """One :class:`Verdict` per compared backbone, in the order of ``paired``."""
    out = []
    for name in dict.fromkeys(p.backbone for p in paired):
        mine = [p for p in paired if p.backbone == name]
        wins = sum(p.difference.verdict == "win" for p in mine)
        losses = sum(p.difference.verdict == "loss" for p in mine)
        out.append(Verdict(name, mine[0].baseline, wins=wins, losses=losses, probes=len(mine)))
    return out


def verdict_lines(paired: Sequence[PairedResult]) -> list[str]:
    """One line per backbone: probes won / lost with the paired interval excluding zero, of all."""
    return [v.line() for v in verdicts(paired)]


def backbone_colours(names: Sequence[str], *, baseline: str | None = None) -> dict[str, str]:
    """One colour per backbone for every plot and table: the baseline grey, the others in ``names`` order."""
    others = [n for n in names if n != baseline]
    colours = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(others)}
    if baseline is not None and baseline in names:
        colours[baseline] = BASELINE_COLOUR
    return colours


def _interval(ci: tuple[float, float]) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if all(map(math.isfinite, ci)) else "n/a"


def _paired_table(paired: Sequence[PairedResult], tasks: Sequence[str]) -> list[list[str]]:
    """Per-task deltas: one row per (task, probe, backbone), in the suite's task order."""
    rows = [["task", "probe", "backbone", "metric", "n test", "difference", "paired 95% interval", "verdict"]]
    order = {t: i for i, t in enumerate(tasks)}
    for p in sorted(paired, key=lambda p: order.get(p.task, len(order))):
        d = p.difference
        diff = f"{d.diff:+.3f}" if math.isfinite(d.diff) else "n/a"
        rows.append([p.task, p.probe, p.backbone, d.metric, str(d.n_test), diff, _interval(d.ci), d.verdict])
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


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_task(
    task: str,
    lines: dict[tuple[str, str], list[tuple[int | str, float, float, float]]],
    *,
    metric: str,
    path: Path,
    colours: dict[str, str],
) -> Path:
    """One few-shot figure: primary metric vs shots (log2 axis; 'full' last).

    One colour per backbone (``colours``), solid lines for the linear probe, dashed for kNN.
    """
    plt = _pyplot()
    shots = sorted(
        {p[0] for pts in lines.values() for p in pts}, key=lambda s: math.inf if s == FULL else float(s)
    )
    pos = {s: i for i, s in enumerate(shots)}
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for (backbone, probe), pts in sorted(lines.items()):
        xs = [pos[p[0]] for p in pts]
        colour = colours.get(backbone)
        ax.plot(
            xs,
            [p[1] for p in pts],
            marker="o",
            label=f"{backbone} / {probe}",
            linestyle="-" if probe == "linear" else "--",
            color=colour,
        )
        ax.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts], alpha=0.15, color=colour)
    ax.set_xticks(range(len(shots)), [str(s) for s in shots])
    ax.set_xlabel("training examples per class (per target bin for regression)")
    ax.set_ylabel(metric)
    ax.set_title(task)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_deltas(
    paired: Sequence[PairedResult], tasks: Sequence[str], *, path: Path, colours: dict[str, str]
) -> Path:
    """Per-task deltas as a forest plot: one row per (task, probe), a line at zero.

    Each backbone's difference from the baseline is a dot in its colour, its paired 95% interval a bar.
    """
    plt = _pyplot()
    order = {t: i for i, t in enumerate(tasks)}
    rows = sorted(dict.fromkeys((p.task, p.probe) for p in paired), key=lambda r: (order.get(r[0], 0), r[1]))
    names = list(dict.fromkeys(p.backbone for p in paired))
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.35 * len(rows)), dpi=100)
    step = 0.6 / max(len(names), 1)
    for j, name in enumerate(names):
        ys, xs, lo, hi = [], [], [], []
        for p in paired:
            if p.backbone == name and all(map(math.isfinite, (p.difference.diff, *p.difference.ci))):
                ys.append(rows.index((p.task, p.probe)) + (j - (len(names) - 1) / 2) * step)
                xs.append(p.difference.diff)
                lo.append(p.difference.diff - p.difference.ci[0])
                hi.append(p.difference.ci[1] - p.difference.diff)
        ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", color=colours.get(name), capsize=3, label=name)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [f"{t} / {p}" for t, p in rows])
    ax.invert_yaxis()
    baseline = paired[0].baseline if paired else ""
    ax.set_xlabel(f"primary metric minus {baseline}'s (paired 95% interval)")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    fig.clf()
    _pyplot().close(fig)
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


def _provenance_table(backbones: dict[str, dict[str, Any]]) -> list[list[str]]:
    keys = {k for v in backbones.values() for k in v}
    columns = [k for k in PROVENANCE if k in keys] + sorted(keys - set(PROVENANCE))
    rows = [["backbone", *columns]]
    for name, info in backbones.items():
        cells = []
        for k in columns:
            v = info.get(k, "")
            if k == "step" and info.get("steps") is not None:
                v = f"{v} of {info['steps']}"
            if k.endswith("sha256") and isinstance(v, str):
                v = v[:HASH_SHOWN]  # in full in results.json
            cells.append(", ".join(map(str, v)) if isinstance(v, list) else "" if v is None else str(v))
        rows.append([name, *cells])
    if "steps" in columns:  # shown with the step
        i = columns.index("steps") + 1
        rows = [r[:i] + r[i + 1 :] for r in rows]
    return rows


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def _html_table(rows: list[list[str]], colours: dict[str, str] | None = None) -> str:
    """A table; a cell (or heading) that names a backbone gets that backbone's colour swatch."""

    def cell(tag: str, text: str) -> str:
        colour = (colours or {}).get(text)
        swatch = f'<span class="swatch" style="background:{colour}"></span>' if colour else ""
        return f"<{tag}>{swatch}{html.escape(text)}</{tag}>"

    head = "".join(cell("th", c) for c in rows[0])
    body = "".join("<tr>" + "".join(cell("td", c) for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


INTRO = (
    "Frozen backbones, probes on the full training set: primary metric with its 95% bootstrap "
    "interval over test samples (accuracy for classification, R2 for regression; higher is better)."
)
PAIRED_INTRO = (
    "Each backbone minus the baseline on the same test samples (primary metric, full training set), "
    "with a paired bootstrap 95% interval: test indices resampled once per draw, both metrics on it. "
    "win / loss: the interval excludes zero; tie: it does not."
)
NO_BASELINE = (
    "No verdict: no baseline was evaluated (radforge eval --random-init adds the random-init backbone "
    "a pretrained one must beat)."
)
STYLE = (
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;font:13px sans-serif}"
    ".swatch{display:inline-block;width:10px;height:10px;margin-right:5px;border-radius:2px}"
    ".verdict{font-size:15px}"
)


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

    ``paired`` (from :func:`paired_differences`) gives the verdict lines the report opens with and
    the per-task deltas; without it the report says no baseline was evaluated.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(backbones)
    tasks = list(dict.fromkeys(r.task for r in results))
    colours = backbone_colours(names, baseline=paired[0].baseline if paired else None)
    plots = {}
    for task, lines in curves(results).items():
        kind = next(r.kind for r in results if r.task == task)
        path = folder / PLOTS / f"{task}.png"
        plots[task] = plot_task(task, lines, metric=PRIMARY[kind], path=path, colours=colours)
    deltas_plot = (
        plot_deltas(paired, tasks, path=folder / PLOTS / DELTAS_PLOT, colours=colours) if paired else None
    )
    main, detail = _tables(results, names)
    deltas = _paired_table(paired, tasks)
    provenance = _provenance_table(backbones)
    opening = verdict_lines(paired) or [NO_BASELINE]
    results_path = folder / RESULTS
    results_path.write_text(
        json.dumps(
            {
                "backbones": backbones,
                "colours": colours,
                "settings": settings,
                "verdicts": verdict_lines(paired),
                "verdict": [v.to_dict() for v in verdicts(paired)],
                "paired_differences": [p.to_dict() for p in paired],
                "results": [r.to_dict() for r in results],
            },
            indent=1,
            default=str,
        )
    )
    deltas_rel = f"{PLOTS}/{DELTAS_PLOT}"
    colour_note = "Colours: " + ", ".join(f"{n} {c}" for n, c in colours.items()) + " (every plot)."
    md = [f"# {title}", "", *[f"**{line}**" for line in opening], ""]
    if paired:
        md += ["## Per-task deltas", "", PAIRED_INTRO, "", _markdown_table(deltas), ""]
        md += [f"![paired differences]({deltas_rel})", ""]
    md += ["## Scores", "", INTRO, "", _markdown_table(main), "", colour_note, ""]
    md += ["## Provenance", "", _markdown_table(provenance), ""]
    md += ["## Settings", "", "```json", json.dumps(settings, indent=1), "```", ""]
    md += ["## Few-shot curves", "", *[f"![{t}]({PLOTS}/{t}.png)" for t in plots]]
    md += ["", "## All metrics (full training set)", "", _markdown_table(detail), ""]
    (folder / MARKDOWN).write_text("\n".join(md))

    body = [f"<h1>{html.escape(title)}</h1>"]
    body += [f'<p class="verdict"><b>{html.escape(line)}</b></p>' for line in opening]
    if paired:
        body += [
            "<h2>Per-task deltas</h2>",
            f"<p>{html.escape(PAIRED_INTRO)}</p>",
            _html_table(deltas, colours),
        ]
        body += [f'<img src="{deltas_rel}" alt="paired differences">']
    body += ["<h2>Scores</h2>", f"<p>{html.escape(INTRO)}</p>", _html_table(main, colours)]
    body += ["<h2>Provenance</h2>", _html_table(provenance, colours)]
    body += ["<h2>Settings</h2>", f"<pre>{html.escape(json.dumps(settings, indent=1))}</pre>"]
    body += ["<h2>Few-shot curves</h2>"]
    body += [f'<img src="{PLOTS}/{t}.png" alt="{html.escape(t)}">' for t in plots]
    body += ["<h2>All metrics (full training set)</h2>", _html_table(detail, colours)]
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
    page += f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    (folder / HTML).write_text(page)
    return Report(
        folder=folder,
        markdown=folder / MARKDOWN,
        html=folder / HTML,
        results=results_path,
        plots=plots,
        deltas_plot=deltas_plot,
    )
