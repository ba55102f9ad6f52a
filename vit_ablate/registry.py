"""``Registry`` lives in ``vit_ablate.schema`` beside the fields that name one; this name stays for imports."""

from vit_ablate.schema import Registry  # noqa: F401
