"""The configuration schema, its merge order and its validation: the one source of every default.

A run's configuration is ``defaults ← a.yaml ← b.yaml ← key=value overrides``. The schema is a tree
of dataclasses (OmegaConf structured configs; the ``model`` and ``init`` sections are model/schema.py's),
so a misspelt key, a value of the wrong type or a name that no registry knows fails here, before any
data is read or any process is launched, naming the key and the nearest valid spelling.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from vit_ablate.model.schema import InitConfig, ModelConfig
from vit_ablate.schema import (FRACTION, NON_NEGATIVE, POSITIVE, SEED, ConfigError, Range, Registry, check_value,
                               did_you_mean, format_value, section, setting)

__all__ = ["ConfigError", "RunConfig", "ModelConfig", "load_config", "parse_overrides", "to_yaml", "config_digest"]

DATASETS: Registry = Registry("data.name", "vit_ablate.data")
DATA_ROOT_ENV = "VIT_ABLATE_DATA"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------
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
    name: str = setting("synthetic", "dataset (data/__init__.py)", valid=DATASETS)
    root: Optional[str] = setting(None, f"dataset folder (cifar: where the archive is or goes; imagefolder: holds train/ and val/); "
                                        f"a relative or unset root lies under ${DATA_ROOT_ENV}, by default .data")
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
    # reduce-overhead replays the forward's kernels as CUDA graphs: a small ViT's GPU step is bound by kernel launches
    compile: Any = setting(False, "torch.compile the training forward: true = default mode; reduce-overhead = CUDA graphs",
                           valid=(False, True, *COMPILE_MODES))
    # forward, loss, backward, clipping and update captured once (training/whole_step.py); eager on a CPU
    cuda_graph: bool = setting(False, "replay the whole training step as one CUDA graph (one GPU; adam/adamw)")
    sync_batchnorm: bool = setting(True, "SyncBatchNorm for the conv stem under DDP")
    deterministic: bool = setting(False, "deterministic kernels (slower)")
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
    csv: bool = setting(True, "Lightning's per-step CSV log (logs/version_N/metrics.csv); the run's per-epoch metrics.csv is always written")
    tensorboard: bool = setting(False, "TensorBoard logger")
    wandb: bool = setting(False, "Weights & Biases logger")
    wandb_project: str = setting("vit-ablate", "W&B project")
    wandb_entity: Optional[str] = setting(None, "W&B entity; null = your default")
    wandb_group: Optional[str] = setting(None, "W&B group")


@dataclass
class EvaluateConfig:
    test: bool = setting(True, "evaluate the final model on the test split (where it is the validation split, the final validation's numbers)")
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


def _schema(cls: type = RunConfig, prefix: str = "") -> Iterator[Tuple[str, dataclasses.Field]]:
    for f in dataclasses.fields(cls):
        yield prefix + f.name, f
        if dataclasses.is_dataclass(f.default_factory):
            yield from _schema(f.default_factory, f"{prefix}{f.name}.")


SCHEMA: Dict[str, dataclasses.Field] = dict(_schema())  # every dotted key, sections before their keys


def is_section(key: str) -> bool:
    return dataclasses.is_dataclass(SCHEMA[key].default_factory)


def compile_mode(value: Any) -> Optional[str]:
    """trainer.compile → the ``mode`` for ``torch.compile``: None when off, "default" for true."""
    return None if value is False or value is None else "default" if value is True else str(value)


def data_root(cfg: DictConfig) -> Path:
    """``data.root`` as a folder: an absolute root as given, a relative or unset one under
    ``$VIT_ABLATE_DATA`` (default ``.data``), so that no experiment file names one machine's folders."""
    root = Path(cfg.data.root or "").expanduser()
    return root if root.is_absolute() else Path(os.environ.get(DATA_ROOT_ENV) or ".data").expanduser() / root


