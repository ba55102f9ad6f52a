"""Declared contrasts: the one primary test of a comparison, and its declared secondaries.

A sweep file states, beside its ``# reference:`` lines, the single question its sweep answers and how
it is tested; the report tests that contrast at α = 0.05 without correction and derives the verdict
from it alone. Every other comparison (each group against the baseline, and ``# secondary:`` lines)
is a secondary family, Holm-corrected::

    # primary: paired model.pos_embed=none vs model.pos_embed=1d
    # secondary: equivalence model.pos_embed=2d vs model.pos_embed=1d margin=0.01
    # primary: interaction model.pool=cls vs model.pool=gap by optim.lr=8e-4 vs optim.lr=3e-4 expect=greater
    # primary: fisher model.norm=post vs model.norm=pre where optim.warmup_steps=0 expect=greater
    # baseline: model.pos_embed=1d

Kinds:

* ``paired A vs B`` — mean of the per-seed differences A − B: paired t-test (decides) and the exact
  sign-flip p (beside it);
* ``interaction A vs B by C vs D`` — a 2×2 design paired by seed: (A − B at C) − (A − B at D) per
  seed, one-sample t-test; ``interaction KEY1 KEY2`` when each key has exactly two values;
* ``fisher A vs B`` — runs whose status is ``outcome`` (default ``diverged``) out of the runs that
  finished (completed or diverged) in A and in B: Fisher's exact test;
* ``equivalence A vs B margin=M`` — two one-sided t-tests that |mean(A − B)| < M (M in the metric's
  units: 0.01 is one point of accuracy).

``where KEY=VALUE ...`` restricts both sides; runs are paired by seed and by every grouping key the
contrast leaves free (so a contrast over two learning rates pairs (lr, seed)). ``expect=greater|less``
is the paper's direction of A − B (for ``paired``, the paper's reference values of A and B give it when
omitted); ``effect=X`` is the paper's size of A − B in the metric's units, for the power of an
inconclusive result (again from the reference values when omitted).
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from vit_ablate import rundir
from vit_ablate.report import stats
from vit_ablate.report.references import header_tokens
from vit_ablate.report.values import canon, sort_key

__all__ = [
    "ContrastSpec",
    "ContrastResult",
    "parse_contrast_comments",
    "validate_contrasts",
    "evaluate_contrast",
    "KINDS",
    "ALPHA",
    "VERDICTS",
]

ALPHA = 0.05
KINDS = ("paired", "interaction", "fisher", "equivalence")
VERDICTS = ("reproduced", "contradicted", "equivalent within ±{margin}", "inconclusive at n = {n}")
_OPTIONS = ("margin", "expect", "effect", "outcome", "source", "note")
_LINE_RE = re.compile(r"^\s*#\s*(?P<role>primary|secondary)\s*:(?P<body>.*)$", re.IGNORECASE)
_FINISHED = rundir.FINAL_STATUSES


@dataclass
class ContrastSpec:
    role: str  # "primary" | "secondary"
    kind: str
    a: Dict[str, str]  # canonical assignments of side A
    b: Dict[str, str]
    c: Dict[str, str] = field(default_factory=dict)  # interaction: the second factor's two levels
    d: Dict[str, str] = field(default_factory=dict)
    keys: Tuple[str, ...] = ()  # interaction short form: the two factors, levels read from the runs
    where: Dict[str, str] = field(default_factory=dict)
    margin: Optional[float] = None
    expect: Optional[str] = None  # "greater" | "less": the paper's sign of A − B
    effect: Optional[float] = None
    outcome: str = rundir.DIVERGED
    source: Optional[str] = None
    line: int = 0
    text: str = ""
    origin: str = "sweep file"

    @property
    def where_text(self) -> str:
        return f"line {self.line} of {self.origin}: {self.role}: "

    def _side(self, s: Mapping[str, str]) -> str:
        return ", ".join(f"{k}={v}" for k, v in s.items())

    @property
    def label(self) -> str:
        cond = f" where {self._side(self.where)}" if self.where else ""
        if self.kind == "interaction":
            return (
                f"({self._side(self.a)} − {self._side(self.b)}) at {self._side(self.c)} − the same at "
                f"{self._side(self.d)}{cond}"
            )
        if self.kind == "fisher":
            return f"{self.outcome} runs: {self._side(self.a)} vs {self._side(self.b)}{cond}"
        return f"{self._side(self.a)} − {self._side(self.b)}{cond}"


def _assignment(token: str) -> Optional[Tuple[str, str]]:
    key, sep, value = token.partition("=")
    if not sep or not key:
        return None
    return key.strip(), value.strip()


def _parse_line(role: str, body: str, lineno: int, origin: str) -> ContrastSpec:
    where = f"line {lineno} of {origin}: {role}: "
    tokens = header_tokens(body, where)
    if not tokens:
        raise ValueError(f"{where}empty; expected one of {', '.join(KINDS)} (e.g. paired model.pos_embed=none vs model.pos_embed=1d)")
    kind = tokens[0].lower()
    if kind not in KINDS:
        hint = difflib.get_close_matches(kind, KINDS, n=1)
        raise ValueError(
            f"{where}unknown kind {tokens[0]!r}; the kinds are {', '.join(KINDS)}"
            + (f" (did you mean {hint[0]}?)" if hint else "")
        )
    options: Dict[str, str] = {}
    sections: List[List[Tuple[str, str]]] = [[]]  # split by "vs" / "by" / "where"
    separators: List[str] = []
    bare: List[str] = []
    for token in tokens[1:]:
        low = token.lower()
        if low in ("vs", "by", "where"):
            separators.append(low)
            sections.append([])
            continue
        pair = _assignment(token)
        if pair is None:
            bare.append(token)
            continue
        if pair[0] in _OPTIONS:
            options[pair[0]] = pair[1]
        else:
            sections[-1].append(pair)

    spec = ContrastSpec(role=role, kind=kind, a={}, b={}, line=lineno, text=body.strip(), origin=origin)
    if "where" in separators:
        if separators[-1] != "where" or separators.count("where") > 1:
            raise ValueError(f"{where}'where KEY=VALUE ...' must come last, once")
        spec.where = {k: canon(v) for k, v in sections[-1]}
        sections, separators = sections[:-1], separators[:-1]

    if kind == "interaction" and bare and not separators and not any(sections[0]):
        if len(bare) != 2:
            raise ValueError(f"{where}interaction needs a 2×2 design: name two keys, or A vs B by C vs D")
        spec.keys = (bare[0], bare[1])
    else:
        if bare:
            raise ValueError(f"{where}{bare[0]!r} is not of the form key=value, 'vs', 'by' or 'where'")
        expected = ["vs", "by", "vs"] if kind == "interaction" else ["vs"]
        if separators != expected or any(not s for s in sections):
            form = "A vs B by C vs D" if kind == "interaction" else "A vs B"
            raise ValueError(f"{where}expected {kind} {form} (each side KEY=VALUE ...), got {body.strip()!r}")
        sides = [{k: canon(v) for k, v in s} for s in sections]
        spec.a, spec.b = sides[0], sides[1]
        if kind == "interaction":
            spec.c, spec.d = sides[2], sides[3]
            for first, second, what in ((spec.a, spec.b, "A vs B"), (spec.c, spec.d, "C vs D")):
                if len(first) != 1 or set(first) != set(second) or first == second:
                    raise ValueError(
                        f"{where}interaction needs a 2×2 design: {what} must be two values of one key "
                        f"(e.g. model.pool=cls vs model.pool=gap), got {spec._side(first)} vs {spec._side(second)}"
                    )
            if set(spec.a) == set(spec.c):
                raise ValueError(f"{where}interaction needs a 2×2 design: its two factors are the same key {next(iter(spec.a))}")
        elif spec.a == spec.b:
            raise ValueError(f"{where}both sides are {spec._side(spec.a)}: nothing to compare")

    if "margin" in options:
        try:
            spec.margin = float(options["margin"])
        except ValueError:
            raise ValueError(f"{where}margin={options['margin']!r} is not a number") from None
        if not spec.margin > 0 or not math.isfinite(spec.margin):
            raise ValueError(f"{where}margin={options['margin']} must be a positive number (metric units, e.g. 0.01)")
    if kind == "equivalence" and spec.margin is None:
        raise ValueError(
            f"{where}an equivalence needs margin=M, the largest difference that counts as equal, in the "
            "metric's units (e.g. margin=0.01 for one point of accuracy), stated before the runs"
        )
    if "expect" in options:
        expect = options["expect"].lower()
        aliases = {"greater": "greater", "higher": "greater", "+": "greater", ">": "greater",
                   "less": "less", "lower": "less", "-": "less", "<": "less"}
        if expect not in aliases:
            raise ValueError(f"{where}expect={options['expect']!r}: use expect=greater or expect=less (the sign of A − B)")
        spec.expect = aliases[expect]
    if "effect" in options:
        try:
            spec.effect = float(options["effect"])
        except ValueError:
            raise ValueError(f"{where}effect={options['effect']!r} is not a number") from None
    spec.outcome = options.get("outcome", rundir.DIVERGED).lower()
    spec.source = options.get("source")
    return spec


def parse_contrast_comments(text: str, origin: str = "sweep file") -> List[ContrastSpec]:
    """Every ``# primary:`` and ``# secondary:`` line → ContrastSpec. At most one primary; an error
    names the line."""
    specs: List[ContrastSpec] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        match = _LINE_RE.match(line)
        if match:
            specs.append(_parse_line(match.group("role").lower(), match.group("body"), lineno, origin))
    primaries = [s for s in specs if s.role == "primary"]
    if len(primaries) > 1:
        raise ValueError(
            f"{origin}: {len(primaries)} primary contrasts (lines {', '.join(str(s.line) for s in primaries)}); "
            "a comparison has one primary test: make the others '# secondary:'"
        )
    return specs


# ------------------------------------------------------------------------------------ validation
def _nearest(value: str, choices: Sequence[str]) -> str:
    hint = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.0)
    return f" (did you mean {hint[0]}?)" if hint else ""


def validate_contrasts(specs: Sequence[ContrastSpec], values_of: Mapping[str, Sequence[str]]) -> None:
    """Every key and value a contrast names must exist in the runs (``values_of``: key → canonical
    values seen); an interaction's factors must have two levels each. ValueError names the line."""
    for spec in specs:
        assignments: List[Tuple[str, str]] = []
        for side in (spec.a, spec.b, spec.c, spec.d, spec.where):
            assignments.extend(side.items())
        for key in spec.keys:
            if key not in values_of:
                raise ValueError(f"{spec.where_text}key {key!r} is in no run{_nearest(key, sorted(values_of))}")
        for key, value in assignments:
            if key not in values_of:
                raise ValueError(
                    f"{spec.where_text}{key}={value} names a key no run has{_nearest(key, sorted(values_of))}"
                )
            seen = sorted(values_of[key], key=sort_key)
            if value not in seen:
                raise ValueError(
                    f"{spec.where_text}{key}={value} names a group the sweep does not have: {key} is "
                    f"{', '.join(seen)}{_nearest(value, seen)}"
                )
        if spec.kind == "interaction" and spec.keys:
            for key in spec.keys:
                levels = sorted(values_of[key], key=sort_key)
                if len(levels) != 2:
                    example = f"{key}={levels[-1]} vs {key}={levels[0]}" if len(levels) > 2 else ""
                    raise ValueError(
                        f"{spec.where_text}interaction needs a 2×2 design, but {key} has {len(levels)} "
                        f"value{'s' if len(levels) != 1 else ''} ({', '.join(levels)})"
                        + (f": name two, e.g. 'interaction A vs B by {example}'" if example else "")
                    )
            k1, k2 = spec.keys
            l1 = sorted(values_of[k1], key=sort_key)
            l2 = sorted(values_of[k2], key=sort_key)
            spec.a, spec.b, spec.c, spec.d = {k1: l1[0]}, {k1: l1[1]}, {k2: l2[0]}, {k2: l2[1]}


