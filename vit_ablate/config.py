"""The configuration schema, its merge order and its validation: the one source of every default.

A run's configuration is ``defaults ← a.yaml ← b.yaml ← key=value overrides``. The schema is a tree
of dataclasses (OmegaConf structured configs), so a misspelt key, a value of the wrong type or a
name that no registry knows fails here, before any data is read or any process is launched, with an
error that names the key and suggests the nearest valid spelling.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from vit_ablate.model.schema import ModelConfig
from vit_ablate.schema import FRACTION, NON_NEGATIVE, POSITIVE, SEED, ConfigError, Range, section, setting

__all__ = [
    "ConfigError",
    "RunConfig",
    "ModelConfig",
    "load_config",
    "parse_overrides",
    "to_yaml",
    "config_digest",
]


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------
@dataclass
class InitConfig:
    """Start a run from trained weights (paper §3.2: pre-train, then fine-tune, often at a new resolution)."""

    path: Optional[str] = setting(None, "a vit-ablate .ckpt, a timm state dict (.pth/.bin/.safetensors) or a Hugging Face ViT folder; null = random init")
    format: str = setting("auto", "the file's kind; auto decides from the file", valid=("auto", "vit_ablate", "timm", "hf"))
    exclude: List[str] = setting(help="parameter-name prefixes left at their fresh init, e.g. [head]", factory=list)


@dataclass
class SyntheticConfig:
    """The embedded procedural dataset (data/synthetic.py documents its accuracy ceiling)."""

    num_train: int = setting(8192, "training images", valid=POSITIVE)
    num_val: int = setting(2048, "validation images", valid=POSITIVE)
    num_test: int = setting(2048, "test images", valid=POSITIVE)
    cell: int = setting(8, "glyph cell in pixels; a patch-stem model whose patch divides it sees one glyph per cell", valid=Range(2))
    grid: int = setting(4, "cells per side (a 'below' pair must fit in half the rows); the image is cell*grid pixels square",
                    valid=Range(4, multiple_of=2))
    seed: int = setting(0, "the dataset's own seed, independent of the run's seed", valid=SEED)


@dataclass
class DataConfig:
    name: str = setting("synthetic", "dataset (data/__init__.py)", valid="synthetic | cifar10 | cifar100 | imagefolder")
    root: Optional[str] = setting(None, "dataset folder (cifar: where the archive is or goes; imagefolder: holds train/ and val/)")
    download: bool = setting(False, "download cifar10/cifar100 into root")
    batch_size: int = setting(128, "the GLOBAL batch: per-device batch = batch_size / (devices * nodes * accumulation)", valid=POSITIVE)
    micro_batch_size: Optional[int] = setting(None, "per-device cap; larger batches use gradient accumulation; must divide the per-device batch", valid=POSITIVE)
    eval_batch_size: Optional[int] = setting(None, "global evaluation batch; null = batch_size", valid=POSITIVE)
    num_workers: int = setting(2, "loader worker processes (files on disk)", valid=NON_NEGATIVE)
    in_memory: Optional[bool] = setting(None, "decode once into a uint8 tensor; null = auto (small datasets)")
    on_device: bool = setting(True, "keep in-memory data on the training device and augment there in batches")
    img_size: Optional[int] = setting(None, "resize to this; null = the dataset's native size", valid=POSITIVE)
    train_subset: Optional[int] = setting(None, "use the first N training images (class-balanced)", valid=POSITIVE)
    val_split: int = setting(0, "hold out N training images for validation; 0 = validate on the test split", valid=NON_NEGATIVE)
    synthetic: SyntheticConfig = section(SyntheticConfig, "the embedded synthetic data (data.name=synthetic)")


@dataclass
class AugmentConfig:
    random_crop_padding: int = setting(0, "CIFAR-style pad-and-crop, pixels", valid=NON_NEGATIVE)
    hflip: bool = setting(False, "random horizontal flip")
    random_resized_crop: bool = setting(False, "Inception crop (ImageNet recipes)")
    randaugment: Optional[str] = setting(None, "timm RandAugment spec; null = off", valid="rand[-m<int>][-n<int>][-p<float>][-mstd<float>][-mmax<int>][-inc<0|1>][-t<name>], e.g. rand-m10-n2")
    mixup: float = setting(0.0, "timm Mixup alpha; 0 = off", valid=NON_NEGATIVE)
    cutmix: float = setting(0.0, "timm CutMix alpha; 0 = off", valid=NON_NEGATIVE)
    label_smoothing: float = setting(0.0, "label smoothing", valid=FRACTION)


@dataclass
class OptimConfig:
    name: str = setting("adamw", "any timm optimizer name (timm.optim.list_optimizers())", valid="adamw, adam, momentum, sgd, lamb, ...")
    lr: float = setting(1e-3, "peak learning rate (at optim.lr_base_batch when lr_scale_rule is not none)", valid=POSITIVE)
    weight_decay: float = setting(0.05, "decoupled weight decay; never applied to model.no_weight_decay() parameters", valid=NON_NEGATIVE)
    betas: List[float] = setting(help="Adam betas, two numbers", valid=FRACTION, factory=lambda: [0.9, 0.999])
    momentum: float = setting(0.9, "momentum of SGD-style optimizers", valid=FRACTION)
    eps: float = setting(1e-8, "optimizer epsilon", valid=POSITIVE)
    lr_scale_rule: str = setting("none", "never silent: lr is rescaled with the global batch only if asked", valid=("none", "linear", "sqrt"))
    lr_base_batch: int = setting(256, "the batch size at which optim.lr is given (for linear/sqrt)", valid=POSITIVE)
    schedule: str = setting("cosine", "learning-rate decay after warmup", valid=("cosine", "linear", "constant"))
    warmup_steps: int = setting(0, "linear warmup steps", valid=NON_NEGATIVE)
    warmup_epochs: float = setting(0.0, "linear warmup in epochs, used when warmup_steps == 0", valid=NON_NEGATIVE)
    min_lr: float = setting(0.0, "learning rate at the end of the schedule", valid=NON_NEGATIVE)
    grad_clip: Optional[float] = setting(1.0, "global-norm gradient clipping (paper Table 3); null or 0 = off", valid=NON_NEGATIVE)
    ema: bool = setting(False, "evaluate an exponential moving average of the weights")
    ema_decay: float = setting(0.9998, "EMA decay per step", valid=FRACTION)


@dataclass
class DDPConfig:
    gradient_as_bucket_view: bool = setting(True, "DDP gradient_as_bucket_view")
    bucket_cap_mb: int = setting(25, "DDP gradient bucket size in MB", valid=POSITIVE)
    static_graph: bool = setting(True, "every parameter is used every step in this model")
    find_unused_parameters: bool = setting(False, "DDP find_unused_parameters")


@dataclass
class TrainerConfig:
    max_epochs: int = setting(10, "epochs; -1 = unlimited (then max_steps must be set)", valid=Range(-1))
    max_steps: int = setting(-1, "optimizer steps; -1 = unlimited", valid=Range(-1))
    accelerator: str = setting("auto", "Lightning accelerator; gpu/cuda/mps need that device", valid=("auto", "cpu", "gpu", "cuda", "mps", "tpu"))
    devices: Any = setting(1, "processes per node: a count, -1 (all), auto, or a list of device ids", valid="1, 2, ... | -1 | auto | [0, 1, ...]")
    num_nodes: int = setting(1, "machines", valid=POSITIVE)
    strategy: str = setting("auto", "Lightning strategy; auto = ddp when distributed", valid="auto | ddp | ddp_spawn | fsdp | ... (Lightning's StrategyRegistry)")
    precision: str = setting("32-true", "numeric precision", valid=("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true"))
    # false, true (torch.compile's default mode) or a mode: "reduce-overhead" replays the step's kernels
    # as CUDA graphs, which is what a small ViT on a GPU needs (its step is bound by kernel launches)
    compile: Any = setting(False, "torch.compile the training forward: true = default mode; reduce-overhead = CUDA graphs",
                       valid="false | true | default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs")
    # the whole step — forward, loss, backward, clipping, optimizer update — captured once and replayed
    # as one CUDA graph (training/whole_step.py); on a CPU the same step runs eagerly
    cuda_graph: bool = setting(False, "replay the whole training step as one CUDA graph (one GPU; adam/adamw)")
    sync_batchnorm: bool = setting(True, "SyncBatchNorm for the conv stem under DDP")
    deterministic: bool = setting(False, "deterministic kernels (slower)")
    # Lightning reads a value in [0, 1] as a fraction of the batches and a whole number above 1 as a count
    # Any, not float: Lightning reads an int as a count of batches and a float as a fraction, so 1 and
    # 1.0 mean one batch and all of them; a float schema would turn the first into the second
    limit_train_batches: Any = setting(None, "training batches per epoch: a fraction in [0.0, 1.0] or a whole count (1 = one batch); null = all", valid=NON_NEGATIVE)
    limit_val_batches: Any = setting(None, "validation batches: a fraction in [0.0, 1.0] or a whole count (1 = one batch); null = all", valid=NON_NEGATIVE)
    check_val_every_n_epoch: int = setting(1, "validate every N epochs", valid=POSITIVE)
    log_every_n_steps: int = setting(50, "logger interval in steps", valid=POSITIVE)
    progress_bar: bool = setting(True, "show Lightning's progress bar")
    ddp: DDPConfig = section(DDPConfig, "DistributedDataParallel knobs")


@dataclass
class LoggingConfig:
    csv: bool = setting(True, "Lightning's CSV logger (logs/metrics.csv)")
    tensorboard: bool = setting(False, "TensorBoard logger")
    wandb: bool = setting(False, "Weights & Biases logger")
    wandb_project: str = setting("vit-ablate", "W&B project")
    wandb_entity: Optional[str] = setting(None, "W&B entity; null = your default")
    wandb_group: Optional[str] = setting(None, "W&B group")


@dataclass
class EvaluateConfig:
    test: bool = setting(True, "evaluate the final model on the test split")
    fewshot: bool = setting(False, "paper §4.1 few-shot linear accuracy on frozen features after training")
    fewshot_shots: List[int] = setting(help="examples per class", valid=POSITIVE, factory=lambda: [1, 5, 10, 25])
    fewshot_draws: int = setting(3, "random draws per shot count", valid=POSITIVE)


@dataclass
class RunConfig:
    name: Optional[str] = setting(None, "run directory name under output_dir; null = <data.name>-<digest of the config>")
    output_dir: str = setting("runs", "where run directories are written")
    seed: int = setting(0, "seed of the run (weights, order, augmentation)", valid=SEED)
    model: ModelConfig = section(ModelConfig, "the network")
    init: InitConfig = section(InitConfig, "start from trained weights")
    data: DataConfig = section(DataConfig, "the dataset and batches")
    augment: AugmentConfig = section(AugmentConfig, "training augmentation")
    optim: OptimConfig = section(OptimConfig, "optimizer and learning-rate schedule")
    trainer: TrainerConfig = section(TrainerConfig, "Lightning Trainer")
    logging: LoggingConfig = section(LoggingConfig, "loggers")
    evaluate: EvaluateConfig = section(EvaluateConfig, "evaluation after training")


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


def _schema(cls: type = RunConfig, prefix: str = "") -> Iterator[Tuple[str, dataclasses.Field]]:
    """Every dotted key of the schema with its dataclass field, sections before their keys."""
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        yield key, f
        if dataclasses.is_dataclass(f.default_factory):
            yield from _schema(f.default_factory, key + ".")


SCHEMA: Dict[str, dataclasses.Field] = dict(_schema())
_ALL_KEYS = list(SCHEMA)


def is_section(key: str) -> bool:
    return dataclasses.is_dataclass(SCHEMA[key].default_factory)


_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
_PLURALS = {"int": "integers", "float": "numbers", "bool": "booleans", "str": "strings"}


def expected_type(key: str) -> str:
    """The schema type of ``key`` in words: ``Optional[int]`` → "an integer or null"."""
    annotation = str(SCHEMA[key].type)
    optional = annotation.startswith("Optional[")
    inner = annotation[len("Optional["):-1] if optional else annotation
    if inner.startswith("List["):
        words = f"a list of {_PLURALS.get(inner[5:-1], inner[5:-1])}"
    elif is_section(key):
        words = f"a section of keys (e.g. {next(k for k in _ALL_KEYS if k.startswith(key + '.'))}=...)"
    else:
        words = _TYPE_WORDS.get(inner, "a value")
    return words + (" or null" if optional else "")


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


def split_items(items: Sequence[str]) -> Tuple[List[str], List[str]]:
    """A command line's positional items → (YAML files, ``key=value`` overrides): an item with ``=`` is
    an override, every other item must be a ``.yaml``/``.yml`` file. The one rule for ``train``,
    ``config show``, ``bench`` and the sweep engine's reading of a sweep's ``command``."""
    files = [str(i) for i in items if "=" not in str(i)]
    overrides = [str(i) for i in items if "=" in str(i)]
    for item in files:
        if not item.endswith((".yaml", ".yml")):
            raise ConfigError(
                f"argument {item!r} is not of the form key=value (e.g. model.pos_embed=2d) nor a .yaml file"
            )
    return files, overrides


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
    """The file as a config layer (never modified by the caller: merges copy from it). A sweep's
    validation loads the same experiment file once per combination: parsed once per version."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    stat = path.stat()
    return _parse_yaml(str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(path))