# ---------------------------------------------------------------------------------------------
# Parsing and merging
# ---------------------------------------------------------------------------------------------
def expected_type(key: str) -> str:
    """The schema type of ``key`` in words: ``Optional[int]`` → "an integer or null"."""
    words = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
    annotation = str(SCHEMA[key].type)
    inner = annotation.removeprefix("Optional[").removesuffix("]") if annotation.startswith("Optional[") else annotation
    if inner.startswith("List["):
        text = f"a list of {dict(int='integers', float='numbers', str='strings').get(inner[5:-1], inner[5:-1])}"
    elif is_section(key):
        text = f"a section of keys (e.g. {next(k for k in SCHEMA if k.startswith(key + '.'))}=...)"
    else:
        text = words.get(inner, "a value")
    return text + (" or null" if annotation.startswith("Optional[") else "")


def _unknown_key_error(key: str, where: str) -> ConfigError:
    parent, _, leaf = key.rpartition(".")
    siblings = [k.rpartition(".")[2] for k in SCHEMA if k.rpartition(".")[0] == parent]
    hint = did_you_mean(leaf, siblings, parent + "." if parent else "") or did_you_mean(key, SCHEMA)
    return ConfigError(f"unknown config key {key!r} ({where}){hint}")


def split_items(items: Sequence[str]) -> Tuple[List[str], List[str]]:
    """A command line's positional items → (YAML files, ``key=value`` overrides): the one rule for
    ``train``, ``config show``, ``bench`` and the sweep engine's reading of a sweep's ``command``."""
    files = [str(i) for i in items if "=" not in str(i)]
    for item in files:
        if not item.endswith((".yaml", ".yml")):
            raise ConfigError(f"argument {item!r} is not of the form key=value (e.g. model.pos_embed=2d) nor a .yaml file")
    return files, [str(i) for i in items if "=" in str(i)]


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    """``["model.pos_embed=2d", "optim.lr=3e-4"]`` → a DictConfig, values parsed as YAML."""
    parsed = OmegaConf.create({})
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. model.pos_embed=2d)")
        if key.startswith(("+", "~")):
            raise ConfigError(f"override {item!r}: only plain key=value overrides are supported")
        # the W&B agent formats values with Python's str(): None, True, False
        value = {"None": "null", "True": "true", "False": "false"}.get(value.strip(), value)
        try:
            parsed.merge_with_dotlist([f"{key}={value}"])
        except (OmegaConfBaseException, yaml.YAMLError) as exc:  # a malformed value, e.g. "[1, 2"
            raise ConfigError(f"cannot parse override '{key}={value}': {str(exc).strip().splitlines()[0]}") from None
    return parsed


@functools.lru_cache(maxsize=64)
def _parse_yaml(resolved: str, mtime_ns: int, size: int, path: str) -> DictConfig:
    """A file as a config layer, parsed once per version (a sweep's validation reads it per combination);
    never modified by the caller: merges copy from it."""
    try:
        loaded = OmegaConf.load(resolved)
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"config file {path!r} is not valid YAML: {exc}") from None
    if isinstance(loaded, ListConfig):
        raise ConfigError(f"config file {path!r} must hold a mapping, not a list")
    return loaded if loaded is not None else OmegaConf.create({})


def _read_yaml(path: str | Path) -> DictConfig:
    if not Path(path).is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    stat = Path(path).stat()
    return _parse_yaml(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size, str(path))


def _check_layer(node: Mapping, where: str, prefix: str = "") -> None:
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
        raise _unknown_key_error(str(getattr(exc, "full_key", None) or exc), where) from None
    except ValidationError as exc:  # a value of the wrong type: "abc" for an integer
        key = re.sub(r"\[\d+\]$", "", str(getattr(exc, "full_key", None) or ""))
        if key not in SCHEMA:
            raise ConfigError(f"a value of the wrong type ({where}): {str(exc).splitlines()[0]}") from None
        value = OmegaConf.select(layer, key, default=None)
        value = OmegaConf.to_container(value, resolve=False) if OmegaConf.is_config(value) else value
        raise ConfigError(f"{key}={value!r} ({where}) must be {expected_type(key)}") from None


@functools.lru_cache(maxsize=1)
def _defaults() -> DictConfig:
    """The schema's defaults, built once (most of a ``load_config``'s cost); every config starts as a copy."""
    return OmegaConf.structured(RunConfig)


