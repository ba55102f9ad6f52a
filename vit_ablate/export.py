"""``vit-ablate export RUN --to timm|hf [--out PATH]``: a trained model's weights for another library.

``timm`` writes ``model.safetensors`` under timm's VisionTransformer names and ``config.json`` whose
``model_args`` build the same model (``timm.models.vision_transformer.VisionTransformer(**model_args)``);
``hf`` writes ``model.safetensors`` and ``config.json`` that ``transformers``' ``ViTForImageClassification``
(``model.head=linear``) or ``ViTModel`` (``model.head=mlp``: its pooler is our pre-logits layer) loads
with ``from_pretrained(PATH)``. The checkpoint is read with ``torch.load(weights_only=True)``; the
weights exported are the ones the run evaluated (its EMA when it kept one).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

import torch

from vit_ablate import rundir

TARGETS = ("timm", "hf")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def _save(tensors: Dict[str, torch.Tensor], config: Dict, out: Path) -> Path:
    from safetensors.torch import save

    from vit_ablate.io import atomic_write_bytes, atomic_write_json

    data = save({name: t.detach().cpu().contiguous().clone() for name, t in tensors.items()}, metadata={"format": "pt"})
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / WEIGHTS_FILE, data)
    atomic_write_json(out / CONFIG_FILE, config)
    return out


def export(source: str | os.PathLike, to: str, out: Optional[str | os.PathLike] = None) -> Path:
    """Write ``source``'s (run directory or ``.ckpt``) model for ``to`` into the folder ``out``
    (default ``<run_dir>/export/<to>``); returns the folder. Raises ValueError/FileNotFoundError,
    before anything is written, for a bad target or a model the other library cannot hold."""
    if to not in TARGETS:
        raise ValueError(f"--to {to!r} is not valid; choose one of {', '.join(TARGETS)}")
    from vit_ablate.analyze.checkpoint import load_checkpoint

    loaded = load_checkpoint(source)
    model, checkpoint = loaded.model, loaded.path
    out = Path(out) if out is not None else rundir.run_dir_of(checkpoint) / "export" / to
    if to == "timm":
        from vit_ablate.model.timm_interop import timm_kwargs, to_timm_state_dict

        tensors = to_timm_state_dict(model)  # refuses, by name, axes timm has no equivalent of
        config = {"architecture": "vision_transformer.VisionTransformer", "model_args": timm_kwargs(model),
                  "num_classes": model.spec.num_classes, "source": str(checkpoint)}
    else:
        from vit_ablate.model.hf_interop import hf_config, to_hf_state_dict

        tensors = to_hf_state_dict(model)
        config = hf_config(model)
    return _save(tensors, config, out)
