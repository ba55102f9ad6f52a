"""Reading weight files without running code from them.

A ``.ckpt``/``.pth``/``.bin`` file is a pickle, and unpickling can call any function the file names.
Every read goes through ``torch.load(weights_only=True)``, whose unpickler only rebuilds tensors and
plain containers, or through safetensors, which holds nothing but tensors. A file that needs more is
refused, with the reason and how to convert it in a Python session that trusts it.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Dict, Mapping

import torch

SAFETENSORS_SUFFIX = ".safetensors"


class UnsafeCheckpointError(ValueError):
    """The file can only be loaded by running code it names (arbitrary unpickling)."""


def load_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU.

    Raises FileNotFoundError for a missing file, UnsafeCheckpointError for a pickle that names
    anything beyond tensors and plain containers (nothing it names is run), ValueError otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).strip().splitlines()
        why = next((line.strip() for line in detail if "GLOBAL" in line), None)
        if why is None:  # not a refused global: a corrupt or foreign file
            raise ValueError(f"{path} is not a readable torch file ({detail[-1].strip() if detail else exc})") from None
        raise UnsafeCheckpointError(
            f"{path} was refused: loading it would run code it names ({why}); only tensors and plain values are read "
            f"(torch.load weights_only=True). If you trust {path.name}, convert it once in a Python session: "
            f"`blob = torch.load({str(path)!r}, weights_only=False)` and save its tensors with "
            "`safetensors.torch.save_file(state_dict, 'weights.safetensors')` (or `torch.save` of a dict of "
            "tensors and plain values), then point at the new file") from None
    except Exception as exc:  # zip/pickle corruption of every kind
        raise ValueError(f"{path} is not a readable torch file ({type(exc).__name__}: {exc})") from None


def load_safetensors_file(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable safetensors file ({exc})") from None


# keys under which training scripts (timm's train.py, DeiT, MAE, Lightning) keep the model's tensors
_STATE_KEYS = ("state_dict", "model", "module", "state_dict_ema", "model_ema")


def load_state_dict_file(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """A flat name → tensor dict from ``.safetensors`` or a torch file (a bare state dict, or one held
    under ``state_dict``/``model``/``module``)."""
    path = Path(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        return load_safetensors_file(path)
    blob = load_torch_file(path)
    if isinstance(blob, Mapping) and not any(isinstance(v, torch.Tensor) for v in blob.values()):
        for key in _STATE_KEYS:
            if isinstance(blob.get(key), Mapping):
                blob = blob[key]
                break
    if not isinstance(blob, Mapping):
        raise ValueError(f"{path} holds a {type(blob).__name__}, not a state dict of tensors")
    tensors = {str(k): v for k, v in blob.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path} holds no tensors (keys: {', '.join(map(str, list(blob)[:8]))})")
    return tensors