# ------------------------------------------------------------------------------------ evaluation
@dataclass
class Cell:
    """One side of a contrast as data: finished runs' values keyed by pair key."""

    values: Dict[Tuple[str, ...], float]
    statuses: List[str]  # every matching run's status (Fisher counts these)


@dataclass
class ContrastResult:
    spec: ContrastSpec
    kind: str
    n: int  # pairs (paired/interaction/equivalence); runs finished in A + B (fisher)
    estimate: float = math.nan  # mean difference / interaction; fisher: rate(A) − rate(B)
    ci_low: float = math.nan
    ci_high: float = math.nan
    ci_label: str = "95% t"
    p: float = math.nan  # the deciding p: t-test, TOST, or Fisher
    p_t: float = math.nan  # the two-sided t-test p (also for equivalence: the difference test)
    p_perm: float = math.nan  # exact sign-flip p (paired kinds)
    min_perm_p: float = math.nan
    p_holm: float = math.nan  # secondaries only
    p_t_adjusted: float = math.nan  # secondary equivalence: its difference test, Bonferroni over the family
    sd: float = math.nan
    per_seed: np.ndarray = field(default_factory=lambda: np.zeros(0))
    counts: Tuple[int, int, int, int] = (0, 0, 0, 0)  # fisher: events A, total A, events B, total B
    expect: Optional[str] = None
    effect: Optional[float] = None  # the paper's A − B in metric units (power), if known
    effect_source: str = ""
    power: float = math.nan
    detectable: float = math.nan  # smallest |effect| with 80% power at this n and spread
    verdict: str = ""  # one of VERDICTS, filled in by decide()
    unpaired: bool = False
    notes: List[str] = field(default_factory=list)

    @property
    def deciding_p(self) -> float:
        return self.p if self.spec.role == "primary" else self.p_holm


