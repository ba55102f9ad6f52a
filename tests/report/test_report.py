"""End to end: a fabricated sweep → report.md / report.csv / PNGs with hand-computed numbers."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import matplotlib.image as mpimg
import pytest

import yaml

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

    rows = _table_lines(md)
    # Columns: group, n, mean, std, 95% CI, Δ, Δ CI, p, p (Holm), paper. Means and stds by hand:
    base = rows["model.pos_embed=1d (baseline)"]
    assert base[1:4] == ["3", "81.00", "1.00"] and base[5:9] == ["—"] * 4
    assert base[9] == "64.21 (paper Table 8, imagenet_5shot)"
    two_d = rows["model.pos_embed=2d"]
    # 2d − 1d per seed: +1, 0, +1 points → +0.67; sign-flip: 4 of 8 patterns as extreme → p = 0.5.
    assert two_d[1:4] == ["3 of 4", "81.67", "0.58"]
    assert two_d[5] == "+0.67" and two_d[7:9] == ["0.5", "0.5"]
    none = rows["model.pos_embed=none"]
    # none − 1d per seed: −6, −7, −8 → −7.00; p = 2/8 = 0.25; Holm over 2: max(0.25×2, 0.5×1) = 0.5.
    assert none[1:4] == ["3 of 4", "74.00", "1.00"]
    assert none[5:9] == ["-7.00", "[-8.00, -6.00]", "0.25", "0.5"]
    assert none[9] == "61.38 (paper Table 8, imagenet_5shot)"

    # Verdicts: n=3 cannot reach 0.05, and the report says so rather than "no difference".
    v_none = next(v for v in report.verdicts if v.startswith("model.pos_embed=none"))
    assert "too few seeds to test at n=3" in v_none
    assert "lower in all 3 pairs" in v_none and "cannot go below p=0.25" in v_none
    assert "≥7 paired seeds" in v_none
    assert "paper Table 8, imagenet_5shot: none 61.38 vs 1d 64.21 (-2.82 points)" in v_none

    # Not included: the diverged run and the pending (never started) one, with their statuses.
    excluded = md.split("## Not included", 1)[1]
    assert "| run-009 | model.pos_embed=none | 3 | diverged | result.json: diverged (loss is NaN at step 120) |" in excluded
    assert "| run-010 | model.pos_embed=2d | 3 | pending | not started (manifest: pending) |" in excluded
    assert {r.name for r in report.excluded} == {"run-009", "run-010"}
    assert "with 3 runs per group the bootstrap CIs are optimistic" in md

    # CSV: raw fractions.
    with open(out / "report.csv") as handle:
        table = {r["group"]: r for r in csv.DictReader(handle)}
    assert float(table["model.pos_embed=none"]["mean"]) == pytest.approx(0.74)
    assert float(table["model.pos_embed=none"]["delta"]) == pytest.approx(-0.07)
    assert table["model.pos_embed=none"]["n_pairs"] == "3" and table["model.pos_embed=1d"]["baseline"] == "True"

    # Figures: readable PNGs of the expected size, small; no temp files left behind.
    shapes = {p.name: mpimg.imread(p).shape for p in report.written if p.suffix == ".png"}
    assert shapes == {"curves.png": (400, 640, 4), "final.png": (400, 450, 4)}
    assert all(p.stat().st_size < 200_000 for p in report.written)
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "final.png", "report.csv", "report.md"]


def test_report_is_deterministic(sweep_dir: Path, tmp_path: Path):
    first = run_report([str(sweep_dir)], out=str(tmp_path / "a"))
    second = run_report([str(sweep_dir)], out=str(tmp_path / "b"))
    assert first.markdown == second.markdown and first.rows == second.rows


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
    # p = 2/256 raw (only all-minus and all-plus); Holm over 2 comparisons: 2 × 2/256 = 0.015625.
    match = re.match(r"model\.pos_embed=none is worse than 1d by 7\.00 points \[95% CI (\S+), (\S+)\]", v_none)
    assert match, v_none
    low, high = float(match.group(1)), float(match.group(2))
    assert 6.0 <= low < 7.0 < high <= 8.0  # the CI of the size, in the same unsigned terms
    assert "p=0.0156 (Holm), n=8 paired seeds" in v_none
    assert v_none.endswith("agrees in direction with paper Table 8, imagenet_5shot (none 61.38 < 1d 64.21)")
    v_2d = next(v for v in report.verdicts if v.startswith("model.pos_embed=2d"))
    assert "not distinguishable at n=8" in v_2d and "cannot go below" not in v_2d


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
    assert report.analysis.baseline.label == "model.pool=cls, optim.lr=0.0008"
    assert "| model.pool=gap, optim.lr=0.0003 | 2 | 79.50 |" in report.markdown
    pngs = {p.name: mpimg.imread(p).shape for p in report.written if p.suffix == ".png"}
    assert pngs["lr_curves.png"] == (400, 640, 4)

    with pytest.raises(ValueError, match="ambiguous"):
        run_report([str(runs)], baseline="optim.lr=8e-4", out=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="matches no group"):
        run_report([str(runs)], baseline="model.pool=map", out=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="did you mean model.pool"):
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
    assert none["delta"] == pytest.approx(-0.105) and none["p"] == pytest.approx(1 / 3)
    assert "| model.pos_embed=none | 2 | 70.50 | 0.71 |" in report.markdown and "0.333 †" in report.markdown
    assert "model.pos_embed=none vs baseline: no seed in common with the baseline: unpaired permutation test" in report.markdown
    v_none = next(v for v in report.verdicts if v.startswith("model.pos_embed=none"))
    assert "cannot go below p=0.333" in v_none
    two_d = rows["model.pos_embed=2d"]
    assert two_d["paired"] is True and two_d["n_pairs"] == 1 and two_d["p"] == 1.0
    assert "model.pos_embed=2d: n=1, so no standard deviation and no CI" in report.markdown


def test_no_runs_is_a_value_error(tmp_path: Path):
    with pytest.raises(ValueError, match="no runs found"):
        run_report([str(tmp_path)])


def test_report_from_wandb_with_fake_api(monkeypatch, tmp_path: Path):
    import wandb

    from .test_runs import FAKE_RUNS, FakeApi

    monkeypatch.setattr(wandb, "Api", lambda *a, **k: FakeApi(FAKE_RUNS))
    report = run_report([], wandb_path="ent/proj/abc123", out=str(tmp_path / "w"))
    rows = _table_lines(report.markdown)
    assert rows["model.pos_embed=1d (baseline)"][1:3] == ["2 of 3", "81.00"]
    assert rows["model.pos_embed=none"][1:3] == ["2 of 4", "71.00"]
    assert rows["model.pos_embed=none"][9] == "61.38 (paper Table 8)"
    excluded = report.markdown.split("## Not included", 1)[1]
    for name, status in (("e", "failed"), ("f", "diverged"), ("g", "running")):
        assert f"| {name} |" in excluded and f"| {status} |" in excluded


def test_sweep_declared_baseline_is_the_default(sweep_dir: Path):
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    manifest["baseline"] = {"model.pos_embed": "none"}
    (sweep_dir / "sweep.json").write_text(json.dumps(manifest))
    report = run_report([str(sweep_dir)])
    assert report.analysis.baseline.label == "model.pos_embed=none"
    assert "| model.pos_embed=none (baseline) | 3 of 4 | 74.00 |" in report.markdown
    # An explicit baseline wins over the declared one.
    assert run_report([str(sweep_dir)], baseline="model.pos_embed=2d").analysis.baseline.label == "model.pos_embed=2d"


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