@functools.lru_cache(maxsize=64)
def _parse_yaml(resolved: str, mtime_ns: int, size: int, path: str) -> DictConfig:
    try:
        loaded = OmegaConf.load(resolved)
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if loaded is None or isinstance(loaded, ListConfig):
        if loaded is None:
            return OmegaConf.create({})
        raise ConfigError(f"config file {str(path)!r} must hold a mapping, not a list")
    return loaded


def _check_layer(node: Any, where: str, prefix: str = "") -> None:
    """Every key of a file or of the command line exists, and sections get mappings, values get values."""
    for name, value in node.items():
        key = f"{prefix}{name}"
        if key not in SCHEMA:
            raise _unknown_key_error(key, where)
        if is_section(key):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}={value!r} ({where}): {key} must be {expected_type(key)}, not a value")
            _check_layer(value, where, key + ".")
        elif isinstance(value, dict) and str(SCHEMA[key].type) != "Any":
            raise ConfigError(f"{key} ({where}) must be {expected_type(key)}, not a section ({value!r})")


def _merge(cfg: DictConfig, layer: DictConfig, where: str) -> DictConfig:
    """``layer`` merged into ``cfg`` in place (``cfg`` is the caller's own copy) and returned."""
    _check_layer(OmegaConf.to_container(layer, resolve=False), where)
    try:
        cfg.merge_with(layer)
        return cfg
    except (ConfigKeyError, ConfigAttributeError) as exc:
        key = getattr(exc, "full_key", None) or str(exc)
        raise _unknown_key_error(str(key), where) from None
    except ValidationError as exc:  # a value of the wrong type: "abc" for an integer
        key = re.sub(r"\[\d+\]$", "", str(getattr(exc, "full_key", None) or ""))
        if key not in SCHEMA:
            raise ConfigError(f"a value of the wrong type ({where}): {str(exc).splitlines()[0]}") from None
        value = OmegaConf.select(layer, key, default=None)
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=False)
        raise ConfigError(f"{key}={value!r} ({where}) must be {expected_type(key)}") from None


