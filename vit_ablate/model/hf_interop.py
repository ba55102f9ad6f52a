"""State-dict conversion between vit_ablate and Hugging Face ``transformers``' ViT, both ways.

Hugging Face's ``ViTModel`` is the paper's model with one choice of each axis: patch stem, a class
token, a learned 1-D table added at the input, pre-norm blocks, and the final LayerNorm on every
token (the class token's is what we pool). Its ``pooler`` (dense + tanh on the class token) is our
``head=mlp`` pre-logits layer (paper §3.1's pre-training head); ``ViTForImageClassification`` has no
pooler and a linear ``classifier`` on the class token, our ``head=linear``. Its LayerNorm eps is
``config.layer_norm_eps`` (1e-12 by default, ours 1e-6): set ``model.layer_norm_eps`` to match.

Names are read in both spellings: transformers 4.x (``encoder.layer.N.attention.attention.query``,
every checkpoint on the Hub) and 5.x (``layers.N.attention.q_proj``); they are written in the 4.x
spelling, which both versions load. Separate query/key/value layers are stacked into our one ``qkv``.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Tuple

import torch

# Hugging Face → ours, after the ``vit.`` prefix of ViTForImageClassification is removed.
_FIXED = {
    "embeddings.cls_token": "pool.cls_token",
    "embeddings.position_embeddings": "pos_embed.placement.table.weight",
    "embeddings.patch_embeddings.projection.weight": "stem.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "stem.proj.bias",
    "layernorm.weight": "pool.norm.weight",
    "layernorm.bias": "pool.norm.bias",
    "pooler.dense.weight": "head.pre_logits.weight",
    "pooler.dense.bias": "head.pre_logits.bias",
    "classifier.weight": "head.fc.weight",
    "classifier.bias": "head.fc.bias",
}
# per layer: (4.x name, 5.x name) → our name inside blocks.N
_LAYER = {
    ("attention.output.dense", "attention.o_proj"): "attn.proj",
    ("intermediate.dense", "mlp.fc1"): "mlp.fc1",
    ("output.dense", "mlp.fc2"): "mlp.fc2",
    ("layernorm_before", "layernorm_before"): "norm1",
    ("layernorm_after", "layernorm_after"): "norm2",
}
_QKV = {("attention.attention.query", "attention.q_proj"): 0, ("attention.attention.key", "attention.k_proj"): 1,
        ("attention.attention.value", "attention.v_proj"): 2}
_LAYER_RE = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")

# the model keys whose value Hugging Face's ViT fixes (every head it has, linear or mlp, is ours too)
_REQUIRED = {"stem": "patch", "pos_embed": "1d", "pos_embed_at": "input", "pool": "cls", "norm": "pre"}


def is_hf_state_dict(state: Mapping[str, Any]) -> bool:
    return any(key.split("vit.", 1)[-1].startswith("embeddings.patch_embeddings.") for key in state)


def from_hf_state_dict(state: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Hugging Face ViT names → ours: (converted tensors, Hugging Face names with no counterpart)."""
    converted: Dict[str, torch.Tensor] = {}
    unused: List[str] = []
    qkv: Dict[Tuple[int, str], Dict[int, torch.Tensor]] = {}
    for full_name, tensor in state.items():
        name = full_name[len("vit."):] if full_name.startswith("vit.") else full_name
        if name in _FIXED:
            converted[_FIXED[name]] = tensor
            continue
        match = _LAYER_RE.match(name)
        if not match:
            unused.append(full_name)  # e.g. embeddings.mask_token (masked-image-modelling only)
            continue
        index, inner, leaf = int(match.group(1)), match.group(2), match.group(3)
        target = next((ours for names, ours in _LAYER.items() if inner in names), None)
        if target is not None:
            converted[f"blocks.{index}.{target}.{leaf}"] = tensor
            continue
        part = next((slot for names, slot in _QKV.items() if inner in names), None)
        if part is None:
            unused.append(full_name)
            continue
        qkv.setdefault((index, leaf), {})[part] = tensor
    for (index, leaf), parts in sorted(qkv.items()):
        if len(parts) != 3:
            missing = [("query", "key", "value")[i] for i in range(3) if i not in parts]
            raise ValueError(f"Hugging Face layer {index} lacks the attention {'/'.join(missing)} {leaf}")
        converted[f"blocks.{index}.attn.qkv.{leaf}"] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    return converted, unused


