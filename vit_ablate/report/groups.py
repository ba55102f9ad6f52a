"""Group runs by the swept parameters, summarise each group, compare each group with the baseline,
and test the contrasts the sweep file declares.

A group is one setting of the ``by`` keys; its replicates are the runs that differ only in ``seed``.
Comparisons pair runs by seed (the same seed means the same data order and initialisation stream in
both groups, so pairing removes that shared noise) and fall back to an unpaired test, saying so, only
when no seed is common to both groups.

The declared primary contrast is tested at α = 0.05 on its own; every other comparison (each group
against the baseline, the declared secondaries) is one family, Holm-corrected.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from vit_ablate.report import stats
from vit_ablate.report.contrasts import ContrastResult, decide, evaluate_contrast, validate_contrasts
from vit_ablate.report.references import match_reference, parse_assignments
from vit_ablate.report.runs import COMPLETED, RunCollection, RunRecord, lookup_metric, metric_names
from vit_ablate.report.values import canon, sort_key

__all__ = ["Group", "Comparison", "Analysis", "analyse", "default_by", "BOOKKEEPING_KEYS"]

# Keys that differ between runs without being a design choice: never a default grouping key.
BOOKKEEPING_KEYS = (
    "seed",
    "name",
    "output_dir",
    "data.root",
    "data.download",
    "data.num_workers",
    "trainer.progress_bar",
    "trainer.log_every_n_steps",
)
BOOKKEEPING_PREFIXES = ("logging.",)
ABSENT = "—"  # the value shown for a run that lacks a grouping key


@dataclass
class Group:
    key: Tuple[str, ...]  # canonical values of the ``by`` keys, in ``by`` order
    by: Tuple[str, ...]
    included: List[RunRecord]
    excluded: List[RunRecord]
    values: np.ndarray  # the metric of the included runs, in seed order
    seeds: List[Optional[str]]  # their seeds, same order
    common: Dict[str, str]  # canonical params every run of the group shares (reference matching)
    summary: stats.Summary
    reference: Optional[Mapping[str, Any]] = None
    is_baseline: bool = False

    @property
    def label(self) -> str:
        if not self.by:
            return "all runs"
        return ", ".join(f"{k}={v}" for k, v in zip(self.by, self.key))

    @property
    def short(self) -> str:
        """The values alone ("1d"; "gap, 0.0008"): how a verdict names the baseline."""
        return ", ".join(self.key) if self.by else "all runs"

    @property
    def n_total(self) -> int:
        return len(self.included) + len(self.excluded)

    def by_seed(self) -> Dict[str, float]:
        """seed → metric; runs that share a seed are averaged (noted by the caller)."""
        buckets: Dict[str, List[float]] = {}
        for s, v in zip(self.seeds, self.values):
            if s is not None:
                buckets.setdefault(s, []).append(float(v))
        return {s: float(np.mean(v)) for s, v in buckets.items()}


@dataclass
class Comparison:
    group: Group
    baseline: Group
    paired: bool
    n_pairs: int  # seeds present in both groups (0 when unpaired)
    diff: float  # mean paired difference group − baseline (unpaired: difference of means)
    ci_low: float  # 95% Student's t interval of diff (Welch's when unpaired)
    ci_high: float
    ci_note: str
    test: stats.PermutationResult  # exact sign-flip (paired) or permutation (unpaired) p, shown beside p_t
    p_t: float = math.nan  # paired t-test p (Welch's when unpaired): the p that decides
    sd: float = math.nan  # sd of the per-seed differences
    differences: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per-seed, paired only
    p_holm: float = math.nan
    is_primary: bool = False  # the same two groups as the declared primary paired contrast
    note: str = ""

    @property
    def p(self) -> float:
        return self.p_t


@dataclass
class Analysis:
    metric: str
    by: List[str]
    groups: List[Group]
    comparisons: List[Comparison]
    baseline: Optional[Group]
    excluded: List[Tuple[RunRecord, str, str]]  # (run, group label, reason)
    n_runs: int
    sections: Counter  # where the metric was found in result.json
    is_fraction: bool  # accuracy in [0, 1]: shown ×100, differences in percentage points
    higher_is_better: bool
    notes: List[str] = field(default_factory=list)
    seed: int = 0
    primary: Optional[ContrastResult] = None
    secondary: List[ContrastResult] = field(default_factory=list)  # declared "# secondary:" contrasts
    baseline_reason: str = ""  # where the baseline came from
    family_size: int = 0  # secondary comparisons Holm corrects over


def _is_bookkeeping(key: str) -> bool:
    return key in BOOKKEEPING_KEYS or key.startswith(BOOKKEEPING_PREFIXES)


def default_by(collection: RunCollection) -> List[str]:
    """The swept parameters minus seed; without a manifest, the config keys whose values differ."""
    if collection.has_manifest:
        return [k for k in collection.swept if not _is_bookkeeping(k)]
    order: Dict[str, None] = {}  # first-seen order: the config's own order (model before optim)
    values: Dict[str, set] = {}
    for run in collection.runs:
        for key in run.params:
            order.setdefault(key, None)
    for run in collection.runs:
        if not run.params:
            continue  # a run we know nothing about cannot make a key "differ"
        for key in order:
            values.setdefault(key, set()).add(canon(run.params[key]) if key in run.params else ABSENT)
    return [k for k in order if not _is_bookkeeping(k) and len(values.get(k, ())) > 1]


def _looks_like_accuracy(metric: str) -> bool:
    name = metric.lower()
    return "acc" in name or name.startswith("fewshot")


def _higher_is_better(metric: str) -> bool:
    name = metric.lower()
    return not any(word in name for word in ("loss", "err", "wall_time", "time_s", "perplexity"))


def _group_key(run: RunRecord, by: Sequence[str]) -> Tuple[str, ...]:
    return tuple(canon(run.params[k]) if k in run.params else ABSENT for k in by)


def _common_params(runs: Sequence[RunRecord]) -> Dict[str, str]:
    with_config = [r for r in runs if r.params]
    if not with_config:
        return {}
    common = {k: canon(v) for k, v in with_config[0].params.items()}
    for run in with_config[1:]:
        common = {k: v for k, v in common.items() if k in run.params and canon(run.params[k]) == v}
    return common


def _matches(group: Group, wanted: Mapping[str, str]) -> bool:
    for key, value in wanted.items():
        if key in group.by:
            if group.key[group.by.index(key)] != value:
                return False
        elif group.common.get(key) != value:
            return False
    return True


def _format_assignments(assignments: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in assignments.items())


def _choose_baseline(
    groups: List[Group],
    requested: Optional[str],
    declared: Optional[Mapping[str, str]],
    notes: List[str],
    primary_side: Optional[Mapping[str, str]] = None,
) -> Tuple[Optional[Group], str]:
    group, reason = _choose_baseline_group(groups, requested, declared, notes, primary_side)
    return group, reason


def _choose_baseline_group(
    groups: List[Group],
    requested: Optional[str],
    declared: Optional[Mapping[str, str]],
    notes: List[str],
    primary_side: Optional[Mapping[str, str]],
) -> Tuple[Optional[Group], str]:
    candidates = [g for g in groups if g.summary.n > 0]
    if requested is not None:
        wanted = {k: canon(v) for k, v in parse_assignments(requested, "baseline: ").items()}
        if not wanted:
            raise ValueError(f"baseline {requested!r} names no KEY=VALUE (e.g. model.pos_embed=1d)")
        hits = [g for g in groups if _matches(g, wanted)]
        usable = [g for g in hits if g.summary.n > 0]
        if len(usable) == 1:
            return usable[0], "given by --baseline"
        if len(usable) > 1:
            raise ValueError(
                f"baseline {requested!r} is ambiguous: it matches {len(usable)} groups "
                f"({'; '.join(g.label for g in usable)}); add the other grouping key(s)"
            )
        if hits:  # the baseline exists but none of its runs completed: a finding, not a user error
            notes.append(
                f"baseline {requested} has no completed runs ({hits[0].n_total} listed under Not "
                "included); no comparisons"
            )
            return None, "given by --baseline, but without completed runs"
        raise ValueError(
            f"baseline {requested!r} matches no group; the groups are: "
            + "; ".join(g.label for g in groups)
        )
    if not candidates:
        return None, "no group has completed runs"
    if declared:
        hits = [g for g in candidates if _matches(g, declared)]
        if len(hits) == 1:
            return hits[0], "the paper's choice, declared on the sweep file's # baseline: line"
        notes.append(
            f"the sweep declares baseline {_format_assignments(declared)}, which "
            + ("matches no group with completed runs" if not hits else "matches several groups")
        )
    if primary_side:
        hits = [g for g in candidates if _matches(g, primary_side)]
        if len(hits) == 1:
            return hits[0], "the reference side of the declared primary contrast"
    return candidates[0], "the first group: the sweep file declares no baseline"


def _compare(group: Group, baseline: Group, rng_seed: Sequence[int]) -> Comparison:
    g_seeds, b_seeds = group.by_seed(), baseline.by_seed()
    common = sorted(set(g_seeds) & set(b_seeds), key=sort_key)
    if common:
        test = stats.paired_test([g_seeds[s] for s in common], [b_seeds[s] for s in common], rng_seed)
        note = ""
        if len(common) < max(group.summary.n, baseline.summary.n):
            note = f"paired on the {len(common)} seeds present in both groups"
        return Comparison(group, baseline, True, len(common), test.estimate, test.ci_low, test.ci_high,
                          test.ci_note or ("1 pair: no interval" if len(common) == 1 else ""), test.perm,
                          p_t=test.p_t, sd=test.sd, differences=test.values, note=note)
    test = stats.welch_test(group.values, baseline.values, rng_seed)
    return Comparison(
        group, baseline, False, 0, test.estimate, test.ci_low, test.ci_high, test.ci_note, test.perm,
        p_t=test.p_t, sd=test.sd,
        note="no seed in common with the baseline: Welch's unpaired t-test (and the unpaired permutation test)",
    )


def _metric_error(metric: str, runs: Sequence[RunRecord]) -> ValueError:
    import difflib

    recorded = metric_names(runs)
    # The closest name; on a tie the first recorded (val/acc1 before val/acc5), not the last.
    scores = [difflib.SequenceMatcher(None, metric, name).ratio() for name in recorded]
    hint = [recorded[scores.index(max(scores))]] if scores and max(scores) >= 0.3 else []
    return ValueError(
        f"--metric {metric}: no run recorded it"
        + (f" (did you mean {hint[0]}?)" if hint else "")
        + (f"; the runs recorded: {', '.join(recorded[:12])}" if recorded else "; no run recorded any metric")
    )


def _param_values(collection: RunCollection) -> Dict[str, List[str]]:
    """Every key → the canonical values the runs (or the sweep's values lists) give it."""
    values: Dict[str, Dict[str, None]] = {}
    for run in collection.runs:
        for key, value in run.params.items():
            values.setdefault(key, {})[canon(value)] = None
    for key, listed in collection.swept.items():
        for value in listed or []:
            values.setdefault(key, {})[canon(value)] = None
    return {k: list(v) for k, v in values.items()}


def analyse(
    collection: RunCollection,
    by: Optional[Sequence[str]] = None,
    metric: str = "val/acc1",
    baseline: Optional[str] = None,
    seed: int = 0,
) -> Analysis:
    """Group, summarise, compare, and test the declared contrasts. Raises ValueError for an unusable
    baseline, grouping key, metric or contrast (before the caller writes anything)."""
    notes: List[str] = list(collection.notes)
    by = list(default_by(collection) if by is None else by)
    known = {k for r in collection.runs for k in r.params}
    unknown = [k for k in by if k not in known]
    if unknown:
        import difflib

        hints = [difflib.get_close_matches(k, sorted(known), n=1) for k in unknown]
        raise ValueError(
            "grouping key(s) found in no run's config: "
            + ", ".join(f"{k}" + (f" (did you mean {h[0]}?)" if h else "") for k, h in zip(unknown, hints))
        )

    # Which runs count: completed, with a finite value of the metric. Everything else is listed.
    sections: Counter = Counter()
    value_of: Dict[int, float] = {}
    reasons: Dict[int, str] = {}
    recorded = 0
    for i, run in enumerate(collection.runs):
        value, section = lookup_metric(run.result, metric)
        recorded += value is not None
        if run.status != COMPLETED:
            reasons[i] = run.reason or run.status
            continue
        if value is None:
            reasons[i] = f"completed, but result.json has no {metric!r}"
        elif not math.isfinite(value):
            reasons[i] = f"completed, but {metric} is {value}"
        else:
            value_of[i] = value
            sections[section] += 1
    if not recorded and any(run.status == COMPLETED for run in collection.runs):
        raise _metric_error(metric, collection.runs)

    param_values = _param_values(collection)
    validate_contrasts(collection.contrasts, param_values)

    buckets: Dict[Tuple[str, ...], List[int]] = {}
    for i, run in enumerate(collection.runs):
        buckets.setdefault(_group_key(run, by), []).append(i)

    groups: List[Group] = []
    for j, key in enumerate(sorted(buckets, key=lambda k: tuple(sort_key(v) for v in k))):
        members = buckets[key]
        included = sorted(
            (i for i in members if i in value_of),
            key=lambda i: (sort_key(collection.runs[i].seed or ""), collection.runs[i].name),
        )
        runs_in = [collection.runs[i] for i in included]
        values = np.array([value_of[i] for i in included], dtype=float)
        seeds = [r.seed for r in runs_in]
        groups.append(
            Group(
                key=key,
                by=tuple(by),
                included=runs_in,
                excluded=[collection.runs[i] for i in members if i not in value_of],
                values=values,
                seeds=seeds,
                common=_common_params(runs_in or [collection.runs[i] for i in members]),
                summary=stats.summarize(values, seed=[seed, 0, len(groups)]),
            )
        )
        duplicated = [s for s, c in Counter(s for s in seeds if s is not None).items() if c > 1]
        if duplicated:
            notes.append(
                f"{groups[-1].label}: several runs share seed {', '.join(duplicated)}; they count "
                "separately in n, mean and std, and are averaged for the paired comparison"
            )

    for group in groups:
        group.reference = match_reference(collection.references, group.common)
        if group.summary.n == 1:
            notes.append(f"{group.label}: n=1, so no standard deviation and no interval")
    if any(run.params.get("data.val_split") in (0, "0") for run in collection.runs) and metric.startswith("val/"):
        notes.append(
            f"runs with data.val_split=0 validate on the test split: their {metric} is a test-split number"
        )

    # Declared contrasts, on every run (Fisher counts diverged runs too).
    rows = [
        (run.params, run.seed, run.status, value_of.get(i))
        for i, run in enumerate(collection.runs)
    ]

    def reference_of(assignments: Mapping[str, str]) -> Optional[Mapping[str, Any]]:
        return match_reference(collection.references, dict(assignments))

    primary: Optional[ContrastResult] = None
    secondary: List[ContrastResult] = []
    for k, spec in enumerate(collection.contrasts):
        result = evaluate_contrast(spec, rows, by, reference_of, seed=[seed, 4, k], metric=metric)
        if spec.role == "primary":
            primary = result
        else:
            secondary.append(result)
    if primary is not None:
        decide(primary)
        notes.extend(f"primary contrast: {n}" for n in primary.notes)
        if primary.kind in ("paired", "interaction", "fisher") and primary.expect is None:
            notes.append(
                "the primary contrast states no expected direction (expect=greater|less, or paper "
                "reference values for both sides): a significant result cannot be called reproduced"
            )

    primary_side = primary.spec.b if primary is not None and primary.kind in ("paired", "equivalence") else None
    base, baseline_reason = _choose_baseline(groups, baseline, collection.baseline, notes, primary_side)
    comparisons: List[Comparison] = []
    if base is not None:
        base.is_baseline = True
        for group in groups:
            if group is base or group.summary.n == 0:
                continue
            comparison = _compare(group, base, [seed, 1, len(comparisons)])
            if primary is not None and primary.kind == "paired" and not primary.spec.where:
                sides = (primary.spec.a, primary.spec.b)
                comparison.is_primary = _matches(group, sides[0]) and _matches(base, sides[1])
            comparisons.append(comparison)
            if comparison.note:
                notes.append(f"{group.label} vs baseline: {comparison.note}")

    # The secondary family: every comparison but the primary, and the declared secondaries.
    family = [c for c in comparisons if not c.is_primary]
    adjusted = stats.holm([c.p for c in family] + [r.p for r in secondary])
    for comparison, p_holm in zip(family, adjusted[: len(family)]):
        comparison.p_holm = float(p_holm)
    m = int(np.count_nonzero(~np.isnan(adjusted)))
    for result, p_holm in zip(secondary, adjusted[len(family):]):
        result.p_holm = float(p_holm)
        if not math.isnan(result.p_t):
            result.p_t_adjusted = min(1.0, result.p_t * max(m, 1))
        decide(result)

    excluded = [
        (collection.runs[i], g.label, reasons[i])
        for g in groups
        for i in buckets[g.key]
        if i in reasons
    ]
    all_values = np.array(list(value_of.values()), dtype=float)
    is_fraction = bool(
        _looks_like_accuracy(metric) and all_values.size and np.all((all_values >= 0) & (all_values <= 1))
    )
    return Analysis(
        metric=metric,
        by=by,
        groups=groups,
        comparisons=comparisons,
        baseline=base,
        excluded=excluded,
        n_runs=len(collection.runs),
        sections=sections,
        is_fraction=is_fraction,
        higher_is_better=_higher_is_better(metric),
        notes=notes,
        seed=seed,
        primary=primary,
        secondary=secondary,
        baseline_reason=baseline_reason,
        family_size=m,
    )
