"""The report's figures on matplotlib's object API (no pyplot), written atomically. An accuracy's interval
is clipped to 0–100%. The paper's numbers of another metric go in a second panel spanning as many points
as ours, so a 2.8-point gap looks like a 2.8-point gap.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from vit_ablate.io import atomic_write_bytes
from vit_ablate.report.analysis import Analysis
from vit_ablate.report.stats import ALPHA

DPI = 100
LR_KEY = "optim.lr"


def _figure(width: float = 6.4, height: float = 4.0):
    from matplotlib.figure import Figure  # no pyplot: savefig picks the Agg canvas for a PNG itself
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return atomic_write_bytes(path, buffer.getvalue())


def _scale(analysis: Analysis, column: str) -> Tuple[float, Tuple[float, float]]:
    """Display scale and clip range: an accuracy in percent within 0–100, anything else as recorded."""
    return (100.0, (0.0, 100.0)) if analysis.is_fraction and "acc" in column else (1.0, (-np.inf, np.inf))


def curve_band(analysis: Analysis, group: str, column: str) -> Tuple[Optional[pd.DataFrame], int]:
    """Per epoch over a group's counted runs: the mean and its 95% t band; and how many runs logged ``column``."""
    runs = analysis.runs[(analysis.runs["group"] == group) & analysis.runs["value"].notna()]
    rows = [{"run": i, "epoch": row["epoch"], "y": row[column]} for i, h in runs["history"].items() for row in h
            if isinstance(row.get(column), float) and math.isfinite(row[column]) and "epoch" in row]
    if not rows:
        return None, 0
    table = pd.DataFrame(rows).groupby("epoch")["y"].agg(["mean", "std", "count"])
    half = scipy_stats.t.ppf(1 - ALPHA / 2, table["count"] - 1) * table["std"] / np.sqrt(table["count"])
    return table.assign(low=table["mean"] - half, high=table["mean"] + half), len({r["run"] for r in rows})


