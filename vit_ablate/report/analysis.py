"""Group the runs, summarise each group, compare it with the baseline, test the declared contrasts and
Holm-adjust the family. A group's runs differ only in ``seed``; comparisons pair runs by seed (the same
data order and initialisation: pairing removes that noise), Welch's test only without a common seed.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from vit_ablate import rundir
from vit_ablate.config import EXECUTION_KEYS
from vit_ablate.report import stats
from vit_ablate.report.contrasts import ContrastResult, ContrastSpec, decide, evaluate_contrast, validate_contrasts
from vit_ablate.report.references import canon, match_reference, parse_assignments, sort_key
from vit_ablate.report.runs import Design, lookup_metric, metric_names
from vit_ablate.report.sequential import sequential_verdict, stage_looks
from vit_ablate.schema import did_you_mean


@dataclass
class Analysis:
    metric: str
    by: List[str]
    runs: pd.DataFrame  # every run; ``value`` is NaN where it does not count, ``why`` says why
    groups: pd.DataFrame  # one row a group, in the report's order; comparison columns NaN for the baseline
    design: Design
    baseline: Optional[str] = None  # the baseline group's label
    baseline_reason: str = ""
    primary: Optional[ContrastResult] = None
    secondary: List[ContrastResult] = field(default_factory=list)
    family_size: int = 0  # comparisons in the Holm family
    is_fraction: bool = False  # accuracy in [0, 1]: shown ×100, differences in percentage points
    higher_is_better: bool = True
    sections: Counter = field(default_factory=Counter)  # where the metric was found in result.json
    notes: List[str] = field(default_factory=list)


def _is_execution(key: str) -> bool:
    return key == "seed" or any(key == k or key.startswith(k + ".") for k in EXECUTION_KEYS)


def default_by(runs: pd.DataFrame, design: Design) -> List[str]:
    """The swept parameters minus seed; without a sweep, the config keys whose values differ."""
    return [k for k in design.swept if not _is_execution(k)] if design.has_manifest else list(differing_keys(runs, design, ()))


def differing_keys(runs: pd.DataFrame, design: Design, by: Sequence[str]) -> Dict[str, List[str]]:
    """Config keys (but ``by``, the seed and how runs executed) whose values differ: key → its values."""
    configured = runs[runs["has_config"]]
    return {k: sorted(configured[k].unique(), key=sort_key) for k in design.params
            if k not in by and not _is_execution(k) and configured[k].nunique() > 1}


def _label(by: Sequence[str], key: Sequence[str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(by, key)) if by else "all runs"


def _values(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per run: ``value`` (NaN where the run does not count), ``section``, ``recorded`` and ``why`` not counted."""
    found = [lookup_metric(r if isinstance(r, Mapping) else {}, metric) for r in runs["result"]]
    value = pd.Series([math.nan if v is None else v for v, _ in found], index=runs.index, dtype=float)
    recorded = pd.Series([v is not None for v, _ in found], index=runs.index)
    completed = runs["status"].eq(rundir.COMPLETED)
    counts = completed & np.isfinite(value)
    why = np.select([counts, ~completed, ~recorded], ["", runs["reason"].where(runs["reason"].ne(""), runs["status"]),
                                                       f"completed, but result.json has no {metric!r}"],
                    f"completed, but {metric} is not finite")
    return runs.assign(value=value.where(counts), metric_value=value, section=[s for _, s in found], recorded=recorded, why=why)


def _choose_baseline(groups: pd.DataFrame, requested, design: Design, primary, notes) -> Tuple[Optional[str], str]:
    """``--baseline``, else the sweep's declared one, else the primary's reference side, else the first group."""
    def hits(wanted: Mapping[str, str], among: pd.DataFrame) -> pd.DataFrame:  # groups whose runs all share ``wanted``
        return among[[bool(wanted) and wanted.items() <= common.items() for common in among["common"]]]

    usable = groups[groups["n"] > 0]
    if requested is not None:
        found = hits({k: canon(v) for k, v in parse_assignments(requested, "baseline: ").items()}, groups)
        if len(with_runs := found[found["n"] > 0]) > 1:
            raise ValueError(f"baseline {requested!r} is ambiguous: it matches {len(with_runs)} groups "
                             f"({'; '.join(with_runs.index)}); add the other grouping key(s)")
        if len(with_runs):
            return with_runs.index[0], "given by --baseline"
        if len(found):  # it exists, but none of its runs completed: a finding, not a user error
            notes.append(f"baseline {requested} has no completed runs ({found['n_total'].iloc[0]} listed under Not "
                         "included); no comparisons")
            return None, "given by --baseline, but without completed runs"
        raise ValueError(f"baseline {requested!r} matches no group; the groups are: " + "; ".join(groups.index))
    if usable.empty:
        return None, "no group has completed runs"
    if design.baseline and len(hits(design.baseline, usable)) == 1:
        return hits(design.baseline, usable).index[0], "the paper's choice, declared on the sweep file's # baseline: line"
    if design.baseline:
        notes.append(f"the sweep declares baseline {_label(list(design.baseline), design.baseline.values())}, which "
                     f"matches {'no group with completed runs' if hits(design.baseline, usable).empty else 'several groups'}")
    side = {**primary.spec.b, **primary.spec.where} if primary and primary.kind in ("paired", "equivalence") else {}
    if len(hits(side, usable)) == 1:
        return hits(side, usable).index[0], "the reference side of the declared primary contrast"
    return usable.index[0], "the first group: the sweep file declares no baseline"


