"""The run directory's contract has one owner, vit_ablate/rundir.py: its result.json round-trips as
strict JSON, its metrics reader parses what the epoch recorder writes, and no other module of the
package spells a contract file name or a run status itself."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from typing import List

import pytest

from vit_ablate import rundir

PACKAGE = Path(__file__).resolve().parents[1] / "vit_ablate"
FILE_NAMES = {rundir.RESULT_FILE, rundir.METRICS_FILE, rundir.ARGS_FILE, rundir.SWEEP_MANIFEST}
STATUSES = set(rundir.SWEEP_STATUSES)


def test_result_round_trip(tmp_path):
    data = {"status": rundir.COMPLETED, "error": None, "final": {"val/acc1": 0.9375, "val/loss": 0.21},
            "epochs": 3, "seed": 0}
    path = rundir.write_result(tmp_path, data)
    assert path == tmp_path / "result.json"
    assert rundir.read_result(tmp_path) == data
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left behind


def test_result_non_finite_becomes_null(tmp_path):
    rundir.write_result(tmp_path, {"status": rundir.DIVERGED, "final": {"val/loss": math.nan, "val/acc1": 0.1},
                                   "best": {"val/loss": -math.inf}})
    text = (tmp_path / "result.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    strict = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-strict JSON constant {name}"))
    assert strict["final"] == {"val/loss": None, "val/acc1": 0.1}
    assert strict["best"] == {"val/loss": None}
    assert rundir.read_result(tmp_path) == strict


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]"])
def test_read_result_absent_or_damaged_is_none(tmp_path, content):
    if content is not None:
        (tmp_path / "result.json").write_text(content)
    assert rundir.read_result(tmp_path) is None


def test_read_metrics_parses_rows(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "epoch,step,train/loss,val/acc1,lr\n"
        "0,10,2.5,0.25,0.001\n"
        "1,20,1.5,,0.0005\n"
        "2,30,1.0,0.75,0.0001,0.5\n"  # more cells than columns: a damaged line, skipped
        "3,40,0.5,0.875"  # a last line cut short while the run writes it: its cells so far
    )
    rows = rundir.read_metrics(tmp_path)
    assert rows == [
        {"epoch": 0.0, "step": 10.0, "train/loss": 2.5, "val/acc1": 0.25, "lr": 0.001},
        {"epoch": 1.0, "step": 20.0, "train/loss": 1.5, "lr": 0.0005},
        {"epoch": 3.0, "step": 40.0, "train/loss": 0.5, "val/acc1": 0.875},
    ]
    assert rundir.read_metrics(tmp_path / "absent") == []


def test_run_dir_paths(tmp_path):
    paths = rundir.RunDir(tmp_path)
    assert paths.config == tmp_path / "config.yaml"
    assert paths.metrics == tmp_path / "metrics.csv"
    assert paths.last_checkpoint == tmp_path / "checkpoints" / "last.ckpt"
    assert paths.best_checkpoint == tmp_path / "checkpoints" / "best.ckpt"
    assert paths.init_summary == tmp_path / "init_summary.json"
    assert paths.lock == tmp_path / ".lock"
    assert rundir.FINAL_STATUSES == ("completed", "diverged")
    assert set(rundir.RESULT_STATUSES) | set(rundir.SWEEP_ONLY_STATUSES) == STATUSES


# ------------------------------------------------------------------------- one owner of the contract
def _text(node: ast.AST):
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _names(node: ast.AST) -> List[str]:
    return [n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(node) if isinstance(n, (ast.Name, ast.Attribute))]


def contract_literals(source: str) -> List[str]:
    """Where ``source`` spells a contract file name as a path, or a run status as a status.

    A file name counts when a string is exactly that name or ends in ``/<name>``; prose that mentions
    it (a docstring, a message) does not. A status counts where it is compared, assigned to a name
    or keyword holding "status", given as the value of a "status" key or a ``.get("status", …)``
    default, listed with another status in a tuple/list/set, or is one of a dict's keys when all of
    them are statuses. W&B's run states share some spellings and stay literal where they are W&B's.
    """
    found = []
    tree = ast.parse(source)

    def status(node, why):
        value = _text(node)
        if value in STATUSES:
            found.append(f"line {node.lineno}: {value!r} {why}")

    for node in ast.walk(tree):
        value = _text(node)
        if value is not None and any(value == f or value.endswith("/" + f) for f in FILE_NAMES):
            found.append(f"line {node.lineno}: {value!r}")
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                for item in (side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]):
                    status(item, "compared")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if node.value is not None and any("status" in n.lower() for t in targets for n in _names(t)):
                for item in (node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]):
                    status(item, "assigned to a status")
        elif isinstance(node, ast.keyword) and node.arg and "status" in node.arg.lower():
            status(node.value, "as status=")
        elif isinstance(node, ast.Dict):
            for key, item in zip(node.keys, node.values):
                if key is not None and _text(key) == "status":
                    status(item, "as the value of 'status'")
            keys = [_text(k) for k in node.keys if k is not None]
            if len(keys) >= 2 and all(k in STATUSES for k in keys):
                found.append(f"line {node.lineno}: a dict keyed by status literals {keys}")
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            listed = [_text(e) for e in node.elts if _text(e) in STATUSES]
            if len(listed) >= 2:
                found.append(f"line {node.lineno}: status literals {listed} listed together")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and len(node.args) == 2 and _text(node.args[0]) == "status"):
            status(node.args[1], "as the default of .get('status')")
    return found


def test_the_check_finds_contract_literals_and_ignores_prose():
    flagged = contract_literals(
        'path = run_dir / "result.json"\n'
        'other = "logs/metrics.csv"\n'
        'if result["status"] == "completed": pass\n'
        'ok = status in ("failed", "interrupted")\n'
        'status, error = "stopped", "by hyperband"\n'
        'entry.update(status="running")\n'
        'record = {"status": "pending"}\n'
        'FINAL = ("completed", "diverged")\n'
        'EXIT = {"completed": 0, "failed": 1}\n'
        'state = entry.get("status", "pending")\n'
    )
    assert len(flagged) == 12, flagged
    assert contract_literals(
        '"""Writes result.json when the run ends; a completed run is not run again."""\n'
        'message = f"no {RESULT_FILE} (still running, or killed before writing it)"\n'
        'text = "the run completed; metrics.csv has 3 rows"\n'
        'STATES = {"finished": COMPLETED, "failed": FAILED, "crashed": FAILED}\n'
        'label = "failed"\n'
        'if kind == "running_mean": pass\n'
    ) == []


def test_no_other_module_spells_the_contract():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "rundir.py" and path.parent == PACKAGE:
            continue
        found = contract_literals(path.read_text())
        if found:
            offenders[str(path.relative_to(PACKAGE.parent))] = found
    assert not offenders, f"use vit_ablate.rundir's names instead: {offenders}"


def test_rundir_sits_below_the_layers():
    tree = ast.parse((PACKAGE / "rundir.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert {m for m in imported if m.startswith("vit_ablate")} == {"vit_ablate.io"}
    assert not {"torch", "lightning", "numpy"} & {m.split(".")[0] for m in imported}
