"""The ``model`` and ``components`` sections, measured as one pool of candidates.

model       our model vs timm's VisionTransformer of the same shape with the same weights (forward +
            backward + optimizer step, same optimizer, same inputs, interleaved); when timm lacks a
            configured component, vs our default pre/cls/1d/patch model instead
components  each ablation component's cost: img/s ratio vs our default pre/cls/1d/patch model

Every candidate (ours, timm, the default model, the component variants) is timed in the same
interleaved rounds, so that all ratios share one stretch of the machine's load; a variant equal to
ours is measured once. The pool also yields the configured model's img/s, which the data section
compares its loaders with.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

from vit_ablate.bench.context import BenchContext, BenchReport, model_train_step, random_inputs, seeded_model
from vit_ablate.bench.flops import vit_flops
from vit_ablate.bench.settings import (
    CORE_COMPONENTS,
    CPU_ANCHORS,
    DEFAULT_COMPONENTS,
    ENV_COMPONENTS,
    EXTRA_COMPONENTS,
    LOSS_TOLERANCE,
    TARGETS,
)
from vit_ablate.bench.table import Row
from vit_ablate.bench.timing import Measured, interleaved, paired_ratio

__all__ = ["section_pool"]


class _Candidates(NamedTuple):
    models: Dict[str, nn.Module]  # pool key → model to time
    alias: Dict[str, str]  # logical name (ours, timm, default, model.key=value) → pool key
    info: Dict[str, Any]  # the timm comparison's facts (weights_identical, timm_kwargs, or timm_unavailable)
    reference: Optional[str]  # what the model section compares ours with: "timm", "default", or None
    skipped: Dict[str, str]  # component name → why it was not measured


def section_pool(ctx: BenchContext, report: BenchReport, *, timm_compare: bool, components: Sequence[Tuple[str, str]]) -> None:
    """Build every candidate, time them all interleaved in the same rounds, then derive the model
    (``timm_compare``), components and consumption numbers."""
    pool = _candidates(ctx, timm_compare, components)
    images, labels = random_inputs(ctx, ctx.spec, ctx.batch, ctx.precision.param_dtype)
    steps_fns = {key: model_train_step(ctx, model, images, labels) for key, model in pool.models.items()}
    ctx.log(f"timing {', '.join(steps_fns)}: {ctx.rounds} rounds × {ctx.steps} steps of batch {ctx.batch}")
    measured = interleaved(
        steps_fns, images_per_step=ctx.batch, steps=ctx.steps, rounds=ctx.rounds, warmup=ctx.warmup,
        device=ctx.device, seed=ctx.seed, progress=ctx.log,
    )
    del steps_fns  # the models go too, before the CUDA cache is emptied
    pool.models.clear()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    report.results["pool"] = {key: m.as_dict() for key, m in measured.items()}
    report.results["pool_alias"] = dict(pool.alias)
    report.model_img_s = measured["ours"].median
    if timm_compare:
        _model_rows(ctx, report, measured, pool)
    if components or pool.skipped:
        _component_rows(ctx, report, measured, pool, components)


def _candidates(ctx: BenchContext, timm_compare: bool, components: Sequence[Tuple[str, str]]) -> _Candidates:
    """Ours; timm's VisionTransformer with our weights loaded (when asked, and when timm has every
    configured component); the default model (when components are measured, or timm lacks one); the
    component variants, each on top of the default model."""
    import timm
    from vit_ablate.model import load_timm_weights, resolve_spec, timm_kwargs, to_timm_state_dict

    models: Dict[str, nn.Module] = {}
    alias: Dict[str, str] = {}
    info: Dict[str, Any] = {}
    models["ours"] = ours = seeded_model(ctx, ctx.model_cfg)
    alias["ours"] = "ours"

    reference = None
    if timm_compare:
        try:
            kwargs = timm_kwargs(ours)
            torch.manual_seed(ctx.seed)
            theirs = timm.models.vision_transformer.VisionTransformer(**kwargs)
            load_timm_weights(ours, theirs.state_dict())
            mine = to_timm_state_dict(ours)
            theirs_sd = theirs.state_dict()
            info["weights_identical"] = set(mine) == set(theirs_sd) and all(torch.equal(mine[k], theirs_sd[k]) for k in mine)
            info["timm_kwargs"] = {k: v for k, v in kwargs.items()}
            models["timm"] = theirs
            alias["timm"] = "timm"
            reference = "timm"
        except ValueError as exc:
            info["timm_unavailable"] = str(exc)
            reference = "default"
    base_cfg = {**ctx.model_cfg, **DEFAULT_COMPONENTS}
    if components or reference == "default":
        if resolve_spec(base_cfg) == ctx.spec:
            alias["default"] = "ours"
        else:
            models["default"] = seeded_model(ctx, base_cfg)
            alias["default"] = "default"
    skipped: Dict[str, str] = {}
    for key, value in components:
        name = f"model.{key}={value}"
        variant_cfg = {**base_cfg, key: value}
        try:
            spec = resolve_spec(variant_cfg)
        except ValueError as exc:
            skipped[name] = str(exc)
            continue
        if spec == resolve_spec(base_cfg):
            skipped[name] = "is the default model"
            continue
        if spec == ctx.spec:
            alias[name] = "ours"
            continue
        models[name] = seeded_model(ctx, variant_cfg)
        alias[name] = name
    return _Candidates(models, alias, info, reference, skipped)


def _model_rows(ctx: BenchContext, report: BenchReport, measured: Dict[str, Measured], pool: _Candidates) -> None:
    """The model section: ours vs its reference, the step-0 losses, and the CPU anchor row."""
    reference, info = pool.reference, pool.info
    ours_m = measured["ours"]
    ref_m = measured[pool.alias[reference]]
    pair = paired_ratio(ours_m, ref_m)
    model_result: Dict[str, Any] = {
        "ours_img_s": ours_m.median,
        "reference": reference,
        "reference_img_s": ref_m.median,
        "ratio": pair["ratio"],
        "ratio_rounds": pair["rounds"],
        "ratio_spread": [pair["low"], pair["high"]],
        "spread": pair["spread"],
        "ours_img_s_rounds": ours_m.img_s,
        "reference_img_s_rounds": ref_m.img_s,
        "loss_step0": {"ours": ours_m.loss_step0, reference: ref_m.loss_step0},
        "achieved_train_flop_s": ours_m.median * vit_flops(ctx.spec, training=True),
        **info,
    }
    if reference == "timm":
        diff = abs(ours_m.loss_step0 - ref_m.loss_step0)
        model_result["loss_step0_abs_diff"] = diff
        model_result["loss_match"] = diff <= LOSS_TOLERANCE * max(1.0, abs(ref_m.loss_step0))
        what = "ours vs timm VisionTransformer (same weights)"
        target = TARGETS["model"]
        report.notes.append(
            f"model: weights identical {info.get('weights_identical')}; step-0 loss ours {ours_m.loss_step0:.7f} "
            f"vs timm {ref_m.loss_step0:.7f} (|Δ| {diff:.1e}; match {model_result['loss_match']})"
        )
    else:
        what = "ours vs our pre/cls/1d/patch (timm lacks it)"
        target = None
        report.notes.append(f"model: no timm comparison: {info['timm_unavailable']}; compared with our default model instead")
    report.rows.append(Row("model", what, ours_m.median, ref_m.median, pair["ratio"], target, pair["low"], pair["high"]))
    report.results["model"] = model_result
    _anchor_row(ctx, report, measured.get("timm") if reference == "timm" else None)


def _anchor_row(ctx: BenchContext, report: BenchReport, timm_m: Optional[Measured]) -> None:
    """The timm model against this project's quiet-machine CPU reference, when the shape matches."""
    if timm_m is None or ctx.device.type != "cpu" or ctx.batch != 128 or ctx.precision.name not in ("32-true", "32"):
        return
    for shape, img_s in CPU_ANCHORS:
        if all(getattr(ctx.spec, k) == v for k, v in shape.items()):
            ratio = timm_m.median / img_s
            report.rows.append(Row("model", "timm vs quiet-CPU anchor (paper_reference.md)", timm_m.median, img_s, ratio))
            report.results.setdefault("model", {})["cpu_anchor"] = {"shape": shape, "img_s": img_s, "timm_ratio": ratio}
            return


