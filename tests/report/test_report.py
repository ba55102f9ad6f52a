"""End to end: a fabricated sweep → report.md / report.csv / PNGs with hand-computed numbers."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd
import pytest

import yaml
from scipy import stats as scipy_stats

from vit_ablate.report.references import parse_reference_comments

from .fabricate import make_sweep, run_config, write_run
from vit_ablate.report import run_report


def _table_lines(markdown: str) -> dict:
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| model.") or line.startswith("| all runs"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def test_report_over_fabricated_sweep(sweep_dir: Path):
    report = run_report([str(sweep_dir)])
    out = sweep_dir / "report"
    assert report.out == out
    md = report.markdown
    assert (out / "report.md").read_text() == md
    assert f"- Written to {out}/: report.md, report.csv, runs.csv, curves.png, final.png." in md

    rows = _table_lines(md)
    # Columns: group, n, mean, std, 95% CI (t), Δ, Δ CI, p (t), p (sign-flip), p (Holm), paper.
    # 1d: 0.80 0.82 0.81 → 81.00 ± 1.00; t interval 81 ± t(0.975, 2)·1/√3 = 81 ± 4.303·0.5774 = ± 2.48.
    base = rows["model.pos_embed=1d (baseline)"]
    assert base[1:5] == ["3", "81.00", "1.00", "[78.52, 83.48]"] and base[5:10] == ["—"] * 5
    assert base[10] == "64.21 (paper Table 8, imagenet_5shot)"
    two_d = rows["model.pos_embed=2d"]
    # 2d − 1d per seed: +1, 0, +1 points → +0.67, sd 0.577: t = 2, df 2 → p = 0.184; sign-flip 4/8 = 0.5.
    assert two_d[1:4] == ["3 of 4", "81.67", "0.58"]
    assert two_d[5] == "+0.67" and two_d[7:9] == ["0.184", "0.5"]
    none = rows["model.pos_embed=none"]
    # none − 1d per seed: −6, −7, −8 → −7.00 ± 4.303·1/√3; t = −12.12 → p = 0.00673; sign-flip 2/8.
    # Holm over the 2 secondary comparisons (no primary declared): 2 × 0.00673 = 0.0135.
    assert none[1:4] == ["3 of 4", "74.00", "1.00"]
    assert none[5:10] == ["-7.00", "[-9.48, -4.52]", "0.00673", "0.25", "0.0135"]
    assert none[10] == "61.38 (paper Table 8, imagenet_5shot)"

    # No primary declared: no verdict, and the report says so.
    assert "None declared: the sweep file has no `# primary:` line" in md and report.primary == ""
    v_none = next(v for v in report.verdicts if v.startswith("model.pos_embed=none"))
    assert v_none.startswith("model.pos_embed=none is worse than 1d by 7.00 points [95% CI 4.52, 9.48]")
    assert "paired t p=0.0135 (Holm over 2), exact sign-flip p=0.25, n=3 paired seeds" in v_none
    v_2d = next(v for v in report.verdicts if v.startswith("model.pos_embed=2d"))
    assert "not distinguishable after Holm at n=3" in v_2d and "cannot go below 0.25" in v_2d

    # Not included: the diverged run and the pending (never started) one, with their statuses.
    excluded = md.split("## Not included", 1)[1]
    assert "| run-009 | model.pos_embed=none | 3 | diverged | result.json: diverged (loss is NaN at step 120) |" in excluded
    assert "| run-010 | model.pos_embed=2d | 3 | pending | not started (sweep.json: pending) |" in excluded
    assert set(report.excluded["run"]) == {"run-009", "run-010"}

    # CSV: raw fractions.
    with open(out / "report.csv") as handle:
        table = {r["group"]: r for r in csv.DictReader(handle)}
    assert float(table["model.pos_embed=none"]["mean"]) == pytest.approx(0.74)
    assert float(table["model.pos_embed=none"]["delta"]) == pytest.approx(-0.07)
    assert table["model.pos_embed=none"]["n_pairs"] == "3" and table["model.pos_embed=1d"]["baseline"] == "True"

    # runs.csv: one row per run, enough to regenerate the report.
    with open(out / "runs.csv") as handle:
        runs = list(csv.DictReader(handle))
    assert [r["run"] for r in runs][:2] == ["run-000", "run-001"] and len(runs) == 11
    assert runs[6] == {"run": "run-006", "model.pos_embed": "none", "seed": "0", "status": "completed",
                       "val/acc1": "0.74", "reason": ""}
    assert runs[9]["status"] == "diverged" and runs[9]["val/acc1"] == ""

    # Figures: readable PNGs of the expected size, small; no temp files left behind.
    shapes = {p.name: mpimg.imread(p).shape for p in report.written if p.suffix == ".png"}
    assert shapes["curves.png"] == (400, 640, 4) and shapes["final.png"][0] == 400
    assert all(p.stat().st_size < 200_000 for p in report.written)
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "final.png", "report.csv", "report.md", "runs.csv"]
    assert "*final.png*: val/acc1 per group with the last epoch's weights" in md


def test_report_is_deterministic(sweep_dir: Path, tmp_path: Path):
    first = run_report([str(sweep_dir)], out=str(tmp_path / "a"))
    second = run_report([str(sweep_dir)], out=str(tmp_path / "b"))
    assert first.markdown.replace("/a/", "/b/") == second.markdown
    assert pd.DataFrame(first.rows).equals(pd.DataFrame(second.rows))
    assert (tmp_path / "a" / "report.csv").read_bytes() == (tmp_path / "b" / "report.csv").read_bytes()


def test_eight_seeds_reach_significance_and_compare_with_paper(tmp_path: Path):
    base = [0.80, 0.82, 0.81, 0.79, 0.83, 0.80, 0.81, 0.82]
    sweep = make_sweep(
        tmp_path,
        final={
            "1d": base,
            "2d": [v + d for v, d in zip(base, [0.01, -0.01, 0.0, 0.01, -0.01, 0.01, 0.0, -0.01])],
            # none − 1d per seed, in points: −6 −7 −8 −7 −6 −8 −7 −7 → mean −7.00, all negative.
            "none": [v + d for v, d in zip(base, [-0.06, -0.07, -0.08, -0.07, -0.06, -0.08, -0.07, -0.07])],
        },
    )
    report = run_report([str(sweep)], baseline="model.pos_embed=1d")
    v_none = next(v for v in report.verdicts if v.startswith("model.pos_embed=none"))
    # sd of the differences 0.756 points: t interval −7 ± 2.365·0.756/√8 = ± 0.63; sign-flip 2/256.
    match = re.match(r"model\.pos_embed=none is worse than 1d by 7\.00 points \[95% CI 6\.37, 7\.63\]", v_none)
    assert match, v_none
    assert "exact sign-flip p=0.00781, n=8 paired seeds" in v_none
    assert v_none.endswith("agrees in direction with paper Table 8, imagenet_5shot (none 61.38 < 1d 64.21)")
    v_2d = next(v for v in report.verdicts if v.startswith("model.pos_embed=2d"))
    assert "not distinguishable after Holm at n=8" in v_2d and "cannot go below" not in v_2d


def test_lr_grouping_draws_figure9_curves_and_checks_baseline(tmp_path: Path):
    runs = tmp_path / "heads"
    for pool, lr in [("cls", 8e-4), ("gap", 8e-4), ("gap", 3e-4)]:
        for seed in (0, 1):
            name = f"{pool}-{lr:g}-s{seed}"
            config = run_config("1d", seed, name)
            config["model"]["pool"], config["optim"]["lr"] = pool, lr
            final = {"cls": 0.8, "gap": 0.6 if lr == 8e-4 else 0.79}[pool] + 0.01 * seed
            write_run(runs / name, config, final=final)
    report = run_report([str(runs)], baseline="model.pool=cls")
    assert report.analysis.by == ["model.pool", "optim.lr"]
    assert report.analysis.baseline == "model.pool=cls, optim.lr=0.0008"
    assert "| model.pool=gap, optim.lr=0.0003 | 2 | 79.50 |" in report.markdown
    pngs = {p.name: mpimg.imread(p).shape for p in report.written if p.suffix == ".png"}
    assert pngs["lr_curves.png"] == (400, 640, 4)

    with pytest.raises(ValueError, match="ambiguous"):
        run_report([str(runs)], baseline="optim.lr=8e-4", out=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="matches no group"):
        run_report([str(runs)], baseline="model.pool=map", out=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="did you mean 'model.pool'"):
        run_report([str(runs)], by=["model.pools"], out=str(tmp_path / "x"))


def test_unpaired_fallback_and_n1(tmp_path: Path):
    runs = tmp_path / "mixed"
    for name, pos, seed, final in [
        ("a0", "1d", 0, 0.80), ("a1", "1d", 1, 0.82),  # baseline: seeds 0, 1
        ("b5", "none", 5, 0.70), ("b6", "none", 6, 0.71),  # no seed in common → unpaired
        ("c0", "2d", 0, 0.81),  # n=1, pairs with seed 0
    ]:
        write_run(runs / name, run_config(pos, seed, name), final=final)
    report = run_report([str(runs)])
    rows = {r["group"]: r for r in report.rows}
    none = rows["model.pos_embed=none"]
    # Unpaired: Δ = 70.5 − 81.0; exact permutation over C(4,2) = 6 splits, 2 as extreme → p = 1/3.
    assert none["paired"] is False and none["n_pairs"] == 0
    assert none["delta"] == pytest.approx(-0.105) and none["p_signflip"] == pytest.approx(1 / 3)
    # Welch: means 70.5 vs 81.0, variances 0.5e-4 and 2e-4 over n=2 each → t = −0.105/0.01118 = −9.39.
    assert none["p_t"] == pytest.approx(scipy_stats.ttest_ind([0.70, 0.71], [0.80, 0.82], equal_var=False).pvalue)
    assert "| model.pos_embed=none | 2 | 70.50 | 0.71 |" in report.markdown
    assert "model.pos_embed=none vs baseline: no seed in common: Welch's unpaired t-test" in report.markdown
    v_none = next(v for v in report.verdicts if v.startswith("model.pos_embed=none"))
    # Welch's t at n=2 vs 2 reaches p=0.0274; the exact permutation test could not go below 1/3.
    assert "Welch t p=0.0274" in v_none and "permutation p=0.333" in v_none
    two_d = rows["model.pos_embed=2d"]
    assert two_d["paired"] is True and two_d["n_pairs"] == 1 and two_d["p_signflip"] == 1.0
    assert "model.pos_embed=2d: n=1, so no standard deviation and no interval" in report.markdown


def test_no_runs_is_a_value_error(tmp_path: Path):
    with pytest.raises(ValueError, match="no runs found"):
        run_report([str(tmp_path)])


def test_report_from_wandb_with_fake_api(monkeypatch, tmp_path: Path):
    import sys
    import types

    from .test_runs import FAKE_RUNS, FakeApi

    # A stand-in module: the report imports wandb only for this path, and wandb is an optional extra.
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=lambda *a, **k: FakeApi(FAKE_RUNS)))
    report = run_report([], wandb_path="ent/proj/abc123", out=str(tmp_path / "w"))
    rows = _table_lines(report.markdown)
    assert rows["model.pos_embed=1d (baseline)"][1:3] == ["2 of 3", "81.00"]
    assert rows["model.pos_embed=none"][1:3] == ["2 of 4", "71.00"]
    assert rows["model.pos_embed=none"][10] == "61.38 (paper Table 8)"
    excluded = report.markdown.split("## Not included", 1)[1]
    for name, status in (("e", "failed"), ("f", "diverged"), ("g", "running")):
        assert f"| {name} |" in excluded and f"| {status} |" in excluded


def test_sweep_declared_baseline_is_the_default(sweep_dir: Path):
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    manifest["baseline"] = {"model.pos_embed": "none"}
    (sweep_dir / "sweep.json").write_text(json.dumps(manifest))
    report = run_report([str(sweep_dir)])
    assert report.analysis.baseline == "model.pos_embed=none"
    assert "| model.pos_embed=none (baseline) | 3 of 4 | 74.00 |" in report.markdown
    # An explicit baseline wins over the declared one.
    assert run_report([str(sweep_dir)], baseline="model.pos_embed=2d").analysis.baseline == "model.pos_embed=2d"



def test_overrides_from_the_sweep_command_line_are_named(sweep_dir: Path):
    """`vit-ablate sweep FILE trainer.max_epochs=6` changes every run without the file showing it."""
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    declared = ["vit-ablate", "train", "base.yaml", "${args_no_hyphens}"]
    manifest["config"]["command"] = declared
    manifest["command"] = declared + ["trainer.max_epochs=6"]
    (sweep_dir / "sweep.json").write_text(json.dumps(manifest))
    assert ("runs in sweep.json; every run also given trainer.max_epochs=6 on the sweep's command line)"
            in run_report([str(sweep_dir)]).markdown)
    manifest["command"] = declared
    (sweep_dir / "sweep.json").write_text(json.dumps(manifest))
    assert "command line" not in run_report([str(sweep_dir)]).markdown

POOL_LR_SWEEP = """\
# reference: model.pool=gap value=0.765 metric=imagenet_top1 source="Beyer et al. 2022, Table 1 (GAP)"
# reference: model.pool=cls value=0.750 metric=imagenet_top1 source="Beyer et al. 2022, Table 1 (cls)"
# reference: model.pool=map value=0.640 metric=imagenet_5shot source="another table"
method: grid
parameters:
  model.pool:
    values: [cls, gap, map]
  optim.lr:
    values: [8.0e-4, 3.0e-4]
  seed:
    values: [0, 1, 2]
