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


def _renames(model: VisionTransformer) -> List[Tuple[str, str]]:
    """(our prefix, timm prefix) pairs, longest first, for the model's components."""
    pairs = [("blocks.", "blocks.")]
    missing = [] if model.blocks[0].timm_equivalent else [f"model.norm={model.spec.norm!r}"]
    for attr in ("stem", "pos_embed", "pool", "head"):
        names = getattr(model, attr).timm_names
        if names is None:
            missing.append(f"model.{attr}={getattr(model.spec, attr)!r}")
        else:
            pairs += [(f"{attr}.{ours}", theirs) for ours, theirs in names.items()]
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


def from_timm_state_dict(model: VisionTransformer, timm_state_dict: Mapping[str, torch.Tensor]
                         ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """timm's names → ours for ``model``'s components: (renamed tensors, timm names with no counterpart).
    Shapes are not checked here (a position table of another grid is resampled by the caller)."""
    pairs = sorted(((theirs, ours) for ours, theirs in _renames(model)), key=lambda pair: -len(pair[0]))
    converted: Dict[str, torch.Tensor] = {}
    unused: List[str] = []
    for name, tensor in timm_state_dict.items():
        try:
            converted[_rename(name, pairs)] = tensor
        except KeyError:
            unused.append(name)
    return converted, unused


def load_timm_weights(model: VisionTransformer, timm_state_dict: Mapping[str, torch.Tensor]) -> VisionTransformer:
    """Load a timm VisionTransformer state dict: every tensor of the model filled, every tensor of the
    file used, shapes equal (``init.path`` with ``init.format=timm`` also resamples and re-creates heads)."""
    converted, unused = from_timm_state_dict(model, timm_state_dict)
    ours = model.state_dict()
    unused += [name for name in converted if name not in ours]
    for name, tensor in converted.items():
        if name in ours and ours[name].shape != tensor.shape:
            raise ValueError(f"timm tensor for {name!r} has shape {tuple(tensor.shape)} but this model needs {tuple(ours[name].shape)}")
    missing = sorted(set(ours) - set(converted))
    if missing or unused:
        def listed(names: List[str]) -> str:
            return f"{names[:8]}{' …' if len(names) > 8 else ''}"

        raise ValueError("timm state dict does not match this model: "
                         + "; ".join(f"{what} {listed(names)}" for what, names in (("missing", missing), ("unused", unused)) if names))
    model.load_state_dict(converted)
    return model


def timm_kwargs(model: VisionTransformer) -> Dict[str, object]:
    """Keyword arguments for ``timm.models.vision_transformer.VisionTransformer`` of the same shape."""
    _renames(model)  # refuses models timm cannot build
    spec = model.spec
    return dict(img_size=spec.img_size, patch_size=spec.patch_size, in_chans=spec.in_chans, num_classes=spec.num_classes,
                embed_dim=spec.dim, depth=spec.depth, num_heads=spec.heads, mlp_ratio=spec.mlp_dim / spec.dim,
                qkv_bias=spec.qkv_bias, **model.pool.timm_kwargs, **model.pos_embed.timm_kwargs, drop_rate=spec.dropout,
                pos_drop_rate=spec.dropout, proj_drop_rate=spec.dropout, attn_drop_rate=spec.attn_dropout,
                drop_path_rate=spec.drop_path)
