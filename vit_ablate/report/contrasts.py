"""Declared contrasts: a sweep file's header states the one primary test of its comparison (α = 0.05, no
correction; it alone gives the verdict), its secondaries, and their Holm family::

    # primary: paired model.pos_embed=none vs model.pos_embed=1d
    # secondary: equivalence model.pos_embed=2d vs model.pos_embed=1d margin=0.01
    # primary: interaction model.pool=cls vs model.pool=gap by optim.lr=8e-4 vs optim.lr=3e-4 expect=greater
    # primary: fisher model.norm=post vs model.norm=pre where optim.warmup_steps=0 expect=greater
    # holm: secondary + baseline

``paired``: mean per-seed A − B, paired t-test (exact sign-flip p beside it). ``interaction``: (A − B at C)
− (A − B at D) per seed, one-sample t. ``fisher``: runs whose status is ``outcome`` (default diverged) of
the finished runs, Fisher's exact test. ``equivalence``: TOST of |mean(A − B)| < ``margin`` (metric units:
0.01 is one point of accuracy). ``where`` restricts both sides; runs pair by seed and the free grouping
keys. ``expect=greater|less``: the paper's sign of A − B (for paired, the references give it when
omitted); ``effect=X``: the paper's A − B, for the power. The Holm family: the secondaries and (with
``+ baseline``, the default) each group's difference to the baseline no declared contrast compares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, NoReturn, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from vit_ablate import rundir
from vit_ablate.report import stats
from vit_ablate.report.references import canon, header_lines, header_tokens, number, sort_key
from vit_ablate.schema import did_you_mean

ALPHA = stats.ALPHA
KINDS = ("paired", "interaction", "fisher", "equivalence")
_OPTIONS = ("margin", "expect", "effect", "outcome", "source", "note")


def _side(s: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in s.items())


@dataclass
class ContrastSpec:
    role: str  # "primary" | "secondary"
    kind: str
    a: Dict[str, str]  # canonical assignments of side A
    b: Dict[str, str]
    c: Dict[str, str] = field(default_factory=dict)  # interaction: the second factor's two levels
    d: Dict[str, str] = field(default_factory=dict)
    where: Dict[str, str] = field(default_factory=dict)
    margin: Optional[float] = None
    expect: Optional[str] = None  # "greater" | "less": the paper's sign of A − B
    effect: Optional[float] = None
    outcome: str = rundir.DIVERGED
    line: int = 0
    text: str = ""
    origin: str = "sweep file"

    @property
    def label(self) -> str:
        body = {"interaction": f"({_side(self.a)} − {_side(self.b)}) at {_side(self.c)} − the same at {_side(self.d)}",
                "fisher": f"{self.outcome} runs: {_side(self.a)} vs {_side(self.b)}"}.get(self.kind, f"{_side(self.a)} − {_side(self.b)}")
        return body + (f" where {_side(self.where)}" if self.where else "")


def _parse_line(role: str, body: str, lineno: int, origin: str) -> ContrastSpec:
    def fail(problem: str) -> NoReturn:
        raise ValueError(where + problem)

    where = f"line {lineno} of {origin}: {role}: "
    kind, *tokens = header_tokens(body, where) or [""]
    if kind.lower() not in KINDS:
        fail(f"unknown kind {kind!r}; the kinds are {', '.join(KINDS)}{did_you_mean(kind.lower(), KINDS)}")
    kind, sections, separators, options = kind.lower(), [{}], [], {}  # sections split by vs / by / where
    for token in tokens:
        key, sep, value = (part.strip() for part in token.partition("="))
        if token.lower() in ("vs", "by", "where"):
            separators.append(token.lower())
            sections.append({})
        elif not (sep and key):
            fail(f"{token!r} is not of the form key=value, 'vs', 'by' or 'where'")
        elif key in _OPTIONS:
            options[key] = value
        else:
            sections[-1][key] = canon(value)
    condition = {}
    if separators[-1:] == ["where"]:
        separators, condition = separators[:-1], sections.pop()
    if separators != (["vs", "by", "vs"] if kind == "interaction" else ["vs"]) or not all(sections):
        fail(f"expected '{kind} {'A vs B by C vs D' if kind == 'interaction' else 'A vs B'} [where KEY=VALUE ...]', "
             f"each side KEY=VALUE ..., got {body.strip()!r}")
    spec = ContrastSpec(role, kind, *sections, where=condition, line=lineno, text=body.strip(), origin=origin,
                        margin=number(options, "margin", where), effect=number(options, "effect", where),
                        expect=options.get("expect", "").lower() or None, outcome=options.get("outcome", rundir.DIVERGED).lower())
    if kind == "interaction":
        for first, second, what in ((spec.a, spec.b, "A vs B"), (spec.c, spec.d, "C vs D")):
            if len(first) != 1 or set(first) != set(second) or first == second:
                fail(f"interaction needs a 2×2 design: {what} must be two values of one key (e.g. model.pool=cls vs "
                     f"model.pool=gap), got {_side(first)} vs {_side(second)}")
        if set(spec.a) == set(spec.c):
            fail(f"interaction needs a 2×2 design: its two factors are the same key {next(iter(spec.a))}")
    elif spec.a == spec.b:
        fail(f"both sides are {_side(spec.a)}: nothing to compare")
    if (kind == "equivalence" or spec.margin is not None) and not (spec.margin and math.isfinite(spec.margin) and spec.margin > 0):
        fail("an equivalence needs margin=M > 0, the largest difference that counts as equal in the metric's units "
             "(e.g. margin=0.01 for one point of accuracy), stated before the runs")
    if spec.expect not in (None, "greater", "less"):
        fail(f"expect={options['expect']!r}: use expect=greater or expect=less (the sign of A − B)")
    return spec


def parse_contrast_comments(text: str, origin: str = "sweep file") -> List[ContrastSpec]:
    """Every ``# primary:`` and ``# secondary:`` line (at most one primary) → ContrastSpec; ``# holm:`` checked too."""
    specs = [_parse_line(role, body, n, origin) for n, role, body in header_lines(text, "primary", "secondary")]
    parse_holm_comment(text, origin)
    primaries = [s for s in specs if s.role == "primary"]
    if len(primaries) > 1:
        raise ValueError(f"{origin}: {len(primaries)} primary contrasts (lines {', '.join(str(s.line) for s in primaries)}); "
                         "a comparison has one primary test: make the others '# secondary:'")
    return specs


