"""State-dict conversion between vit_ablate and timm's VisionTransformer, both ways.

Components keep timm's attribute names inside themselves, so conversion is a renaming of the
component prefixes only. Each component class declares its ``timm_names`` (our suffix → timm's
prefix); a component with ``timm_names = None`` has no timm equivalent (post-norm, 2-D tables,
relative attention, RoPE, the conv stem, the MLP head) and conversion refuses it by name.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Tuple

import torch
from vit_ablate.model.vit import VisionTransformer

# component attribute on VisionTransformer → the config key that chose it (for error messages)
_COMPONENTS = {"stem": "model.stem", "pos_embed": "model.pos_embed", "pool": "model.pool", "head": "model.head"}


def _renames(model: VisionTransformer) -> List[Tuple[str, str]]:
    """(our prefix, timm prefix) pairs, longest first, for the model's components."""
    missing = []
    pairs: List[Tuple[str, str]] = [("blocks.", "blocks.")]
    for attr, key in _COMPONENTS.items():
        component = getattr(model, attr)
        names = getattr(component, "timm_names", None)
        if names is None:
            missing.append(f"{key}={getattr(component, 'registry_name', type(component).__name__)!r}")
            continue
        pairs += [(f"{attr}.{ours}", theirs) for ours, theirs in names.items()]
    block = type(model.blocks[0]) if len(model.blocks) else None
    if block is not None and not block.timm_equivalent:
        missing.append(f"model.norm={getattr(block, 'registry_name', block.__name__)!r}")
    if missing:
        raise ValueError(f"timm's VisionTransformer has no equivalent of {', '.join(missing)}")
    return sorted(pairs, key=lambda pair: -len(pair[0]))


def _rename(name: str, pairs: List[Tuple[str, str]]) -> str:
    for src, dst in pairs:
        if name.startswith(src):
            return dst + name[len(src) :]
    raise KeyError(name)


def to_timm_state_dict(model: VisionTransformer) -> Dict[str, torch.Tensor]:
    """Our state dict under timm's names (loads into the matching ``timm.create_model``)."""
    pairs = _renames(model)
    return {_rename(name, pairs): tensor for name, tensor in model.state_dict().items()}


def from_timm_state_dict(
    model: VisionTransformer, timm_state_dict: Mapping[str, torch.Tensor]
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """timm's names → ours for ``model``'s components: (renamed tensors, timm names with no counterpart).

    Shapes are not checked here (a position table of another grid is resampled by the caller).
    """
    pairs = [(theirs, ours) for ours, theirs in _renames(model)]
    pairs.sort(key=lambda pair: -len(pair[0]))
    converted: Dict[str, torch.Tensor] = {}
    unused: List[str] = []
    for name, tensor in timm_state_dict.items():
        try:
            converted[_rename(name, pairs)] = tensor
        except KeyError:
            unused.append(name)
    return converted, unused


def load_timm_weights(model: VisionTransformer, timm_state_dict: Mapping[str, torch.Tensor]) -> VisionTransformer:
    """Load a timm VisionTransformer state dict (e.g. from a local ``.pth``/``.safetensors`` file).

    Every tensor of the model must be filled and every tensor of the file used; shapes must match.
    """
    pairs = [(theirs, ours) for ours, theirs in _renames(model)]
    pairs.sort(key=lambda pair: -len(pair[0]))
    ours = model.state_dict()
    converted: Dict[str, torch.Tensor] = {}
    unused = []
    for name, tensor in timm_state_dict.items():
        try:
            target = _rename(name, pairs)
        except KeyError:
            unused.append(name)
            continue
        if target not in ours:
            unused.append(name)
            continue
        if tuple(ours[target].shape) != tuple(tensor.shape):
            raise ValueError(
                f"timm tensor {name!r} has shape {tuple(tensor.shape)} but {target!r} needs {tuple(ours[target].shape)}"
            )
        converted[target] = tensor
    missing = sorted(set(ours) - set(converted))
    if missing or unused:
        raise ValueError(
            "timm state dict does not match this model: "
            + (f"missing {missing[:8]}{' …' if len(missing) > 8 else ''}" if missing else "")
            + ("; " if missing and unused else "")
            + (f"unused {unused[:8]}{' …' if len(unused) > 8 else ''}" if unused else "")
        )
    model.load_state_dict(converted)
    return model


def load_timm_weights_file(model: VisionTransformer, path: str) -> VisionTransformer:
    """Load timm weights from a local file (``.safetensors``, ``.pth``/``.bin``); nothing is downloaded
    and nothing in the file is run (safetensors, or ``torch.load(weights_only=True)``)."""
    from vit_ablate.model.safe_load import load_state_dict_file

    return load_timm_weights(model, load_state_dict_file(path))


def timm_kwargs(model: VisionTransformer) -> Dict[str, object]:
    """Keyword arguments for ``timm.models.vision_transformer.VisionTransformer`` of the same shape."""
    _renames(model)  # refuses models timm cannot build
    spec = model.spec
    return dict(
        img_size=spec.img_size,
        patch_size=spec.patch_size,
        in_chans=spec.in_chans,
        num_classes=spec.num_classes,
        embed_dim=spec.dim,
        depth=spec.depth,
        num_heads=spec.heads,
        mlp_ratio=spec.mlp_dim / spec.dim,
        qkv_bias=spec.qkv_bias,
        **model.pool.timm_kwargs,
        **model.pos_embed.timm_kwargs,
        drop_rate=spec.dropout,
        pos_drop_rate=spec.dropout,
        proj_drop_rate=spec.dropout,
        attn_drop_rate=spec.attn_dropout,
        drop_path_rate=spec.drop_path,
    )
