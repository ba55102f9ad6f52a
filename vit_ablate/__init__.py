"""vit_ablate: Vision Transformer ablation studies (Dosovitskiy et al. 2021, Appendix D)."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("vit-ablate")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from vit_ablate.model import build_model, load_timm_weights, to_timm_state_dict  # noqa: E402

version = __version__

__all__ = ["build_model", "load_timm_weights", "to_timm_state_dict", "version", "__version__"]
