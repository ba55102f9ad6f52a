"""vit_ablate: Vision Transformer ablation studies (Dosovitskiy et al. 2021, Appendix D).

``build_model``, ``load_timm_weights`` and ``to_timm_state_dict`` are imported on first use, so
light sub-packages (``vit_ablate.report``) do not pay for importing torch and timm.
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("vit-ablate")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

version = __version__

_MODEL_EXPORTS = ("build_model", "load_timm_weights", "to_timm_state_dict")
__all__ = [*_MODEL_EXPORTS, "version", "__version__"]


def __getattr__(name: str):
    if name in _MODEL_EXPORTS:
        from vit_ablate import model

        return getattr(model, name)
    raise AttributeError(f"module 'vit_ablate' has no attribute {name!r}")
