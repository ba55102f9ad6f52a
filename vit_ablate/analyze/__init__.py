"""Analysis of a trained ViT: the paper's Figures 6 and 7 and the few-shot linear evaluation of §4.1.

    checkpoint.py          rebuild the model of a ``vit-ablate train`` checkpoint (CPU, any run)
    pos_similarity.py      cosine similarity of position embeddings            (Figure 7 centre)
    filters.py             principal components of patch-embedding filters     (Figure 7 left)
    attention_distance.py  mean attention distance per head and layer          (Figure 7 right, D.7)
    rollout.py             attention rollout, Abnar & Zuidema 2020             (Figure 6, D.8)
    fewshot.py             regularised least-squares few-shot accuracy         (§4.1, big_vision)
    run.py                 ``run_analysis``: all of the above for one checkpoint → analysis.json + PNGs

It reads checkpoints and data and never imports ``vit_ablate.training``, which imports ``fewshot`` for
its end-of-run few-shot evaluation.
"""


def __getattr__(name: str):
    # on first use: training imports `vit_ablate.analyze.fewshot` and needs none of the figure code
    if name == "run_analysis":
        from vit_ablate.analyze.run import run_analysis

        return run_analysis
    raise AttributeError(f"module 'vit_ablate.analyze' has no attribute {name!r}")