def parse_holm_comment(text: str, origin: str = "sweep file") -> Optional[Tuple[Tuple[str, ...], str]]:
    """The ``# holm:`` line as ``(members, "declared on line N of ORIGIN")``; None when the file has none."""
    if not (lines := header_lines(text, "holm")):
        return None
    lineno, _, body = lines[0]
    members = tuple(dict.fromkeys(t.lower() for t in header_tokens(body, f"line {lineno} of {origin}: holm: ") if t != "+"))
    if len(lines) > 1 or not set(members) <= {"secondary", "baseline"} or "secondary" not in members:
        raise ValueError(f"line {lineno} of {origin}: holm: expected one line '# holm: secondary' or '# holm: secondary + "
                         f"baseline' (the primary is tested alone at α = {ALPHA}), got {body.strip()!r}")
    return members, f"declared on line {lineno} of {origin}"


def validate_contrasts(specs: Sequence[ContrastSpec], values_of: Mapping[str, Sequence[str]]) -> None:
    """Every key and value a contrast names must exist in the runs (``values_of``: key → canonical values)."""
    for spec in specs:
        where = f"line {spec.line} of {spec.origin}: {spec.role}: "
        for key, value in [item for side in (spec.a, spec.b, spec.c, spec.d, spec.where) for item in side.items()]:
            if key not in values_of:
                raise ValueError(f"{where}{key}={value} names a key no run has{did_you_mean(key, values_of, cutoff=0)}")
            seen = sorted(values_of[key], key=sort_key)
            if value not in seen:
                raise ValueError(f"{where}{key}={value} names a group the sweep does not have: {key} is "
                                 f"{', '.join(seen)}{did_you_mean(value, seen, cutoff=0)}")


@dataclass
class ContrastResult(stats.MeanTest):
    """A declared contrast's test; fisher: ``n`` finished runs, ``estimate`` rate(A) − rate(B), ``min_perm_p`` its floor."""
    spec: Optional[ContrastSpec] = None
    ci_label: str = "95% t"
    p: float = math.nan  # the test's p: t-test, TOST, or Fisher
    p_holm: float = math.nan  # secondaries: the family's adjusted p
    counts: Tuple[int, int, int, int] = (0, 0, 0, 0)  # fisher: events A, total A, events B, total B
    expect: Optional[str] = None
    effect: Optional[float] = None  # the paper's A − B in metric units (power), if known
    effect_source: str = ""
    power: float = math.nan
    detectable: float = math.nan  # smallest |effect| with 80% power at this n and spread
    verdict: str = ""
    notes: List[str] = field(default_factory=list)
    plan: Any = None  # the sweep's group-sequential plan (report.sequential.Plan), which then decides the verdict
    looks: List[Any] = field(default_factory=list)  # its looks so far (report.sequential.Look)
    looks_end: str = ""  # why no further look was made (a stage not finished, the plan's stop on failures)
    stage_open: bool = False  # the stage after the last look is still to run

    @property
    def kind(self) -> str:
        return self.spec.kind


def _select(runs: pd.DataFrame, wanted: Mapping[str, str]) -> pd.DataFrame:
    return runs[runs[list(wanted)].eq(pd.Series(wanted, dtype=object)).all(axis=1)] if set(wanted) <= set(runs) else runs.iloc[:0]


def _cell(runs: pd.DataFrame, wanted: Mapping[str, str], pair_keys: List[str]) -> pd.Series:
    """One side's metric values by pair key (the free grouping keys and the seed); a key's runs averaged."""
    return _select(runs, wanted).dropna(subset=["value", "seed"]).groupby(pair_keys, dropna=False)["value"].mean()


