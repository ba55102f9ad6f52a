"""``python -m vit_ablate …`` — the same as ``vit-ablate …`` (used by torchrun)."""

import sys

from vit_ablate.cli import main

sys.exit(main())