def load_config(files: Sequence[str | Path] = (), overrides: Sequence[str] = (), validate: bool = True,
                machine: bool = False) -> DictConfig:
    """Merge defaults ← each YAML file in order ← dotted overrides, take the model keys the data
    determines from the data where nothing set them, then validate (and, with ``machine``, check that
    this machine holds what the run needs). Raises ``ConfigError`` naming the bad key."""
    layers = [(_read_yaml(path), f"in {path}") for path in files]
    if overrides:
        layers.append((parse_overrides(overrides), "on the command line"))
    cfg = copy.deepcopy(_defaults())
    for layer, where in layers:
        cfg = _merge(cfg, layer, where)
    # Unless a file or the command line sets them, the model's classes and image size are the data's,
    # so `vit-ablate train` alone trains on the synthetic data and an imagefolder needs no model keys.
    facts = data_facts(cfg)
    for key, value in (("num_classes", facts and facts.num_classes), ("img_size", facts and facts.img_size)):
        if isinstance(value, int) and value > 0 and not any(OmegaConf.select(layer, f"model.{key}") is not None for layer, _ in layers):
            cfg.model[key] = value
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
    """What ``data.*`` fixes, or an imagefolder's class folders and first image say; None where unknown."""

    num_classes: Optional[int]
    img_size: Optional[int]  # the side of the images the model sees
    num_train: Optional[int]  # training images before val_split and train_subset
    num_train_key: Optional[str] = None  # the key that sets num_train, if any


# (classes, native side, training images) of the datasets of fixed size; the data modules read them here
# and hold the synthetic class count themselves (tests/test_cli.py checks it against this one)
SYNTHETIC_NUM_CLASSES = 8  # data/synthetic.py: 2 glyph pairs × right-of/below × top/bottom half
FIXED_DATASETS = {"cifar10": (10, 32, 50_000), "cifar100": (100, 32, 50_000)}


def data_facts(cfg: DictConfig) -> Optional[DataFacts]:
    """The facts of ``cfg.data`` where the config alone gives them; None for a dataset it does not know."""
    data = cfg.data
    if data.name == "synthetic":
        side = data.synthetic.cell * data.synthetic.grid  # synthetic images are never resized
        return DataFacts(SYNTHETIC_NUM_CLASSES, side, data.synthetic.num_train, "data.synthetic.num_train")
    if data.name in FIXED_DATASETS:
        classes, side, num_train = FIXED_DATASETS[data.name]
        return DataFacts(classes, data.img_size or side, num_train)
    if data.name == "imagefolder":
        classes, side = imagefolder_facts(str(data_root(cfg) / "train"))
        return DataFacts(classes, data.img_size or side, None)
    return None


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


@functools.lru_cache(maxsize=8)
def imagefolder_facts(train: str) -> Tuple[Optional[int], Optional[int]]:
    """An imagefolder's class count and its first training image's shorter side, as its data module takes
    them (data/imagefolder.py); (None, None) where the folder is not readable, which the data module names."""
    try:
        classes = sorted(e.name for e in os.scandir(train) if e.is_dir() and not e.name.startswith("."))
        for directory, subdirs, files in os.walk(Path(train) / classes[0], followlinks=True):
            subdirs.sort()
            first = next((f for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)), None)
            if first:
                from PIL import Image

                with Image.open(Path(directory) / first) as image:
                    return len(classes), min(image.size)
    except (OSError, IndexError, ValueError):
        pass
    return None, None


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
# timm's RandAugment spec (timm.data.auto_augment.rand_augment_transform): "rand" then dash-separated
# sections; an unknown section is an assertion inside timm, after the run directory exists.
_RANDAUGMENT = re.compile(r"^rand(-(m\d+|n\d+|p\d*\.?\d+|mstd\d*\.?\d+|mmax\d+|inc[01]|t\w+))*$")


def _check_keys(plain: Dict[str, Any], lookup: bool) -> None:
    """Each key against its field, but the model section's (``resolve_spec`` checks those): with
    ``lookup``, the keys whose names a registry holds (importing it), else every other key."""
    for key, f in SCHEMA.items():
        if is_section(key) or key.startswith("model.") or isinstance(f.metadata["valid"], Registry) != lookup:
            continue
        value: Any = plain
        for part in key.split("."):
            value = value.get(part)
        check_value(key, f, value)


