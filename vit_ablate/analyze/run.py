"""``vit-ablate analyze CHECKPOINT``: the paper's analysis figures and few-shot accuracy of one run.

Writes into ``out`` (default ``<run_dir>/analysis/``):

    analysis.json           every number below (written atomically)
    pos_similarity.png      Figure 7 centre  (additive position tables only; otherwise a note)
    pos_similarity.npy      the (N, N) cosine-similarity matrix behind it
    attention_distance.png  Figure 7 right   (mean attention distance per head and layer)
    rollout.png             Figure 6         (attention rollout on sample images)
    rollout_maps.npy        the (images, rows, cols) rollout maps behind it
    filters.png             Figure 7 left    (patch stem only; otherwise a note)

Images come from the run's own validation split (``data.*`` overrides or ``--data`` point elsewhere);
few-shot support sets from its training split (``evaluate.fewshot_shots`` / ``fewshot_draws``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from vit_ablate.analyze import figures
from vit_ablate.analyze.attention_distance import (
    mean_attention_distance,
    prefix_attention_fraction,
    uniform_attention_distance,
)
from vit_ablate.analyze.batches import split_batches, to_display
from vit_ablate.analyze.checkpoint import default_output_dir, load_checkpoint
from vit_ablate.analyze.fewshot import fewshot_evaluate
from vit_ablate.analyze.filters import no_filters_note, patch_filter_pca, patch_filters
from vit_ablate.analyze.pos_similarity import cosine_similarity_matrix, no_table_note, position_table, similarity_by_distance
from vit_ablate.analyze.rollout import attention_rollout, rollout_patch_maps, upsample_maps
from vit_ablate.io import atomic_write_json

__all__ = ["run_analysis", "ROLLOUT_IMAGES", "IMAGE_SPLIT"]

ROLLOUT_IMAGES = 8  # sample images in rollout.png
IMAGE_SPLIT = "val"  # where the attention statistics' images come from
_ATTENTION_BYTES = 256 * 2**20  # attention maps held at once per batch (sets the batch size)


def _r(value: float, digits: int = 6) -> float:
    return round(float(value), digits)


def _nested(t: torch.Tensor, digits: int = 6) -> List:
    return [[_r(v, digits) for v in row] for row in t.tolist()]


def _data_hint(exc: Exception) -> Exception:
    message = f"{exc} (analysis reads the run's own data; point elsewhere with --data ROOT or data.* overrides)"
    return FileNotFoundError(message) if isinstance(exc, FileNotFoundError) else ValueError(message)


def _attention_batch(model, num_images: int) -> int:
    spec = model.spec
    tokens = model.num_prefix_tokens + model.grid_size[0] * model.grid_size[1]
    # all layers' float32 maps + float64 working copies of one layer
    per_image = spec.heads * tokens * tokens * (4 * spec.depth + 24)
    return max(1, min(num_images, 64, _ATTENTION_BYTES // max(per_image, 1)))


def _attention_analyses(model, datamodule, num_images: int, device, out_dir: Path, label: str) -> Dict[str, Any]:
    spec = model.spec
    grid = tuple(model.grid_size)
    prefix = model.num_prefix_tokens
    batch = _attention_batch(model, num_images)
    available = len(datamodule.split(IMAGE_SPLIT))
    count = min(num_images, available)
    indices = torch.arange(count)
    distance_sum = None
    prefix_sum = None
    seen = 0
    samples: List[torch.Tensor] = []
    sample_maps: List[torch.Tensor] = []
    wanted = min(ROLLOUT_IMAGES, count)
    for images, _ in split_batches(datamodule, IMAGE_SPLIT, indices=indices, batch_size=batch, device=device):
        maps = model.attention_maps(images)
        b = images.shape[0]
        d = mean_attention_distance(maps, grid, spec.patch_size, prefix) * b
        f = prefix_attention_fraction(maps, prefix) * b
        distance_sum = d if distance_sum is None else distance_sum + d
        prefix_sum = f if prefix_sum is None else prefix_sum + f
        seen += b
        need = wanted - sum(len(s) for s in samples)
        if need > 0:
            take = [m[:need] for m in maps]
            sample_maps.append(rollout_patch_maps(attention_rollout(take), prefix, grid).float().cpu())
            samples.append(to_display(images[:need].float(), datamodule.mean, datamodule.std).cpu())
        del maps
    if seen == 0:
        return {"note": f"attention analyses: the {IMAGE_SPLIT} split has no images"}

    distances = distance_sum / seen
    prefix_share = prefix_sum / seen
    uniform = uniform_attention_distance(grid, spec.patch_size)
    figures.plot_attention_distance(distances.numpy(), out_dir / "attention_distance.png", uniform, f"Mean attention distance · {label}")
    distance = {
        "figure": "attention_distance.png",
        "images": seen,
        "split": IMAGE_SPLIT,
        "patch_size_px": spec.patch_size,
        "grid_size": list(grid),
        "per_head": _nested(distances, 4),
        "mean_per_layer": [_r(v, 4) for v in distances.mean(dim=1).tolist()],
        "prefix_attention_fraction": _nested(prefix_share, 4),
        "uniform_reference": _r(uniform, 4),
        "method": (
            "per layer and head: sum_j a_ij * P * ||g_i - g_j|| averaged over patch queries i and images; "
            "prefix tokens excluded and each query's patch weights renormalised to 1; "
            "prefix_attention_fraction is the share of a patch query's attention on prefix tokens"
        ),
    }

    grid_maps = torch.cat(sample_maps)
    images = torch.cat(samples)
    upsampled = upsample_maps(grid_maps, images.shape[-2:])
    figures.plot_rollout(images.numpy(), upsampled.numpy(), out_dir / "rollout.png", f"Attention rollout · {label}")
    np.save(out_dir / "rollout_maps.npy", grid_maps.numpy())
    rollout = {
        "figure": "rollout.png",
        "maps_file": "rollout_maps.npy",
        "images": int(len(images)),
        "split": IMAGE_SPLIT,
        "head_fusion": "mean",
        "query": "class token" if prefix else "mean over patch queries (no class token)",
        "patch_share": [_r(v, 4) for v in grid_maps.flatten(1).sum(dim=1).tolist()],
    }
    return {"attention_distance": distance, "rollout": rollout}


def _model_summary(model) -> Dict[str, Any]:
    spec = model.spec
    return {
        "variant": spec.variant,
        "dim": spec.dim,
        "depth": spec.depth,
        "heads": spec.heads,
        "patch_size": spec.patch_size,
        "img_size": spec.img_size,
        "grid_size": list(model.grid_size),
        "num_prefix_tokens": model.num_prefix_tokens,
        "pos_embed": spec.pos_embed,
        "pos_embed_at": spec.pos_embed_at,
        "pool": spec.pool,
        "stem": spec.stem,
        "norm": spec.norm,
        "head": spec.head,
    }


def _label(model) -> str:
    spec = model.spec
    return f"{spec.variant} {spec.stem} · pos {spec.pos_embed} · {spec.pool}"


def _summary_text(result: Dict[str, Any], out_dir: Path) -> str:
    lines = [f"analysis of {result['checkpoint']} ({result['weights']} weights"]
    if result.get("epoch") is not None:
        lines[0] += f", epoch {result['epoch']}, step {result.get('global_step')}"
    lines[0] += f") → {out_dir}"
    m = result["model"]
    lines.append(
        f"model: {m['variant']} stem={m['stem']} pos_embed={m['pos_embed']}@{m['pos_embed_at']} pool={m['pool']}, "
        f"{m['grid_size'][0]}×{m['grid_size'][1]} patches of {m['patch_size']} px"
    )
    descriptions = {
        "pos_similarity.png": "position-embedding similarity (Figure 7 centre)",
        "attention_distance.png": "mean attention distance per head and layer (Figure 7 right)",
        "rollout.png": "attention rollout on sample images (Figure 6)",
        "filters.png": "patch-embedding filter principal components (Figure 7 left)",
    }
    lines.append("figures:" if result["figures"] else "figures: none")
    for name in result["figures"]:
        lines.append(f"  {name:<24} {descriptions.get(name, '')}")
    dist = result.get("attention_distance")
    if isinstance(dist, dict) and "mean_per_layer" in dist:
        per_layer = "  ".join(f"{i + 1}:{v:.1f}" for i, v in enumerate(dist["mean_per_layer"]))
        lines.append(f"mean attention distance (px, {dist['images']} {dist['split']} images) by layer: {per_layer}")
    few = result.get("fewshot")
    if isinstance(few, dict) and "accuracy" in few:
        accs = ", ".join(f"{k}-shot {v:.3f}" for k, v in few["accuracy"].items())
        lines.append(
            f"few-shot linear accuracy ({few['eval_split']}, {few['num_eval']} images, {few['draws']} draws, "
            f"λ={few['l2_reg']:g}): {accs}"
        )
    if result["notes"]:
        lines.append("notes:")
        lines.extend(f"  - {note}" for note in result["notes"])
    lines.append(f"numbers: {out_dir / 'analysis.json'}")
    return "\n".join(lines)


def run_analysis(
    checkpoint: str | os.PathLike,
    data: Optional[str] = None,
    out: Optional[str | os.PathLike] = None,
    num_images: int = 64,
    overrides: Sequence[str] = (),
    *,
    device: Optional[str | torch.device] = None,
    fewshot: bool = True,
    weights: str = "auto",
) -> str:
    """Analyse a ``vit-ablate train`` checkpoint; write figures and ``analysis.json``; return a summary.

    ``data``: a different ``data.root``; ``overrides``: ``data.*``/``evaluate.*`` ``key=value`` strings
    applied to the checkpoint's config; ``num_images``: validation images for the attention statistics
    (0 skips them); ``device``: default CUDA when available, else CPU; ``fewshot``: run the few-shot
    evaluation (``evaluate.fewshot_shots``, ``evaluate.fewshot_draws``, the run's seed);
    ``weights``: ``auto`` (EMA when the checkpoint has it), ``model`` or ``ema``.
    Raises FileNotFoundError (no checkpoint / no data) or ValueError (another format, bad overrides).
    """
    if int(num_images) < 0:
        raise ValueError(f"num_images={num_images} (--images) must be 0 or more")
    loaded = load_checkpoint(checkpoint, overrides=overrides, data_root=data, weights=weights)
    cfg, model = loaded.config, loaded.model
    out_dir = Path(out) if out is not None else default_output_dir(loaded.path)
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    label = _label(model)

    from vit_ablate.data import build_datamodule

    try:
        datamodule = build_datamodule(cfg)
    except (FileNotFoundError, ValueError) as exc:
        raise _data_hint(exc) from None
    spec = model.spec
    if int(datamodule.img_size) != spec.img_size or int(datamodule.in_chans) != spec.in_chans:
        raise ValueError(
            f"data.name={cfg.data.name} gives {datamodule.in_chans}×{datamodule.img_size}² images but the model "
            f"was built for {spec.in_chans}×{spec.img_size}²; set data.img_size={spec.img_size} or use the run's data"
        )
    try:  # read the splits now, so that missing data fails before anything is written
        for name in ([IMAGE_SPLIT] if int(num_images) > 0 or fewshot else []) + (["train"] if fewshot else []):
            datamodule.split(name)
    except (FileNotFoundError, ValueError) as exc:
        raise _data_hint(exc) from None
    out_dir.mkdir(parents=True, exist_ok=True)

    result: Dict[str, Any] = {
        "checkpoint": str(loaded.path),
        "weights": loaded.weights,
        "epoch": loaded.epoch,
        "global_step": loaded.global_step,
        "device": str(device),
        "model": _model_summary(model),
        "data": {"name": cfg.data.name, "root": cfg.data.root, "img_size": int(datamodule.img_size), "num_classes": int(datamodule.num_classes)},
    }
    notes: List[str] = []
    produced: List[str] = []

    # Position-embedding similarity (model only).
    table = position_table(model)
    if table is None:
        note = no_table_note(model)
        result["pos_similarity"] = {"note": note}
        notes.append(note)
    else:
        similarity = cosine_similarity_matrix(table)
        figures.plot_pos_similarity(similarity.numpy(), model.grid_size, out_dir / "pos_similarity.png", f"Position embedding similarity · {label}")
        np.save(out_dir / "pos_similarity.npy", similarity.float().numpy())
        result["pos_similarity"] = {
            "figure": "pos_similarity.png",
            "matrix_file": "pos_similarity.npy",
            "table": "added before layer 1" if spec.pos_embed_at == "every_layer" else "the additive patch table",
            "by_distance": [
                {**row, "distance": _r(row["distance"], 4), "mean_similarity": _r(row["mean_similarity"], 4)}
                for row in similarity_by_distance(similarity, model.grid_size)
            ],
        }
        produced.append("pos_similarity.png")
        if spec.pos_embed_at == "every_layer":
            notes.append("position-embedding similarity: model.pos_embed_at=every_layer has one table per layer; the first layer's is shown")

    # Patch-embedding filters (model only).
    weight = patch_filters(model)
    if weight is None:
        note = no_filters_note(model)
        result["filters"] = {"note": note}
        notes.append(note)
    else:
        components, explained = patch_filter_pca(weight)
        figures.plot_filters(components.numpy(), out_dir / "filters.png", explained.tolist())
        result["filters"] = {
            "figure": "filters.png",
            "num_components": int(len(components)),
            "explained_variance_ratio": [_r(v, 5) for v in explained.tolist()],
            "filter_shape": list(weight.shape[1:]),
        }
        produced.append("filters.png")

    # Attention statistics on real images.
    if int(num_images) == 0:
        note = "attention distance and rollout: skipped (--images 0)"
        result["attention_distance"] = result["rollout"] = {"note": note}
        notes.append(note)
    else:
        attention = _attention_analyses(model, datamodule, int(num_images), device, out_dir, label)
        if "note" in attention:
            result["attention_distance"] = result["rollout"] = {"note": attention["note"]}
            notes.append(attention["note"])
        else:
            result.update(attention)
            produced += ["attention_distance.png", "rollout.png"]
            notes.append(
                "attention distance: patch queries only; attention to the class token is excluded and the "
                "patch weights renormalised (its share is in prefix_attention_fraction)"
                if model.num_prefix_tokens
                else "attention distance: patch queries over patch keys (no prefix tokens)"
            )
            if getattr(model.pool, "rollout_note", None):
                notes.append(model.pool.rollout_note)

    # Few-shot linear evaluation.
    if fewshot:
        few = fewshot_evaluate(
            model,
            datamodule,
            shots=list(cfg.evaluate.fewshot_shots),
            draws=int(cfg.evaluate.fewshot_draws),
            seed=int(cfg.seed),
            device=device,
        )
        result["fewshot"] = few.to_dict()
        if few.capped:
            notes.append(
                f"few-shot: some classes have fewer training images than {', '.join(few.capped)} shots; they use all they have"
            )

    result["figures"] = produced
    result["notes"] = notes
    atomic_write_json(out_dir / "analysis.json", result)
    return _summary_text(result, out_dir)