# Model keys that the data determines: unless a file or the command line sets them, they are taken
# from the dataset, so `vit-ablate train` alone trains on the synthetic data. The schema keeps the
# paper's ImageNet values (1000 classes, 224 px) for data whose files alone say (imagefolder). The
# default model stays ViT-Ti/16 rather than the quickstart's: a changed default would change the
# digest, hence the run directory, of every run that relies on it, and on the 32-pixel synthetic
# images Ti/16 has 2×2 patches + the class token, 5 tokens, which a CPU trains in minutes.
DATA_DERIVED_KEYS = ("model.num_classes", "model.img_size")


@functools.lru_cache(maxsize=1)
def _defaults() -> DictConfig:
    """The schema's defaults, built once (``OmegaConf.structured`` is most of a ``load_config``'s cost);
    never modified: every config starts as a copy of it."""
    return OmegaConf.structured(RunConfig)


def load_config(
    files: Sequence[str | Path] = (), overrides: Sequence[str] = (), validate: bool = True, machine: bool = False
) -> DictConfig:
    """Merge defaults ← each YAML file in order ← dotted overrides, take the model keys the data
    determines from the data where nothing set them, then validate.

    Raises ``ConfigError`` (never a bare OmegaConf error) naming the bad key and the nearest valid one.
    """
    layers = [(_read_yaml(path), f"in {path}") for path in files]
    if overrides:
        layers.append((parse_overrides(overrides), "on the command line"))
    cfg = copy.deepcopy(_defaults())  # one copy, then every layer merged into it in place
    for layer, where in layers:
        cfg = _merge(cfg, layer, where)
    given = {key for layer, _ in layers for key in DATA_DERIVED_KEYS if OmegaConf.select(layer, key) is not None}
    _derive_from_data(cfg, given)
    if validate:
        validate_config(cfg)
    if machine:
        check_machine(cfg)
    return cfg