def devices_per_node(cfg: DictConfig) -> Optional[int]:
    """The process count per node that ``trainer.devices`` asks for; None where Lightning decides
    from the machine (``-1``, ``auto`` on an accelerator). Raises ConfigError for an invalid value."""
    devices = cfg.trainer.devices
    devices = list(devices) if isinstance(devices, ListConfig) else devices
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto":
            return 1 if cfg.trainer.accelerator == "cpu" else None
        if re.fullmatch(r"-?\d+", text):
            devices = int(text)
        elif re.fullmatch(r"\d+(\s*,\s*\d+)*\s*,?", text):
            devices = [int(part) for part in text.split(",") if part.strip()]
    if isinstance(devices, int) and not isinstance(devices, bool) and (devices >= 1 or devices == -1):
        return devices if devices >= 1 else None
    if isinstance(devices, list) and devices and len(set(devices)) == len(devices) and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices):
        return len(devices)
    raise ConfigError(f"trainer.devices={devices!r} is not valid; use a count of at least 1 (e.g. trainer.devices=1), "
                      "-1 for every device, auto, or a list of distinct device ids such as [0, 1]")


def _near(value: int, candidates: Sequence[int]) -> str:
    """The candidates just below and just above ``value``: "126 or 129"."""
    below = max((c for c in candidates if 0 < c < value), default=None)
    above = min((c for c in candidates if c > value), default=None)
    return " or ".join(str(c) for c in (below, above) if c is not None)


def check_batches(cfg: DictConfig, world_size: int) -> None:
    """The global batch splits evenly over ``world_size`` processes and into micro-batches."""
    batch = cfg.data.batch_size
    if batch % world_size:
        raise ConfigError(
            f"data.batch_size={batch} (the global batch) is not divisible by the {world_size} devices "
            f"(trainer.devices × trainer.num_nodes); use a multiple of {world_size}, e.g. "
            f"data.batch_size={_near(batch, range(0, batch + world_size + 1, world_size))}")
    per_device = batch // world_size
    micro = min(cfg.data.micro_batch_size or per_device, per_device)
    if per_device % micro:
        raise ConfigError(
            f"the per-device batch {per_device} (data.batch_size={batch} / {world_size} devices) is not "
            f"divisible by data.micro_batch_size={micro}; use a divisor of {per_device}, e.g. "
            f"data.micro_batch_size={_near(micro, [d for d in range(1, per_device + 1) if per_device % d == 0])}")


def _check_data(cfg: DictConfig) -> None:
    """The model matches what the data fixes, and the splits fit in the training images."""
    data, facts = cfg.data, data_facts(cfg)
    if facts is None:
        return
    if data.name == "synthetic" and data.img_size is not None and data.img_size != facts.img_size:
        raise ConfigError(f"data.img_size={data.img_size} does not apply to data.name=synthetic, whose images are "
                          f"data.synthetic.cell * data.synthetic.grid = {facts.img_size} pixels; leave data.img_size unset")
    for key, data_value in (("num_classes", facts.num_classes), ("img_size", facts.img_size), ("in_chans", 3)):
        if data_value is not None and cfg.model[key] != data_value:
            raise ConfigError(f"model.{key}={cfg.model[key]} but data '{data.name}' gives {data_value}; "
                              f"set model.{key}={data_value} (or leave it unset to take the data's)")
    if facts.num_train is None:
        return
    source = f" ({facts.num_train_key}={facts.num_train})" if facts.num_train_key else ""
    if data.val_split >= facts.num_train:
        raise ConfigError(f"data.val_split={data.val_split} holds out every training image: data '{data.name}' has "
                          f"{facts.num_train}{source}; use fewer, e.g. data.val_split={facts.num_train // 5}")
    available = facts.num_train - data.val_split
    if data.train_subset is not None and data.train_subset > available:
        held = f" after data.val_split={data.val_split}" if data.val_split else ""
        raise ConfigError(f"data.train_subset={data.train_subset} exceeds the {available} training images of data "
                          f"'{data.name}'{source}{held}; use at most data.train_subset={available}")