def _matches(params: Mapping[str, Any], wanted: Mapping[str, str]) -> bool:
    return all(k in params and canon(params[k]) == v for k, v in wanted.items())


def _cell(
    runs: Sequence[Tuple[Mapping[str, Any], Optional[str], str, Optional[float]]],
    wanted: Mapping[str, str],
    free_keys: Sequence[str],
) -> Cell:
    buckets: Dict[Tuple[str, ...], List[float]] = {}
    statuses: List[str] = []
    for params, seed, status, value in runs:
        if not _matches(params, wanted):
            continue
        statuses.append(status)
        if value is None:
            continue
        key = tuple(canon(params[k]) if k in params else "—" for k in free_keys) + (seed or "—",)
        buckets.setdefault(key, []).append(value)
    return Cell({k: float(np.mean(v)) for k, v in buckets.items()}, statuses)


def evaluate_contrast(
    spec: ContrastSpec,
    runs: Sequence[Tuple[Mapping[str, Any], Optional[str], str, Optional[float]]],
    by: Sequence[str],
    reference_of: Callable[[Mapping[str, str]], Optional[Mapping[str, Any]]],
    seed: Sequence[int] = (0,),
    metric: Optional[str] = None,
) -> ContrastResult:
    """Test one contrast on ``runs`` = [(params, seed, status, metric value or None)]. The paper's
    reference values give the expected direction whatever they measured, but an effect size (for the
    power) only when they measure ``metric`` itself: a difference in ImageNet 5-shot accuracy is no
    size in CIFAR validation accuracy."""
    constrained = set(spec.a) | set(spec.b) | set(spec.c) | set(spec.d) | set(spec.where)
    free = [k for k in by if k not in constrained]
    result = ContrastResult(spec=spec, kind=spec.kind, n=0, expect=spec.expect, effect=spec.effect)
    if spec.effect is not None:
        result.effect_source = "declared in the sweep file"

    if spec.kind == "fisher":
        cells = [_cell(runs, {**side, **spec.where}, free) for side in (spec.a, spec.b)]
        counts = []
        for cell in cells:
            finished = [s for s in cell.statuses if s in _FINISHED or s == spec.outcome]
            counts += [sum(s == spec.outcome for s in finished), len(finished)]
        ea, ta, eb, tb = counts
        result.counts = (ea, ta, eb, tb)
        result.n = ta + tb
        if ta and tb:
            result.estimate = ea / ta - eb / tb
            result.p = stats.fisher_test(ea, ta, eb, tb)
            # The strongest outcome these totals allow: all of one side, none of the other.
            result.min_perm_p = stats.fisher_test(ta, ta, 0, tb)
        other = sum(len(c.statuses) for c in cells) - ta - tb
        if other:
            result.notes.append(f"{other} run(s) neither completed nor {spec.outcome} are not counted")
        return result

    if spec.kind == "interaction":
        names = [{**spec.a, **spec.c}, {**spec.b, **spec.c}, {**spec.a, **spec.d}, {**spec.b, **spec.d}]
        cells = [_cell(runs, {**n, **spec.where}, free) for n in names]
        common = sorted(set.intersection(*(set(c.values) for c in cells)), key=lambda k: tuple(sort_key(v) for v in k))
        if not common:
            result.notes.append("no seed has all four cells of the 2×2 design: no test")
            return result
        per = np.array([(cells[0].values[k] - cells[1].values[k]) - (cells[2].values[k] - cells[3].values[k]) for k in common])
        test = stats.paired_test(per, np.zeros_like(per), seed, method="one-sample t")
        _fill_mean_test(result, test)
    else:
        ca, cb = (_cell(runs, {**side, **spec.where}, free) for side in (spec.a, spec.b))
        if spec.effect is None:
            ref_a, ref_b = reference_of({**spec.a, **spec.where}), reference_of({**spec.b, **spec.where})
            paper_difference = None
            if ref_a and ref_b and ref_a is not ref_b and ref_a.get("metric") == ref_b.get("metric"):
                paper_difference = float(ref_a["value"]) - float(ref_b["value"])
                if metric is not None and ref_a.get("metric") == metric:
                    result.effect = paper_difference
                    src = ref_a.get("source") or ref_b.get("source") or "paper"
                    result.effect_source = src + f", {metric}"
            if result.expect is None and paper_difference and spec.kind == "paired":
                result.expect = "greater" if paper_difference > 0 else "less"
        common = sorted(set(ca.values) & set(cb.values), key=lambda k: tuple(sort_key(v) for v in k))
        if common:
            a = np.array([ca.values[k] for k in common])
            b = np.array([cb.values[k] for k in common])
            _fill_mean_test(result, stats.paired_test(a, b, seed))
        elif ca.values and cb.values:
            test = stats.welch_test(list(ca.values.values()), list(cb.values.values()), seed)
            _fill_mean_test(result, test)
            result.unpaired = True
            result.notes.append("no seed in common: Welch's unpaired t-test and the unpaired permutation test")
        else:
            result.notes.append("a side has no completed run with the metric: no test")
            return result
        if spec.kind == "equivalence":
            p_tost, low, high = stats.tost(result.per_seed if not result.unpaired else np.zeros(0), spec.margin)
            result.p = p_tost
            result.ci_low, result.ci_high, result.ci_label = low, high, "TOST 90% t"
    if spec.kind != "equivalence":
        result.p = result.p_t
    _power(result)
    return result


