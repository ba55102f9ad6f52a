"""``python -m vit_ablate …`` — the same as ``vit-ablate …`` (used by torchrun)."""

from vit_ablate.cli import run

run()
