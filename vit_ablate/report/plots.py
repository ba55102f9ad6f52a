"""The report's figures: learning curves, final metric per group, and the Figure-9-style lr curves.

Drawn with matplotlib's object API on an Agg canvas (no pyplot): no global backend switch, no GUI, safe
in a process that also uses pyplot elsewhere. Figures are small (dpi 100) so a report stays light.
Each figure is rendered to memory and written atomically, and :func:`figure_caption` says which epoch
and which weights it shows.

The paper's numbers never get an axis of their own: a reference of another metric is drawn in a
second panel whose y axis spans as many points as ours, so a 2.8-point gap looks like a 2.8-point gap.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from vit_ablate.io import atomic_write_bytes as write_bytes_atomic
from vit_ablate.report.groups import Analysis, Group
from vit_ablate.report.tables import Units

__all__ = ["plot_curves", "plot_final", "plot_lr_curves", "curve_matrix", "figure_caption", "CURVE_FALLBACK"]

DPI = 100
CURVE_FALLBACK = "val/acc1"
LR_KEY = "optim.lr"


def _figure(width: float = 6.4, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return write_bytes_atomic(path, buffer.getvalue())


def curve_column(analysis: Analysis) -> str:
    """The metrics.csv column to plot: the report's metric when the CSV has it, else val/acc1."""
    for group in analysis.groups:
        for run in group.included:
            if analysis.metric in run.curves:
                return analysis.metric
    return CURVE_FALLBACK


def curve_matrix(group: Group, column: str) -> Tuple[np.ndarray, np.ndarray]:
    """(epochs, values[seed, epoch]) for a group: every epoch any seed logged, NaN where one did not."""
    per_run = []
    for run in group.included:
        y = run.curves.get(column)
        if y is None:
            continue
        x = run.curves.get("epoch", np.arange(len(y), dtype=float))
        keep = np.isfinite(y) & np.isfinite(x)
        if keep.any():
            per_run.append((x[keep], y[keep]))
    if not per_run:
        return np.zeros(0), np.zeros((0, 0))
    epochs = np.unique(np.concatenate([x for x, _ in per_run]))
    matrix = np.full((len(per_run), epochs.size), np.nan)
    for i, (x, y) in enumerate(per_run):
        matrix[i, np.searchsorted(epochs, x)] = y
    return epochs, matrix


