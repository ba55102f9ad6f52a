"""The configuration schema, its merge order and its validation: the one source of every default.

A run's configuration is ``defaults ← a.yaml ← b.yaml ← key=value overrides``. The schema is a tree
of dataclasses (OmegaConf structured configs), so a misspelt key, a value of the wrong type or a
name that no registry knows fails here, before any data is read or any process is launched, with an
error that names the key and suggests the nearest valid spelling.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

__all__ = [
    "ConfigError",
    "RunConfig",
    "ModelConfig",
    "load_config",
    "parse_overrides",
    "to_yaml",
    "config_digest",
]


class ConfigError(ValueError):
    """A configuration that cannot run. The CLI prints the message and exits with status 2."""


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    """The ``model`` section; ``vit_ablate.model.build_model`` consumes exactly these keys."""

    variant: str = "Ti/16"  # "<size>/<patch>", sizes in model/presets.py (paper Table 1 + DeiT Ti/S)
    dim: Optional[int] = None  # the keys below override the preset when set
    depth: Optional[int] = None
    heads: Optional[int] = None
    mlp_dim: Optional[int] = None
    patch_size: Optional[int] = None
    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    norm: str = "pre"  # model/blocks.py: pre | post
    pool: str = "cls"  # model/pooling.py: cls | gap | map
    head: str = "linear"  # model/heads.py: linear | mlp
    head_hidden_dim: Optional[int] = None  # mlp head width; default = dim (paper §3.1 pre-logits)
    head_zero_init: bool = True  # paper §3.1: the fine-tuning head is zero-initialised
    pos_embed: str = "1d"  # model/pos_embed.py: none | 1d | 2d | relative | sincos2d | rope2d
    pos_embed_at: str = "input"  # model/pos_embed.py: input | every_layer | every_layer_shared
    stem: str = "patch"  # model/stems.py: patch | hybrid | conv
    hybrid_stage: int = 3  # paper §3.1: 4 = ResNet-50 stage-4 output; 3 = stage 4 folded into stage 3
    hybrid_layers: Optional[List[int]] = None  # ResNet blocks per stage; overrides hybrid_stage
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    dropout: float = 0.0  # after every dense layer but qkv, and after adding position embeddings
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    rope_theta: float = 100.0


@dataclass
class InitConfig:
    """Start a run from trained weights (paper §3.2: pre-train, then fine-tune, often at a new resolution)."""

    path: Optional[str] = None  # a vit-ablate .ckpt, a timm state dict (.pth/.bin/.safetensors) or a Hugging Face ViT folder
    format: str = "auto"  # auto | vit_ablate | timm | hf; auto decides from the file
    exclude: List[str] = field(default_factory=list)  # parameter-name prefixes left at their fresh init, e.g. ["head"]


@dataclass
class SyntheticConfig:
    """The embedded procedural dataset (data/synthetic.py documents its accuracy ceiling)."""

    num_train: int = 8192
    num_val: int = 2048
    num_test: int = 2048
    cell: int = 8  # glyph cell in pixels; a patch-stem model whose patch divides it sees one glyph per cell
    grid: int = 4  # cells per side; the image is cell*grid pixels square
    seed: int = 0  # the dataset's own seed, independent of the run's seed


@dataclass
class DataConfig:
    name: str = "synthetic"  # data/__init__.py: synthetic | cifar10 | cifar100 | imagefolder
    root: Optional[str] = None
    download: bool = False
    batch_size: int = 128  # the GLOBAL batch: per-device batch = batch_size / (devices * nodes * accum)
    micro_batch_size: Optional[int] = None  # per-device cap; larger batches use gradient accumulation
    eval_batch_size: Optional[int] = None  # global; default batch_size
    num_workers: int = 2
    in_memory: Optional[bool] = None  # decode once into a uint8 tensor; None = auto (small datasets)
    on_device: bool = True  # keep in-memory data on the training device and augment there in batches
    img_size: Optional[int] = None  # resize to this; None = the dataset's native size
    train_subset: Optional[int] = None  # use the first N training images (class-balanced)
    val_split: int = 0  # hold out N training images for validation; 0 = validate on the test split
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class AugmentConfig:
    random_crop_padding: int = 0  # CIFAR-style pad-and-crop
    hflip: bool = False
    random_resized_crop: bool = False  # Inception crop (ImageNet recipes)
    randaugment: Optional[str] = None  # timm spec, e.g. "rand-m10-n2" = RandAugment(2, 10)
    mixup: float = 0.0  # timm Mixup alpha
    cutmix: float = 0.0  # timm CutMix alpha
    label_smoothing: float = 0.0


@dataclass
class OptimConfig:
    name: str = "adamw"  # any timm optimizer name (timm.optim.list_optimizers())
    lr: float = 1e-3
    weight_decay: float = 0.05  # never applied to model.no_weight_decay() parameters
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.9
    eps: float = 1e-8
    lr_scale_rule: str = "none"  # none | linear | sqrt — never silent: lr is rescaled only if asked
    lr_base_batch: int = 256  # the batch size at which optim.lr is given (for linear/sqrt)
    schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    warmup_steps: int = 0
    warmup_epochs: float = 0.0  # used when warmup_steps == 0
    min_lr: float = 0.0
    grad_clip: Optional[float] = 1.0  # global-norm clipping (paper Table 3)
    ema: bool = False
    ema_decay: float = 0.9998


@dataclass
class DDPConfig:
    gradient_as_bucket_view: bool = True
    bucket_cap_mb: int = 25
    static_graph: bool = True  # every parameter is used every step in this model
    find_unused_parameters: bool = False


@dataclass
class TrainerConfig:
    max_epochs: int = 10
    max_steps: int = -1
    accelerator: str = "auto"
    devices: Any = 1  # int, "auto" or a list of device ids
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"  # "bf16-mixed", "16-mixed", "32-true"
    # false, true (torch.compile's default mode) or a mode: "reduce-overhead" replays the step's kernels
    # as CUDA graphs, which is what a small ViT on a GPU needs (its step is bound by kernel launches)
    compile: Any = False
    sync_batchnorm: bool = True  # SyncBatchNorm for the conv stem under DDP
    deterministic: bool = False
    limit_train_batches: Optional[float] = None
    limit_val_batches: Optional[float] = None
    check_val_every_n_epoch: int = 1
    log_every_n_steps: int = 50
    progress_bar: bool = True
    ddp: DDPConfig = field(default_factory=DDPConfig)


@dataclass
class LoggingConfig:
    csv: bool = True
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "vit-ablate"
    wandb_entity: Optional[str] = None
    wandb_group: Optional[str] = None


@dataclass
class EvaluateConfig:
    test: bool = True  # evaluate the final model on the test split
    fewshot: bool = False  # paper §4.1 few-shot linear accuracy on frozen features after training
    fewshot_shots: List[int] = field(default_factory=lambda: [1, 5, 10, 25])
    fewshot_draws: int = 3


@dataclass
class RunConfig:
    name: Optional[str] = None  # run directory name under output_dir; default: a digest of the config
    output_dir: str = "runs"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


# Closed sets of names for keys that no component registry owns. Registries own the rest
# (model.*: vit_ablate.model; data.name: vit_ablate.data), so the valid names live in one place.
_CHOICES: Dict[str, Sequence[str]] = {
    "optim.lr_scale_rule": ("none", "linear", "sqrt"),
    "optim.schedule": ("cosine", "linear", "constant"),
    "trainer.precision": ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true"),
    "trainer.accelerator": ("auto", "cpu", "gpu", "cuda", "mps", "tpu"),
}


# torch.compile's modes, for trainer.compile
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(value: Any) -> Optional[str]:
    """trainer.compile → the ``mode`` for ``torch.compile``: None when off, "default" for true."""
    if value is False or value is None:
        return None
    return "default" if value is True else str(value)


# ---------------------------------------------------------------------------------------------
# Parsing and merging
# ---------------------------------------------------------------------------------------------
def _nearest(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _keys_of(node: Any, prefix: str = "") -> List[str]:
    """All dotted keys of the schema, for suggestions."""
    out = []
    for f in dataclasses.fields(node):
        key = f"{prefix}{f.name}"
        out.append(key)
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            out.extend(_keys_of(value, key + "."))
    return out


_ALL_KEYS = _keys_of(RunConfig())


def _unknown_key_error(full_key: str, where: str) -> ConfigError:
    parent, _, leaf = full_key.rpartition(".")
    siblings = [k.rpartition(".")[2] for k in _ALL_KEYS if k.rpartition(".")[0] == parent]
    hint = _nearest(leaf, siblings)
    if hint:
        hint = f"; did you mean {(parent + '.' if parent else '') + hint[16:-2]!r}?"
    else:
        hint = _nearest(full_key, _ALL_KEYS)
    return ConfigError(f"unknown config key {full_key!r} ({where}){hint}")


def _wandb_literal(value: str) -> str:
    # The W&B agent formats values with Python's str(): None, True, False. YAML spells them differently.
    return {"None": "null", "True": "true", "False": "false"}.get(value.strip(), value)


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    """``["model.pos_embed=2d", "optim.lr=3e-4"]`` → a DictConfig, values parsed as YAML."""
    dotlist = []
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. model.pos_embed=2d)")
        if key.startswith("+") or key.startswith("~"):
            raise ConfigError(f"override {item!r}: only plain key=value overrides are supported")
        dotlist.append(f"{key}={_wandb_literal(value)}")
    parsed = OmegaConf.create({})
    for item in dotlist:
        try:
            parsed.merge_with_dotlist([item])
        except (OmegaConfBaseException, yaml.YAMLError) as exc:  # a malformed value, e.g. "[1, 2"
            first_line = str(exc).strip().splitlines()[0]
            raise ConfigError(f"cannot parse override {item!r}: {first_line}") from None
    return parsed


def _read_yaml(path: str | Path) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if loaded is None or isinstance(loaded, ListConfig):
        if loaded is None:
            return OmegaConf.create({})
        raise ConfigError(f"config file {str(path)!r} must hold a mapping, not a list")
    return loaded


def _merge(base: DictConfig, layer: DictConfig | Mapping, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)
    except (ConfigKeyError, ConfigAttributeError) as exc:
        key = getattr(exc, "full_key", None) or str(exc)
        raise _unknown_key_error(str(key), where) from None
    except ValidationError as exc:
        key = getattr(exc, "full_key", "?")
        raise ConfigError(f"config key {key!r} ({where}): {exc.msg if hasattr(exc, 'msg') else exc}") from None


def load_config(
    files: Sequence[str | Path] = (), overrides: Sequence[str] = (), validate: bool = True
) -> DictConfig:
    """Merge defaults ← each YAML file in order ← dotted overrides, then validate.

    Raises ``ConfigError`` (never a bare OmegaConf error) naming the bad key and the nearest valid one.
    """
    cfg = OmegaConf.structured(RunConfig)
    for path in files:
        cfg = _merge(cfg, _read_yaml(path), f"in {path}")
    if overrides:
        cfg = _merge(cfg, parse_overrides(overrides), "on the command line")
    if validate:
        validate_config(cfg)
    return cfg


def from_container(data: Mapping[str, Any], validate: bool = True) -> DictConfig:
    """A resolved config (e.g. a checkpoint's hyperparameters) back into the schema."""
    cfg = _merge(OmegaConf.structured(RunConfig), OmegaConf.create(dict(data)), "in the saved config")
    if validate:
        validate_config(cfg)
    return cfg


def validate_config(cfg: DictConfig) -> None:
    """Every check that can fail before a run starts. Raises ConfigError."""
    for key, choices in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if str(value) not in choices:
            raise ConfigError(
                f"{key}={value!r} is not valid; choose one of {', '.join(choices)}{_nearest(str(value), choices)}"
            )

    # Model: the model package validates its own names and combinations (one place, also used by
    # build_model at build time); here its ValueError becomes a ConfigError before anything runs.
    from vit_ablate.model import resolve_spec

    try:
        resolve_spec(cfg.model)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    from vit_ablate.data import DATASETS

    try:
        DATASETS.get(cfg.data.name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    import timm.optim

    optimizers = timm.optim.list_optimizers()
    if cfg.optim.name.lower() not in optimizers:
        raise ConfigError(
            f"optim.name={cfg.optim.name!r} is not a timm optimizer{_nearest(cfg.optim.name, optimizers)}"
        )

    # timm's "sgd" (and sgdw, nesterov, ...) is Nesterov SGD, which torch refuses without momentum, only when
    # the optimizer is built, after data loading; say so now.
    if (timm.optim.get_optimizer_info(cfg.optim.name.lower()).defaults or {}).get("nesterov") and cfg.optim.momentum <= 0:
        raise ConfigError(
            f"optim.name={cfg.optim.name!r} is Nesterov SGD in timm and needs optim.momentum > 0 "
            f"(got {cfg.optim.momentum!r}); for plain SGD use optim.name=momentum with optim.momentum=0"
        )

    if not isinstance(cfg.trainer.compile, bool) and cfg.trainer.compile not in COMPILE_MODES:
        raise ConfigError(
            f"trainer.compile={cfg.trainer.compile!r} is not valid; choose true, false or one of "
            f"{', '.join(COMPILE_MODES)}{_nearest(str(cfg.trainer.compile), COMPILE_MODES)}"
        )

    positive = {
        "data.batch_size": cfg.data.batch_size,
        "trainer.num_nodes": cfg.trainer.num_nodes,
        "optim.lr_base_batch": cfg.optim.lr_base_batch,
    }
    for key, value in positive.items():
        if value is None or value <= 0:
            raise ConfigError(f"{key}={value!r} must be a positive integer")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr={cfg.optim.lr!r} must be positive")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas={list(cfg.optim.betas)!r} must hold two numbers")
    for key in ("model.dropout", "model.attn_dropout", "model.drop_path", "augment.label_smoothing"):
        value = OmegaConf.select(cfg, key)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{key}={value!r} must lie in [0, 1)")
    if cfg.trainer.max_epochs <= 0 and cfg.trainer.max_steps <= 0:
        raise ConfigError("trainer.max_epochs or trainer.max_steps must be positive")


# ---------------------------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------------------------
def to_container(cfg: DictConfig) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


# Keys that say how and where a run executes, not what it computes: the device count is a speed knob,
# so a run started on 8 GPUs may resume on 1 and is the same experiment.
EXECUTION_KEYS = (
    "name",
    "output_dir",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.accelerator",
    "trainer.ddp",
    "trainer.progress_bar",
    "trainer.log_every_n_steps",
    "trainer.sync_batchnorm",
    "data.num_workers",
    "data.micro_batch_size",
    "data.on_device",
    "data.in_memory",
    "logging",
)


def config_digest(cfg: DictConfig | Mapping[str, Any]) -> str:
    """A short stable hash of the whole resolved config (every DDP rank records and compares it)."""
    data = to_container(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def experiment_digest(cfg: DictConfig | Mapping[str, Any]) -> str:
    """A hash of what the run computes, without ``EXECUTION_KEYS``: the identity of a run directory."""
    data = to_container(cfg) if isinstance(cfg, DictConfig) else json.loads(json.dumps(dict(cfg), default=str))
    for key in EXECUTION_KEYS:
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return config_digest(data)
