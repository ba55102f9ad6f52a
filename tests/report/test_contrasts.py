"""Declared contrasts: parsing, validation errors (exit 2, nothing written), and the verdicts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from scipy import stats as scipy_stats

from vit_ablate.cli import main
from vit_ablate.report import run_report, stats
from vit_ablate.report.contrasts import parse_contrast_comments

from .fabricate import SWEEP_FILE, make_sweep, run_config, write_run


def _declare(sweep_dir: Path, header: str) -> None:
    """Prepend header lines to the fabricated sweep's file (the report reads them from there)."""
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    path = Path(manifest["file"])
    path.write_text(header + SWEEP_FILE)


def test_primary_paired_reproduced_and_equivalence_secondary(sweep_dir: Path):
    _declare(sweep_dir, "# primary: paired model.pos_embed=none vs model.pos_embed=1d\n"
                        "# secondary: equivalence model.pos_embed=2d vs model.pos_embed=1d margin=0.02\n")
    report = run_report([str(sweep_dir)])
    primary = report.analysis.primary
    # none − 1d: −6, −7, −8 points: ttest_rel p = 0.00673 < 0.05, the paper's direction (61.38 < 64.21).
    assert primary.verdict == "reproduced"
    assert primary.p == pytest.approx(scipy_stats.ttest_rel([0.74, 0.75, 0.73], [0.80, 0.82, 0.81]).pvalue)
    assert primary.p_perm == 0.25
    assert "**Verdict: reproduced.**" in report.markdown
    # The primary is not in the Holm family: the table says "primary" for it. The 2d row is the declared
    # equivalence's comparison, so the family holds it once (m = 1), with its TOST's one adjusted p.
    assert report.analysis.family_size == 1
    assert "| model.pos_embed=none | 3 of 4 | 74.00 | 1.00 | [71.52, 76.48] | -7.00 | [-9.48, -4.52] | 0.00673 | 0.25 | primary |" in report.markdown
    equivalence = report.analysis.secondary[0]
    # 2d − 1d: +1, 0, +1 points; TOST against ±2 points: p = 0.0286 < 0.05, alone in the family.
    assert equivalence.p == pytest.approx(0.0286, abs=1e-4) and equivalence.p_holm == equivalence.p
    assert equivalence.verdict == "equivalent within ±0.02"
    assert "| model.pos_embed=2d | 3 of 4 | 81.67 | 0.58 | [80.23, 83.10] | +0.67 | [-0.77, +2.10] | 0.184 | 0.5 | 0.0286 (TOST) |" in report.markdown
    assert "→ equivalent within ±2.00 points" in report.markdown and "model.pos_embed=2d vs 1d" not in report.markdown
    assert len([v for v in report.verdicts if "model.pos_embed=2d" in v]) == 1

    # A family of the declared secondaries only: a group's comparison with the baseline is descriptive.
    _declare(sweep_dir, "# primary: paired model.pos_embed=2d vs model.pos_embed=1d\n# holm: secondary\n")
    report = run_report([str(sweep_dir)])
    assert report.analysis.family_size == 0
    assert "| 0.00673 | 0.25 | — |" in report.markdown
    assert "model.pos_embed=none vs 1d: descriptive, not in the Holm family (difference -7.00 points" in report.markdown
    assert "One Holm family (declared on line 2 of" in report.markdown


def test_primary_inconclusive_states_the_power_for_the_papers_effect(tmp_path: Path):
    sweep = make_sweep(tmp_path, final={"1d": [0.80, 0.82, 0.81], "2d": [0.80, 0.80, 0.80], "none": [0.79, 0.83, 0.80]})
    # the reference lines measure ImageNet 5-shot, not val/acc1: a direction, but no effect size here
    _declare(sweep, "# primary: paired model.pos_embed=none vs model.pos_embed=1d\n")
    primary = run_report([str(sweep)]).analysis.primary
    assert primary.verdict == "inconclusive at n = 3" and primary.expect == "less"
    assert primary.effect is None and math.isnan(primary.power)

    # an effect size declared in the metric's own units gives the power
    _declare(sweep, "# primary: paired model.pos_embed=none vs model.pos_embed=1d effect=-0.0282\n")
    report = run_report([str(sweep)])
    primary = report.analysis.primary
    # d = −1, +1, −1 points: p = 0.42; power against −2.82 points at sd 1.155 points, n=3:
    assert primary.verdict == "inconclusive at n = 3"
    assert primary.effect == pytest.approx(-0.0282)
    assert primary.power == pytest.approx(stats.t_power(-0.0282, primary.sd, 3)) and 0.55 < primary.power < 0.65
    assert "power 0.60 to detect the paper's effect of -2.82 points (declared in the sweep file)" in report.primary