"""


def test_paper_clause_only_where_the_references_differ_in_what_the_groups_differ_in(tmp_path: Path):
    """A reference per head says nothing about lr 3e-4 vs 8e-4, nor does a number of another metric."""
    sweep_dir = tmp_path / "pool-lr"
    entries = []
    for i, (pool, lr, seed) in enumerate((p, l, s) for p in ("cls", "gap", "map") for l in (8e-4, 3e-4) for s in range(3)):
        name = f"run-{i:03d}"
        config = run_config("1d", seed, name)
        config["model"]["pool"], config["optim"]["lr"] = pool, lr
        write_run(sweep_dir / name, config, final=0.6 + 0.01 * seed + (0.02 if lr == 8e-4 else 0.0))
        entries.append({"name": name, "params": {"model.pool": pool, "optim.lr": lr, "seed": seed},
                        "status": "completed", "dir": name})
    (tmp_path / "pool_lr.yaml").write_text(POOL_LR_SWEEP)
    (sweep_dir / "sweep.json").write_text(json.dumps({
        "sweep": "pool-lr", "file": str(tmp_path / "pool_lr.yaml"), "config": yaml.safe_load(POOL_LR_SWEEP),
        "reference": parse_reference_comments(POOL_LR_SWEEP), "runs": entries,
    }))
    report = run_report([str(sweep_dir)], baseline="model.pool=cls,optim.lr=8e-4", out=str(tmp_path / "out"))
    verdicts = {v.split(" vs ")[0].split(" is ")[0].split(":")[0]: v for v in report.verdicts}

    def verdict(label: str) -> str:
        return next(v for v in report.verdicts if v.startswith(label))

    # Same head, other lr: both groups map to the cls reference → no paper difference claimed.
    assert "Beyer" not in verdict("model.pool=cls, optim.lr=0.0003")
    # Other head and other lr: the references do not constrain lr → none either.
    assert "Beyer" not in verdict("model.pool=gap, optim.lr=0.0003")
    # Other head, same lr: the paper's 76.50 vs 75.00 is quoted, its comma-bearing source intact.
    assert "Beyer et al. 2022, Table 1 (GAP) / Beyer et al. 2022, Table 1 (cls)" in verdict("model.pool=gap, optim.lr=0.0008")
    assert "76.50" in verdict("model.pool=gap, optim.lr=0.0008")
    # A reference of another metric is never subtracted from ours.
    assert "another table" not in verdict("model.pool=map, optim.lr=0.0008")
    assert len(verdicts) == 5


def test_single_run_groups_still_quote_the_paper(tmp_path: Path):
    """Run names and directories differ between any two runs; only the grouping keys decide whether the
    paper's difference applies."""
    sweep = make_sweep(tmp_path, final={"1d": [0.80], "none": [0.72]})
    report = run_report([str(sweep)], baseline="model.pos_embed=1d", out=str(tmp_path / "out"))
    v_none = next(v for v in report.verdicts if v.startswith("model.pos_embed=none"))
    assert "paper Table 8" in v_none and "61.38" in v_none, v_none


