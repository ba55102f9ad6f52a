"""The ``model`` and ``components`` sections: candidates timed interleaved on one fixed batch.

model       our model vs timm's VisionTransformer of the same shape with the same weights (forward,
            backward, optimizer step; same optimizer, same inputs). When timm lacks a configured
            component: vs our model with the config's default components instead.
components  each ablation component's cost: the img/s ratio of a variant to the model of the same
            size with the config's default components (paper Appendix D's baseline).
"""

from __future__ import annotations

from typing import Dict

from torch import nn

from vit_ablate.bench.context import EXTRA_COMPONENTS, Bench, Row, default_components, model_train_step, random_inputs, seeded_model
from vit_ablate.bench.timing import Measured, interleaved, paired_ratio
from vit_ablate.model import resolve_spec

__all__ = ["section_model", "section_components", "measure_models"]

LOSS_TOLERANCE = 1e-6  # relative: identical weights and inputs give one step-0 loss up to float rounding


def measure_models(bench: Bench, models: Dict[str, nn.Module]) -> Dict[str, Measured]:
    """Train every model on the same fixed batch, interleaved."""
    images, labels = random_inputs(bench, bench.spec, bench.batch, bench.precision.param_dtype)
    steps = {name: model_train_step(bench, model, images, labels) for name, model in models.items()}
    bench.log(f"timing {', '.join(steps)}: {bench.rounds} rounds × {bench.steps} steps of batch {bench.batch}")
    return interleaved(steps, images_per_step=bench.batch, steps=bench.steps, rounds=bench.rounds, warmup=bench.warmup,
                       device=bench.device, seed=bench.seed, progress=bench.log)


def section_model(bench: Bench) -> None:
    import timm
    import torch

    from vit_ablate.model import load_timm_weights, timm_kwargs, to_timm_state_dict

    ours = seeded_model(bench, bench.model_cfg)
    try:
        kwargs = timm_kwargs(ours)
        torch.manual_seed(bench.seed)
        reference, theirs = "timm", timm.models.vision_transformer.VisionTransformer(**kwargs)
        load_timm_weights(ours, theirs.state_dict())
        mine, their_weights = to_timm_state_dict(ours), theirs.state_dict()
        facts = {"timm_kwargs": kwargs, "weights_identical": mine.keys() == their_weights.keys()
                 and all(torch.equal(mine[k], their_weights[k]) for k in mine)}
    except ValueError as exc:  # timm has no such component
        reference, theirs = "default", seeded_model(bench, default_components(bench.model_cfg))
        facts = {"timm_unavailable": str(exc)}
    measured = measure_models(bench, {"ours": ours, reference: theirs})
    mine_m, ref_m = measured["ours"], measured[reference]
    bench.model_img_s = mine_m.median
    pair = paired_ratio(mine_m, ref_m)
    result = {"reference": reference, **pair, **facts,
              "candidates": {name: m.as_dict() for name, m in measured.items()}}
    if reference == "timm":
        diff = abs(mine_m.loss_step0 - ref_m.loss_step0)
        result["loss_match"] = diff <= LOSS_TOLERANCE * max(1.0, abs(ref_m.loss_step0))
        what = "ours vs timm VisionTransformer (same weights)"
        bench.notes.append(f"model: weights identical {facts['weights_identical']}; step-0 loss ours {mine_m.loss_step0:.7f} "
                           f"vs timm {ref_m.loss_step0:.7f} (|Δ| {diff:.1e})")
    else:
        what = "ours vs our default components (timm lacks one)"
        bench.notes.append(f"model: no timm comparison: {facts['timm_unavailable']}")
    bench.rows.append(Row("model", what, mine_m.median, ref_m.median, pair["ratio"], pair["low"], pair["high"]))
    bench.results["model"] = result


def section_components(bench: Bench) -> None:
    base_cfg = default_components(bench.model_cfg)
    base_spec = resolve_spec(base_cfg)
    label = "/".join(str(base_cfg[k]) for k in ("norm", "pool", "pos_embed", "stem"))
    models, skipped = {"default": seeded_model(bench, base_cfg)}, {}
    for key, value in bench.components:
        name, variant_cfg = f"model.{key}={value}", {**base_cfg, key: value}
        try:
            if resolve_spec(variant_cfg) == base_spec:
                raise ValueError("it is the default model")
        except ValueError as exc:
            skipped[name] = str(exc)
            bench.notes.append(f"components: {name} not measured: {exc}")
            continue
        models[name] = seeded_model(bench, variant_cfg)
    measured = measure_models(bench, models)
    base = measured.pop("default")
    variants = {}
    for name, m in measured.items():
        pair = variants[name] = {**m.as_dict(), **paired_ratio(m, base)}
        bench.rows.append(Row("components", f"{name} vs {label}", m.median, base.median, pair["ratio"], pair["low"], pair["high"]))
    bench.results["components"] = {"default": base.as_dict(), "variants": variants, "skipped": skipped}
    extras = [f"model.{k}={v}" for k, v in EXTRA_COMPONENTS if (k, v) not in bench.components]
    if extras:
        bench.notes.append(f"components: {', '.join(extras)} not measured (components=all, the default on a GPU)")