def from_container(data: Mapping[str, Any], validate: bool = True) -> DictConfig:
    """A resolved config (e.g. a checkpoint's hyperparameters) back into the schema."""
    cfg = _merge(copy.deepcopy(_defaults()), OmegaConf.create(dict(data)), "in the saved config")
    if validate:
        validate_config(cfg)
    return cfg


# ---------------------------------------------------------------------------------------------
# What the data fixes before any file is read
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataFacts:
    """What ``data.*`` fixes without reading a file; None where only the files say."""

    num_classes: Optional[int]
    img_size: Optional[int]  # the side of the images the model sees
    num_train: Optional[int]  # training images before val_split and train_subset
    in_chans: int = 3
    num_train_key: Optional[str] = None  # the key that sets num_train, if any


# (classes, native side, training images) of the built-in datasets with fixed sizes; the data modules
# carry the same numbers (tests/test_config.py checks that they agree).
SYNTHETIC_NUM_CLASSES = 8  # data/synthetic.py: 2 glyph pairs × right-of/below × top/bottom half
FIXED_DATASETS = {"cifar10": (10, 32, 50_000), "cifar100": (100, 32, 50_000)}


def data_facts(cfg: DictConfig) -> Optional[DataFacts]:
    """The facts of ``cfg.data`` where the config alone gives them; None for a dataset it does not know."""
    data = cfg.data
    if data.name == "synthetic":
        side = data.synthetic.cell * data.synthetic.grid  # synthetic images are never resized
        return DataFacts(SYNTHETIC_NUM_CLASSES, side, data.synthetic.num_train, num_train_key="data.synthetic.num_train")
    if data.name in FIXED_DATASETS:
        classes, side, num_train = FIXED_DATASETS[data.name]
        return DataFacts(classes, data.img_size or side, num_train)
    if data.name == "imagefolder":
        return DataFacts(None, data.img_size, None)
    return None