def _summarise(runs: pd.DataFrame, by: List[str], design: Design) -> pd.DataFrame:
    """One row a group (index: its label): n, mean, std, 95% t interval, seeds, shared params (``common``), reference."""
    keys = runs[by].apply(tuple, axis=1) if by else pd.Series([()] * len(runs), index=runs.index)
    runs["group"] = [_label(by, k) for k in keys]
    order = sorted(dict.fromkeys(keys), key=lambda k: tuple(sort_key(v) for v in k))
    groups = runs.groupby("group", sort=False)["value"].agg(n="count", n_total="size", mean="mean", std="std")
    groups = groups.loc[[_label(by, k) for k in order]]
    half = scipy_stats.t.ppf(1 - stats.ALPHA / 2, groups["n"] - 1) * groups["std"] / np.sqrt(groups["n"])
    groups["ci_low"], groups["ci_high"] = groups["mean"] - half, groups["mean"] + half
    groups = groups.assign(**dict(zip(by, zip(*order))))
    groups["short"] = [", ".join(k) if by else "all runs" for k in order]
    members = {label: rows[rows["value"].notna()] if rows["value"].notna().any() else rows for label, rows in runs.groupby("group")}
    groups["common"] = [{c: members[g][c].iloc[0] for c in design.params if members[g][c].nunique() == 1} for g in groups.index]
    groups["reference"] = [match_reference(design.references, common) for common in groups["common"]]
    counted = runs[runs["value"].notna()].sort_values("seed", key=lambda s: s.map(lambda v: sort_key(v or "")))
    groups["seeds"] = [" ".join(counted.loc[counted["group"] == label, "seed"].fillna("—")) for label in groups.index]
    return groups


def _compare(groups: pd.DataFrame, runs: pd.DataFrame, by: List[str], baseline: Optional[str], seed: int,
             notes: List[str]) -> pd.DataFrame:
    """Each group with runs against the baseline: an undeclared paired contrast (by seed, else Welch's)."""
    rows = {}
    for i, label in enumerate(l for l in groups.index if baseline and l != baseline and groups.at[l, "n"] > 0):
        sides = [dict(zip(by, groups.loc[g, by])) for g in (label, baseline)]
        r = evaluate_contrast(ContrastSpec("baseline", "paired", *sides), runs, by, "", seed=[seed, 1, i])
        notes += [f"{label} vs baseline: {note}" for note in r.notes]
        if 0 < r.n < max(groups.at[label, "n"], groups.at[baseline, "n"]) and not r.unpaired:
            notes.append(f"{label} vs baseline: paired on the {r.n} seeds present in both groups")
        rows[label] = [r.estimate, r.ci_low, r.ci_high, 0 if r.unpaired else r.n, not r.unpaired, r.p_t, r.p_perm, r.min_perm_p]
    return pd.DataFrame(list(rows.values()), index=list(rows), columns=["delta", "delta_ci_low", "delta_ci_high",
                        "n_pairs", "paired", "p_t", "p_signflip", "min_signflip_p"])


def _same_pair(result: ContrastResult, group: pd.Series, base: pd.Series, by: Sequence[str]) -> bool:
    """Whether a declared paired or equivalence contrast compares exactly these two groups."""
    sides = [{**result.spec.a, **result.spec.where}, {**result.spec.b, **result.spec.where}]
    return result.kind in ("paired", "equivalence") and \
        {frozenset(s.items()) for s in sides} == {frozenset(zip(by, g[list(by)])) for g in (group, base)}


