"""Group-sequential plans: a sweep adds seeds stage by stage until its primary test decides.

A sweep file declares the plan beside its primary test, over the seeds its ``seed`` parameter lists::

    # primary: paired model.stem=hybrid vs model.stem=patch
    # sequential: stages=3 seeds_per_stage=8 spending=obrien_fleming alpha=0.05 futility=true effect_size=0.8

Looking at a t-test after every batch of seeds at the nominal α inflates the false-positive rate
(Armitage, McPherson & Rowe 1969: about 0.14 at five looks with α = 0.05). A group-sequential design
keeps it: the sweep's α is spent across the looks by a Lan–DeMets (1983) spending function of the
information fraction τ = seeds so far / the plan's seeds, so a look may fall at any number of seeds:

    obrien_fleming   α(τ) = 2 − 2Φ(z_{1−α/2} / √τ)     strict early, near nominal at the end
    pocock           α(τ) = α · ln(1 + (e − 1) τ)        about the same boundary at every look

The classic boundaries are for z statistics. With a handful of seeds the paired t statistic has heavy
tails, and its successive values share one variance estimate, so the boundaries here are computed for t
itself at the seeds actually reached: the first exactly (a t quantile), later ones as order statistics
of the t statistics of simulated null sweeps (differences ~ N(0, 1); t does not depend on σ) that have
not stopped yet, from a fixed seed, so the same looks always give the same boundaries.

``futility=true`` adds a binding futility boundary: a look stops when |t| falls below a cut that spends
the type-II error at the planned ``effect_size`` (mean / sd of the per-seed differences) in the same
shape, and the efficacy boundaries are computed on the null sweeps that did not stop for futility, so
the α of a sweep that obeys its plan is the plan's α. ``on_failure``: ``drop`` looks at a stage without
the seeds whose runs failed or diverged (the boundary is computed for the seeds left) and never retries
them; ``stop`` halts the sweep before looking at a stage with failed runs, and rerunning the sweep retries
them (a diverged run is an outcome, dropped either way).

After a sequential stop the plain t interval no longer keeps its coverage; the repeated confidence
interval (Jennison & Turnbull 1989) mean ± c_k · se_k, c_k the look's efficacy boundary, covers the true
difference at every look at once with probability ≥ 1 − α.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from vit_ablate.schema import did_you_mean
from vit_ablate.report.references import canon, header_tokens

SIMULATIONS = 200_000  # null sweeps per boundary computation: α within about ±0.001
_CHUNK = 20_000
_LINE_RE = re.compile(r"^\s*#\s*sequential\s*:(?P<body>.*)$", re.IGNORECASE)
SPENDING = {
    "obrien_fleming": lambda total, tau: float(2 - 2 * stats.norm.cdf(stats.norm.ppf(1 - total / 2) / math.sqrt(tau))),
    "pocock": lambda total, tau: float(total * math.log(1 + (math.e - 1) * tau)),
}
SPENDING_NAMES = {"obrien_fleming": "O'Brien–Fleming", "pocock": "Pocock"}
ON_FAILURE = ("drop", "stop")
_OPTIONS = ("stages", "seeds_per_stage", "max_seeds", "alpha", "spending", "futility", "effect_size", "on_failure")


@dataclass(frozen=True)
class Plan:
    """The seeds of each stage (canonical strings, in the order the sweep lists them) and the rules."""

    stages: Tuple[Tuple[str, ...], ...]
    alpha: float = 0.05
    spending: str = "obrien_fleming"
    futility: bool = False
    effect_size: Optional[float] = None
    on_failure: str = "drop"
    where: str = ""  # "line N of FILE"

    @property
    def max_seeds(self) -> int:
        return sum(len(s) for s in self.stages)

    @property
    def looks(self) -> Tuple[int, ...]:
        return tuple(int(n) for n in np.cumsum([len(s) for s in self.stages]))

    def seeds_through(self, stage: int) -> List[str]:
        return [s for seeds in self.stages[: stage + 1] for s in seeds]

    def describe(self) -> str:
        futility = f", binding futility at effect size {self.effect_size:g}" if self.futility else ""
        return (f"{len(self.stages)} stages of {'/'.join(str(len(s)) for s in self.stages)} seeds (at most {self.max_seeds}), "
                f"two-sided α = {self.alpha:g} spent {SPENDING_NAMES[self.spending]}-type{futility}; "
                f"failed or diverged runs: {self.on_failure}")


def parse_plan(text: str, origin: str, seeds: Optional[Sequence], has_primary: bool, primary_kind: str = "") -> Optional[Plan]:
    """The ``# sequential:`` line of a sweep file, checked against its seeds and primary test; None
    without one. ValueError (one line, naming the line) for a plan that cannot run."""
    lines = [(n, m) for n, line in enumerate(text.splitlines(), start=1) for m in [_LINE_RE.match(line)] if m]
    if not lines:
        return None
    (lineno, match), where = lines[0], f"line {lines[0][0]} of {origin}: sequential: "
    if len(lines) > 1:
        raise ValueError(f"{where}a sweep has one plan; line {lines[1][0]} declares a second")
    options = {}
    for token in header_tokens(match["body"], where):
        key, sep, value = token.partition("=")
        if not sep or key not in _OPTIONS:
            raise ValueError(f"{where}{token!r} is not one of {', '.join(o + '=' for o in _OPTIONS)}{did_you_mean(key, _OPTIONS)}")
        options[key] = value.strip()
    if not has_primary:
        raise ValueError(f"{where}a plan needs the test it decides: declare '# primary: paired A vs B' (or an interaction)")
    if primary_kind not in ("paired", "interaction"):
        raise ValueError(f"{where}a plan decides a per-seed mean difference; the primary is a {primary_kind} test: use paired or interaction")
    if not seeds:
        raise ValueError(f"{where}a plan adds seeds stage by stage: the sweep needs parameters: seed: values: [...]")
    seeds = [canon(s) for s in seeds]

    def number(key: str, kind=float):
        try:
            return kind(options[key]) if key in options else None
        except ValueError:
            raise ValueError(f"{where}{key}={options[key]!r} is not a{'n integer' if kind is int else ' number'}") from None

    stages, per_stage, most = number("stages", int), number("seeds_per_stage", int), number("max_seeds", int)
    if stages is None or stages < 1 or (per_stage is None) == (most is None):
        raise ValueError(f"{where}give stages=K and either seeds_per_stage=M or max_seeds=N (e.g. stages=3 seeds_per_stage=8)")
    most = most if most is not None else stages * per_stage
    if most != len(seeds) or most % stages or most // stages < 2:
        raise ValueError(f"{where}stages={stages} × {most // stages if most % stages == 0 else most / stages:g} seeds does not add up: the sweep "
                         f"lists {len(seeds)} seeds, which must split into {stages} equal stages of at least 2")
    alpha = number("alpha") if "alpha" in options else 0.05
    if not 0 < alpha < 0.5:
        raise ValueError(f"{where}alpha={options['alpha']} must lie in (0, 0.5)")
    spending = options.get("spending", "obrien_fleming")
    if spending not in SPENDING:
        raise ValueError(f"{where}spending={spending!r} is not valid; choose one of {', '.join(SPENDING)}{did_you_mean(spending, SPENDING)}")
    futility = options.get("futility", "false").lower()
    if futility not in ("true", "false"):
        raise ValueError(f"{where}futility={options['futility']!r}: use true or false")
    effect = number("effect_size")
    if effect is not None and not (math.isfinite(effect) and effect > 0):
        raise ValueError(f"{where}effect_size={options['effect_size']} must be a positive number (mean / sd of the per-seed differences)")
    if futility == "true" and effect is None:
        raise ValueError(f"{where}futility=true needs effect_size=D, the planned mean / sd of the per-seed differences")
    on_failure = options.get("on_failure", "drop")
    if on_failure not in ON_FAILURE:
        raise ValueError(f"{where}on_failure={on_failure!r} is not valid; choose one of {', '.join(ON_FAILURE)}{did_you_mean(on_failure, ON_FAILURE)}")
    size = most // stages
    return Plan(tuple(tuple(seeds[k * size:(k + 1) * size]) for k in range(stages)), alpha, spending,
                futility == "true", effect, on_failure, f"line {lineno} of {origin}")


# ------------------------------------------------------------------------------------- boundaries
def t_statistics(ns: Sequence[int], shift: float, sweeps: int, seed: int) -> np.ndarray:
    """Paired t statistics after ``ns[k]`` seeds of N(shift, 1) differences, for ``sweeps`` simulated
    sweeps: an array (sweeps, len(ns))."""
    rng = np.random.default_rng(seed)
    out = np.empty((sweeps, len(ns)))
    for start in range(0, sweeps, _CHUNK):
        d = rng.standard_normal((min(_CHUNK, sweeps - start), ns[-1])) + shift
        s1, s2 = np.cumsum(d, axis=1), np.cumsum(d * d, axis=1)
        for k, n in enumerate(ns):
            mean = s1[:, n - 1] / n
            var = np.maximum((s2[:, n - 1] - n * mean * mean) / (n - 1), 1e-300)
            out[start:start + len(d), k] = mean / np.sqrt(var / n)
    return out


@dataclass
class Boundaries:
    ns: List[int]
    efficacy: List[float]  # reject when |t| ≥ efficacy[k]
    futility: List[Optional[float]]  # stop as futile when |t| < futility[k]
    power: Optional[float]  # P(reject) at the plan's effect size with these looks and boundaries


@functools.lru_cache(maxsize=64)
def boundaries(plan: Plan, ns: Optional[Tuple[int, ...]] = None, sweeps: int = SIMULATIONS, seed: int = 1983) -> Boundaries:
    """Boundaries for looks after ``ns[k]`` seeds, look k closing stage k (default: the plan's looks;
    fewer seeds where runs dropped out). The plan's last stage spends all the α left. Cached: the same
    looks always give the same boundaries."""
    ns = list(plan.looks if ns is None else ns)
    null = np.abs(t_statistics(ns, 0.0, sweeps, seed))
    alt = np.abs(t_statistics(ns, plan.effect_size, sweeps, seed + 1)) if plan.effect_size else None
    beta = 1 - _spend(plan, ns, null, alt, 0.0)[2] if plan.futility else 0.0
    return Boundaries(ns, *_spend(plan, ns, null, alt, beta))


def _spend(plan: Plan, ns: List[int], null: np.ndarray, alt: Optional[np.ndarray], beta: float):
    """One pass over the looks: each efficacy cut spends α on the null sweeps still going, each
    futility cut (when ``beta``) spends β on the alternative sweeps still going."""
    efficacy, futility = [], []
    going_null, going_alt = np.ones(len(null), bool), np.ones(len(null), bool)
    rejected, spent_alpha, spent_beta = 0, 0.0, 0.0
    for k, n in enumerate(ns):
        final = k == len(plan.stages) - 1
        tau = min(n / plan.max_seeds, 1.0)
        step, spent_alpha = _increment(plan.alpha if final else SPENDING[plan.spending](plan.alpha, tau), spent_alpha)
        if k == 0:  # exact: Student's t with n − 1 degrees of freedom
            cut = float(stats.t.ppf(1 - step / 2, n - 1)) if step > 0 else math.inf
        else:
            cut = _cut(null[going_null, k], step * len(null), from_top=True)
        efficacy.append(cut)
        going_null &= null[:, k] < cut
        low = None
        if alt is not None:
            hit = going_alt & (alt[:, k] >= cut)
            rejected += int(hit.sum())
            going_alt &= ~hit
            if beta and not final:
                step_b, spent_beta = _increment(SPENDING[plan.spending](beta, tau), spent_beta)
                low = min(_cut(alt[going_alt, k], step_b * len(alt), from_top=False), cut)
                going_alt &= alt[:, k] >= low
                going_null &= null[:, k] >= low
        futility.append(low)
    return efficacy, futility, (rejected / len(alt) if alt is not None else None)


def _increment(spent_now: float, spent_before: float) -> Tuple[float, float]:
    return max(spent_now - spent_before, 0.0), max(spent_now, spent_before)


def _cut(values: np.ndarray, count: float, from_top: bool) -> float:
    """The cut with about ``count`` of ``values`` at or above it (``from_top``) or below it."""
    k, size = int(round(count)), len(values)
    if k <= 0:
        return math.inf if from_top else 0.0
    if k >= size:
        return 0.0 if from_top else math.inf
    return float(np.partition(values, size - k)[size - k] if from_top else np.partition(values, k)[k])


# ------------------------------------------------------------------------------------------ looks
@dataclass
class Look:
    stage: int  # 1-based
    n: int  # seeds in the look (pairs with both arms counted)
    mean: float
    se: float
    t: float
    efficacy: float
    futility: Optional[float]
    rci: Tuple[float, float]  # repeated confidence interval at level 1 − α
    decision: str  # "reject" | "futile" | "continue" | "not rejected"
    dropped: int = 0  # seeds of the stages so far left out (a run failed or diverged)


def decide_looks(plan: Plan, differences: Sequence[Sequence[float]], dropped: Sequence[int] = ()) -> List[Look]:
    """``differences[k]``: the per-seed differences available at the end of stage k (cumulative).
    One Look per stage up to the first that does not say "continue"."""
    ns = [len(d) for d in differences]
    if not ns or min(ns) < 2:
        raise ValueError(f"a look needs at least 2 seeds with both arms; stage {ns.index(min(ns)) + 1 if ns else 1} has {min(ns) if ns else 0}")
    bounds = boundaries(plan, tuple(ns))
    looks: List[Look] = []
    for k, d in enumerate(differences):
        d = np.asarray(d, dtype=float)
        mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))
        t = mean / se if se > 0 else (math.copysign(math.inf, mean) if mean else 0.0)
        cut, low = bounds.efficacy[k], bounds.futility[k]
        if abs(t) >= cut:
            decision = "reject"
        elif low is not None and abs(t) < low:
            decision = "futile"
        else:
            decision = "not rejected" if k == len(plan.stages) - 1 else "continue"
        half = cut * se if math.isfinite(cut) else math.inf
        looks.append(Look(k + 1, d.size, mean, se, t, cut, low, (mean - half, mean + half), decision,
                          dropped[k] if k < len(dropped) else 0))
        if decision != "continue":
            break
    return looks


def plan_power(plan: Plan) -> Optional[float]:
    """The power the plan states: P(reject) at its effect size, every stage's seeds counted."""
    return boundaries(plan).power if plan.effect_size else None