def _derive_from_data(cfg: DictConfig, given: set) -> None:
    facts = data_facts(cfg)
    if facts is None:
        return
    for key, value in (("model.num_classes", facts.num_classes), ("model.img_size", facts.img_size)):
        if key not in given and value is not None and isinstance(value, int) and value > 0:
            OmegaConf.update(cfg, key, value)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
def _format(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format(v) for v in value) + "]"
    return str(value)


def _check_key(key: str, value: Any) -> None:
    """The field's own valid values: a ``Range`` (each element for a list) or a tuple of names."""
    valid = SCHEMA[key].metadata.get("valid")
    if value is None:
        return
    if isinstance(valid, tuple) and value not in valid and str(value) not in map(str, valid):
        names = [str(v) for v in valid]
        raise ConfigError(
            f"{key}={value!r} is not valid; choose one of {', '.join(names)}{_nearest(str(value), names)}"
        )
    if isinstance(valid, Range):
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item not in valid:
                f = SCHEMA[key]
                default = f.default if f.default is not dataclasses.MISSING else None
                nearest = valid.nearest(item, default)
                hint = f"; e.g. {key}={_format(nearest)}" if nearest is not None and nearest in valid else ""
                what = "each element" if isinstance(value, (list, tuple)) else "it"
                raise ConfigError(f"{key}={_format(value)} is out of range: {what} must be {valid.describe()}{hint}")


# timm's RandAugment spec (timm.data.auto_augment.rand_augment_transform): "rand" then dash-separated
# sections; an unknown section is an assertion inside timm, after the run directory exists.
_RANDAUGMENT = re.compile(r"^rand(-(m\d+|n\d+|p\d*\.?\d+|mstd\d*\.?\d+|mmax\d+|inc[01]|t\w+))*$")