def _check_limit_batches(cfg: DictConfig) -> None:
    for key in ("trainer.limit_train_batches", "trainer.limit_val_batches"):
        value = OmegaConf.select(cfg, key)
        if isinstance(value, float) and value > 1:
            fix = f"for {int(value)} batches write {key}={int(value)}" if value.is_integer() else f"e.g. {key}={int(value)}"
            raise ConfigError(f"{key}={value} is neither a fraction in [0.0, 1.0] of the batches nor a whole number of them; {fix}")


def _check_cuda_graph(cfg: DictConfig) -> None:
    """What a captured whole step cannot do: CUDA graphs twice, a loss scaler's host-side checks, a
    gradient all-reduce between processes, or an optimizer that needs the host for its update."""
    trainer, micro = cfg.trainer, cfg.data.micro_batch_size
    if compile_mode(trainer.compile) in ("reduce-overhead", "max-autotune"):
        raise ConfigError(f"trainer.cuda_graph=true already replays the step as a CUDA graph; trainer.compile={trainer.compile} "
                          "would capture the forward again: use trainer.compile=default (or max-autotune-no-cudagraphs) with it")
    if trainer.precision == "16-mixed":
        raise ConfigError("trainer.cuda_graph=true cannot replay 16-mixed's loss scaling (it inspects the gradients on the host); use bf16-mixed")
    if micro is not None and micro < cfg.data.batch_size:
        raise ConfigError(f"trainer.cuda_graph=true makes one update per batch; data.micro_batch_size={micro} < data.batch_size="
                          f"{cfg.data.batch_size} asks for gradient accumulation: drop data.micro_batch_size")
    if devices_per_node(cfg) != 1 or trainer.num_nodes != 1:
        raise ConfigError(f"trainer.cuda_graph=true runs on one device; trainer.devices={trainer.devices} trainer.num_nodes="
                          f"{trainer.num_nodes} ask for more (or let Lightning choose): set trainer.devices=1")
    if trainer.strategy != "auto":
        raise ConfigError(f"trainer.cuda_graph=true steps the model itself on one device; trainer.strategy={trainer.strategy} "
                          "would wrap it: leave trainer.strategy=auto")
    if cfg.optim.name.lower() not in ("adam", "adamw"):
        raise ConfigError(f"trainer.cuda_graph=true needs an optimizer that updates on the device (adam or adamw), not optim.name={cfg.optim.name}")


def validate_config(cfg: DictConfig) -> None:
    """Every check that can fail before a run starts. Raises ConfigError.

    The keys that read nothing but the config go first, so such a mistake fails in a fraction of a
    second; then the names that the model, data, optimizer and strategy registries hold, which imports
    torch and timm (and Lightning for a named strategy)."""
    plain = OmegaConf.to_container(cfg, resolve=True)  # one conversion: a select per key costs ~10x more
    _check_keys(plain, lookup=False)
    _check_limit_batches(cfg)
    if cfg.trainer.cuda_graph:
        _check_cuda_graph(cfg)
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas={format_value(list(cfg.optim.betas))} must hold two numbers, e.g. [0.9, 0.999]")
    if cfg.trainer.max_epochs <= 0 and cfg.trainer.max_steps <= 0:
        raise ConfigError("trainer.max_epochs or trainer.max_steps must be positive")
    spec = cfg.augment.randaugment
    if spec is not None and not _RANDAUGMENT.match(str(spec)):
        raise ConfigError(
            f"augment.randaugment={spec!r} is not a timm RandAugment spec; write 'rand' then dash-separated sections "
            "m<magnitude>, n<ops>, p<prob>, mstd<std>, mmax<max>, inc<0|1>, t<set>, e.g. augment.randaugment=rand-m10-n2")
    _check_data(cfg)
    devices = devices_per_node(cfg)
    if devices is not None:
        check_batches(cfg, devices * cfg.trainer.num_nodes)

    from vit_ablate.model import resolve_spec

    resolve_spec(cfg.model)
    _check_keys(plain, lookup=True)
    import timm.optim

    optimizers = timm.optim.list_optimizers()
    if cfg.optim.name.lower() not in optimizers:
        raise ConfigError(f"optim.name={cfg.optim.name!r} is not a timm optimizer{did_you_mean(cfg.optim.name, optimizers)}")
    # timm's "sgd" (and sgdw, nesterov, ...) is Nesterov SGD, which torch refuses without momentum only
    # when the optimizer is built, after data loading
    if (timm.optim.get_optimizer_info(cfg.optim.name.lower()).defaults or {}).get("nesterov") and cfg.optim.momentum <= 0:
        raise ConfigError(f"optim.name={cfg.optim.name!r} is Nesterov SGD in timm and needs optim.momentum > 0 "
                          f"(got {cfg.optim.momentum!r}); for plain SGD use optim.name=momentum with optim.momentum=0")
    if cfg.trainer.strategy != "auto":
        from lightning.pytorch.strategies import StrategyRegistry

        strategies = ["auto", *StrategyRegistry.available_strategies()]
        if cfg.trainer.strategy not in strategies:
            raise ConfigError(f"trainer.strategy={cfg.trainer.strategy!r} is not a Lightning strategy{did_you_mean(cfg.trainer.strategy, strategies)}")


