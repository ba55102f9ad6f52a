"""Start a model from trained weights (``init.path``): paper §3.2, pre-train then fine-tune.

Sources, each read without running code from it (safe_load.py):
``vit_ablate`` — a ``vit-ablate train`` checkpoint (``.ckpt``: ``model.``-prefixed tensors and the run
                 config, whose model tells the source grid); its EMA weights when it has them;
``timm``       — a timm VisionTransformer state dict (``.pth``, ``.bin`` or ``.safetensors``);
``hf``         — a Hugging Face ViT folder (``config.json`` + ``model.safetensors`` or
                 ``pytorch_model.bin``), ViTModel or ViTForImageClassification.

Every tensor is converted to our names, position tables are moved to the model's token grid by
their own component (pos_embed.py), and the head is re-created with a zero-initialised classifier
when the number of classes (or the kind of head) differs (paper §3.1). Anything else that does not
fit — a missing tensor, a shape no resampling can produce, another depth — is an ``InitError``
naming the tensor, unless ``exclude`` names a prefix of it (excluded tensors keep their fresh init).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from vit_ablate.model.hf_interop import from_hf_state_dict, is_hf_state_dict
from vit_ablate.model.pos_embed import Grid, resample_position_tensors
from vit_ablate.model.safe_load import SAFETENSORS_SUFFIX, load_safetensors_file, load_state_dict_file, load_torch_file
from vit_ablate.model.schema import INIT_FORMATS
from vit_ablate.model.timm_interop import from_timm_state_dict
from vit_ablate.model.vit import VisionTransformer, resolve_spec
from vit_ablate.schema import did_you_mean

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HEAD_PREFIX = "head."
CLASSIFIER_PREFIX = "head.fc."
SUMMARY_FILE = "init_summary.json"
# model keys that change what a tensor means without changing its shape: reported when they differ
_MEANING_KEYS = ("norm", "pos_embed", "pos_embed_at", "pool", "head", "stem", "layer_norm_eps", "patch_size")


class InitError(ValueError):
    """``init.path`` cannot initialise this model; the message names the file and the tensor."""


@dataclass
class SourceWeights:
    """A weight file converted to our parameter names."""

    path: str
    format: str
    tensors: Dict[str, torch.Tensor]
    unused: List[str]  # source names with no counterpart in our naming
    grid: Optional[Grid] = None  # the source's token grid, where the file says it
    model: Dict[str, Any] = field(default_factory=dict)  # the source's model settings, where known
    weights: Optional[str] = None  # "model" or "ema" for our checkpoints


@dataclass
class InitSummary:
    path: str
    format: str
    weights: Optional[str]
    source_grid: Optional[List[int]]
    grid: List[int]
    loaded: List[str] = field(default_factory=list)
    resampled: Dict[str, List[List[int]]] = field(default_factory=dict)  # name → [source shape, new shape]
    reinitialised: Dict[str, str] = field(default_factory=dict)  # name → why
    excluded: List[str] = field(default_factory=list)
    unused: List[str] = field(default_factory=list)  # source tensors nothing was loaded from
    notes: List[str] = field(default_factory=list)

    def describe(self) -> str:
        def names(items, limit=6) -> str:
            items = list(items)
            return ", ".join(items[:limit]) + (f" … ({len(items)} in all)" if len(items) > limit else "")

        lines = [f"init.path {self.path} ({self.format}{', ' + self.weights + ' weights' if self.weights else ''}): "
                 f"{len(self.loaded)} tensors loaded, {len(self.resampled)} resampled, {len(self.reinitialised)} "
                 f"re-initialised, {len(self.excluded)} excluded, {len(self.unused)} unused"]
        reasons = "; ".join(sorted(set(self.reinitialised.values())))
        for what, items in ((f"resampled from grid {self.source_grid} to {self.grid}", self.resampled),
                            (f"re-initialised ({reasons})", self.reinitialised), ("excluded (fresh init)", self.excluded),
                            ("unused", self.unused)):
            if items:
                lines.append(f"  {what}: {names(items)}")
        return "\n".join(lines + [f"  note: {note}" for note in self.notes])


# ------------------------------------------------------------------------------------------- reading
def detect_format(path: str | os.PathLike) -> str:
    """``hf`` for a folder, ``vit_ablate`` for ``.ckpt``, ``timm`` for other files (refined by content)."""
    return "hf" if Path(path).is_dir() else "vit_ablate" if Path(path).suffix == ".ckpt" else "timm"


def check_source(path: Optional[str], fmt: str = "auto") -> None:
    """Cheap checks of ``init.path``/``init.format`` that need no model: the machine holds the file."""
    if fmt not in INIT_FORMATS:
        raise InitError(f"init.format={fmt!r} is not valid; choose one of {', '.join(INIT_FORMATS)}")
    if not path:
        return
    source = Path(path)
    if not source.exists():
        raise InitError(f"init.path={str(path)!r} does not exist; give a checkpoint file or folder, or init.path=null")
    if source.is_dir() and fmt in ("auto", "hf") and not (source / "config.json").is_file():
        raise InitError(f"init.path={str(path)!r} is a folder without config.json (a Hugging Face ViT folder needs config.json and its weights)")


def _read_hf_folder(folder: Path) -> SourceWeights:
    from vit_ablate.model.hf_interop import model_config_from_hf

    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise InitError(f"{config_path} is not valid JSON ({exc})") from None
    weights = next((folder / name for name in HF_WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise InitError(f"init.path={str(folder)!r} holds none of {', '.join(HF_WEIGHT_FILES)}")
    try:
        model = model_config_from_hf(config)
    except ValueError as exc:
        raise InitError(f"{config_path}: {exc}") from None
    state = load_safetensors_file(weights) if weights.suffix == SAFETENSORS_SUFFIX else load_state_dict_file(weights)
    tensors, unused = from_hf_state_dict(state)
    side = model["img_size"] // model["patch_size"]
    return SourceWeights(str(folder), "hf", tensors, unused, (side, side), model)


def _read_checkpoint(path: Path) -> SourceWeights:
    blob = load_torch_file(path)
    state = blob.get("state_dict") if isinstance(blob, Mapping) else None
    hparams = blob.get("hyper_parameters") if isinstance(blob, Mapping) else None
    config = hparams.get("config") if isinstance(hparams, Mapping) else None
    if not isinstance(state, Mapping) or not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
        raise InitError(
            f"init.path={str(path)!r} is not a vit-ablate checkpoint (no state_dict with hyper_parameters['config']); "
            "for a timm state dict set init.format=timm"
        )

    def strip(prefix: str) -> Dict[str, torch.Tensor]:
        return {k[len(prefix):].replace("_orig_mod.", ""): v for k, v in state.items()
                if k.startswith(prefix) and isinstance(v, torch.Tensor)}

    # the EMA is what the run evaluated when it kept one (analyze's "auto" rule)
    ema, trained = strip("ema.module."), strip("model.")
    tensors, weights = (ema, "ema") if ema else (trained, "model")
    if not tensors:
        raise InitError(f"init.path={str(path)!r}: its state_dict has no 'model.' tensors")
    try:
        spec = resolve_spec(config["model"])
    except ValueError as exc:
        raise InitError(f"init.path={str(path)!r}: its model config cannot be read by this version ({exc})") from None
    unused = [k for k in state if not k.startswith(("model.", "ema.module."))]
    return SourceWeights(str(path), "vit_ablate", tensors, unused, (spec.grid_side, spec.grid_side), asdict(spec), weights)


def read_source(model: VisionTransformer, path: str | os.PathLike, fmt: str = "auto") -> SourceWeights:
    """The weights at ``path`` in our names (timm names are renamed through ``model``'s components)."""
    check_source(str(path), fmt)
    path = Path(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "hf" and path.is_dir():
        return _read_hf_folder(path)
    if fmt == "vit_ablate":
        return _read_checkpoint(path)
    if path.is_dir():
        raise InitError(f"init.path={str(path)!r} is a folder; init.format={fmt} needs a file")
    state = load_state_dict_file(path)
    if fmt == "hf" or is_hf_state_dict(state):  # a bare Hugging Face state dict, without its config
        tensors, unused = from_hf_state_dict(state)
        return SourceWeights(str(path), "hf", tensors, unused)
    try:
        tensors, unused = from_timm_state_dict(model, state)
    except ValueError as exc:
        raise InitError(f"init.path={str(path)!r} (timm): {exc}") from None
    return SourceWeights(str(path), "timm", tensors, unused)


# ------------------------------------------------------------------------------------------- loading
def _excluded(name: str, prefixes: Sequence[str]) -> bool:
    return any(name.startswith(prefix) for prefix in prefixes)


def _shape(t: torch.Tensor) -> List[int]:
    return [int(n) for n in t.shape]


def apply_init(
    model: VisionTransformer, path: str | os.PathLike, fmt: str = "auto", exclude: Sequence[str] = ()
) -> InitSummary:
    """Initialise ``model`` in place from ``path``; returns what was loaded, resampled, re-initialised,
    excluded and left unused. Raises InitError (a ValueError) naming the file and tensor that do not fit;
    nothing is loaded into the model unless everything fits."""
    source = read_source(model, path, fmt)
    return apply_source(model, source, exclude)


def apply_source(model: VisionTransformer, source: SourceWeights, exclude: Sequence[str] = ()) -> InitSummary:
    where = f"init.path={source.path!r}"
    exclude = [str(prefix) for prefix in exclude]
    ours = model.state_dict()
    for prefix in exclude:
        if not any(name.startswith(prefix) for name in [*ours, *source.tensors]):
            tops = sorted({name.split(".")[0] for name in ours})
            raise InitError(f"init.exclude entry {prefix!r} matches no tensor of the model or of {source.path}"
                            + (did_you_mean(prefix, tops) or f" (top-level names: {', '.join(tops)})"))

    summary = InitSummary(source.path, source.format, source.weights, list(source.grid) if source.grid else None,
                          list(model.grid_size), unused=list(source.unused))
    for key in _MEANING_KEYS:
        if key in source.model and source.model[key] != getattr(model.spec, key):
            summary.notes.append(f"the source has model.{key}={source.model[key]!r}, this model {getattr(model.spec, key)!r}")

    candidates = {k: v for k, v in source.tensors.items() if not _excluded(k, exclude)}
    try:
        resampled, moved = resample_position_tensors(model, candidates, source.grid)
    except ValueError as exc:
        raise InitError(f"{where}: {exc}") from None

    # the head: the source's is used only when it is the same kind and size; otherwise a fresh head
    # with a zero-initialised classifier (paper §3.1's fine-tuning head)
    head_ours = {k for k in ours if k.startswith(HEAD_PREFIX) and not _excluded(k, exclude)}
    head_source = {k for k in resampled if k.startswith(HEAD_PREFIX)}
    head_reason = None
    if head_source - set(ours):
        head_reason = "the source's head is another kind (model.head)"
    elif any(k in head_source and tuple(resampled[k].shape) != tuple(ours[k].shape) for k in head_ours):
        fc = resampled.get(CLASSIFIER_PREFIX + "weight")
        head_reason = (f"num_classes {fc.shape[0]} in the source, {model.spec.num_classes} here" if fc is not None
                       and fc.shape[0] != model.spec.num_classes else "the source's head has other sizes")
    elif head_ours - head_source:
        head_reason = "the source has no " + ("classifier" if head_source else "head")

    problems: List[Tuple[str, str]] = []  # (tensor, what is wrong)
    depth = len(model.blocks)
    source_blocks = {int(k.split(".")[1]) for k in resampled if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    source_depth = max(source_blocks) + 1 if source_blocks else 0
    other_depth = bool(source_blocks) and source_depth != depth
    if other_depth:
        block = min(source_depth, depth)
        first = next(k for k in [*ours, *resampled] if k.startswith(f"blocks.{block}."))
        problems.append((first, f"the source has {source_depth} blocks, this model model.depth={depth} ({first!r} has no counterpart)"))
    state: Dict[str, torch.Tensor] = {}
    for name, tensor in ours.items():
        if _excluded(name, exclude):
            summary.excluded.append(name)
            continue
        if name in head_ours and head_reason is not None:
            # layers before the classifier still load when the source's head is the same kind
            # (e.g. Hugging Face's pooler into our mlp head's pre-logits)
            same_kind = not head_source - set(ours)
            if same_kind and not name.startswith(CLASSIFIER_PREFIX) and name in head_source \
                    and tuple(resampled[name].shape) == tuple(tensor.shape):
                state[name] = resampled[name]
                summary.loaded.append(name)
            else:
                summary.reinitialised[name] = head_reason
            continue
        if name not in resampled:
            if not (other_depth and name.startswith("blocks.")):
                problems.append((name, f"{name!r} {_shape(tensor)} is missing from the source"))
            continue
        if tuple(resampled[name].shape) != tuple(tensor.shape):
            problems.append((name, f"{name!r} has shape {_shape(source.tensors[name])} in the source, {_shape(tensor)} here"))
            continue
        state[name] = resampled[name]
        summary.loaded.append(name)
        if name in moved:
            summary.resampled[name] = [_shape(source.tensors[name]), _shape(tensor)]
    for name in resampled:
        if name not in ours and name not in summary.unused:
            summary.unused.append(name)
    summary.excluded += [k for k in source.tensors if _excluded(k, exclude) and k not in ours]
    if problems:
        shown = "; ".join(why for _, why in problems[:4]) + (f"; … ({len(problems)} in all)" if len(problems) > 4 else "")
        module = problems[0][0].rsplit(".", 1)[0]
        hint = "" if other_depth else f", or keep such tensors at their fresh init with init.exclude=[{module}]"
        if "pool.encoder_norm.weight" in dict(problems) and "pool.norm.weight" in resampled:
            # the source's final LayerNorm follows the mean: it was trained as timm's GAP
            hint = (": its LayerNorm sits after the mean, so it is timm's GAP — set model.pool=gap_fc_norm "
                    "(before vit_ablate 0.2.0, model.pool=gap meant that)")
        raise InitError(f"{where} does not fit this model: {shown}. Match the model settings to the source's{hint}")

    with torch.no_grad():
        for name, tensor in state.items():
            ours[name].copy_(tensor.to(ours[name].dtype))
        for name in summary.reinitialised:  # other layers of a re-created head keep the fresh init
            if name.startswith(CLASSIFIER_PREFIX):
                ours[name].zero_()
    return summary


def write_summary(summary: InitSummary, run_dir: str | os.PathLike) -> Path:
    from vit_ablate.io import atomic_write_json

    return atomic_write_json(Path(run_dir) / SUMMARY_FILE, asdict(summary))