def devices_per_node(cfg: DictConfig) -> Optional[int]:
    """The process count per node that ``trainer.devices`` asks for; None where Lightning decides
    from the machine (``-1``, ``auto`` on an accelerator). Raises ConfigError for an invalid value."""
    devices, accelerator = cfg.trainer.devices, cfg.trainer.accelerator
    if isinstance(devices, ListConfig):
        devices = list(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto":
            return 1 if accelerator == "cpu" else None
        if re.fullmatch(r"-?\d+", text):
            devices = int(text)
        elif re.fullmatch(r"\d+(\s*,\s*\d+)*\s*,?", text):
            devices = [int(part) for part in text.split(",") if part.strip()]
    if isinstance(devices, int) and not isinstance(devices, bool):
        if devices >= 1:
            return devices
        if devices == -1:
            return None
    if isinstance(devices, list) and devices and len(set(devices)) == len(devices) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices
    ):
        return len(devices)
    raise ConfigError(
        f"trainer.devices={devices!r} is not valid; use a count of at least 1 (e.g. trainer.devices=1), "
        "-1 for every device, auto, or a list of distinct device ids such as [0, 1]"
    )


def _near_multiples(value: int, step: int) -> str:
    below, above = (value // step) * step, (value // step + 1) * step
    return f"{below} or {above}" if below > 0 else str(above)


def _near_divisors(value: int, target: int) -> str:
    divisors = [d for d in range(1, value + 1) if value % d == 0]
    below = max((d for d in divisors if d < target), default=None)
    above = min((d for d in divisors if d > target), default=None)
    return " or ".join(str(d) for d in (below, above) if d is not None)


def check_batches(cfg: DictConfig, world_size: int) -> None:
    """The global batch splits evenly over ``world_size`` processes and into micro-batches."""
    batch = cfg.data.batch_size
    if batch % world_size:
        raise ConfigError(
            f"data.batch_size={batch} (the global batch) is not divisible by the {world_size} devices "
            f"(trainer.devices × trainer.num_nodes); use a multiple of {world_size}, e.g. "
            f"data.batch_size={_near_multiples(batch, world_size)}"
        )
    per_device = batch // world_size
    micro = min(cfg.data.micro_batch_size or per_device, per_device)
    if per_device % micro:
        raise ConfigError(
            f"the per-device batch {per_device} (data.batch_size={batch} / {world_size} devices) is not "
            f"divisible by data.micro_batch_size={micro}; use a divisor of {per_device}, e.g. "
            f"data.micro_batch_size={_near_divisors(per_device, micro)}"
        )


def _check_data(cfg: DictConfig) -> None:
    """The model matches what the data fixes, and the splits fit in the training images."""
    data = cfg.data
    if data.name == "synthetic" and data.img_size is not None and data.img_size != data_facts(cfg).img_size:
        raise ConfigError(
            f"data.img_size={data.img_size} does not apply to data.name=synthetic, whose images are "
            f"data.synthetic.cell * data.synthetic.grid = {data_facts(cfg).img_size} pixels; leave data.img_size unset"
        )
    facts = data_facts(cfg)
    if facts is None:
        return
    for key, data_value in (("num_classes", facts.num_classes), ("img_size", facts.img_size), ("in_chans", facts.in_chans)):
        if data_value is not None and cfg.model[key] != data_value:
            raise ConfigError(
                f"model.{key}={cfg.model[key]} but data '{data.name}' gives {data_value}; "
                f"set model.{key}={data_value} (or leave it unset to take the data's)"
            )
    if facts.num_train is None:
        return
    source = f" ({facts.num_train_key}={facts.num_train})" if facts.num_train_key else ""
    if data.val_split >= facts.num_train:
        raise ConfigError(
            f"data.val_split={data.val_split} holds out every training image: data '{data.name}' has "
            f"{facts.num_train}{source}; use fewer, e.g. data.val_split={facts.num_train // 5}"
        )
    available = facts.num_train - data.val_split
    if data.train_subset is not None and data.train_subset > available:
        held = f" after data.val_split={data.val_split}" if data.val_split else ""
        raise ConfigError(
            f"data.train_subset={data.train_subset} exceeds the {available} training images of data "
            f"'{data.name}'{source}{held}; use at most data.train_subset={available}"
        )


def _check_patch(cfg: DictConfig) -> None:
    """The patch tiles the image, in plain words (paper §3.1: the image is split into P×P patches)."""
    from vit_ablate.model.presets import parse_variant

    model = cfg.model
    try:
        patch = model.patch_size or parse_variant(model.variant)["patch_size"]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if model.stem == "patch" and model.img_size % patch:
        source = f"model.patch_size={patch}" if model.patch_size else f"model.variant={model.variant!r}"
        divisors = [p for p in range(2, model.img_size + 1) if model.img_size % p == 0]
        fit = min(divisors, key=lambda p: (abs(p - patch), p))
        size = str(model.variant).partition("/")[0]
        instead = f"model.patch_size={fit}" if model.patch_size else f"model.variant={size}/{fit}"
        raise ConfigError(
            f"{source} cuts the image into {patch}×{patch}-pixel patches, but the image is "
            f"{model.img_size} pixels wide (model.img_size={model.img_size}) and {patch} does not divide "
            f"{model.img_size}; use {instead}, or an image size that is a multiple of {patch}"
        )


def validate_config(cfg: DictConfig, registries: bool = True) -> None:
    """Every check that can fail before a run starts. Raises ConfigError.

    The keys' own ranges and the cross-key checks read nothing but the config, so a bad value fails
    in a fraction of a second; ``registries`` then checks the names that the model, data, optimizer
    and strategy registries own, which imports torch and timm (and Lightning for a named strategy).
    """
    plain = OmegaConf.to_container(cfg, resolve=True)  # one conversion: a select per key costs ~10x more
    for key, _ in _schema():
        if not is_section(key):
            value: Any = plain
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            _check_key(key, value)

    if not isinstance(cfg.trainer.compile, bool) and cfg.trainer.compile not in COMPILE_MODES:
        raise ConfigError(
            f"trainer.compile={cfg.trainer.compile!r} is not valid; choose true, false or one of "
            f"{', '.join(COMPILE_MODES)}{_nearest(str(cfg.trainer.compile), COMPILE_MODES)}"
        )
    for key in ("trainer.limit_train_batches", "trainer.limit_val_batches"):
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} must be a fraction in [0.0, 1.0] of the batches or a whole number of them, e.g. {key}=0.25 or {key}=10")
        if isinstance(value, float) and value > 1:
            whole = f"; for {int(value)} batches write {key}={int(value)}" if value.is_integer() else f"; e.g. {key}={int(value)}"
            raise ConfigError(f"{key}={value} is neither a fraction in [0.0, 1.0] of the batches nor a whole number of them{whole}")
    if cfg.trainer.cuda_graph:
        _check_cuda_graph(cfg)
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas={_format(list(cfg.optim.betas))} must hold two numbers, e.g. [0.9, 0.999]")
    if cfg.trainer.max_epochs <= 0 and cfg.trainer.max_steps <= 0:
        raise ConfigError("trainer.max_epochs or trainer.max_steps must be positive")
    spec = cfg.augment.randaugment
    if spec is not None and not _RANDAUGMENT.match(str(spec)):
        raise ConfigError(
            f"augment.randaugment={spec!r} is not a timm RandAugment spec; write 'rand' then dash-separated "
            "sections m<magnitude>, n<ops>, p<prob>, mstd<std>, mmax<max>, inc<0|1>, t<set>, e.g. augment.randaugment=rand-m10-n2"
        )
    _check_data(cfg)
    devices = devices_per_node(cfg)
    if devices is not None:
        check_batches(cfg, devices * cfg.trainer.num_nodes)

    if registries:
        _check_registries(cfg)