def check_machine(cfg: DictConfig) -> None:
    """What this machine must hold for the run to start here: the ``init.path`` file and the GPUs that
    ``trainer.accelerator``/``trainer.devices`` ask for. Not part of ``validate_config``: a saved config
    (a checkpoint's) stays valid on a machine other than the one it was trained on."""
    if cfg.init.path is not None:
        from vit_ablate.model.transfer import check_source

        try:
            check_source(cfg.init.path, cfg.init.format)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    accelerator = cfg.trainer.accelerator
    if accelerator not in ("gpu", "cuda", "mps"):
        return
    import torch

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = torch.backends.mps.is_available()
    if not (mps if accelerator == "mps" else cuda if accelerator == "cuda" else cuda or mps):
        raise ConfigError(f"trainer.accelerator={accelerator!r} but this machine has no such GPU "
                          f"(torch.cuda.is_available() is False); use trainer.accelerator=cpu or auto")
    devices = devices_per_node(cfg)
    if cuda and accelerator != "mps" and devices is not None and devices > cuda:
        raise ConfigError(f"trainer.devices={format_value(cfg.trainer.devices)} asks for {devices} GPUs but {cuda} are visible; "
                          f"use trainer.devices={cuda} or fewer")


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------
def describe(cfg: DictConfig) -> str:
    """Every key with its resolved value, its meaning and its valid values, one line each (``train --help``)."""
    rows = []
    for key, f in SCHEMA.items():
        if is_section(key):
            rows.append((None, f"{key}: {f.metadata['help']}"))
            continue
        valid = f.metadata["valid"]
        if isinstance(valid, Range):
            valid = valid.describe().removeprefix("in ")
        elif isinstance(valid, (tuple, Registry)):
            valid = " | ".join(map(format_value, valid.names() if isinstance(valid, Registry) else valid))
        elif valid is None and "bool" in str(f.type):
            valid = "true | false"
        value = OmegaConf.select(cfg, key)
        value = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
        rows.append((f"  {key}={format_value(value)}", f.metadata["help"] + (f"; valid: {valid}" if valid else "")))
    width = max(len(setting) for setting, _ in rows if setting) + 2
    lines = [f"\n{text}" if setting is None else f"{setting:<{width}}{text}" for setting, text in rows]
    return "\n".join(lines).lstrip("\n") + "\n"


def to_container(cfg: DictConfig) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


# Keys that say how and where a run executes, not what it computes: the device count is a speed knob,
# so a run started on 8 GPUs may resume on 1 and is the same experiment.
EXECUTION_KEYS = ("name", "output_dir", "trainer.devices", "trainer.num_nodes", "trainer.strategy", "trainer.accelerator",
                  "trainer.ddp", "trainer.progress_bar", "trainer.log_every_n_steps", "trainer.sync_batchnorm",
                  "data.num_workers", "data.micro_batch_size", "data.on_device", "data.in_memory", "logging")


def config_digest(cfg: DictConfig | Mapping[str, Any]) -> str:
    """A short stable hash of the whole resolved config (every DDP rank records and compares it)."""
    data = to_container(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


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
