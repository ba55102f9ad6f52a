"""``vit-ablate analyze CHECKPOINT``: the paper's analysis figures and few-shot accuracy of one run.

Writes into ``out`` (default ``<run_dir>/analysis/``) ``analysis.json`` with every number, and

    pos_similarity.png (.npy)      Figure 7 centre: position-embedding similarity (additive tables only)
    filters.png                    Figure 7 left: patch-embedding filter principal components (patch stem only)
    attention_distance.png         Figure 7 right, Appendix D.7: mean attention distance per head and layer
    rollout.png (rollout_maps.npy) Figure 6, Appendix D.8: attention rollout on sample images

Images come from the run's own validation split (``--data`` or ``data.*`` overrides point elsewhere), the
few-shot support sets (§4.1) from its training split. What a model cannot show is a note, not a figure.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vit_ablate import rundir
from vit_ablate.analyze.attention_distance import mean_attention_distance, patch_distance_matrix
from vit_ablate.analyze.checkpoint import load_checkpoint
from vit_ablate.analyze.fewshot import fewshot_evaluate, split_batches
from vit_ablate.analyze.filters import patch_filter_pca, patch_filters
from vit_ablate.analyze.pos_similarity import cosine_similarity_matrix, position_table, similarity_by_distance, similarity_mosaic
from vit_ablate.analyze.rollout import attention_rollout, rollout_patch_maps, upsample_maps
from vit_ablate.data import build_datamodule
from vit_ablate.io import atomic_write_json

ROLLOUT_IMAGES = 8  # sample images in rollout.png
ATTENTION_BYTES = 256 * 2**20  # attention maps held at once (sets the batch size)
DPI = 100


def _grey_or_rgb(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] → what imshow draws: (H, W, 3) for RGB, else the channels' mean."""
    return (image.permute(1, 2, 0) if len(image) == 3 else image.mean(dim=0)).clamp(0, 1).numpy()