def _check_cuda_graph(cfg: DictConfig) -> None:
    """What a captured whole step cannot do: CUDA graphs twice, a loss scaler's host-side checks, a
    gradient all-reduce between processes, or an optimizer that needs the host for its update."""
    if compile_mode(cfg.trainer.compile) in ("reduce-overhead", "max-autotune"):
        raise ConfigError(
            f"trainer.cuda_graph=true already replays the step as a CUDA graph; trainer.compile={cfg.trainer.compile} "
            "would capture the forward again: use trainer.compile=default (or max-autotune-no-cudagraphs) with it"
        )
    if cfg.trainer.precision == "16-mixed":
        raise ConfigError("trainer.cuda_graph=true cannot replay 16-mixed's loss scaling (it inspects the gradients on the host); use bf16-mixed")
    micro = cfg.data.micro_batch_size
    if micro is not None and micro < cfg.data.batch_size:
        raise ConfigError(
            f"trainer.cuda_graph=true makes one update per batch; data.micro_batch_size={micro} < data.batch_size="
            f"{cfg.data.batch_size} asks for gradient accumulation: drop data.micro_batch_size"
        )
    devices = devices_per_node(cfg)
    if devices != 1 or cfg.trainer.num_nodes != 1:
        raise ConfigError(
            f"trainer.cuda_graph=true runs on one device; trainer.devices={cfg.trainer.devices} "
            f"trainer.num_nodes={cfg.trainer.num_nodes} ask for more (or let Lightning choose): set trainer.devices=1"
        )
    if cfg.trainer.strategy != "auto":
        raise ConfigError(f"trainer.cuda_graph=true steps the model itself on one device; trainer.strategy={cfg.trainer.strategy} "
                          "would wrap it: leave trainer.strategy=auto")
    if cfg.optim.name.lower() not in ("adam", "adamw"):
        raise ConfigError(f"trainer.cuda_graph=true needs an optimizer that updates on the device (adam or adamw), not optim.name={cfg.optim.name}")


