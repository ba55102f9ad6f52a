"""Group-sequential plans: the declared plan is checked before any run, and its boundaries keep the
overall type-I error at α for the paired t statistic at small n (simulated null sweeps)."""

import numpy as np
import pytest

from vit_ablate.report.sequential import Plan, boundaries, decide_looks, parse_plan, plan_power

SEEDS = list(range(24))


def plan(line, seeds=SEEDS, kind="paired"):
    return parse_plan(f"# primary: {kind} a=1 vs a=2\n# sequential: {line}\n", "sweep.yaml", seeds, True, kind)


def staged(sizes, **kw):
    seeds, stages, start = [str(s) for s in range(sum(sizes))], [], 0
    for size in sizes:
        stages.append(tuple(seeds[start:start + size]))
        start += size
    return Plan(tuple(stages), **kw)


def test_a_declared_plan_splits_the_sweeps_seeds_into_its_stages():
    p = plan("stages=3 seeds_per_stage=8 spending=pocock alpha=0.05 futility=true effect_size=0.8 on_failure=stop")
    assert p.looks == (8, 16, 24) and p.stages[1] == tuple(str(s) for s in range(8, 16))
    assert (p.spending, p.futility, p.effect_size, p.on_failure) == ("pocock", True, 0.8, "stop")
    assert plan("stages=4 max_seeds=24").looks == (6, 12, 18, 24)
    assert parse_plan("# primary: paired a=1 vs a=2\n", "f", SEEDS, True, "paired") is None


@pytest.mark.parametrize("line, has_primary, kind, message", [
    ("stages=3 seeds_per_stage=7", True, "paired", "does not add up"),
    ("stages=5 max_seeds=24", True, "paired", "does not add up"),
    ("stages=3 seeds_per_stage=8 alpha=0.5", True, "paired", "alpha=0.5 must lie in (0, 0.5)"),
    ("stages=3 seeds_per_stage=8 alpha=0", True, "paired", "must lie in (0, 0.5)"),
    ("stages=3 seeds_per_stage=8 spending=obrien", True, "paired", "did you mean 'obrien_fleming'?"),
    ("stages=3 seeds_per_stage=8", False, "paired", "a plan needs the test it decides"),
    ("stages=3 seeds_per_stage=8", True, "fisher", "use paired or interaction"),
    ("stages=3 seeds_per_stage=8 futility=true", True, "paired", "needs effect_size"),
    ("stages=3 seeds_per_stage=8 stages_=2", True, "paired", "did you mean 'stages'?"),
    ("stages=3", True, "paired", "either seeds_per_stage=M or max_seeds=N"),
])
def test_a_plan_that_cannot_run_is_one_line_naming_its_line(line, has_primary, kind, message):
    text = f"# primary: {kind} a=1 vs a=2\n# sequential: {line}\n"
    with pytest.raises(ValueError, match="line 2 of sweep.yaml") as info:
        parse_plan(text, "sweep.yaml", SEEDS, has_primary, kind)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_first_look_is_the_exact_t_quantile_and_pocock_spends_more_early_than_obrien_fleming():
    from scipy import stats

    obf, poc = boundaries(staged([8, 8, 8])), boundaries(staged([8, 8, 8], spending="pocock"))
    alpha_1 = 2 - 2 * stats.norm.cdf(stats.norm.ppf(0.975) / np.sqrt(1 / 3))
    assert obf.efficacy[0] == pytest.approx(stats.t.ppf(1 - alpha_1 / 2, 7))
    assert obf.efficacy[0] > poc.efficacy[0] and obf.efficacy[-1] < poc.efficacy[-1]
    # heavier tails than z: the last boundary lies above O'Brien–Fleming's z boundary for K = 3 (2.00)
    assert 2.05 < obf.efficacy[-1] < 2.3


def simulate(p, shift, sweeps, seed):
    """Sweeps of N(shift, 1) per-seed differences, each decided look by look as the sweep decides."""
    rng = np.random.default_rng(seed)
    rejected = 0
    for d in rng.standard_normal((sweeps, p.max_seeds)) + shift:
        looks = decide_looks(p, [d[:n] for n in p.looks])
        rejected += looks[-1].decision == "reject"
    return rejected / sweeps


PLANS = [staged([4, 4], effect_size=1.0), staged([3, 3, 3], spending="pocock", effect_size=1.2), staged([8, 8, 8], futility=True, effect_size=0.8),
         staged([3, 3, 3, 3], spending="pocock", futility=True, effect_size=1.2)]


@pytest.mark.parametrize("p", PLANS, ids=["2x4 obf", "3x3 pocock", "3x8 obf futility", "4x3 pocock futility"])
def test_null_sweeps_reject_at_the_declared_alpha_and_the_stated_power_holds(p):
    """20,000 null sweeps per plan (2 to 4 stages): the rejection rate lies within [0.045, 0.055]; at the
    planned effect the rejection rate is the plan's stated power within ±0.02."""
    null = simulate(p, 0.0, 20_000, seed=11)
    print(f"{p.describe()}: null rejection rate {null:.4f}", end="")
    assert 0.045 <= null <= 0.055
    if p.effect_size:
        stated, achieved = plan_power(p), simulate(p, p.effect_size, 20_000, seed=12)
        print(f", power stated {stated:.3f}, simulated {achieved:.3f}", end="")
        assert abs(achieved - stated) <= 0.02
    print()