def plot_curves(analysis: Analysis, path: Path, lr_styles: bool = False) -> Optional[Path]:
    """Curves per group, mean over seeds with a 95% t band; ``lr_styles`` (Figure 9): line style = learning rate, no band."""
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator
    column = analysis.metric if any(analysis.metric in row for h in analysis.runs["history"] for row in h) else "val/acc1"
    scale, (low, high) = _scale(analysis, column)
    groups = analysis.groups
    others = [k for k in analysis.by if k != LR_KEY] if lr_styles else analysis.by
    cmap = colormaps["tab10" if len(groups) <= 10 else "tab20"]
    colour_of = {key: cmap(i % cmap.N) for i, key in enumerate(dict.fromkeys(tuple(g[others]) for _, g in groups.iterrows()))}
    styles = dict(zip(dict.fromkeys(groups[LR_KEY]) if lr_styles else [], ["-", "--", ":", "-."] * 8))
    ax = _figure().add_subplot(1, 1, 1)
    for label, g in groups.iterrows():
        band, n = curve_band(analysis, label, column)
        if band is None:
            continue
        colour = colour_of[tuple(g[others])]
        ax.plot(band.index, band["mean"] * scale, color=colour, lw=1.6, ls=styles.get(g.get(LR_KEY), "-"),
                label=f"{g['short'] if analysis.by else label} (n={n})")
        if not lr_styles:
            ax.fill_between(band.index, (band["low"] * scale).clip(low, high), (band["high"] * scale).clip(low, high),
                            color=colour, alpha=0.2, lw=0)
    if not ax.lines:
        return None
    ax.set(xlabel="epoch", ylabel=column + (" (%)" if scale == 100 else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{column} vs epoch per ({', '.join(others)}, learning rate), mean over seeds — cf. paper Figure 9"
                 if lr_styles else f"{column} after every epoch by {', '.join(analysis.by) or 'run'}: mean, 95% t band "
                 "over seeds", fontsize=9, wrap=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(ax.figure, path)


def plot_final(analysis: Analysis, path: Path) -> Optional[Path]:
    """The metric per group: seeds as grey dots, the mean with its 95% t interval, the paper's values as red diamonds."""
    groups = analysis.groups.reset_index(names="label")
    if not groups["n"].any():
        return None
    scale, (low, high) = _scale(analysis, analysis.metric)
    refs = groups[groups["reference"].map(bool)]
    metrics = sorted({str(r.get("metric")) for r in refs["reference"] if r.get("metric")})
    other_metric = any(m != analysis.metric for m in metrics)
    width = max(4.5, min(10.0, 1.5 + 0.9 * len(groups)))
    fig = _figure(width * (1.6 if other_metric else 1.0), 4.0)
    axes = fig.subplots(1, 2 if other_metric else 1, squeeze=False)[0]
    ax, counted, first = axes[0], analysis.runs[analysis.runs["value"].notna()], groups.index[groups["n"] > 0][0]
    for i, g in groups[groups["n"] > 0].iterrows():
        values = counted.loc[counted["group"] == g["label"], "value"].to_numpy() * scale
        ax.scatter(i + np.linspace(-0.12, 0.12, len(values)), values, s=12, color="0.55", zorder=2,
                   label="seeds" if i == first else None)
        mean, ci = g["mean"] * scale, np.clip([g["ci_low"] * scale, g["ci_high"] * scale], low, high)
        ax.errorbar([i], [mean], yerr=None if math.isnan(g["ci_low"]) else [[mean - ci[0]], [ci[1] - mean]], fmt="o",
                    capsize=4, ms=6, zorder=3, color="C1" if g["is_baseline"] else "C0",
                    label="mean, 95% t interval" if i == first else None)
    labels = [g["short"] + (" *" if g["is_baseline"] else "") for _, g in groups.iterrows()]
    long = max(map(len, labels)) > 8
    for axis in axes:
        axis.set_xticks(range(len(groups)), labels, fontsize=8, rotation=20 if long else 0, ha="right" if long else "center")
        axis.grid(alpha=0.3, axis="y")
    unit = " (%)" if scale == 100 else ""
    ax.set_ylabel(analysis.metric + unit)
    ax.set_title(f"{analysis.metric} at the last epoch: mean, 95% t interval"
                 + (" (* baseline)" if analysis.baseline else ""), fontsize=9, wrap=True)
    if len(refs):
        values = [float(r["value"]) * (100 if scale == 100 and abs(float(r["value"])) <= 1 else 1) for r in refs["reference"]]
        paper_ax = axes[1] if other_metric else ax
        paper_ax.scatter(refs.index + (0 if other_metric else 0.25), values, marker="D", s=30, facecolors="none",
                         edgecolors="C3", zorder=3, label="paper" + (f" ({', '.join(metrics)})" if metrics else ""))
        if other_metric:  # the same span in points as ours (or the paper's own, if larger, on both)
            bottom, top = ax.get_ylim()
            span = max(top - bottom, (max(values) - min(values)) * 1.2)
            for axis, centre in ((ax, (bottom + top) / 2), (paper_ax, (max(values) + min(values)) / 2)):
                axis.set_ylim(centre - span / 2, centre + span / 2)
            paper_ax.set_xlim(ax.get_xlim())
            paper_ax.set_ylabel(f"paper ({', '.join(metrics)}){unit}", fontsize=8)
            paper_ax.set_title(f"the paper, another metric (same y span: {span:.1f})", fontsize=9, wrap=True)
    handles = [h for axis in axes for h in zip(*axis.get_legend_handles_labels())]
    fig.legend([h for h, _ in handles], [lbl for _, lbl in handles], loc="outside lower center", ncol=len(handles),
               fontsize=7, frameon=False)
    return _save(fig, path)


def plot_all(analysis: Analysis, out: Path, keep_stale: bool) -> Tuple[List[Path], List[Tuple[str, str]], List[str]]:
    """(paths, (name, caption) each, notes on figures not drawn); ``keep_stale``: keep a figure a runs.csv cannot redraw."""
    lr = LR_KEY in analysis.by and len(analysis.by) >= 2  # paper Figure 9: pooling × learning rate
    drawn = {"curves.png": plot_curves(analysis, out / "curves.png"), "final.png": plot_final(analysis, out / "final.png"),
             "lr_curves.png": plot_curves(analysis, out / "lr_curves.png", lr_styles=True) if lr else "not asked"}
    paths = [p for p in drawn.values() if isinstance(p, Path)]
    stale = [n for n, p in drawn.items() if keep_stale and not isinstance(p, Path) and (out / n).is_file()]
    captions = [(p.name, figure_caption(p.name, analysis)) for p in paths] + [(n, "not redrawn (a runs.csv holds no per-epoch "
                f"values), left by an earlier report over the run folders: {figure_caption(n, analysis)}") for n in stale]
    why = "no included run has per-epoch values (a run folder's metrics.csv; a runs.csv holds none)"
    return paths, captions, [f"{n} not drawn: " + ("no group has an included run" if n == "final.png" else why)
                             for n, p in drawn.items() if p is None and n not in stale]


def figure_caption(name: str, analysis: Analysis) -> str:
    """Which epoch and which weights a figure shows."""
    clip = " (an accuracy's clipped to 0–100%)" if analysis.is_fraction else ""
    return {"final.png": f"{analysis.metric} per group with the last epoch's weights (checkpoints/last.ckpt, EMA where "
                         f"set), never a best-epoch pick; grey dots are seeds, the bar the 95% t interval{clip}; the "
                         "paper's values (red diamonds) in a panel of the same span where they measure another metric",
            "curves.png": f"validation after every epoch, mean over seeds with a 95% t band{clip}",
            }.get(name, "validation after every epoch per (other keys, learning rate), mean over seeds (cf. paper Figure 9)")