def _check_registries(cfg: DictConfig) -> None:
    # Model: the model package validates its own names and combinations (one place, also used by
    # build_model at build time); here its ValueError becomes a ConfigError before anything runs.
    from vit_ablate.model import resolve_spec

    _check_patch(cfg)
    try:
        resolve_spec(cfg.model)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    if data_facts(cfg) is None:  # a dataset registered outside the built-in ones
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


    if cfg.trainer.strategy != "auto":
        from lightning.pytorch.strategies import StrategyRegistry

        strategies = ["auto", *StrategyRegistry.available_strategies()]
        if cfg.trainer.strategy not in strategies:
            raise ConfigError(
                f"trainer.strategy={cfg.trainer.strategy!r} is not a Lightning strategy"
                f"{_nearest(cfg.trainer.strategy, strategies)}"
            )


def check_machine(cfg: DictConfig) -> None:
    """What this machine must hold for the run to start here: the ``init.path`` file and the GPUs that
    ``trainer.accelerator``/``trainer.devices`` ask for. Not part of ``validate_config``: a saved config
    (a checkpoint's) stays valid on a machine other than the one it was trained on."""
    if cfg.init.path is not None and not Path(cfg.init.path).exists():
        raise ConfigError(f"init.path={cfg.init.path!r} does not exist; give a checkpoint file or folder, or init.path=null")
    if cfg.init.path is not None and Path(cfg.init.path).is_dir() and cfg.init.format in ("auto", "hf"):
        if not (Path(cfg.init.path) / "config.json").is_file():
            raise ConfigError(f"init.path={cfg.init.path!r} is a folder without config.json; a Hugging Face ViT folder holds config.json and its weights")
    accelerator = cfg.trainer.accelerator
    if accelerator not in ("gpu", "cuda", "mps"):
        return
    devices = devices_per_node(cfg)
    import torch

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = torch.backends.mps.is_available()
    if (accelerator == "mps" and not mps) or (accelerator == "cuda" and not cuda) or (accelerator == "gpu" and not (cuda or mps)):
        raise ConfigError(
            f"trainer.accelerator={accelerator!r} but this machine has no such GPU "
            f"(torch.cuda.is_available() is False); use trainer.accelerator=cpu or auto"
        )
    if cuda and accelerator != "mps" and devices is not None and devices > cuda:
        raise ConfigError(
            f"trainer.devices={_format(cfg.trainer.devices)} asks for {devices} GPUs but {cuda} are visible; "
            f"use trainer.devices={cuda} or fewer"
        )


# ---------------------------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------------------------
def describe(cfg: DictConfig) -> str:
    """Every key with its resolved value, its meaning and its valid values, one line each (``train --help``)."""
    rows = []
    for key, f in _schema():
        meaning = f.metadata.get("help", "")
        if is_section(key):
            rows.append((None, f"{key}: {meaning}"))
            continue
        valid = f.metadata.get("valid")
        if isinstance(valid, Range):
            valid = valid.describe().removeprefix("in ")
        elif isinstance(valid, tuple):
            valid = " | ".join(map(str, valid))
        elif valid is None and "bool" in str(f.type):
            valid = "true | false"
        value = OmegaConf.select(cfg, key)
        value = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
        rows.append((f"  {key}={_format(value)}", meaning + (f"; valid: {valid}" if valid else "")))
    width = max(len(setting) for setting, _ in rows if setting) + 2
    lines = [f"\n{text}" if setting is None else f"{setting:<{width}}{text}" for setting, text in rows]
    return "\n".join(lines).lstrip("\n") + "\n"


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
