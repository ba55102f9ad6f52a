"""Load a training checkpoint back into a ``VisionTransformer`` without the training package.

A checkpoint written by ``vit-ablate train`` is a Lightning checkpoint: a torch file holding
``hyper_parameters["config"]`` (the resolved run config, a plain dict) and ``state_dict`` whose model
tensors are prefixed ``model.`` (``ViTModule.model``); with ``optim.ema`` it also holds the moving
average under ``ema.module.``. The model is rebuilt with ``build_model(config["model"])`` and its
tensors are loaded strictly, so a checkpoint of another version or format fails with a ``ValueError``
that says so instead of producing figures of a half-initialised model.

The file is read with ``torch.load(weights_only=True)``: a checkpoint whose pickle names anything
beyond tensors and plain values is refused (``UnsafeCheckpointError``) and nothing in it runs.

Tensors are mapped to the CPU, so a checkpoint from a run on any number of GPUs loads anywhere
(Lightning saves the unwrapped module: no ``module.`` prefix from DDP; a ``torch.compile`` wrapper's
``_orig_mod.`` is removed all the same).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vit_ablate import rundir
from vit_ablate.config import from_container, parse_overrides, validate_config
from vit_ablate.model import VisionTransformer, build_model
from vit_ablate.model.safe_load import UnsafeCheckpointError, load_torch_file

__all__ = ["LoadedCheckpoint", "load_checkpoint", "apply_overrides", "default_output_dir", "OVERRIDABLE"]

# Sections of the run config that `vit-ablate analyze key=value` may change: which images are used
# (data.*) and the few-shot protocol (evaluate.fewshot_shots / evaluate.fewshot_draws).
OVERRIDABLE = ("data.", "evaluate.")

MODEL_PREFIX = "model."
EMA_PREFIX = "ema.module."


@dataclass
class LoadedCheckpoint:
    """A rebuilt model (eval mode, on the CPU) with the config and bookkeeping of its checkpoint."""

    path: Path
    config: DictConfig  # the run config, analysis overrides applied
    model: VisionTransformer
    weights: str  # "model" (the trained weights) or "ema" (their exponential moving average)
    epoch: Optional[int] = None
    global_step: Optional[int] = None


def _format_error(path: Path, why: str) -> ValueError:
    return ValueError(
        f"{path} is not a vit-ablate checkpoint of this version/format: {why}. Expected a Lightning "
        "checkpoint written by `vit-ablate train` (with hyper_parameters['config'] and `model.`-prefixed "
        "tensors in state_dict)"
    )


def _strip(state: Mapping[str, Any], prefix: str) -> Dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key.startswith(prefix) and isinstance(value, torch.Tensor):
            out[key[len(prefix):].replace("_orig_mod.", "")] = value
    return out


def apply_overrides(cfg: DictConfig, overrides: Sequence[str] = (), data_root: Optional[str] = None) -> DictConfig:
    """``cfg`` with ``key=value`` overrides of ``data.*``/``evaluate.*`` (and ``data.root``) applied.

    Anything else (the model, the optimiser) describes the checkpoint and cannot be changed here.
    """
    overrides = list(overrides or ())
    for item in overrides:
        key = item.partition("=")[0].strip().lstrip("-")
        if not key.startswith(OVERRIDABLE):
            raise ValueError(
                f"analyze override {item!r}: only data.* and evaluate.* keys can be changed when analysing a "
                f"checkpoint (the model is the checkpoint's own), e.g. data.root=/path or data.name=cifar10"
            )
    layer = parse_overrides(overrides) if overrides else OmegaConf.create({})
    if data_root is not None:
        layer = OmegaConf.merge(layer, {"data": {"root": str(data_root)}})
    if not overrides and data_root is None:
        return cfg
    try:
        merged = OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as exc:
        key = str(getattr(exc, "full_key", "") or "")
        parent, _, leaf = key.rpartition(".")
        hint = ""
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if isinstance(node, DictConfig):
            close = difflib.get_close_matches(leaf, [str(k) for k in node.keys()], n=1, cutoff=0.5)
            if close:
                hint = f"; did you mean {parent + '.' if parent else ''}{close[0]}?"
        raise ValueError(f"analyze override {key or overrides!r} is not valid: {getattr(exc, 'msg', exc)}{hint}") from None
    validate_config(merged)
    return merged


def load_checkpoint(
    path: str | os.PathLike,
    overrides: Sequence[str] = (),
    data_root: Optional[str] = None,
    weights: str = "auto",
) -> LoadedCheckpoint:
    """Rebuild the model of a ``vit-ablate train`` checkpoint (or a run directory's last one) on the CPU,
    in eval mode.

    ``weights``: ``"auto"`` uses the EMA weights when the checkpoint has them (what training evaluated
    with ``optim.ema``), else the trained ones; ``"model"`` or ``"ema"`` force one.
    Raises FileNotFoundError for a missing file and ValueError for anything that is not a checkpoint of
    this version/format (no ``hyper_parameters["config"]``, a config this version rejects, tensors that
    do not fit the model the config describes).
    """
    if weights not in ("auto", "model", "ema"):
        raise ValueError(f"weights={weights!r} is not valid; choose one of auto, model, ema")
    path = rundir.checkpoint_file(path)
    try:
        blob = load_torch_file(path)  # weights_only: nothing named in the file is run
    except UnsafeCheckpointError:
        raise
    except ValueError as exc:  # pickle/zip errors of every kind
        raise _format_error(path, f"torch.load failed ({exc})") from None
    if not isinstance(blob, Mapping):
        raise _format_error(path, f"it holds a {type(blob).__name__}, not a checkpoint dict")
    hparams = blob.get("hyper_parameters")
    config = hparams.get("config") if isinstance(hparams, Mapping) else None
    if not isinstance(config, Mapping):
        raise _format_error(path, "it has no hyper_parameters['config'] (the resolved run config)")
    try:
        cfg = from_container(config)
    except ValueError as exc:
        raise _format_error(path, f"its saved config does not fit this version ({exc})") from None
    cfg = apply_overrides(cfg, overrides, data_root)

    state = blob.get("state_dict")
    if not isinstance(state, Mapping):
        raise _format_error(path, "it has no state_dict")
    trained = _strip(state, MODEL_PREFIX)
    ema = _strip(state, EMA_PREFIX)
    if weights == "ema" and not ema:
        raise ValueError(f"{path} holds no EMA weights (the run did not use optim.ema)")
    use_ema = weights == "ema" or (weights == "auto" and bool(ema))
    tensors = ema if use_ema else trained
    if not tensors:
        raise _format_error(path, f"its state_dict has no '{MODEL_PREFIX}' tensors")

    try:
        model = build_model(cfg.model)
    except ValueError as exc:
        raise _format_error(path, f"its model config cannot be built ({exc})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(tensors) if tuple(expected[k].shape) != tuple(tensors[k].shape))
    if missing or unexpected or mismatched:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", mismatched)):
            if keys:
                shown = ", ".join(keys[:5]) + (f" … ({len(keys)} in all)" if len(keys) > 5 else "")
                parts.append(f"{what}: {shown}")
        raise _format_error(path, "its tensors do not match the model its config describes (" + "; ".join(parts) + ")")
    model.load_state_dict(tensors, strict=True)
    model.eval()

    def _int(value: Any) -> Optional[int]:
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    return LoadedCheckpoint(
        path=path,
        config=cfg,
        model=model,
        weights="ema" if use_ema else "model",
        epoch=_int(blob.get("epoch")),
        global_step=_int(blob.get("global_step")),
    )


def default_output_dir(checkpoint: str | os.PathLike) -> Path:
    """``<run_dir>/analysis`` for ``<run_dir>/checkpoints/x.ckpt``; otherwise ``analysis/`` beside the file."""
    return rundir.run_dir_of(checkpoint) / "analysis"