def _pool_lr_sweep(root: Path, finals, header: str, lrs=(8e-4, 3e-4)) -> Path:
    sweep_dir = root / "pool-lr"
    entries = []
    i = 0
    for pool in ("cls", "gap"):
        for lr in lrs:
            for seed in range(3):
                name = f"run-{i:03d}"
                config = run_config("1d", seed, name)
                config["model"]["pool"], config["optim"]["lr"] = pool, lr
                write_run(sweep_dir / name, config, final=finals[(pool, lr)][seed])
                entries.append({"name": name, "params": {"model.pool": pool, "optim.lr": lr, "seed": seed},
                                "status": "completed", "dir": name})
                i += 1
    text = header + "method: grid\nparameters:\n  model.pool:\n    values: [cls, gap]\n  optim.lr:\n    values: " \
        + json.dumps(list(lrs)) + "\n  seed:\n    values: [0, 1, 2]\n"
    (root / "pool_lr.yaml").write_text(text)
    (sweep_dir / "sweep.json").write_text(json.dumps({
        "sweep": "pool-lr", "file": str(root / "pool_lr.yaml"), "config": yaml.safe_load(text), "runs": entries}))
    return sweep_dir


def test_interaction_is_the_per_seed_difference_of_differences(tmp_path: Path):
    # The committed GPU numbers: (cls − gap) at 8e-4 minus (cls − gap) at 3e-4 = +1.78, +1.48, −0.82.
    finals = {("cls", 8e-4): [0.6615, 0.6664, 0.6551], ("cls", 3e-4): [0.6299, 0.6368, 0.6389],
              ("gap", 8e-4): [0.6636, 0.6595, 0.6647], ("gap", 3e-4): [0.6498, 0.6447, 0.6403]}
    sweep = _pool_lr_sweep(tmp_path, finals, "# primary: interaction model.pool=cls vs model.pool=gap by "
                                              "optim.lr=8e-4 vs optim.lr=3e-4 expect=greater\n")
    report = run_report([str(sweep)], out=str(tmp_path / "out"))
    r = report.analysis.primary
    assert r.per_seed == pytest.approx([0.0178, 0.0148, -0.0082], abs=1e-9)
    assert r.p_t == pytest.approx(scipy_stats.ttest_1samp([0.0178, 0.0148, -0.0082], 0).pvalue)
    assert r.verdict == "inconclusive at n = 3"
    assert "no paper effect size in this metric" in report.primary and "80% power at this n and spread needs" in report.primary


def test_fisher_on_divergence(tmp_path: Path):
    sweep_dir = tmp_path / "norm"
    entries = []
    for i, (norm, seed) in enumerate((n, s) for n in ("pre", "post") for s in range(4)):
        name = f"run-{i:03d}"
        config = run_config("1d", seed, name)
        config["model"]["norm"] = norm
        status = "diverged" if norm == "post" else "completed"
        write_run(sweep_dir / name, config, status=status, final=None if status == "diverged" else 0.8)
        entries.append({"name": name, "params": {"model.norm": norm, "seed": seed}, "status": status, "dir": name})
    text = ("# primary: fisher model.norm=post vs model.norm=pre expect=greater\n# baseline: model.norm=pre\n"
            "method: grid\nparameters:\n  model.norm:\n    values: [pre, post]\n  seed:\n    values: [0, 1, 2, 3]\n")
    (tmp_path / "norm.yaml").write_text(text)
    (sweep_dir / "sweep.json").write_text(json.dumps({"sweep": "norm", "file": str(tmp_path / "norm.yaml"),
                                                      "config": yaml.safe_load(text), "runs": entries}))
    report = run_report([str(sweep_dir)])
    r = report.analysis.primary
    # 4 of 4 diverged vs 0 of 4: Fisher's two-sided p = 2 / C(8, 4) = 2/70.
    assert r.counts == (4, 4, 0, 4) and r.p == pytest.approx(2 / 70) and r.verdict == "reproduced"
    # The declared baseline is the paper's pre-LN, not the alphabetically first "post".
    assert report.analysis.baseline == "model.norm=pre"
    assert "baseline group `model.norm=pre` (the paper's choice, declared on the sweep file's # baseline: line)" in report.markdown