def analyse(runs: pd.DataFrame, design: Design, by: Optional[Sequence[str]] = None, metric: str = "val/acc1",
            baseline: Optional[str] = None, seed: int = 0) -> Analysis:
    """Group, summarise, compare, test the declared contrasts, Holm-adjust; ValueError for unusable input."""
    notes = list(design.notes)
    by = list(default_by(runs, design) if by is None else by)
    if unknown := [k for k in by if k not in design.params]:
        raise ValueError("grouping key(s) found in no run's config: " + ", ".join(k + did_you_mean(k, design.params) for k in unknown))
    if differing := differing_keys(runs, design, by):
        raise ValueError("the runs differ in " + "; ".join(f"{k} ({', '.join(v[:4])})" for k, v in differing.items())
                         + ", which is neither a grouping key nor the seed: a report never pools them (group by "
                         "them with --by, or split the report by them with --split)")
    runs = _values(runs, metric)
    if not runs["recorded"].any() and runs["status"].eq(rundir.COMPLETED).any():
        recorded = metric_names(list(runs["result"]))
        raise ValueError(f"--metric {metric}: no run recorded it{did_you_mean(metric, recorded, cutoff=0.3)} (the runs "
                         f"recorded: {', '.join(recorded[:12]) or 'no metric'})")
    values_of = {k: set(runs[k]) for k in design.params}
    for key, listed in design.swept.items():
        values_of.setdefault(key, set()).update(canon(v) for v in listed or [])
    validate_contrasts(design.contrasts, values_of)
    plan = design.plan()
    groups = _summarise(runs, by, design)
    counted = runs[runs["value"].notna()]
    for label, seeds in counted.dropna(subset=["seed"]).groupby("group")["seed"]:
        if seeds.duplicated().any():
            notes.append(f"{label}: several runs share seed {', '.join(sorted(seeds[seeds.duplicated()].unique()))}; they "
                         "count separately in n, mean and std, and are averaged for the paired comparison")
    notes += [f"{label}: n=1, so no standard deviation and no interval" for label in groups.index[groups["n"] == 1]]
    data = runs.reindex(columns=["data.val_split", "data.name"])
    if metric.startswith("val/") and (data["data.val_split"].eq("0") & data["data.name"].ne("synthetic")).any():
        notes.append(f"runs with data.val_split=0 validate on the test split: their {metric} is a test-split number")
    analysis = Analysis(metric=metric, by=by, runs=runs, groups=groups, design=design, notes=notes,
                        sections=Counter(counted["section"]),
                        higher_is_better=not any(w in metric.lower() for w in ("loss", "err", "time", "perplexity")))
    for k, spec in enumerate(design.contrasts):
        result = evaluate_contrast(spec, runs, by, metric, lambda a: match_reference(design.references, dict(a)), [seed, 4, k])
        if spec.role == "primary":
            analysis.primary = result
            notes += [f"primary contrast: {n}" for n in result.notes]
            decide(result)
            if plan is not None:  # the plan decides, from its looks stage by stage, as the sweep made them
                sizes = [len(v) if v else None for k, v in design.swept.items() if k != "seed"]
                arms = math.prod(sizes) if None not in sizes else max(1, runs.groupby(by).ngroups if by else 1)
                result.plan, (result.looks, result.looks_end, result.stage_open) = plan, stage_looks(
                    plan, runs, arms, lambda rows: evaluate_contrast(spec, rows, by, metric).per_seed)
                result.verdict = sequential_verdict(result.looks, result.looks_end, plan, result.expect)
            if result.kind != "equivalence" and result.expect is None:
                notes.append("the primary contrast states no expected direction (expect=greater|less, or paper "
                              "reference values for both sides): a significant result cannot be called reproduced")
        else:
            analysis.secondary.append(result)
    analysis.baseline, analysis.baseline_reason = _choose_baseline(groups, baseline, design, analysis.primary, notes)
    comparisons = _compare(groups, runs, by, analysis.baseline, seed, notes)
    # One Holm family, one adjusted p per comparison: a group's comparison with the baseline that a
    # declared contrast already makes is that contrast's (the primary's is unadjusted).
    declared = {label: next((r for r in [analysis.primary, *analysis.secondary] if r and _same_pair(
        r, groups.loc[label], groups.loc[analysis.baseline], by)), None) for label in comparisons.index}
    in_family = [label for label, r in declared.items() if r is None and "baseline" in design.holm[0]]
    adjusted = stats.holm([r.p for r in analysis.secondary] + list(comparisons.loc[in_family, "p_t"]))
    for result, p in zip(analysis.secondary, adjusted):
        result.p_holm = float(p)
        decide(result)
    holm = {label: ("primary" if r.spec.role == "primary" else f"secondary {r.kind}") if r else
            "" if label in in_family else "not in the Holm family" for label, r in declared.items()}
    p_holm = {**dict(zip(in_family, adjusted[len(analysis.secondary):])), **{k: r.p_holm for k, r in declared.items() if r}}
    groups = groups.join(comparisons.astype({"n_pairs": "Int64", "paired": "boolean"})).assign(
        holm=pd.Series(holm, dtype=object), p_holm=pd.Series(p_holm, dtype=float))
    groups["is_baseline"] = groups.index == analysis.baseline
    analysis.groups, analysis.family_size = groups, int(np.count_nonzero(~np.isnan(adjusted)))
    fraction = "acc" in metric.lower() or metric.lower().startswith("fewshot")  # an accuracy: shown in percent
    analysis.is_fraction = bool(fraction and len(counted) and counted["value"].between(0, 1).all())
    return analysis