def _mean_and_band(matrix: np.ndarray, seed: Sequence[int] = ()) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-epoch mean and 95% Student's t band of the mean across seeds (the report's interval, epoch by
    epoch). The band is NaN at epochs with fewer than two seeds."""
    from scipy import stats as scipy_stats
    import warnings

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        mean = np.nanmean(matrix, axis=0)
        count = np.sum(np.isfinite(matrix), axis=0)
        sem = np.nanstd(matrix, axis=0, ddof=1) / np.sqrt(count)
        half = scipy_stats.t.ppf(0.975, np.maximum(count - 1, 1)) * sem
    low, high = mean - half, mean + half
    enough = count >= 2
    low[~enough], high[~enough] = np.nan, np.nan
    return mean, low, high


def _epoch_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _colors(count: int) -> List:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def plot_curves(analysis: Analysis, path: Path) -> Optional[Path]:
    """Learning curves per group: mean across seeds with a 95% CI band. None when no run has curves."""
    column = curve_column(analysis)
    units = Units(analysis.is_fraction and "acc" in column)
    scale = 100.0 if units.is_fraction else 1.0
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    drawn = 0
    for j, (group, color) in enumerate(zip(analysis.groups, _colors(len(analysis.groups)))):
        epochs, matrix = curve_matrix(group, column)
        if not epochs.size:
            continue
        mean, low, high = _mean_and_band(matrix)
        label = f"{group.short if analysis.by else group.label} (n={matrix.shape[0]})"
        ax.plot(epochs, mean * scale, color=color, lw=1.6, label=label)
        ax.fill_between(epochs, low * scale, high * scale, color=color, alpha=0.2, lw=0)
        drawn += 1
    if not drawn:
        return None
    _epoch_axis(ax)
    ax.set_ylabel(f"{column}" + (" (%)" if units.is_fraction else ""))
    ax.set_title(f"{column} after every epoch by {', '.join(analysis.by) or 'run'}: mean, 95% t band over seeds",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def plot_final(analysis: Analysis, path: Path) -> Optional[Path]:
    """The metric per group: each seed as a grey dot, the mean with its 95% t interval (baseline in
    orange). The paper's reference values: red diamonds on our axis when they measure our metric; in a
    second panel on the same number of points per unit height when they measure another one."""
    groups = analysis.groups
    if not any(g.summary.n for g in groups):
        return None
    units = Units(analysis.is_fraction)
    scale = 100.0 if units.is_fraction else 1.0
    references = [(i, g.reference) for i, g in enumerate(groups) if g.reference]
    metrics = sorted({str(ref.get("metric")) for _, ref in references if ref.get("metric")})
    other_metric = bool(references) and any(m != analysis.metric for m in metrics)
    width = max(4.5, min(10.0, 1.5 + 0.9 * len(groups)))
    fig = _figure(width * (1.6 if other_metric else 1.0), 4.0)
    ax = fig.add_subplot(1, 2, 1) if other_metric else fig.add_subplot(1, 1, 1)
    x = np.arange(len(groups), dtype=float)
    first = next(i for i, g in enumerate(groups) if g.summary.n)
    for i, group in enumerate(groups):
        s = group.summary
        if not s.n:
            continue
        jitter = np.linspace(-0.12, 0.12, s.n) if s.n > 1 else np.zeros(1)
        ax.scatter(x[i] + jitter, group.values * scale, s=12, color="0.55", zorder=2,
                   label="seeds" if i == first else None)
        has_ci = not (math.isnan(s.ci_low) or math.isnan(s.ci_high))
        yerr = [[(s.mean - s.ci_low) * scale], [(s.ci_high - s.mean) * scale]] if has_ci else None
        ax.errorbar([x[i]], [s.mean * scale], yerr=yerr, fmt="o", capsize=4, ms=6, zorder=3,
                    color="C1" if group.is_baseline else "C0", label="mean, 95% t interval" if i == first else None)
    labels = [g.short + (" *" if g.is_baseline else "") for g in groups]
    long_labels = max(len(label) for label in labels) > 8

    def ticks(axis) -> None:
        axis.set_xticks(x)
        axis.set_xticklabels(labels, fontsize=8, rotation=20 if long_labels else 0,
                             ha="right" if long_labels else "center")
        axis.grid(alpha=0.3, axis="y")

    ticks(ax)
    ax.set_ylabel(analysis.metric + (" (%)" if units.is_fraction else ""))
    title = f"{analysis.metric} at the last epoch: mean and 95% t interval"
    ax.set_title(title + (" (* baseline)" if analysis.baseline is not None else ""), fontsize=9)
    if references:
        values = [float(units.reference(float(ref["value"]))) for _, ref in references]
        label = "paper" + (f" ({', '.join(metrics)})" if metrics else "")
        if other_metric:
            paper_ax = fig.add_subplot(1, 2, 2)
            paper_ax.scatter([x[i] for i, _ in references], values, marker="D", s=30, facecolors="none",
                             edgecolors="C3", zorder=3, label=label)
            ticks(paper_ax)
            paper_ax.set_xlim(ax.get_xlim())
            # The same span in points as our panel (or the paper's own, if larger, on both): equal gaps
            # look equal in the two panels.
            low, high = ax.get_ylim()
            span = max(high - low, (max(values) - min(values)) * 1.2)
            centre_ours, centre_paper = (low + high) / 2, (max(values) + min(values)) / 2
            ax.set_ylim(centre_ours - span / 2, centre_ours + span / 2)
            paper_ax.set_ylim(centre_paper - span / 2, centre_paper + span / 2)
            paper_ax.set_ylabel(label + (" (%)" if units.is_fraction else ""), fontsize=8)
            paper_ax.set_title(f"paper, another metric: the y span equals the left panel's ({span:.1f})", fontsize=8)
        else:
            ax.scatter([x[i] + 0.25 for i, _ in references], values, marker="D", s=30, facecolors="none",
                       edgecolors="C3", zorder=3, label=label)
    handles, legend_labels = [], []
    for axis in fig.axes:
        h, lbl = axis.get_legend_handles_labels()
        handles += h
        legend_labels += lbl
    fig.legend(handles, legend_labels, loc="lower center", ncol=max(1, len(legend_labels)), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path)


def wants_lr_curves(analysis: Analysis) -> bool:
    return LR_KEY in analysis.by and len(analysis.by) >= 2


def plot_lr_curves(analysis: Analysis, path: Path) -> Optional[Path]:
    """Figure-9 style (paper App. D.3): accuracy vs epoch, one line per (other keys, learning rate);
    colour = the other keys (e.g. the pooling head), line style = the learning rate."""
    if not wants_lr_curves(analysis):
        return None
    column = curve_column(analysis)
    units = Units(analysis.is_fraction and "acc" in column)
    scale = 100.0 if units.is_fraction else 1.0
    lr_index = analysis.by.index(LR_KEY)
    others = [k for k in analysis.by if k != LR_KEY]

    def other_of(g: Group) -> Tuple[str, ...]:
        return tuple(v for k, v in zip(g.by, g.key) if k != LR_KEY)

    other_values = list(dict.fromkeys(other_of(g) for g in analysis.groups))
    lr_values = list(dict.fromkeys(g.key[lr_index] for g in analysis.groups))
    colors = dict(zip(other_values, _colors(len(other_values))))
    styles = dict(zip(lr_values, ["-", "--", ":", "-."] * (len(lr_values) // 4 + 1)))
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    drawn = 0
    for j, group in enumerate(analysis.groups):
        epochs, matrix = curve_matrix(group, column)
        if not epochs.size:
            continue
        mean, _, _ = _mean_and_band(matrix)
        other = other_of(group)
        label = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(others, other))
        label += f", lr={group.key[lr_index]} (n={matrix.shape[0]})"
        ax.plot(epochs, mean * scale, color=colors[other], ls=styles[group.key[lr_index]], lw=1.6, label=label)
        drawn += 1
    if not drawn:
        return None
    _epoch_axis(ax)
    ax.set_ylabel(column + (" (%)" if units.is_fraction else ""))
    ax.set_title(f"{column} vs epoch per ({', '.join(others)}, learning rate) — cf. paper Figure 9", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def plot_all(analysis: Analysis, out: Path) -> Tuple[List[Path], List[str]]:
    """Every figure that applies: (paths written, notes on figures skipped)."""
    written, notes = [], []
    for name, draw, why in (
        ("curves.png", plot_curves, "no included run has a metrics.csv with the curve column"),
        ("final.png", plot_final, "no group has an included run"),
        ("lr_curves.png", plot_lr_curves, None),
    ):
        result = draw(analysis, out / name)
        if result is not None:
            written.append(result)
        elif why and not (name == "lr_curves.png"):
            notes.append(f"{name} not drawn: {why}")
    if wants_lr_curves(analysis) and not any(p.name == "lr_curves.png" for p in written):
        notes.append("lr_curves.png not drawn: no included run has learning curves")
    return written, notes


_STALE_CAPTIONS = {
    # What the report over run directories draws under these names (an earlier version drew the same
    # curves with a percentile-bootstrap band over seeds, narrower than a 95% interval at 3 seeds).
    "curves.png": "validation accuracy (metrics.csv) after every epoch, mean over seeds with a band over seeds; "
                  "its last epoch is the value in the table",
    "lr_curves.png": "validation accuracy (metrics.csv) after every epoch, mean over seeds per (head, learning "
                     "rate); its last epoch is the value in the table",
    "final.png": "the metric at the last epoch per group",
}


def figure_caption(name: str, analysis: Analysis, stale: bool = False, from_table: bool = False) -> str:
    """Which epoch and which weights a figure shows."""
    if stale:
        why = "this report's input (a runs.csv) holds no per-epoch values" if from_table else \
            "this report did not draw it"
        return (f"not redrawn ({why}); left from an earlier report over the run directories: "
                + _STALE_CAPTIONS.get(name, "see that report"))
    last = ("the last epoch's validation, i.e. the weights of checkpoints/last.ckpt (EMA weights where "
            "optim.ema_decay is set), never a best-epoch pick")
    if name == "final.png":
        return (f"{analysis.metric} per group at {last}; grey dots are seeds, the bar the 95% t interval of "
                "the mean; the paper's values (red diamonds) are on our axis only when they measure our metric, "
                "otherwise in their own panel spanning the same number of points")
    if name == "curves.png":
        return ("validation after every epoch (metrics.csv: the weights at the end of that epoch), mean over "
                "seeds with a 95% t band; the last epoch is the value in the table")
    if name == "lr_curves.png":
        return ("validation after every epoch (metrics.csv) per (other keys, learning rate), mean over seeds; "
                "the last epoch is the value in the table (paper Figure 9 plots ImageNet 5-shot accuracy)")
    return ""
