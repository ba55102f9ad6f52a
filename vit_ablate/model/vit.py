"""The Vision Transformer, composed from one component per ablation axis.

    images → stem → [prefix tokens] → pos-embed → dropout → blocks (norm placement) → pool → head

Each arrow is a component chosen by name from a registry (model/schema.py); this file never compares
against those names. ``resolve_spec`` is where a ``model`` section is checked, once per process.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Dict, List, Optional, Set, Tuple

import torch
from torch import nn
from torch.nn.init import trunc_normal_

from vit_ablate.model.attention import Attention
from vit_ablate.model.pos_embed import PositionContext
from vit_ablate.model.presets import parse_variant
from vit_ablate.model.schema import HEADS, NORM_PLACEMENTS, POOLINGS, POSITION_EMBEDDINGS, STEMS, ModelConfig
from vit_ablate.schema import ConfigError, check_value, did_you_mean


def resolve_spec(cfg: Any) -> ModelConfig:
    """The ``model`` section (a mapping, an OmegaConf node or a ModelConfig) with the variant's sizes
    filled in, every value, name and combination checked. Raises ConfigError naming the key.

    Checked once per process: config validation and ``build_model`` ask for the same section."""
    if dataclasses.is_dataclass(cfg):
        cfg = dataclasses.asdict(cfg)
    elif not isinstance(cfg, dict):
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    return dataclasses.replace(_resolve(json.dumps(cfg, sort_keys=True)))


@functools.lru_cache(maxsize=None)
def _resolve(given_json: str) -> ModelConfig:
    given = json.loads(given_json)
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    for key in given:
        if key not in fields:
            raise ConfigError(f"unknown config key 'model.{key}'{did_you_mean(key, fields, 'model.')}")
    spec = ModelConfig(**given)
    for key, value in parse_variant(spec.variant).items():
        if getattr(spec, key) is None:
            setattr(spec, key, value)
    if spec.head_hidden_dim is None:
        spec.head_hidden_dim = spec.dim
    for key, f in fields.items():
        check_value(f"model.{key}", f, getattr(spec, key))
    if spec.dim % spec.heads:
        raise ConfigError(f"model.dim={spec.dim} is not divisible by model.heads={spec.heads}")
    STEMS.get(spec.stem).check(spec)
    _check_tiling(spec, patch_given=given.get("patch_size") is not None)
    num_prefix = POOLINGS.get(spec.pool).num_prefix_tokens
    POSITION_EMBEDDINGS.get(spec.pos_embed).check(PositionContext.of(spec, num_prefix, (spec.grid_side,) * 2))
    return spec


def _check_tiling(spec: ModelConfig, patch_given: bool) -> None:
    """The patch tiles the image, in plain words (paper §3.1: the image is split into P×P patches)."""
    patch, size = spec.patch_size, spec.img_size
    if size % patch == 0:
        return
    fit = min((p for p in range(2, size + 1) if size % p == 0), key=lambda p: (abs(p - patch), p))
    source, instead = ((f"model.patch_size={patch}", f"model.patch_size={fit}") if patch_given else
                       (f"model.variant={spec.variant!r}", f"model.variant={spec.variant.partition('/')[0]}/{fit}"))
    raise ConfigError(
        f"{source} cuts the image into {patch}×{patch}-pixel patches, but the image is {size} pixels wide "
        f"(model.img_size={size}) and {patch} does not divide {size}; use {instead}, or an image size that is a multiple of {patch}")


class VisionTransformer(nn.Module):
    def __init__(self, spec: ModelConfig):
        super().__init__()
        self.spec = spec
        block_cls = NORM_PLACEMENTS.get(spec.norm)
        self.stem = STEMS.get(spec.stem)(spec)
        self.pool = POOLINGS.get(spec.pool)(spec, block_cls.final_norm(spec))
        self.pos_embed = POSITION_EMBEDDINGS.get(spec.pos_embed)(PositionContext.of(spec, self.pool.num_prefix_tokens, self.stem.grid_size))
        self.pos_drop = nn.Dropout(spec.dropout)  # paper: dropout right after adding position embeddings
        self.blocks = nn.ModuleList(
            block_cls(spec, Attention(spec.dim, spec.heads, qkv_bias=spec.qkv_bias, attn_dropout=spec.attn_dropout,
                                      dropout=spec.dropout, position=self.pos_embed.make_attention_position(i)),
                      drop_path=spec.drop_path * i / max(spec.depth - 1, 1))  # grows linearly with depth (timm, DeiT)
            for i in range(spec.depth)
        )
        self.head = HEADS.get(spec.head)(spec)
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
    """The ``model`` section of a config (mapping, OmegaConf node or ModelConfig) → a VisionTransformer."""
    return VisionTransformer(resolve_spec(cfg))

