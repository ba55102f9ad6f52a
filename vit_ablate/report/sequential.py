"""Group-sequential plans: a sweep adds seeds stage by stage until its primary test decides::

    # sequential: stages=3 seeds_per_stage=8 spending=obrien_fleming alpha=0.05 futility=true effect_size=0.8

A t-test after every stage at the nominal α inflates the false positives (Armitage, McPherson & Rowe
1969: ~0.14 at five looks). α is spent by a Lan–DeMets (1983) function of τ = seeds so far / planned:
``obrien_fleming`` 2 − 2Φ(z_{1−α/2}/√τ), ``pocock`` α·ln(1 + (e − 1)τ). Few seeds give t heavy tails, so
the boundaries are for t at the seeds reached: the first a t quantile, later ones order statistics of
simulated null sweeps still going (t does not depend on σ; fixed seed). ``futility=true`` adds a binding
boundary spending β at ``effect_size`` (mean / sd of the differences). ``on_failure``: ``drop`` looks
without failed seeds, ``stop`` halts before such a stage (a rerun retries it). The repeated confidence
interval mean ± c_k·se_k (Jennison & Turnbull 1989) covers at every look at once with probability ≥ 1 − α.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, List, NoReturn, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from vit_ablate import rundir
from vit_ablate.report.references import canon, header_lines, number, parse_assignments
from vit_ablate.schema import did_you_mean

SIMULATIONS = 200_000  # null sweeps per boundary computation: α within about ±0.001
_CHUNK = 20_000
SPENDING = {
    "obrien_fleming": lambda total, tau: float(2 - 2 * stats.norm.cdf(stats.norm.ppf(1 - total / 2) / math.sqrt(tau))),
    "pocock": lambda total, tau: float(total * math.log(1 + (math.e - 1) * tau)),
}
SPENDING_NAMES = {"obrien_fleming": "O'Brien–Fleming", "pocock": "Pocock"}
_CHOICES = {"spending": tuple(SPENDING), "futility": ("true", "false"), "on_failure": ("drop", "stop")}
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
    """The ``# sequential:`` line checked against the sweep's seeds and primary test; None without one."""
    if not (lines := header_lines(text, "sequential")):
        return None
    where = f"line {lines[0][0]} of {origin}: sequential: "

    def fail(problem: str) -> NoReturn:
        raise ValueError(where + problem)

    if len(lines) > 1:
        fail(f"a sweep has one plan; line {lines[1][0]} declares a second")
    options = parse_assignments(lines[0][2], where)
    for key, value in options.items():
        if key not in _OPTIONS:
            fail(f"{key}= is not one of {', '.join(o + '=' for o in _OPTIONS)}{did_you_mean(key, _OPTIONS)}")
        value = options[key] = value.lower() if key in _CHOICES else value
        if value not in _CHOICES.get(key, (value,)):
            fail(f"{key}={value!r} is not valid; choose one of {', '.join(_CHOICES[key])}{did_you_mean(value, _CHOICES[key])}")
    if not has_primary or primary_kind not in ("paired", "interaction"):  # a plan decides a per-seed mean difference
        fail(f"a plan needs the test it decides: the primary is a {primary_kind} test: use paired or interaction" if has_primary
             else "a plan needs the test it decides: declare '# primary: paired A vs B' (or an interaction)")
    if not seeds:
        fail("a plan adds seeds stage by stage: the sweep needs parameters: seed: values: [...]")
    stages, per_stage, most = (number(options, k, where, int) for k in ("stages", "seeds_per_stage", "max_seeds"))
    if stages is None or stages < 1 or (per_stage is None) == (most is None):
        fail("give stages=K and either seeds_per_stage=M or max_seeds=N (e.g. stages=3 seeds_per_stage=8)")
    most = most if most is not None else stages * per_stage
    if most != len(seeds) or most % stages or most // stages < 2:
        fail(f"{most} seeds in {stages} stages does not add up: the sweep lists {len(seeds)} seeds, which must split "
             f"into {stages} equal stages of at least 2")
    alpha = number(options, "alpha", where) if "alpha" in options else 0.05
    if not 0 < alpha < 0.5:
        fail(f"alpha={options['alpha']} must lie in (0, 0.5)")
    effect, futility = number(options, "effect_size", where), options.get("futility") == "true"
    if (effect is not None and not (math.isfinite(effect) and effect > 0)) or (futility and effect is None):
        fail("futility=true needs effect_size=D > 0, the planned mean / sd of the per-seed differences")
    size, seeds = most // stages, [canon(s) for s in seeds]
    return Plan(tuple(tuple(seeds[k * size:(k + 1) * size]) for k in range(stages)), alpha,
                options.get("spending", "obrien_fleming"), futility, effect, options.get("on_failure", "drop"),
                f"line {lines[0][0]} of {origin}")