def test_runs_that_differ_outside_the_grouping_keys_are_refused_or_split(tmp_path: Path, capsys):
    from vit_ablate.cli import main

    runs = tmp_path / "mixed"
    for i, (pos, epochs, value) in enumerate([("1d", 5, 0.80), ("none", 5, 0.70), ("1d", 9, 0.90), ("none", 9, 0.75)]):
        config = run_config(pos, 0, f"r{i}")
        config["trainer"]["max_epochs"] = epochs
        config["trainer"]["devices"] = i  # how a run executed never splits a group
        write_run(runs / f"r{i}", config, final=value)
    with pytest.raises(ValueError, match=r"the runs differ in trainer.max_epochs \(5, 9\), which is neither"):
        run_report([str(runs)], by=["model.pos_embed"], out=str(tmp_path / "out"))
    assert main(["report", str(runs), "--by", "model.pos_embed", "--out", str(tmp_path / "out")]) == 2
    assert "the runs differ in trainer.max_epochs" in capsys.readouterr().err and not (tmp_path / "out").exists()

    report = run_report([str(runs)], by=["model.pos_embed"], out=str(tmp_path / "out"), split=True)
    assert [part.out.name for part in report.parts] == ["trainer.max_epochs=5", "trainer.max_epochs=9"]
    assert [part.analysis.groups.loc["model.pos_embed=none", "delta"] for part in report.parts] == \
        [pytest.approx(-0.10), pytest.approx(-0.15)]
    assert "[trainer.max_epochs=9](trainer.max_epochs=9/report.md)" in (tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "trainer.max_epochs=5" / "report.csv").is_file()