@pytest.mark.parametrize(
    "header, message",
    [
        ("# primary: paired model.pos_embed=nope vs model.pos_embed=1d\n",
         "line 1 of .*: primary: model.pos_embed=nope names a group the sweep does not have: model.pos_embed is "
         "1d, 2d, none; did you mean 'none'\\?"),
        ("# primary: paired model.pos_embd=none vs model.pos_embed=1d\n", "did you mean 'model.pos_embed'"),
        ("# primary: equivalence model.pos_embed=2d vs model.pos_embed=1d\n", "line 1 .*an equivalence needs margin=M"),
        ("# primary: interaction model.pos_embed trainer.max_epochs\n", "'model.pos_embed' is not of the form key=value"),
        ("# primary: interaction model.pos_embed=1d vs model.pos_embed=2d by model.pos_embed=1d vs model.pos_embed=none\n",
         "2×2 design: its two factors are the same key"),
        ("# primary: paired a=1 vs a=2\n# primary: paired a=1 vs a=3\n", "2 primary contrasts \\(lines 1, 2\\)"),
        ("# primary: pairwise model.pos_embed=none vs model.pos_embed=1d\n", "did you mean 'paired'"),
        ("# holm: secondary + everything\n", "line 1 of .*: holm: expected one line '# holm: secondary' or"),
    ],
)
def test_bad_contrast_is_exit_2_naming_the_line_and_nothing_is_written(sweep_dir: Path, capsys, header, message):
    _declare(sweep_dir, header)
    assert main(["report", str(sweep_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vit-ablate: error: ")
    import re

    assert re.search(message, err), err
    assert not (sweep_dir / "report").exists()


def test_misspelt_metric_is_exit_2_with_the_nearest_name_and_keeps_the_old_report(sweep_dir: Path, capsys):
    assert main(["report", str(sweep_dir)]) == 0
    before = (sweep_dir / "report" / "report.md").read_text()
    # val/acc would be equally near val/acc1 and val/acc5 (difflib then names the later): a typo with one nearest
    assert main(["report", str(sweep_dir), "--metric", "val/acc_1"]) == 2
    err = capsys.readouterr().err
    assert "--metric val/acc_1: no run recorded it; did you mean 'val/acc1'?" in err
    assert (sweep_dir / "report" / "report.md").read_text() == before


def test_several_inputs_need_out_and_the_report_says_where_it_wrote(tmp_path: Path, capsys):
    for name, seed, value in (("a", 0, 0.8), ("b", 1, 0.7)):
        write_run(tmp_path / name, run_config("1d" if name == "a" else "none", seed, name), final=value)
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "name the output folder with --out" in capsys.readouterr().err
    assert not (tmp_path / "a" / "report").exists()
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "r")]) == 0
    assert f"- Written to {tmp_path / 'r'}/: report.md, report.csv, runs.csv" in capsys.readouterr().out


def test_no_baseline_does_not_read_like_a_group_value(tmp_path: Path):
    write_run(tmp_path / "s" / "a", run_config("none", 0, "a"), status="diverged")
    write_run(tmp_path / "s" / "b", run_config("1d", 0, "b"), status="failed")
    report = run_report([str(tmp_path / "s")])
    assert "Baseline: none" not in report.markdown
    assert "no baseline group (no group has completed runs): no comparisons." in report.markdown


def test_runs_csv_regenerates_the_same_tables(sweep_dir: Path, tmp_path: Path):
    _declare(sweep_dir, "# primary: paired model.pos_embed=none vs model.pos_embed=1d\n")
    first = run_report([str(sweep_dir)])
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    table = tmp_path / "committed" / "runs.csv"
    table.parent.mkdir()
    table.write_bytes((first.out / "runs.csv").read_bytes())
    again = run_report([str(table), manifest["file"]])
    assert again.out == table.parent
    assert (table.parent / "runs.csv").read_bytes() == (first.out / "runs.csv").read_bytes()
    def section(md: str, title: str) -> str:
        return md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]

    for title in ("Primary contrast", "Groups", "Secondary comparisons", "Not included"):
        assert section(again.markdown, title) == section(first.markdown, title), title
    assert again.analysis.primary.verdict == first.analysis.primary.verdict == "reproduced"
    assert "runs.csv (the value each run recorded at its last epoch)" in again.markdown


def test_parse_keeps_where_and_options():
    (spec,) = parse_contrast_comments(
        '# primary: fisher model.norm=post vs model.norm=pre where optim.warmup_steps=0 expect=greater source="Xiong et al."\n'
    )
    assert (spec.kind, spec.a, spec.b, spec.where, spec.expect) == (
        "fisher", {"model.norm": "post"}, {"model.norm": "pre"}, {"optim.warmup_steps": "0"}, "greater")


def test_the_primary_test_runs_on_any_subset_of_seeds(sweep_dir: Path):
    """One function computes the declared test from the table of runs, so a look at the first k seeds
    is that function on those seeds' rows."""
    from vit_ablate.report.contrasts import evaluate_contrast

    _declare(sweep_dir, "# primary: paired model.pos_embed=none vs model.pos_embed=1d\n")
    analysis = run_report([str(sweep_dir)]).analysis
    first_two = analysis.runs[analysis.runs["seed"].isin(["0", "1"])]
    look = evaluate_contrast(analysis.primary.spec, first_two, analysis.by, analysis.metric)
    # none − 1d at seeds 0 and 1: −6 and −7 points.
    assert look.n == 2 and look.per_seed == pytest.approx([-0.06, -0.07])
    assert look.p_t == pytest.approx(scipy_stats.ttest_rel([0.74, 0.75], [0.80, 0.82]).pvalue)
