"""A ``vit-ablate train`` checkpoint back into a ``VisionTransformer`` on the CPU, without the training package.

The Lightning checkpoint is read with ``torch.load(weights_only=True)`` (nothing in it runs): the
resolved run config in ``hyper_parameters["config"]``, the model's tensors in ``state_dict`` under
``model.`` and, with ``optim.ema``, their moving average under ``ema.module.`` (a ``torch.compile``
wrapper's ``_orig_mod.`` is dropped). The model is rebuilt from the config and loaded strictly, so a
checkpoint of another version or format is a ``ValueError`` saying so, never figures of a half-built model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vit_ablate import rundir
from vit_ablate.config import SCHEMA, from_container, parse_overrides, validate_config
from vit_ablate.model import VisionTransformer, build_model
from vit_ablate.model.safe_load import UnsafeCheckpointError, load_torch_file
from vit_ablate.schema import did_you_mean

# what `vit-ablate analyze key=value` may change: the images used and the few-shot protocol; the rest
# of the config describes the checkpoint
OVERRIDABLE = ("data.", "evaluate.")
PREFIXES = {"model": "model.", "ema": "ema.module."}


@dataclass
class LoadedCheckpoint:
    path: Path
    config: DictConfig  # the run config, analysis overrides applied
    model: VisionTransformer  # eval mode, on the CPU
    weights: str  # "model" (the trained weights) or "ema" (their exponential moving average)
    epoch: Optional[int] = None
    global_step: Optional[int] = None


def _format_error(path: Path, why: str) -> ValueError:
    return ValueError(f"{path} is not a vit-ablate checkpoint of this version/format: {why}. Expected a Lightning "
                      "checkpoint written by `vit-ablate train` (hyper_parameters['config'] and `model.`-prefixed "
                      "tensors in state_dict)")


def apply_overrides(cfg: DictConfig, overrides: Sequence[str] = (), data_root: Optional[str] = None) -> DictConfig:
    """``cfg`` with ``data.*``/``evaluate.*`` ``key=value`` overrides and ``data.root`` applied, validated."""
    for item in overrides:
        key = item.partition("=")[0].strip().lstrip("-")
        if not key.startswith(OVERRIDABLE):
            raise ValueError(f"analyze override {item!r}: only data.* and evaluate.* keys can be changed when analysing "
                             "a checkpoint (the model is the checkpoint's own), e.g. data.root=/path or data.name=cifar10")
        if key not in SCHEMA:
            raise ValueError(f"analyze override {item!r}: unknown key {key!r}{did_you_mean(key, SCHEMA)}")
    layer = parse_overrides(overrides)
    if data_root is not None:
        OmegaConf.update(layer, "data.root", str(data_root))
    try:
        merged = OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as exc:  # a value of the wrong type
        raise ValueError(f"analyze overrides {' '.join(overrides)}: {str(exc).splitlines()[0]}") from None
    validate_config(merged)
    return merged


def load_checkpoint(path: str | os.PathLike, overrides: Sequence[str] = (), data_root: Optional[str] = None,
                    weights: str = "auto") -> LoadedCheckpoint:
    """The model of a checkpoint file (or of a run directory's last one), in eval mode on the CPU.

    ``weights``: ``auto`` takes the EMA where the checkpoint has one (what training evaluated), ``model``
    or ``ema`` force one. Raises FileNotFoundError for a missing file, ValueError for anything else that
    is not a checkpoint of this version whose tensors fit the model its config describes.
    """
    if weights not in ("auto", *PREFIXES):
        raise ValueError(f"weights={weights!r} is not valid; choose one of auto, {', '.join(PREFIXES)}")
    path = rundir.checkpoint_file(path)
    try:
        blob = load_torch_file(path)
    except UnsafeCheckpointError:
        raise
    except ValueError as exc:  # pickle and zip errors of every kind
        raise _format_error(path, f"torch.load failed ({exc})") from None
    hparams = blob.get("hyper_parameters") if isinstance(blob, Mapping) else None
    config = hparams.get("config") if isinstance(hparams, Mapping) else None
    state = blob.get("state_dict") if isinstance(blob, Mapping) else None
    if not isinstance(config, Mapping) or not isinstance(state, Mapping):
        raise _format_error(path, "it has no hyper_parameters['config'] (the resolved run config) with a state_dict")
    try:
        cfg = from_container(config)
        model = build_model(cfg.model)
    except ValueError as exc:
        raise _format_error(path, f"its saved config does not fit this version ({exc})") from None
    cfg = apply_overrides(cfg, overrides, data_root)

    found = {name: {key[len(prefix):].replace("_orig_mod.", ""): value for key, value in state.items()
                    if key.startswith(prefix) and isinstance(value, torch.Tensor)} for name, prefix in PREFIXES.items()}
    if weights == "ema" and not found["ema"]:
        raise ValueError(f"{path} holds no EMA weights (the run did not use optim.ema)")
    chosen = weights if weights != "auto" else "ema" if found["ema"] else "model"
    tensors, expected = found[chosen], model.state_dict()
    problems = {"missing": expected.keys() - tensors.keys(), "unexpected": tensors.keys() - expected.keys(),
                "of another shape": {k for k in expected.keys() & tensors.keys() if expected[k].shape != tensors[k].shape}}
    listed = "; ".join(f"{what}: {', '.join(sorted(keys)[:5])}" + (f" … ({len(keys)} in all)" if len(keys) > 5 else "")
                       for what, keys in problems.items() if keys)
    if listed:
        raise _format_error(path, f"its tensors do not match the model its config describes ({listed})")
    model.load_state_dict(tensors)
    counters = (blob.get("epoch"), blob.get("global_step"))
    return LoadedCheckpoint(path, cfg, model.eval(), chosen, *(n if isinstance(n, int) else None for n in counters))