def _pos_similarity(model, out: Path, label: str) -> Dict[str, Any]:
    table = position_table(model)
    if table is None:
        return {"note": f"position-embedding similarity: not drawn, model.pos_embed={model.spec.pos_embed!r} adds "
                        "no position table to the patch tokens"}
    similarity = cosine_similarity_matrix(table)
    np.save(out / "pos_similarity.npy", similarity.float().numpy())
    rows, cols = model.grid_size
    fig = Figure(figsize=(4.6, 4.0), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(similarity_mosaic(similarity.numpy(), (rows, cols)), vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks((cols + 1) * np.arange(cols) + (cols - 1) / 2, range(1, cols + 1), fontsize=6)
    ax.set_yticks((rows + 1) * np.arange(rows) + (rows - 1) / 2, range(1, rows + 1), fontsize=6)
    ax.set_xlabel("Input patch column", fontsize=8)
    ax.set_ylabel("Input patch row", fontsize=8)
    ax.set_title(f"Position embedding similarity\n{label}", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8).set_label("Cosine similarity", fontsize=8)
    fig.savefig(out / "pos_similarity.png", dpi=DPI)
    result = {"figure": "pos_similarity.png", "matrix_file": "pos_similarity.npy",
              "by_distance": similarity_by_distance(similarity, (rows, cols))}
    if model.spec.pos_embed_at == "every_layer":
        result["note"] = "position-embedding similarity: one table per layer (pos_embed_at=every_layer); the first layer's is shown"
    return result


def _filters(model, out: Path) -> Dict[str, Any]:
    weight = patch_filters(model)
    if weight is None:
        return {"note": f"patch-embedding filter PCA: not drawn, model.stem={model.spec.stem!r} has no linear "
                        "per-patch filters on pixels"}
    components, explained = patch_filter_pca(weight)
    per_row = min(7, len(components))
    rows = -(-len(components) // per_row)
    fig = Figure(figsize=(0.8 * per_row + 0.2, 0.8 * rows + 0.5), layout="constrained")
    for i, tile in enumerate(components):  # each tile scaled to [0, 1] on its own
        ax = fig.add_subplot(rows, per_row, i + 1, xticks=[], yticks=[])
        ax.imshow(_grey_or_rgb((tile - tile.min()) / (tile.max() - tile.min()).clamp_min(1e-12)), cmap="gray", vmin=0, vmax=1)
    fig.suptitle(f"Embedding filters: first {len(components)} principal components "
                 f"({100 * float(explained.sum()):.0f}% of variance)", fontsize=8)
    fig.savefig(out / "filters.png", dpi=DPI)
    return {"figure": "filters.png", "explained_variance_ratio": explained.numpy().round(5).tolist(),
            "filter_shape": list(weight.shape[1:])}


@torch.no_grad()
def _attention(model, datamodule, num_images: int, device, out: Path, label: str) -> Dict[str, Any]:
    spec, grid, prefix = model.spec, tuple(model.grid_size), model.num_prefix_tokens
    tokens = prefix + grid[0] * grid[1]
    # every layer's float32 maps plus float64 working copies of one layer, per image
    batch = max(1, min(64, ATTENTION_BYTES // (spec.heads * tokens**2 * (4 * spec.depth + 24))))
    count = min(num_images, len(datamodule.split("val")))
    if not count:
        note = "attention distance and rollout: the val split has no images"
        return {"attention_distance": {"note": note}, "rollout": {"note": note}}
    totals, images, maps = 0, [], []
    for batch_images, _ in split_batches(datamodule, "val", torch.arange(count), batch, device):
        attentions = model.attention_maps(batch_images)
        totals = totals + torch.stack(mean_attention_distance(attentions, grid, spec.patch_size, prefix)) * len(batch_images)
        keep = ROLLOUT_IMAGES - sum(map(len, images))
        if keep > 0:
            maps.append(rollout_patch_maps(attention_rollout([a[:keep] for a in attentions]), prefix, grid).float().cpu())
            images.append(batch_images[:keep].float().cpu())
    distances, prefix_share = totals / count
    uniform = float(patch_distance_matrix(grid, spec.patch_size).mean())  # a head attending to every patch alike

    fig = Figure(figsize=(4.2, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.set_prop_cycle(color=matplotlib.colormaps["tab20"].colors)
    for head, per_layer in enumerate(distances.T.numpy()):
        ax.scatter(np.arange(1, len(per_layer) + 1), per_layer, s=12, linewidths=0, label=f"Head {head + 1}")
    ax.axhline(uniform, color="grey", linestyle="--", linewidth=0.8, label="uniform attention")
    ax.set_ylim(0, 1.1 * max(uniform, float(distances.max())))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=7)
    ax.set_xlabel("Network depth (layer)", fontsize=8)
    ax.set_ylabel("Mean attention distance (pixels)", fontsize=8)
    ax.set_title(f"Mean attention distance\n{label}", fontsize=9)
    if spec.heads <= 16:
        ax.legend(fontsize=5, ncol=2, loc="lower right", frameon=False)
    fig.savefig(out / "attention_distance.png", dpi=DPI)

    grid_maps = torch.cat(maps)
    np.save(out / "rollout_maps.npy", grid_maps.numpy())
    shown = torch.cat(images) * torch.tensor(datamodule.std).view(-1, 1, 1) + torch.tensor(datamodule.mean).view(-1, 1, 1)
    weights = upsample_maps(grid_maps, shown.shape[-2:])
    fig = Figure(figsize=(1.3 * len(shown) + 0.2, 2.9), layout="constrained")
    axes = fig.subplots(2, len(shown), squeeze=False, subplot_kw={"xticks": [], "yticks": []})
    for column, image, weight in zip(axes.T, shown, weights):
        column[0].imshow(_grey_or_rgb(image), cmap="gray", vmin=0, vmax=1)
        column[1].imshow(_grey_or_rgb(image * weight), cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_ylabel("Input", fontsize=8)
    axes[1, 0].set_ylabel("Attention", fontsize=8)
    fig.suptitle(f"Attention rollout · {label}", fontsize=9)
    fig.savefig(out / "rollout.png", dpi=DPI)

    rollout = {"figure": "rollout.png", "maps_file": "rollout_maps.npy", "images": len(shown),
               "query": "class token" if prefix else "mean over patch queries (no class token)",
               "patch_share": grid_maps.flatten(1).sum(1).numpy().round(4).tolist()}
    if getattr(model.pool, "rollout_note", None):
        rollout["note"] = model.pool.rollout_note
    return {"attention_distance": {
        "figure": "attention_distance.png", "images": count, "split": "val",
        "per_head": distances.numpy().round(4).tolist(), "mean_per_layer": distances.mean(1).numpy().round(4).tolist(),
        "prefix_attention_fraction": prefix_share.numpy().round(4).tolist(), "uniform_reference": round(uniform, 4)},
        "rollout": rollout}


def _summary(result: Dict[str, Any], out: Path) -> str:
    m, distance, fewshot = result["model"], result["attention_distance"], result.get("fewshot")
    lines = [f"analysis of {result['checkpoint']} ({result['weights']} weights, epoch {result['epoch']}, "
             f"step {result['global_step']}) → {out}",
             f"model: {m['variant']} stem={m['stem']} pos_embed={m['pos_embed']}@{m['pos_embed_at']} pool={m['pool']}, "
             f"{m['grid_size'][0]}×{m['grid_size'][1]} patches of {m['patch_size']} px",
             "figures: " + (", ".join(result["figures"]) or "none")]
    if "mean_per_layer" in distance:
        per_layer = "  ".join(f"{i}:{v:.1f}" for i, v in enumerate(distance["mean_per_layer"], 1))
        lines.append(f"mean attention distance (px, {distance['images']} val images) by layer: {per_layer}")
    if fewshot:
        accuracy = ", ".join(f"{k}-shot {v:.3f}" for k, v in fewshot["accuracy"].items())
        lines.append(f"few-shot linear accuracy (val, {fewshot['num_eval']} images, {fewshot['draws']} draws, "
                     f"λ={fewshot['l2_reg']:g}): {accuracy}")
    lines += [f"note: {note}" for note in result["notes"]]
    return "\n".join(lines + [f"numbers: {out / 'analysis.json'}"])


def _data_hint(exc: Exception) -> Exception:
    message = f"{exc} (analysis reads the run's own data; point elsewhere with --data ROOT or data.* overrides)"
    return FileNotFoundError(message) if isinstance(exc, FileNotFoundError) else ValueError(message)


def run_analysis(checkpoint: str | os.PathLike, data: Optional[str] = None, out: Optional[str | os.PathLike] = None,
                 num_images: int = 64, overrides: Sequence[str] = (), *, device: Optional[str | torch.device] = None,
                 fewshot: bool = True, weights: str = "auto") -> str:
    """Analyse a checkpoint (or a run directory's last one); write the figures and ``analysis.json``
    into ``out``; return a summary.

    ``data``: another ``data.root``; ``overrides``: ``data.*``/``evaluate.*`` ``key=value`` strings;
    ``num_images``: validation images for the attention statistics (0 skips them); ``device``: CUDA
    when available, else the CPU; ``fewshot``: run the §4.1 evaluation (``evaluate.fewshot_shots``,
    ``evaluate.fewshot_draws``, the run's seed); ``weights``: ``auto`` (the EMA where saved), ``model``, ``ema``.
    Raises FileNotFoundError (no checkpoint, no data) or ValueError (another format, bad overrides).
    """
    if num_images < 0:
        raise ValueError(f"--images {num_images}: must be 0 or more")
    loaded = load_checkpoint(checkpoint, overrides=overrides, data_root=data, weights=weights)
    cfg, model, spec = loaded.config, loaded.model, loaded.model.spec
    out = Path(out) if out is not None else rundir.run_dir_of(loaded.path) / "analysis"
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    try:  # every split it reads is read now, so that missing data fails before anything is written
        datamodule = build_datamodule(cfg)
        for split in (["val"] if num_images or fewshot else []) + (["train"] if fewshot else []):
            datamodule.split(split)
    except (FileNotFoundError, ValueError) as exc:
        raise _data_hint(exc) from None
    if (datamodule.in_chans, datamodule.img_size) != (spec.in_chans, spec.img_size):
        raise ValueError(f"data.name={cfg.data.name} gives {datamodule.in_chans}×{datamodule.img_size}² images but the "
                         f"model was built for {spec.in_chans}×{spec.img_size}²; set data.img_size={spec.img_size} or use the run's data")
    out.mkdir(parents=True, exist_ok=True)

    label = f"{spec.variant} {spec.stem} · pos {spec.pos_embed} · {spec.pool}"
    result: Dict[str, Any] = {
        "checkpoint": str(loaded.path), "weights": loaded.weights, "epoch": loaded.epoch,
        "global_step": loaded.global_step, "device": str(device),
        "model": {**dataclasses.asdict(spec), "grid_size": list(model.grid_size), "num_prefix_tokens": model.num_prefix_tokens},
        "data": {"name": cfg.data.name, "root": cfg.data.root, "num_classes": int(datamodule.num_classes)},
        "pos_similarity": _pos_similarity(model, out, label),
        "filters": _filters(model, out),
    }
    if num_images:
        result.update(_attention(model, datamodule, num_images, device, out, label))
    else:
        result["attention_distance"] = result["rollout"] = {"note": "attention distance and rollout: skipped (--images 0)"}
    if fewshot:
        result["fewshot"] = fewshot_evaluate(model, datamodule, cfg.evaluate.fewshot_shots, cfg.evaluate.fewshot_draws, cfg.seed, device)
        if result["fewshot"]["capped"]:
            result["fewshot"]["note"] = (f"few-shot: some classes have fewer training images than "
                                         f"{', '.join(result['fewshot']['capped'])} shots; they give all they have")
    sections = [section for section in result.values() if isinstance(section, dict)]
    result["figures"] = [section["figure"] for section in sections if "figure" in section]
    result["notes"] = list(dict.fromkeys(section["note"] for section in sections if "note" in section))
    atomic_write_json(out / "analysis.json", result)
    return _summary(result, out)