def test_looking_at_nominal_alpha_after_every_stage_would_inflate_the_false_positives():
    """The reason for the plan: five unadjusted looks at α = 0.05 reject ~0.14 of null sweeps."""
    rng = np.random.default_rng(3)
    from scipy import stats

    d = rng.standard_normal((20_000, 25))
    naive = np.zeros(len(d), bool)
    for n in (5, 10, 15, 20, 25):
        t = d[:, :n].mean(1) / (d[:, :n].std(1, ddof=1) / np.sqrt(n))
        naive |= np.abs(t) >= stats.t.ppf(0.975, n - 1)
    assert 0.12 < naive.mean() < 0.16
    assert simulate(staged([5] * 5, spending="pocock"), 0.0, 4_000, seed=5) < 0.065


def test_a_look_stops_at_the_first_decision_and_its_repeated_interval_uses_the_boundary():
    p = staged([4, 4, 4])
    strong = [0.9, 1.1, 1.0, 1.2, 0.8, 1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0]
    looks = decide_looks(p, [strong[:4], strong[:8], strong])
    assert [lk.decision for lk in looks][-1] == "reject" and len(looks) <= 3
    last = looks[-1]
    assert last.rci == pytest.approx((last.mean - last.efficacy * last.se, last.mean + last.efficacy * last.se))
    flat = [0.1, -0.1, 0.05, -0.05, 0.1, -0.1, 0.05, -0.05, 0.1, -0.1, 0.05, -0.05]
    looks = decide_looks(p, [flat[:4], flat[:8], flat])
    assert [lk.decision for lk in looks] == ["continue", "continue", "not rejected"]
    # a stage that lost seeds (a failed run) is looked at with the seeds left, at its own boundary
    short = decide_looks(p, [flat[:4], flat[:7]], dropped=[0, 1])
    assert short[1].n == 7 and short[1].dropped == 1 and short[1].efficacy != looks[1].efficacy


SWEEP = """\
# reference: model.stem=patch value=0.9861 metric=cifar10 source="paper Table 6"
# reference: model.stem=hybrid value=0.9901 metric=cifar10 source="paper Table 6"
# primary: paired model.stem=hybrid vs model.stem=patch
# sequential: stages=3 seeds_per_stage=4 spending=pocock
name: hybrid
method: grid
parameters:
  model.stem:
    values: [patch, hybrid]
  seed:
    values: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
"""
# hybrid − patch per seed: stage 1 undecided, stage 2 decides (Pocock, 3 × 4 seeds)
DIFFERENCES = [0.010, -0.006, 0.020, 0.001, 0.020, 0.021, 0.019, 0.022]


def write_runs(tmp_path, differences, statuses=None):
    rows = ["run,model.stem,seed,status,val/acc1"]
    for seed, d in enumerate(differences):
        rows.append(f"p{seed},patch,{seed},completed,0.5")
        status = (statuses or {}).get(seed, "completed")
        rows.append(f"h{seed},hybrid,{seed},{status},{0.5 + d if status == 'completed' else ''}")
    (tmp_path / "runs.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "hybrid.yaml").write_text(SWEEP)
    return [str(tmp_path / "runs.csv"), str(tmp_path / "hybrid.yaml")]


def test_the_report_names_the_stage_that_decided_and_invents_no_later_stage(tmp_path):
    from vit_ablate.report import run_report

    report = run_report(write_runs(tmp_path, DIFFERENCES), out=str(tmp_path / "out"))
    primary = report.analysis.primary
    assert [lk.decision for lk in primary.looks] == ["continue", "reject"]
    assert primary.verdict == "reproduced at stage 2 of 3 (8 of 12 seeds)"
    looks = [row for row in report.rows if row.get("role") == "look"]
    assert [row["n"] for row in looks] == [4, 8] and looks[1]["t"] >= looks[1]["efficacy"]
    assert "| 2 of 3 | 8 |" in report.markdown and "| 3 of 3 |" not in report.markdown
    low, high = primary.looks[1].rci
    assert low < sum(DIFFERENCES) / 8 < high and low > 0


def test_an_unfinished_stage_is_not_looked_at_and_a_failed_run_is_dropped_or_stops(tmp_path):
    from vit_ablate.report import run_report

    # stage 2 has only 3 of its 4 seeds: one look, and the verdict waits
    report = run_report(write_runs(tmp_path, DIFFERENCES[:7]), out=str(tmp_path / "a"))
    assert report.analysis.primary.verdict.startswith("undecided: stage 2 of 3: 6 of 8 runs ended")
    # a failed run in stage 1: dropped by default (3 seeds in the first look)
    report = run_report(write_runs(tmp_path, DIFFERENCES[:4], {1: "failed"}), out=str(tmp_path / "b"))
    first = report.analysis.primary.looks[0]
    assert (first.n, first.dropped) == (3, 1)
    (tmp_path / "hybrid.yaml").write_text(SWEEP.replace("spending=pocock", "spending=pocock on_failure=stop"))
    report = run_report([str(tmp_path / "runs.csv"), str(tmp_path / "hybrid.yaml")], out=str(tmp_path / "c"))
    assert report.analysis.primary.looks == [] and "on_failure=stop" in report.analysis.primary.verdict


def test_a_look_made_so_far_gets_the_boundaries_the_whole_plan_gives_it():
    """The sweep looks before later stages exist: its boundaries (futility spending the whole plan's β
    included) must be the plan's own, not those of a plan that ends at this look."""
    p = staged([8, 8, 8], futility=True, effect_size=0.6)
    whole = boundaries(p)
    for k in (1, 2):
        sofar = boundaries(p, p.looks[:k])
        assert sofar.efficacy == whole.efficacy[:k] and sofar.futility == whole.futility[:k]
    assert whole.futility[0] < 0.5 and whole.power == boundaries(p, p.looks[:1]).power