def _common(cells: Sequence[pd.Series]) -> List:
    keys = set(cells[0].index).intersection(*(set(c.index) for c in cells[1:]))
    return sorted(keys, key=lambda k: tuple(sort_key(str(v)) for v in (k if isinstance(k, tuple) else (k,))))


def evaluate_contrast(spec: ContrastSpec, runs: pd.DataFrame, by: Sequence[str], metric: str,
                  reference_of: Callable[[Mapping[str, str]], Optional[Mapping[str, Any]]] = lambda _: None,
                  seed: Sequence[int] = (0,)) -> ContrastResult:
    """Test one contrast on the runs (``seed``, ``status``, ``value``: NaN where a run does not count), any
    subset of them (a look at k seeds). References give the expected direction whatever they measured,
    an effect size (for the power) only when they measure ``metric``."""
    pair_keys = [k for k in by if k not in {*spec.a, *spec.b, *spec.c, *spec.d, *spec.where}] + ["seed"]
    result = ContrastResult(spec=spec, expect=spec.expect, effect=spec.effect,
                            effect_source="declared in the sweep file" if spec.effect is not None else "")
    if spec.kind == "fisher":
        counts = []
        for side in (spec.a, spec.b):
            statuses = _select(runs, {**side, **spec.where})["status"]
            finished = statuses[statuses.isin([*rundir.FINAL_STATUSES, spec.outcome])]
            counts += [int((finished == spec.outcome).sum()), len(finished)]
            result.notes += [f"{len(statuses) - len(finished)} run(s) neither completed nor {spec.outcome} are not counted"
                             ] if len(statuses) > len(finished) else []
        ea, ta, eb, tb = result.counts = tuple(counts)
        result.n = ta + tb
        if ta and tb:
            result.estimate, result.p = ea / ta - eb / tb, stats.fisher(ea, ta, eb, tb)
            result.min_perm_p = stats.fisher(ta, ta, 0, tb)  # all of one side against none of the other
        return result
    if spec.kind == "interaction":
        cells = [_cell(runs, {**side, **level, **spec.where}, pair_keys)
                 for level in (spec.c, spec.d) for side in (spec.a, spec.b)]
        if not (common := _common(cells)):
            result.notes.append("no seed has all four cells of the 2×2 design: no test")
            return result
        test = stats.paired_test([(cells[0][k] - cells[1][k]) - (cells[2][k] - cells[3][k]) for k in common], np.zeros(len(common)), seed)
    else:
        if spec.effect is None:
            ref_a, ref_b = reference_of({**spec.a, **spec.where}), reference_of({**spec.b, **spec.where})
            if ref_a and ref_b and ref_a is not ref_b and ref_a.get("metric") == ref_b.get("metric"):
                paper = float(ref_a["value"]) - float(ref_b["value"])
                if ref_a.get("metric") == metric:
                    result.effect, result.effect_source = paper, f"{ref_a.get('source') or ref_b.get('source') or 'paper'}, {metric}"
                if result.expect is None and paper and spec.kind == "paired":
                    result.expect = "greater" if paper > 0 else "less"
        cell_a, cell_b = (_cell(runs, {**side, **spec.where}, pair_keys) for side in (spec.a, spec.b))
        if common := _common([cell_a, cell_b]):
            test = stats.paired_test(cell_a[common].to_numpy(), cell_b[common].to_numpy(), seed)
        elif len(cell_a) and len(cell_b):
            test = stats.welch_test(cell_a.to_numpy(), cell_b.to_numpy(), seed)
            result.notes.append("no seed in common: Welch's unpaired t-test (and the unpaired permutation test)")
        else:
            result.notes.append("a side has no completed run with the metric: no test")
            return result
    vars(result).update(vars(test), p=test.p_t)
    if spec.kind == "equivalence":
        result.p, result.ci_low, result.ci_high = stats.tost(result.per_seed, spec.margin)
        result.ci_label = "TOST 90% t"
    if result.n >= 2 and math.isfinite(result.sd):
        result.detectable = stats.detectable_effect(result.sd, result.n)
        if spec.kind == "equivalence":
            result.power = stats.tost_power(result.effect or 0.0, spec.margin, result.sd, result.n)
        elif result.effect is not None:
            result.power = stats.t_power(result.effect, result.sd, result.n)
    return result


def decide(result: ContrastResult) -> str:
    """The verdict in fixed words, from the primary's p or a secondary's Holm-adjusted p (an equivalence's: its TOST's)."""
    r, primary = result, result.spec.role == "primary"
    p = r.p if primary else r.p_holm
    if math.isnan(p) or (p >= ALPHA and not (r.kind == "equivalence" and primary and r.p_t < ALPHA)):
        r.verdict = f"inconclusive at n = {r.n}" if r.kind != "fisher" else f"inconclusive at n = {r.counts[1]} vs {r.counts[3]} runs"
    elif r.kind == "equivalence":
        r.verdict = f"equivalent within ±{r.spec.margin:g}" if p < ALPHA else "contradicted"
    elif r.expect is None or r.estimate == 0:
        r.verdict = "different (the sweep file states no expected direction)"
    else:
        r.verdict = "reproduced" if (r.estimate > 0) == (r.expect == "greater") else "contradicted"
    return r.verdict