ENDED = ("completed", "diverged", "failed")  # a run that will not change any more within a sweep


def stage_looks(plan: Plan, runs, arms: int, differences: Callable[[Any], Sequence[float]]) -> Tuple[List[Look], str, bool]:
    """The looks a sweep makes, from its table of runs (``seed``, ``status``, ``value``): stage k is
    looked at once its ``arms`` × seeds runs have all ended, on the per-seed ``differences`` of the rows
    of stages 1..k. Returns the looks, why there are no more (or ""), and whether the stage after the
    last look is still to run (rather than stopped by a decision or by the plan's rule on failures)."""
    diffs, dropped = [], []
    for k, seeds in enumerate(plan.stages):
        rows = runs[runs["seed"].isin(seeds)]
        ended = rows["status"].isin(ENDED)
        if int(ended.sum()) < arms * len(seeds):
            waiting = "not started" if rows.empty else f"{int(ended.sum())} of {arms * len(seeds)} runs ended"
            return _decided(plan, diffs, dropped, f"stage {k + 1} of {len(plan.stages)}: {waiting}", True)
        failed = int((rows["status"] == "failed").sum())
        if failed and plan.on_failure == "stop":
            return _decided(plan, diffs, dropped, f"stage {k + 1}: {failed} run(s) failed, and the plan stops before "
                                                  "looking (on_failure=stop); rerunning the sweep retries them")
        d = differences(runs[runs["seed"].isin(plan.seeds_through(k))])
        diffs.append(d)
        dropped.append(len(plan.seeds_through(k)) - len(d))
        if len(d) < 2:
            return _decided(plan, diffs[:-1], dropped[:-1], f"stage {k + 1}: {len(d)} seed(s) with both arms; a look needs 2")
        looks = decide_looks(plan, diffs, dropped)
        if looks[-1].decision != "continue":
            return looks, "", False
    return decide_looks(plan, diffs, dropped), "", False


def _decided(plan: Plan, diffs, dropped, why: str, waiting: bool = False) -> Tuple[List[Look], str, bool]:
    return (decide_looks(plan, diffs, dropped) if diffs else []), why, waiting


def sequential_verdict(looks: Sequence[Look], why: str, plan: Plan, expect: Optional[str]) -> str:
    """The primary's verdict in fixed words, from the plan's looks alone."""
    if not looks or looks[-1].decision == "continue":
        return f"undecided: {why or 'no look yet'} (plan of at most {plan.max_seeds} seeds)"
    last = looks[-1]
    where = f"at stage {last.stage} of {len(plan.stages)} ({last.n} of {plan.max_seeds} seeds)"
    if last.decision == "futile":
        return f"inconclusive: stopped for futility {where}"
    if last.decision == "not rejected":
        return f"inconclusive at n = {last.n} (the plan's last stage)"
    if expect is None:
        return f"different {where} (the sweep file states no expected direction)"
    return f"{'reproduced' if (last.mean > 0) == (expect == 'greater') else 'contradicted'} {where}"
