"""The figures of ``vit-ablate analyze``: small PNGs drawn with matplotlib's Agg canvas.

No pyplot: every figure is a ``matplotlib.figure.Figure`` attached to its own ``FigureCanvasAgg``,
so nothing touches global state (safe in tests, threads and headless machines).

* ``pos_similarity.png`` — Figure 7 centre: a rows × cols mosaic of small rows × cols maps; the map
  at (r, c) is patch (r, c)'s cosine similarity to every patch, colour scale −1…1 (viridis).
* ``attention_distance.png`` — Figure 7 right: mean attention distance (pixels) against layer, one
  dot per head (coloured by head), with a dashed line at the uniform-attention value.
* ``rollout.png`` — Figure 6: sample images (top row) and the same images weighted by their
  attention-rollout map (bottom row).
* ``filters.png`` — Figure 7 left: the top principal components of the patch-embedding filters as
  P × P RGB tiles (4 rows × 7 columns for 28), each scaled to [0, 1] on its own.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["similarity_mosaic", "plot_pos_similarity", "plot_attention_distance", "plot_rollout", "plot_filters"]

DPI = 100


def _save(fig: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)


def similarity_mosaic(similarity: np.ndarray, grid_size: Tuple[int, int], gap: int = 1) -> np.ndarray:
    """(N, N) similarities → one 2-D image of rows × cols maps separated by ``gap`` NaN pixels."""
    rows, cols = int(grid_size[0]), int(grid_size[1])
    sim = np.asarray(similarity, dtype=np.float64).reshape(rows, cols, rows, cols)
    height, width = rows * (rows + gap) - gap, cols * (cols + gap) - gap
    out = np.full((height, width), np.nan)
    for r in range(rows):
        for c in range(cols):
            top, left = r * (rows + gap), c * (cols + gap)
            out[top : top + rows, left : left + cols] = sim[r, c]
    return out


def plot_pos_similarity(
    similarity: np.ndarray, grid_size: Tuple[int, int], path: str | os.PathLike, title: Optional[str] = None
) -> None:
    rows, cols = int(grid_size[0]), int(grid_size[1])
    mosaic = similarity_mosaic(similarity, grid_size)
    fig = Figure(figsize=(4.6, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_invalid(mosaic), cmap=cmap, vmin=-1.0, vmax=1.0, interpolation="nearest")
    step_r, step_c = rows + 1, cols + 1
    ticks_r = [r * step_r + (rows - 1) / 2 for r in range(rows)]
    ticks_c = [c * step_c + (cols - 1) / 2 for c in range(cols)]
    every_r, every_c = max(1, math.ceil(rows / 8)), max(1, math.ceil(cols / 8))
    ax.set_yticks(ticks_r[::every_r], [str(r + 1) for r in range(rows)][::every_r], fontsize=7)
    ax.set_xticks(ticks_c[::every_c], [str(c + 1) for c in range(cols)][::every_c], fontsize=7)
    ax.set_xlabel("Input patch column", fontsize=8)
    ax.set_ylabel("Input patch row", fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("Cosine similarity", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    ax.set_title(title or "Position embedding similarity", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_attention_distance(
    distances: np.ndarray,
    path: str | os.PathLike,
    uniform_reference: Optional[float] = None,
    title: Optional[str] = None,
) -> None:
    """``distances``: (layers, heads) pixels."""
    d = np.asarray(distances, dtype=np.float64)
    layers, heads = d.shape
    fig = Figure(figsize=(4.2, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    import matplotlib

    cmap = matplotlib.colormaps["tab20" if heads > 10 else "tab10"]
    x = np.arange(1, layers + 1)
    for h in range(heads):
        ax.scatter(x, d[:, h], s=12, color=cmap(h % cmap.N), label=f"Head {h + 1}", alpha=0.9, linewidths=0)
    top = float(np.nanmax(d)) if d.size else 1.0
    if uniform_reference is not None:
        ax.axhline(uniform_reference, color="grey", linestyle="--", linewidth=0.8, label="uniform attention")
        top = max(top, uniform_reference)
    ax.set_ylim(0, top * 1.1 + 1e-9)
    ax.set_xlim(0.5, layers + 0.5)
    ax.set_xticks(x if layers <= 16 else x[:: math.ceil(layers / 16)])
    ax.set_xlabel("Network depth (layer)", fontsize=8)
    ax.set_ylabel("Mean attention distance (pixels)", fontsize=8)
    ax.tick_params(labelsize=7)
    if heads <= 16:
        ax.legend(fontsize=5, ncol=2, loc="lower right", frameon=False)
    ax.set_title(title or "Mean attention distance per head", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def _hwc(image: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] → something imshow draws: (H, W, 3) or (H, W)."""
    image = np.asarray(image, dtype=np.float64)
    if image.shape[0] == 3:
        return np.clip(image.transpose(1, 2, 0), 0, 1)
    if image.shape[0] == 1:
        return np.clip(image[0], 0, 1)
    return np.clip(image.mean(axis=0), 0, 1)


def plot_rollout(images: np.ndarray, maps: np.ndarray, path: str | os.PathLike, title: Optional[str] = None) -> None:
    """``images``: (B, C, H, W) in [0, 1]; ``maps``: (B, H, W) in [0, 1] (upsampled rollout)."""
    images = np.asarray(images)
    maps = np.asarray(maps)
    n = len(images)
    fig = Figure(figsize=(1.3 * n + 0.2, 2.9))
    for i in range(n):
        img = _hwc(images[i])
        masked = img * (maps[i][..., None] if img.ndim == 3 else maps[i])
        for row, (picture, label) in enumerate(((img, "Input"), (masked, "Attention"))):
            ax = fig.add_subplot(2, n, row * n + i + 1)
            ax.imshow(picture, cmap=None if picture.ndim == 3 else "gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(title or "Attention rollout", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_filters(
    components: np.ndarray, path: str | os.PathLike, explained: Optional[Sequence[float]] = None, title: Optional[str] = None
) -> None:
    """``components``: (K, C, P, P); drawn 7 per row."""
    comps = np.asarray(components, dtype=np.float64)
    k = len(comps)
    per_row = min(7, k)
    nrows = math.ceil(k / per_row)
    fig = Figure(figsize=(0.8 * per_row + 0.2, 0.8 * nrows + 0.5))
    for i in range(k):
        tile = comps[i]
        lo, hi = tile.min(), tile.max()
        tile = (tile - lo) / (hi - lo) if hi > lo else np.full_like(tile, 0.5)
        ax = fig.add_subplot(nrows, per_row, i + 1)
        picture = _hwc(tile)
        ax.imshow(picture, cmap=None if picture.ndim == 3 else "gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
    total = f" ({100 * float(sum(explained)):.0f}% of variance)" if explained is not None and len(explained) else ""
    fig.suptitle((title or f"RGB embedding filters (first {k} principal components)") + total, fontsize=8)
    fig.tight_layout()
    _save(fig, path)