def _fill_mean_test(result: ContrastResult, test: stats.MeanTest) -> None:
    result.n = test.n
    result.estimate = test.estimate
    result.ci_low, result.ci_high = test.ci_low, test.ci_high
    result.p_t = test.p_t
    result.p_perm = test.perm.p
    result.min_perm_p = test.perm.min_p
    result.sd = test.sd
    result.per_seed = test.values


def _power(result: ContrastResult) -> None:
    if result.n < 2 or not math.isfinite(result.sd):
        return
    if result.unpaired:  # the formulas below are those of a paired (one-sample) t-test
        result.notes.append("no seed in common: no power or detectable effect is stated for the unpaired test")
        return
    result.detectable = stats.detectable_effect(result.sd, result.n, ALPHA)
    if result.kind == "equivalence" and result.spec.margin is not None:
        true = result.effect if result.effect is not None else 0.0
        result.power = stats.tost_power(true, result.spec.margin, result.sd, result.n, ALPHA)
    elif result.effect is not None:
        result.power = stats.t_power(result.effect, result.sd, result.n, ALPHA)


def decide(result: ContrastResult, alpha: float = ALPHA) -> str:
    """The verdict, in fixed words, from the deciding p (raw for the primary, Holm for secondaries)."""
    p = result.deciding_p
    n_text = f"n = {result.n}" if result.kind != "fisher" else f"n = {result.counts[1]} vs {result.counts[3]} runs"
    if math.isnan(p):
        result.verdict = f"inconclusive at {n_text}"
        return result.verdict
    if result.kind == "equivalence":
        margin = result.spec.margin
        difference_p = result.p_t if result.spec.role == "primary" else result.p_t_adjusted
        if p < alpha:
            result.verdict = f"equivalent within ±{margin:g}"  # metric units; the Markdown shows the report's
        elif not math.isnan(difference_p) and difference_p < alpha:
            result.verdict = "contradicted"
        else:
            result.verdict = f"inconclusive at {n_text}"
        return result.verdict
    if p < alpha and result.expect is not None and result.estimate != 0:
        agrees = (result.estimate > 0) == (result.expect == "greater")
        result.verdict = "reproduced" if agrees else "contradicted"
    elif p < alpha:
        result.verdict = "different (the sweep file states no expected direction)"
    else:
        result.verdict = f"inconclusive at {n_text}"
    return result.verdict