def t_statistics(ns: Sequence[int], shift: float, sweeps: int, seed: int) -> np.ndarray:
    """Paired t after ``ns[k]`` seeds of N(shift, 1) differences in ``sweeps`` simulated sweeps: (sweeps, len(ns))."""
    rng, n, out = np.random.default_rng(seed), np.asarray(ns), np.empty((sweeps, len(ns)))
    for start in range(0, sweeps, _CHUNK):  # in chunks: 200,000 sweeps of 24 seeds at once would take gigabytes
        d = rng.standard_normal((min(_CHUNK, sweeps - start), ns[-1])) + shift
        mean = np.cumsum(d, axis=1)[:, n - 1] / n
        var = np.maximum((np.cumsum(d * d, axis=1)[:, n - 1] - n * mean * mean) / (n - 1), 1e-300)
        out[start:start + len(d)] = mean / np.sqrt(var / n)
    return out


@dataclass
class Boundaries:
    efficacy: List[float]  # reject when |t| ≥ efficacy[k]
    futility: List[Optional[float]]  # stop as futile when |t| < futility[k]
    power: Optional[float]  # P(reject) at the plan's effect size over the whole plan


@functools.lru_cache(maxsize=64)
def boundaries(plan: Plan, ns: Optional[Tuple[int, ...]] = None, sweeps: int = SIMULATIONS, seed: int = 1983) -> Boundaries:
    """Boundaries of the looks made so far, after ``ns[k]`` seeds (default: every planned look; fewer seeds
    where runs dropped out). The looks still to come count at their planned seeds: the futility cuts spend
    the type-II error of the whole plan, and the power is the whole plan's. Cached."""
    done = list(plan.looks if ns is None else ns)
    ns = done + list(plan.looks[len(done):])
    null = np.abs(t_statistics(ns, 0.0, sweeps, seed))
    alt = np.abs(t_statistics(ns, plan.effect_size, sweeps, seed + 1)) if plan.effect_size else None
    beta = 1 - _spend(plan, ns, null, alt, 0.0)[2] if plan.futility else 0.0
    efficacy, futility, power = _spend(plan, ns, null, alt, beta)
    return Boundaries(efficacy[:len(done)], futility[:len(done)], power)


def _spend(plan: Plan, ns: List[int], null: np.ndarray, alt: Optional[np.ndarray], beta: float):
    """Each efficacy cut spends α on the null sweeps still going, each futility cut (with ``beta``) β on the alternative's."""
    efficacy, futility = [], []
    going_null, going_alt = np.ones(len(null), bool), np.ones(len(null), bool)
    rejected, spent_alpha, spent_beta = 0, 0.0, 0.0
    for k, n in enumerate(ns):
        final, tau = k == len(plan.stages) - 1, min(n / plan.max_seeds, 1.0)
        spend = plan.alpha if final else SPENDING[plan.spending](plan.alpha, tau)  # by now, in all
        step, spent_alpha = max(spend - spent_alpha, 0.0), max(spend, spent_alpha)
        # the first look exactly (Student's t with n − 1 degrees of freedom), later ones on the null sweeps still going
        cut = (float(stats.t.ppf(1 - step / 2, n - 1)) if step > 0 else math.inf) if k == 0 else \
            _cut(null[going_null, k], step * len(null), from_top=True)
        efficacy.append(cut)
        going_null &= null[:, k] < cut
        low = None
        if alt is not None:
            hit = going_alt & (alt[:, k] >= cut)
            rejected += int(hit.sum())
            going_alt &= ~hit
            if beta and not final:
                spend = SPENDING[plan.spending](beta, tau)
                step_b, spent_beta = max(spend - spent_beta, 0.0), max(spend, spent_beta)
                low = min(_cut(alt[going_alt, k], step_b * len(alt), from_top=False), cut)
                going_alt &= alt[:, k] >= low
                going_null &= null[:, k] >= low
        futility.append(low)
    return efficacy, futility, (rejected / len(alt) if alt is not None else None)


def _cut(values: np.ndarray, count: float, from_top: bool) -> float:
    """The cut with about ``count`` of ``values`` at or above it (``from_top``) or below it."""
    k, size = int(round(count)), len(values)
    if k <= 0 or k >= size:  # none of them: beyond every value; all of them: before every value
        return math.inf if (k <= 0) == from_top else 0.0
    return float(np.partition(values, size - k)[size - k] if from_top else np.partition(values, k)[k])