def check_hf_compatible(model) -> None:
    """Raise ValueError naming each axis of ``model`` that Hugging Face's ViT cannot hold."""
    problems = [f"model.{key}={getattr(model.spec, key)!r} (needs {needed!r})"
                for key, needed in _REQUIRED.items() if getattr(model.spec, key) != needed]
    if problems:
        raise ValueError(f"Hugging Face's ViT has no equivalent of {', '.join(problems)}")


def to_hf_state_dict(model) -> Dict[str, torch.Tensor]:
    """Our weights under Hugging Face's (4.x) names.

    ``head=linear`` → ``ViTForImageClassification`` (``vit.``-prefixed encoder, ``classifier``);
    ``head=mlp`` → ``ViTModel`` with its pooler (our pre-logits); its classifier has no place there
    and is left out.
    """
    check_hf_compatible(model)
    ours = model.state_dict()
    reverse = {v: k for k, v in _FIXED.items()}
    classification = model.spec.head == "linear"
    out: Dict[str, torch.Tensor] = {}
    for name, tensor in ours.items():
        if name in reverse:
            target = reverse[name]
        elif name.startswith("blocks."):
            _, index, rest = name.split(".", 2)
            inner, leaf = rest.rsplit(".", 1)
            if inner == "attn.qkv":
                for (legacy, _), slot in _QKV.items():
                    out[_vit(f"encoder.layer.{index}.{legacy}.{leaf}", classification)] = tensor.chunk(3, dim=0)[slot].clone()
                continue
            legacy = next(names[0] for names, mine in _LAYER.items() if mine == inner)
            target = f"encoder.layer.{index}.{legacy}.{leaf}"
        else:
            raise ValueError(f"tensor {name!r} has no Hugging Face counterpart")
        if target.startswith("classifier."):
            if classification:  # the mlp head's classifier has no place in ViTModel
                out[target] = tensor.clone()
        else:
            out[_vit(target, classification)] = tensor.clone()
    return out


def _vit(name: str, classification: bool) -> str:
    return f"vit.{name}" if classification else name


# Hugging Face config key → (our model key, Hugging Face's default)
_HF_SHAPE = {"hidden_size": ("dim", 768), "num_hidden_layers": ("depth", 12), "num_attention_heads": ("heads", 12),
             "intermediate_size": ("mlp_dim", 3072), "patch_size": ("patch_size", 16), "image_size": ("img_size", 224),
             "num_channels": ("in_chans", 3), "layer_norm_eps": ("layer_norm_eps", 1e-12), "qkv_bias": ("qkv_bias", True)}


def hf_config(model) -> Dict[str, Any]:
    """``config.json`` of the Hugging Face ViT that holds ``model``'s weights."""
    check_hf_compatible(model)
    spec = model.spec
    config: Dict[str, Any] = {hf: getattr(spec, ours) for hf, (ours, _) in _HF_SHAPE.items()}
    config.update(model_type="vit", hidden_act="gelu",  # exact (erf) GELU, as ours (nn.GELU)
                  hidden_dropout_prob=spec.dropout, attention_probs_dropout_prob=spec.attn_dropout, encoder_stride=spec.patch_size)
    if spec.head == "linear":
        labels = {str(i): f"LABEL_{i}" for i in range(spec.num_classes)}
        config.update(architectures=["ViTForImageClassification"], num_labels=spec.num_classes, id2label=labels,
                      label2id={name: int(i) for i, name in labels.items()})
    else:
        config.update(architectures=["ViTModel"], pooler_output_size=spec.head_hidden_dim, pooler_act="tanh")
    return config


def model_config_from_hf(config: Mapping[str, Any], num_classes: int | None = None) -> Dict[str, Any]:
    """The ``model`` section that builds Hugging Face ``config``'s architecture in vit_ablate."""
    for key, only in (("model_type", "vit"), ("hidden_act", "gelu")):
        if config.get(key, only) != only:
            raise ValueError(f"config.json has {key}={config.get(key)!r}; only {only!r} matches this model")
    model = {ours: type(default)(config.get(hf, default)) for hf, (ours, default) in _HF_SHAPE.items()}
    return {**model, **_REQUIRED, "num_classes": int(num_classes or len(config.get("id2label") or {}) or 1000),
            "head_hidden_dim": int(config.get("pooler_output_size") or model["dim"])}
