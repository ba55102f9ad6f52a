"""The Vision Transformer, composed from one component per ablation axis.

    images → stem → [prefix tokens] → pos-embed → dropout → blocks (norm placement) → pool → head

Each arrow is a component chosen by name from a registry (stems.py, pooling.py, pos_embed.py,
blocks.py, heads.py); this file never compares against those names. ``resolve_spec`` is the one place
where a ``model`` config is checked, so a bad name or an impossible combination fails at build time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

import torch
from torch import nn
from torch.nn.init import trunc_normal_

from vit_ablate.model.attention import Attention
from vit_ablate.model.blocks import NORM_PLACEMENTS
from vit_ablate.model.heads import HEADS
from vit_ablate.model.pooling import POOLINGS
from vit_ablate.model.pos_embed import PLACEMENTS, POSITION_EMBEDDINGS, PositionContext
from vit_ablate.model.presets import parse_variant
from vit_ablate.model.stems import STEMS


@dataclass(frozen=True)
class ViTSpec:
    """A fully resolved model description: the preset expanded and every override applied."""

    dim: int
    depth: int
    heads: int
    mlp_dim: int
    patch_size: int
    img_size: int
    in_chans: int
    num_classes: int
    norm: str
    pool: str
    head: str
    head_hidden_dim: int
    head_zero_init: bool
    pos_embed: str
    pos_embed_at: str
    stem: str
    hybrid_stage: int
    hybrid_layers: Optional[Tuple[int, ...]]
    qkv_bias: bool
    layer_norm_eps: float
    dropout: float
    attn_dropout: float
    drop_path: float
    rope_theta: float
    variant: str

    @property
    def grid_side(self) -> int:
        return self.img_size // self.patch_size


def _as_dict(cfg: Any) -> Dict[str, Any]:
    if cfg is None:
        return {}
    if isinstance(cfg, ViTSpec):
        return dataclasses.asdict(cfg)
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise TypeError(f"build_model expects the `model` section as a mapping, got {type(cfg).__name__}")


def resolve_spec(cfg: Any) -> ViTSpec:
    """Expand ``model.variant``, apply overrides and validate every name and combination.

    Raises ValueError naming the key, the bad value and the valid ones.
    """
    from vit_ablate.model.schema import ModelConfig  # the schema holds the defaults (one source of truth)

    given = _as_dict(cfg)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(given) - known)
    if unknown:
        import difflib

        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.5)
            hints.append(f"model.{key}" + (f" (did you mean model.{close[0]}?)" if close else ""))
        raise ValueError(f"unknown model config key(s): {', '.join(hints)}")
    values = {**dataclasses.asdict(ModelConfig()), **given}

    preset = parse_variant(values["variant"])
    for key, value in preset.items():
        if values.get(key) is None:
            values[key] = value
    for key in ("dim", "depth", "heads", "mlp_dim", "patch_size", "img_size", "in_chans", "num_classes"):
        if not isinstance(values[key], int) or isinstance(values[key], bool) or values[key] <= 0:
            raise ValueError(f"model.{key}={values[key]!r} must be a positive integer")
    if values["dim"] % values["heads"]:
        raise ValueError(f"model.dim={values['dim']} is not divisible by model.heads={values['heads']}")
    if values.get("head_hidden_dim") is None:
        values["head_hidden_dim"] = values["dim"]
    if values.get("hybrid_layers") is not None:
        values["hybrid_layers"] = tuple(int(n) for n in values["hybrid_layers"])
    spec = ViTSpec(**{f.name: values[f.name] for f in dataclasses.fields(ViTSpec)})

    # Names: each registry raises "model.<key>='x' is not valid; choose one of …".
    stem_cls = STEMS.get(spec.stem)
    NORM_PLACEMENTS.get(spec.norm)
    pool_cls = POOLINGS.get(spec.pool)
    HEADS.get(spec.head)
    pos_cls = POSITION_EMBEDDINGS.get(spec.pos_embed)
    PLACEMENTS.get(spec.pos_embed_at)

    # Combinations: each component checks what it needs.
    stem_cls.check(spec)
    pos_cls.check(_position_context(spec, pool_cls.num_prefix_tokens, (spec.grid_side, spec.grid_side)))
    return spec


def _position_context(spec: ViTSpec, num_prefix: int, grid_size: Tuple[int, int]) -> PositionContext:
    return PositionContext(
        grid_size=tuple(grid_size),
        num_prefix_tokens=num_prefix,
        dim=spec.dim,
        heads=spec.heads,
        depth=spec.depth,
        at=spec.pos_embed_at,
        rope_theta=spec.rope_theta,
    )


class VisionTransformer(nn.Module):
    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.spec = spec
        block_cls = NORM_PLACEMENTS.get(spec.norm)
        self.stem = STEMS.get(spec.stem)(spec)
        self.pool = POOLINGS.get(spec.pool)(
            spec.dim, spec.heads, spec.mlp_dim, block_cls.final_norm(spec.dim, spec.layer_norm_eps)
        )
        self.pos_embed = POSITION_EMBEDDINGS.get(spec.pos_embed)(
            _position_context(spec, self.pool.num_prefix_tokens, self.stem.grid_size)
        )
        self.pos_drop = nn.Dropout(spec.dropout)  # paper: dropout right after adding position embeddings
        # stochastic depth grows linearly with depth (timm's and DeiT's rule)
        drop_path = [spec.drop_path * i / max(spec.depth - 1, 1) for i in range(spec.depth)]
        self.blocks = nn.ModuleList(
            block_cls(
                spec.dim,
                spec.mlp_dim,
                Attention(
                    spec.dim,
                    spec.heads,
                    qkv_bias=spec.qkv_bias,
                    attn_dropout=spec.attn_dropout,
                    dropout=spec.dropout,
                    position=self.pos_embed.make_attention_position(i),
                ),
                dropout=spec.dropout,
                drop_path=drop_path[i],
                eps=spec.layer_norm_eps,
            )
            for i in range(spec.depth)
        )
        self.head = HEADS.get(spec.head)(
            spec.dim, spec.num_classes, spec.head_hidden_dim, spec.dropout, spec.head_zero_init
        )
        self._init_transformer_weights()

    def _init_transformer_weights(self) -> None:
        # timm's default ViT init for the transformer's dense layers; stems, tables and the head keep
        # the initialisation their own classes chose.
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # ---------------------------------------------------------------------------------------
    @property
    def num_prefix_tokens(self) -> int:
        return self.pool.num_prefix_tokens

    @property
    def grid_size(self) -> Tuple[int, int]:
        return self.stem.grid_size

    def _encode(self, images: torch.Tensor, taps: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        tokens = self.stem(images)
        if taps is not None:
            taps["stem"] = tokens
        prefix = self.pool.prefix_tokens(tokens.shape[0])
        if prefix is not None:
            tokens = torch.cat([prefix.to(tokens.dtype), tokens], dim=1)
        tokens = self.pos_drop(self.pos_embed.embed(tokens))
        if taps is not None:
            taps["pos_embed"] = tokens
        for index, block in enumerate(self.blocks):
            tokens = block(self.pos_embed.before_block(index, tokens))
            if taps is not None:
                taps[f"block{index}"] = tokens
        return tokens

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder output tokens (B, prefix + patches, D), before the final norm."""
        return self._encode(images)

    def forward_pre_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled, normalised representation the head sees (used for few-shot evaluation)."""
        return self.pool(self._encode(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self._encode(images)))

    def forward_intermediates(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Named tokens for analysis: stem, pos_embed, block0 … block{L-1}, pre_logits, logits."""
        taps: Dict[str, torch.Tensor] = {}
        tokens = self._encode(images, taps)
        taps["pre_logits"] = self.pool(tokens)
        taps["logits"] = self.head(taps["pre_logits"])
        return taps

    @torch.no_grad()
    def attention_maps(self, images: torch.Tensor) -> List[torch.Tensor]:
        """Softmax attention of every layer, each (B, heads, T, T), via the explicit-math path."""
        attentions = [block.attn for block in self.blocks]
        for attn in attentions:
            attn.record_attention = True
        try:
            self._encode(images)
            return [attn.last_attention for attn in attentions]
        finally:
            for attn in attentions:
                attn.record_attention = False
                attn.last_attention = None

    def no_weight_decay(self) -> Set[str]:
        """Parameters exempt from weight decay: position tables, class token, norms and biases."""
        names: Set[str] = set()
        for module_name, module in self.named_modules():
            for leaf in getattr(module, "no_weight_decay_names", ()):
                names.add(f"{module_name}.{leaf}" if module_name else leaf)
        for name, param in self.named_parameters():
            if param.ndim <= 1:
                names.add(name)
        return names


def build_model(cfg: Any) -> VisionTransformer:
    """The ``model`` section of a config (mapping, OmegaConf node or ViTSpec) → a VisionTransformer."""
    return VisionTransformer(resolve_spec(cfg))
