"""Sweeps: one W&B sweep file, run on this machine (no account) or through W&B.

    vit-ablate sweep sweeps/quickstart.yaml                       # local, one run at a time
    vit-ablate sweep sweeps/pos_embed.yaml --workers 4 --gpus 0   # four runs packed on GPU 0
    vit-ablate sweep sweeps/pos_embed.yaml trainer.max_epochs=50  # an override for every run
    vit-ablate sweep sweeps/pos_embed.yaml --backend wandb        # W&B creates the sweep, agents run it

Modules: ``engine`` (the file, validation, the agent's macros, proposals through W&B's open-source
``sweeps`` package), ``local`` (the runner: subprocesses, resuming), ``wandb_backend`` (``wandb.sweep``
and ``wandb agent``; an emulated agent when ``WANDB_MODE=offline``), ``summary`` (a sweep directory
read back: ``read_sweep``; the text printed at the end).

The CLI's ``key=value`` overrides go into the command right after ``${args_no_hyphens}`` for both
backends, so they apply to every run and win over the sweep's parameters; overriding a swept key is
an error.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from vit_ablate.config import ConfigError
from vit_ablate.sweep.engine import SweepSpec, load_sweep, validate_sweep
from vit_ablate.sweep.summary import SweepSummary, read_sweep

__all__ = ["run_sweep", "read_sweep", "SweepSummary", "SweepSpec", "load_sweep", "validate_sweep"]

BACKENDS = ("local", "wandb")


def run_sweep(file: str | os.PathLike, backend: str = "local", workers: int = 1, count: Optional[int] = None,
              overrides: Sequence[str] = (), sweep_id: Optional[str] = None, output_dir: str | os.PathLike = "runs",
              gpus: Optional[str] = None, **runner_kwargs) -> SweepSummary:
    """Validate the sweep file (every problem in one ``ConfigError``, before any run starts), then run it.

    ``local``: runs go to ``<output_dir>/<sweep name>/run-NNN`` (sweep name: the file's ``name``, else
    its stem) and rerunning the same command resumes. ``wandb``: see ``vit_ablate.sweep.wandb_backend``.
    ``count`` caps the runs started by this invocation (resumed ones included), like ``wandb agent
    --count``. Returns a ``SweepSummary`` (``.text``, ``.ok``, ``.exit_code``).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if workers is None or workers < 1:
        raise ConfigError(f"--workers {workers}: must be at least 1")
    if count is not None and count < 1:
        raise ConfigError(f"--count {count}: must be at least 1")
    spec = load_sweep(file, overrides)
    if backend == "wandb":
        from vit_ablate.sweep.wandb_backend import run_wandb_sweep

        return run_wandb_sweep(spec, workers=workers, count=count, sweep_id=sweep_id, output_dir=output_dir,
                               gpus=gpus, **runner_kwargs)
    if sweep_id is not None:
        raise ConfigError("--sweep-id joins a W&B sweep: use it with --backend wandb")
    from vit_ablate.sweep.local import SweepRunner

    notes = validate_sweep(spec, backend="local")
    return SweepRunner(spec, output_dir=output_dir, workers=workers, count=count, gpus=gpus, notes=notes,
                       **runner_kwargs).run()
