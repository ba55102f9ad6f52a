"""Analysis of a trained ViT: the paper's Figures 6 and 7 and the few-shot linear evaluation of §4.1.

    checkpoint.py          rebuild the model of a ``vit-ablate train`` checkpoint (CPU, any run)
    pos_similarity.py      cosine similarity of position embeddings            (Figure 7 centre)
    attention_distance.py  mean attention distance per head and layer          (Figure 7 right)
    rollout.py             attention rollout, Abnar & Zuidema 2020             (Figure 6)
    filters.py             principal components of patch-embedding filters     (Figure 7 left)
    fewshot.py             regularised least-squares few-shot accuracy         (§4.1, big_vision)
    figures.py             the PNGs (matplotlib Agg, no pyplot)
    batches.py             unsharded evaluation batches of any split
    run.py                 ``run_analysis``: everything above for one checkpoint → analysis.json + PNGs

This package reads checkpoints and data; it never imports ``vit_ablate.training`` (training imports
``vit_ablate.analyze.fewshot`` for its end-of-run few-shot evaluation).
"""

from __future__ import annotations

__all__ = ["run_analysis", "load_checkpoint", "fewshot_from_datamodule"]


def __getattr__(name: str):
    # Imported on first use: training imports `vit_ablate.analyze.fewshot` and should not pay for
    # matplotlib and the figure code.
    if name == "run_analysis":
        from vit_ablate.analyze.run import run_analysis

        return run_analysis
    if name == "load_checkpoint":
        from vit_ablate.analyze.checkpoint import load_checkpoint

        return load_checkpoint
    if name == "fewshot_from_datamodule":
        from vit_ablate.analyze.fewshot import fewshot_from_datamodule

        return fewshot_from_datamodule
    raise AttributeError(f"module 'vit_ablate.analyze' has no attribute {name!r}")