@dataclass
class Look:
    stage: int  # 1-based
    n: int  # seeds with both arms
    mean: float
    se: float
    t: float
    efficacy: float
    futility: Optional[float]
    rci: Tuple[float, float]  # repeated confidence interval at level 1 − α
    decision: str  # "reject" | "futile" | "continue" | "not rejected"
    dropped: int = 0  # seeds of the stages so far left out (a run failed or diverged)


def decide_looks(plan: Plan, differences: Sequence[Sequence[float]], dropped: Sequence[int] = ()) -> List[Look]:
    """One Look per stage (``differences[k]``: the per-seed differences through stage k) until one does not continue."""
    ns = [len(d) for d in differences]
    if not ns or min(ns) < 2:
        raise ValueError(f"a look needs at least 2 seeds with both arms; the stages have {ns}")
    bounds = boundaries(plan, tuple(ns))
    looks: List[Look] = []
    for k, d in enumerate(differences):
        d = np.asarray(d, dtype=float)
        mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))
        t = mean / se if se > 0 else (math.copysign(math.inf, mean) if mean else 0.0)
        cut, low = bounds.efficacy[k], bounds.futility[k]
        decision = ("reject" if abs(t) >= cut else "futile" if low is not None and abs(t) < low
                    else "not rejected" if k == len(plan.stages) - 1 else "continue")
        half = cut * se if math.isfinite(cut) else math.inf
        looks.append(Look(k + 1, d.size, mean, se, t, cut, low, (mean - half, mean + half), decision,
                          dropped[k] if k < len(dropped) else 0))
        if decision != "continue":
            break
    return looks


def plan_power(plan: Plan) -> Optional[float]:
    """The power the plan states: P(reject) at its effect size, every stage's seeds counted."""
    return boundaries(plan).power if plan.effect_size else None


ENDED = (*rundir.FINAL_STATUSES, rundir.FAILED)  # a run that will not change any more within a sweep


def stage_looks(plan: Plan, runs, arms: int, differences: Callable[[Any], Sequence[float]]) -> Tuple[List[Look], str, bool]:
    """The looks a sweep makes: stage k once its ``arms`` × seeds runs have ended, on the ``differences`` through it.
    Returns the looks, why there are no more (or ""), and whether the stage after the last look is still to run."""
    diffs, dropped, why, waiting = [], [], "", False
    for k, seeds in enumerate(plan.stages):
        rows = runs[runs["seed"].isin(seeds)]
        ended, failed = int(rows["status"].isin(ENDED).sum()), int((rows["status"] == rundir.FAILED).sum())
        if ended < arms * len(seeds):
            waiting, why = True, f"stage {k + 1} of {len(plan.stages)}: " + (
                f"{ended} of {arms * len(seeds)} runs ended" if len(rows) else "not started")
        elif failed and plan.on_failure == "stop":
            why = (f"stage {k + 1}: {failed} run(s) failed, and the plan stops before looking (on_failure=stop); "
                   "rerunning the sweep retries them")
        elif len(d := differences(runs[runs["seed"].isin(plan.seeds_through(k))])) < 2:
            why = f"stage {k + 1}: {len(d)} seed(s) with both arms; a look needs 2"
        else:
            diffs.append(d)
            dropped.append(len(plan.seeds_through(k)) - len(d))
            if decide_looks(plan, diffs, dropped)[-1].decision == "continue":
                continue
        break
    return (decide_looks(plan, diffs, dropped) if diffs else []), why, waiting


def sequential_verdict(looks: Sequence[Look], why: str, plan: Plan, expect: Optional[str]) -> str:
    """The primary's verdict in fixed words, from the plan's looks alone."""
    if not looks or looks[-1].decision == "continue":
        return f"undecided: {why or 'no look yet'} (plan of at most {plan.max_seeds} seeds)"
    last = looks[-1]
    where = f"at stage {last.stage} of {len(plan.stages)} ({last.n} of {plan.max_seeds} seeds)"
    if last.decision != "reject":
        return f"inconclusive: stopped for futility {where}" if last.decision == "futile" else \
            f"inconclusive at n = {last.n} (the plan's last stage)"
    if expect is None:
        return f"different {where} (the sweep file states no expected direction)"
    return f"{'reproduced' if (last.mean > 0) == (expect == 'greater') else 'contradicted'} {where}"