def _component_rows(ctx: BenchContext, report: BenchReport, measured: Dict[str, Measured], pool: _Candidates,
                    components: Sequence[Tuple[str, str]]) -> None:
    """The components section: each variant against the default model; the four core ones have a target."""
    base_m = measured[pool.alias["default"]]
    comp: Dict[str, Any] = {"default_img_s": base_m.median, "default_img_s_rounds": base_m.img_s, "variants": {}, "skipped": pool.skipped}
    for key, value in components:
        name = f"model.{key}={value}"
        if name in pool.skipped:
            continue
        m = measured[pool.alias[name]]
        pair = paired_ratio(m, base_m)
        core = (key, value) in CORE_COMPONENTS
        comp["variants"][name] = {
            "img_s": m.median, "img_s_rounds": m.img_s, "ratio": pair["ratio"], "ratio_rounds": pair["rounds"],
            "ratio_spread": [pair["low"], pair["high"]], "spread": pair["spread"],
            "cost": 1 / pair["ratio"] - 1 if pair["ratio"] else None,
            "target": TARGETS["components"] if core else None,
        }
        report.rows.append(
            Row("components", f"{name} vs pre/cls/1d/patch", m.median, base_m.median, pair["ratio"],
                TARGETS["components"] if core else None, pair["low"], pair["high"])
        )
    for name, reason in pool.skipped.items():
        report.notes.append(f"components: {name} not measured: {reason}")
    extras = [f"model.{k}={v}" for k, v in EXTRA_COMPONENTS if (k, v) not in ctx.components]
    if extras and components:
        report.notes.append(
            f"components: not measured here: {', '.join(extras)} (set {ENV_COMPONENTS}=all; the default on a GPU)"
        )
    report.results["components"] = comp
