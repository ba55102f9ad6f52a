"""The committed reports in results/ regenerate from their runs.csv and sweep file with the same groups,
means, differences and paired t p-values as their report.csv."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from vit_ablate.report import run_report

REPO = Path(__file__).resolve().parents[2]
COMMITTED = {  # results/<folder>: (its sweep file, its metric), as each report.md's header says
    "quickstart": ("sweeps/quickstart.yaml", "val/acc1"),
    "protocol_cpu_pos_embed": ("sweeps/protocol/cpu_pos_embed.yaml", "val/acc1"),
    "protocol_cpu_norm": ("sweeps/protocol/cpu_norm.yaml", "val/loss"),
    "protocol_cpu_hybrid_sequential": ("sweeps/protocol/cpu_hybrid_sequential.yaml", "val/acc1"),  # a plan's looks
}


@pytest.mark.parametrize("folder", COMMITTED)
def test_committed_report_regenerates_from_its_runs_csv(folder: str, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(REPO)
    sweep, metric = COMMITTED[folder]
    report = run_report([f"results/{folder}/runs.csv", sweep], metric=metric, out=str(tmp_path))
    committed = pd.read_csv(REPO / "results" / folder / "report.csv").set_index("group")
    regenerated = pd.read_csv(tmp_path / "report.csv").set_index("group")
    assert list(regenerated.index) == list(committed.index)
    for column in ("mean", "delta", "p_t"):
        pd.testing.assert_series_equal(regenerated[column], committed[column], rtol=0, atol=1e-9)
    assert report.analysis.primary.verdict == committed.filter(like="primary:", axis=0)["verdict"].iloc[0]
    assert (tmp_path / "runs.csv").read_bytes() == (REPO / "results" / folder / "runs.csv").read_bytes()
