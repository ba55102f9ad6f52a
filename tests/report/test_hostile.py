"""Hostile run directories: one unreadable run is listed with its reason, the rest are reported; values
from runs are escaped in report.md and report.csv; nothing outside the sweep folder is read."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from vit_ablate.report import run_report
from vit_ablate.rundir import Unreadable, load_yaml

from .fabricate import run_config, write_run

BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)


@pytest.mark.parametrize(
    "name, write, reason",
    [
        ("laughs", lambda d: (d / "config.yaml").write_text(BILLION_LAUGHS), "uses YAML aliases"),
        ("selfref", lambda d: (d / "config.yaml").write_text("model: &m\n  inner: *m\n"), "uses YAML aliases"),
        ("huge", lambda d: (d / "result.json").write_text(" " * (4 * 1024 * 1024 + 1)), "over the 4,194,304-byte limit"),
        ("bigint", lambda d: (d / "config.yaml").write_text((d / "config.yaml").read_text().replace("seed: 2", f"seed: {'9' * 400}")),
         None),
        ("list", lambda d: (d / "result.json").write_text("[1, 2, 3]"), "result.json holds a list, not a mapping"),
        ("deepjson", lambda d: (d / "result.json").write_text("[" * 100_000 + "]" * 100_000), "result.json unreadable"),
    ],
)
def test_one_hostile_run_is_listed_and_the_rest_reported(tmp_path: Path, name, write, reason):
    sweep = tmp_path / "runs"
    for i, (pos, value) in enumerate([("1d", 0.80), ("1d", 0.82), ("none", 0.70), ("none", 0.71)]):
        write_run(sweep / f"ok{i}", run_config(pos, i % 2, f"ok{i}"), final=value)
    bad = write_run(sweep / name, run_config("none", 2, name), final=0.9)
    write(bad)
    assert len(BILLION_LAUGHS) < 1000
    report = run_report([str(sweep)], by=["model.pos_embed"])
    excluded = report.excluded.set_index("run")
    groups = report.analysis.groups
    if reason is None:  # a 400-digit seed is a legitimate (if odd) value: the run is reported
        assert name not in excluded.index
        assert groups["n"].sum() == 5
    else:
        assert excluded.loc[name, "status"] == "unreadable" and reason in excluded.loc[name, "why"]
        assert f"| {name} |" in report.markdown.split("## Not included", 1)[1]
        assert dict(zip(groups.loc[groups["n"] > 0, "short"], groups.loc[groups["n"] > 0, "mean"].round(4))) == \
            {"1d": 0.81, "none": 0.705}


def test_load_yaml_refuses_aliases():
    assert load_yaml("a: 1\nb: [1, 2]\n") == {"a": 1, "b": [1, 2]}
    for text in (BILLION_LAUGHS, "&a [*a]"):
        with pytest.raises(Unreadable, match="aliases"):
            load_yaml(text)


def test_manifest_dir_outside_the_sweep_folder_is_not_followed(tmp_path: Path):
    outside = write_run(tmp_path / "elsewhere", run_config("none", 0, "elsewhere"), final=0.99)
    sweep_dir = tmp_path / "a" / "b" / "sweep"
    entries = []
    for i, value in enumerate([0.80, 0.81]):
        write_run(sweep_dir / f"run-{i}", run_config("1d", i, f"run-{i}"), final=value)
        entries.append({"name": f"run-{i}", "params": {"model.pos_embed": "1d", "seed": i}, "dir": f"run-{i}"})
    entries.append({"name": "escape", "params": {"model.pos_embed": "none", "seed": 0}, "dir": "../../../elsewhere"})
    entries.append({"name": "root", "params": {}, "dir": "/"})
    entries.append("not an object")
    (sweep_dir / "sweep.json").write_text(json.dumps({"sweep": "s", "config": {}, "runs": entries}))
    report = run_report([str(sweep_dir)], by=["model.pos_embed"])
    excluded = report.excluded.set_index("run")
    assert excluded.loc["escape", "status"] == "unreadable" and "not a folder inside the sweep folder" in excluded.loc["escape", "why"]
    assert excluded.loc["root", "status"] == "unreadable" and "entry 4" in excluded.index
    assert 0.99 not in report.analysis.runs["metric_value"].tolist()  # the outside run was never read
    assert outside.exists()


def test_values_are_escaped_in_markdown_and_csv(tmp_path: Path):
    evil = "=HYPERLINK(\"http://x\")|<script>alert(1)</script>\n# heading [link](javascript:x)"
    for i, (pos, value) in enumerate([(evil, 0.80), (evil, 0.81), ("1d", 0.70), ("1d", 0.72)]):
        name = f"{evil if i == 0 else 'r'}{i}"
        write_run(tmp_path / "runs" / f"d{i}", run_config(pos, i % 2, name), final=value)
    write_run(tmp_path / "runs" / "d9", run_config("1d", 5, "x"), status="failed", error=evil)
    report = run_report([str(tmp_path / "runs")], by=["model.pos_embed"], out=str(tmp_path / "out"))
    md = (tmp_path / "out" / "report.md").read_text()
    assert "<script>" not in md and "](javascript" not in md
    assert not any(line.startswith("# heading") for line in md.splitlines())
    table = [line for line in md.splitlines() if line.startswith("| model.pos_embed=") or line.startswith("| d9")]
    assert table and all(line.count(" | ") == line.replace("\\|", "").count(" | ") for line in table)
    header = md.split("## Groups", 1)[1].splitlines()[2]
    assert all(line.replace("\\|", "").count("|") == header.count("|") for line in table if line.startswith("| model"))
    for name in ("report.csv", "runs.csv"):
        with open(tmp_path / "out" / name, newline="") as handle:
            cells = [cell for row in csv.reader(handle) for cell in row]
        assert not any(cell.startswith(("=", "+", "@")) for cell in cells), name
        assert any(cell.startswith("'=HYPERLINK") or cell.startswith("'model.pos_embed=") or "HYPERLINK" in cell
                   for cell in cells)
    with open(tmp_path / "out" / "report.csv", newline="") as handle:
        deltas = [row["delta"] for row in csv.DictReader(handle) if row["delta"]]
    assert deltas and all(not d.startswith("'") for d in deltas)
