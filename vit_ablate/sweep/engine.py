"""Sweep files, their validation, the W&B agent's command macros and the proposals; nothing here
starts a process.

``load_sweep`` reads the file as ``wandb sweep`` does (``yaml.safe_load``), with its header comments.
``validate_sweep`` checks W&B's schema, the macros, and every parameter name and value through
``vit_ablate.config.load_config`` with the argv the agent would build, before any run starts.
``expand_command`` substitutes the macros as ``wandb agent`` does. ``propose`` and ``runs_to_stop``
ask W&B's open-source ``sweeps`` package (the engine the W&B server runs) for the next parameter set,
seeded by the sweep's name and the proposal's index, and for the runs hyperband stops.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import math
import os
import platform
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import yaml

from vit_ablate import rundir
from vit_ablate.config import ConfigError
from vit_ablate.sweep.summary import result_metrics

# The macros ``wandb agent`` knows (wandb/wandb_agent.py, wandb/sdk/launch/sweeps/utils.py).
MACROS = ("env", "interpreter", "program", "args", "args_no_equals", "args_no_hyphens", "args_no_boolean_flags",
          "args_json", "args_json_file", "args_dict", "args_append_hydra", "args_override_hydra")
_ENVVAR_MACRO = re.compile(r"^\$\{envvar:[A-Z0-9_]*\}$")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_FLOAT_WITH_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")

# More combinations than this are validated one parameter at a time (the others at their first value).
MAX_VALIDATED_COMBINATIONS = 2048


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The ``sweeps`` package's pydantic models warn about renamed config keys on import and use."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


@functools.lru_cache(maxsize=1)
def _sweeps():
    with _quiet():
        import sweeps  # noqa: F401  (W&B's open-source sweep engine)
        import sweeps.config  # noqa: F401

        # its first proposal imports more (scipy, asyncio, ...), and what those imports draw from the
        # global RNGs would otherwise shift the first seeded proposal
        with seeded(0):
            sweeps.next_run({"method": "random", "parameters": {"x": {"distribution": "uniform", "min": 0, "max": 1}}}, [])
    return sweeps


# ---------------------------------------------------------------------------------------------- file
@dataclass
class SweepSpec:
    """A loaded sweep file plus the CLI's extra overrides."""

    path: Path
    text: str
    config: Dict[str, Any]  # the file as W&B sees it (yaml.safe_load)
    name: str  # the file's `name`, else its stem; made safe for a directory name
    overrides: List[str] = field(default_factory=list)  # CLI key=value, applied to every run
    references: List[Dict[str, Any]] = field(default_factory=list)
    baseline: Optional[Dict[str, str]] = None
    plan: Any = None  # the group-sequential plan (report.sequential.Plan) of a `# sequential:` line

    def stage_config(self, stage: int) -> Dict[str, Any]:
        """The file's config with the ``seed`` values of stages 1..stage+1 only: what a staged sweep proposes from."""
        seeds = self.parameters["seed"]["values"][: self.plan.looks[stage]]
        return {**self.config, "parameters": {**self.parameters, "seed": {**self.parameters["seed"], "values": seeds}}}

    @property
    def method(self) -> str:
        return str(self.config.get("method"))

    @property
    def parameters(self) -> Dict[str, Any]:
        return dict(self.config.get("parameters") or {})

    @property
    def command(self) -> List[str]:
        """The effective command template: the file's, with the CLI overrides after ``${args_no_hyphens}``."""
        return insert_overrides(self.config.get("command"), self.overrides)

    @property
    def metric(self) -> str:
        """The name of the metric the sweep optimises (and hyperband compares)."""
        return str((self.config.get("metric") or {}).get("name", "val/acc1"))


def insert_overrides(command: Optional[Sequence[Any]], overrides: Sequence[str], extra: Sequence[str] = ()) -> List[str]:
    """``[..., "${args_no_hyphens}", rest...]`` → ``[..., "${args_no_hyphens}", *overrides, *extra, rest...]``:
    after the sweep's parameters, so they win (at the end without ``${args_no_hyphens}``)."""
    command = list(command or [])
    added = [*overrides, *extra]
    for index, chunk in enumerate(command):
        if added and str(chunk) == "${args_no_hyphens}":
            return command[: index + 1] + added + command[index + 1 :]
    return command + added


def load_sweep(path: str | os.PathLike, overrides: Sequence[str] = ()) -> SweepSpec:
    """Read a sweep file. Raises ``ConfigError`` for a missing file, bad YAML or bad header comments."""
    from vit_ablate.report.contrasts import parse_contrast_comments
    from vit_ablate.report.references import parse_baseline_comment, parse_reference_comments
    from vit_ablate.report.sequential import parse_plan

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"sweep file {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"sweep file {str(path)!r} must hold a mapping (method, parameters, command, ...)")
    try:
        references = parse_reference_comments(text)
        baseline = parse_baseline_comment(text)
        contrasts = parse_contrast_comments(text, str(path))  # a malformed declared test fails now, not at report time
        primary = next((c for c in contrasts if c.role == "primary"), None)
        seed = (config.get("parameters") or {}).get("seed")
        plan = parse_plan(text, str(path), seed.get("values") if isinstance(seed, dict) else None,
                          primary is not None, primary.kind if primary else "")
        if plan is not None and config.get("method") != "grid":
            raise ValueError(f"{plan.where}: a plan runs every setting at each stage's seeds: use method: grid")
    except ValueError as exc:
        raise ConfigError(f"sweep file {str(path)!r}: {exc}") from None
    name = _SAFE_NAME.sub("-", str(config.get("name") or path.stem)).strip("-.") or path.stem
    return SweepSpec(path=path, text=text, config=config, name=name, overrides=list(overrides),
                     references=references, baseline=baseline, plan=plan)


# -------------------------------------------------------------------------------------------- macros
def expand_command(command: Optional[Sequence[Any]], params: Mapping[str, Any], program: Optional[str] = None,
                   args_json_file: Optional[str] = None) -> List[str]:
    """The argv ``wandb agent`` runs for a run with these parameter values.

    A copy of ``wandb.wandb_agent.Agent._command_run``'s command branch: wandb's own
    ``create_sweep_command`` (``${envvar:NAME}``, and the default ``${env} ${interpreter} ${program}
    ${args}`` for an empty command) and ``create_sweep_command_args`` (values formatted with Python's
    ``str``: ``None``, ``True``, ``[2, 2]``), then every chunk that is exactly ``${name}`` replaced by
    its list (an unknown macro by nothing, as the agent does; ``validate_sweep`` rejects those).
    """
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    sweep_command = sweep_utils.create_sweep_command(list(command or []))  # it edits its argument in place
    sweep_vars: Dict[str, Any] = sweep_utils.create_sweep_command_args(
        {"args": {key: {"value": value} for key, value in params.items()}}
    )
    sweep_vars.update(interpreter=["python"], program=[program], args_json_file=[args_json_file])
    if platform.system() != "Windows":
        sweep_vars["env"] = ["/usr/bin/env"]
    argv: List[str] = []
    for chunk in map(str, sweep_command):
        is_macro = chunk.startswith("${") and chunk.endswith("}")
        argv += (sweep_vars.get(chunk[2:-1]) or []) if is_macro else [chunk]
    return argv


def train_arguments(argv: Sequence[str]) -> Optional[Tuple[List[str], List[str]]]:
    """``(files, overrides)`` that ``vit-ablate train`` would read from this argv, or ``None`` when
    the argv is not a ``vit-ablate train`` command (a custom program: its parameters go unchecked)."""
    from vit_ablate.config import split_items  # the CLI's own rule: items with "=" are overrides

    seen_program = False
    for index, item in enumerate(map(str, argv)):
        if os.path.basename(item) in ("vit-ablate", "vit_ablate") or "vit_ablate" in item:
            seen_program = True
        elif seen_program and item == "train":
            return split_items([str(a) for a in argv[index + 1 :]])
    return None


def _train_arguments_for(spec: SweepSpec, template: Sequence[Any], params: Mapping[str, Any]):
    return train_arguments(expand_command(template, params, spec.config.get("program"), rundir.ARGS_FILE))


# ---------------------------------------------------------------------------------------- validation
def _representative_values(name: str, config: Mapping[str, Any]) -> List[Any]:
    """The values of a parameter that validation tries: all of a categorical's, a constant's value,
    and the ends and middle of a distribution (through the ``sweeps`` package's own ppf)."""
    _sweeps()
    from sweeps.params import HyperParameter

    with _quiet():
        param = HyperParameter(name, dict(config))
    if param.type == HyperParameter.CONSTANT:
        return [param.config["value"]]
    if param.type in (HyperParameter.CATEGORICAL, HyperParameter.CATEGORICAL_PROB):
        return list(param.config["values"])
    if param.type == HyperParameter.INT_UNIFORM:
        return sorted({int(param.config["min"]), int(param.config["max"])})
    values: List[Any] = []
    for x, inside in ((0.0, 1e-3), (0.5, 0.5), (1.0, 1 - 1e-3)):
        value = _plain(param.ppf(x))
        if isinstance(value, float) and not math.isfinite(value):  # an unbounded distribution's end
            value = _plain(param.ppf(inside))
        if value not in values:
            values.append(value)
    return values


def _config_error(files: Sequence[str], overrides: Sequence[str], validate: bool = True) -> Optional[str]:
    from vit_ablate.config import load_config

    try:
        load_config(files, overrides, validate=validate)
    except ConfigError as exc:
        return str(exc)
    return None


def validate_sweep(spec: SweepSpec, backend: str = "local", template: Optional[List[str]] = None) -> List[str]:
    """Check the sweep file, its command and every parameter before any run starts.

    ``template`` is the command the backend runs (default: the file's with the CLI overrides; the W&B
    backend adds ``logging.wandb=true output_dir=...``). Raises one ``ConfigError`` listing every
    problem found; returns notes (e.g. "custom program: its parameters are not checked") otherwise.
    """
    config = spec.config
    with _quiet():
        # run_cap is a W&B server key (the local runner honours it too) that the sweeps package's schema lacks
        problems = [f"sweep file: {v}" for v in _sweeps().schema_violations_from_proposed_config(
            {k: v for k, v in config.items() if k != "run_cap"})]
    notes: List[str] = []
    if config.get("method") == "custom" and backend == "local":
        problems.append("sweep file: method 'custom' needs a W&B server; use grid, random or bayes locally")
    if config.get("method") in ("random", "bayes") and backend == "local" and not config.get("run_cap"):
        notes.append(f"method {config['method']!r} without run_cap: the sweep runs until --count is reached or it is stopped")
    parameters = config.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        problems.append("sweep file: `parameters` must map at least one parameter name to its values")
        parameters = {}

    template = list(template) if template is not None else spec.command
    for chunk in map(str, template):
        if chunk.startswith("${") and chunk.endswith("}") and chunk[2:-1] not in MACROS and not _ENVVAR_MACRO.match(chunk):
            problems.append(f"command: unknown macro {chunk!r} (the W&B agent would drop it); known: "
                            + ", ".join("${" + m + "}" for m in MACROS))

    for item in spec.overrides:
        key = item.partition("=")[0].strip()
        if key in parameters:
            problems.append(f"override {item!r} sets {key!r}, which the sweep varies: every run would be the same")

    representative: Dict[str, List[Any]] = {}
    for name, pconfig in parameters.items():
        if not isinstance(pconfig, dict):
            continue  # the schema check above reports it
        try:
            representative[name] = _representative_values(name, pconfig)
        except Exception as exc:  # a distribution the schema let through but sweeps cannot sample
            problems.append(f"parameter {name!r}: {exc}")
            continue
        for value in representative[name]:
            if isinstance(value, str) and _FLOAT_WITH_EXPONENT.match(value.strip()):
                problems.append(f"parameter {name!r}: {value!r} is a string to YAML (and to W&B, which reads the "
                                f"file with PyYAML): write it with a dot and a signed exponent, e.g. "
                                + f"{float(value):.1e}".replace("e-0", "e-"))

    first = {name: values[0] for name, values in representative.items() if values}
    train_args = _train_arguments_for(spec, template, first) if template else None
    if template and train_args is None:
        notes.append("the command does not run `vit-ablate train`: parameter names and values are not checked")
    elif train_args is not None:
        flags = [a for a in train_args[1] if a.startswith("-")]
        if flags:
            problems.append(f"command: `vit-ablate train` takes key=value, not {flags[0]!r}: use "
                            "\"${args_no_hyphens}\" (the agent's ${args} writes --key=value)")
        if not any(p.startswith("command:") for p in problems):  # else the argv itself is wrong
            problems += _validate_parameters(spec, template, representative)

    if problems:
        unique = list(dict.fromkeys(problems))
        raise ConfigError(
            f"sweep file {str(spec.path)!r} has {len(unique)} problem{'s' if len(unique) > 1 else ''} "
            "(no run was started):\n  - " + "\n  - ".join(unique)
        )
    return notes


def _validate_parameters(spec: SweepSpec, template: List[str], representative: Dict[str, List[Any]]) -> List[str]:
    """The experiment files with the fixed overrides, then each parameter value alone (one message per
    unknown key), then whole configurations: every combination (a grid runs them all), or, when there
    are too many, each value with the other parameters at their first value."""
    files, fixed = _train_arguments_for(spec, template, {})
    error = _config_error(files, fixed, validate=False)
    if error:
        return [error]  # e.g. the experiment file does not exist: nothing else can be checked
    problems: List[str] = []
    good: Dict[str, List[Any]] = {}
    for name, values in representative.items():
        errors = []
        for value in values:
            error = _config_error(*_train_arguments_for(spec, template, {name: value}), validate=False)
            if error:
                errors.append(error.replace("(on the command line)", f"(sweep parameter {name!r})"))
                if "unknown config key" in error:
                    break
        problems += errors
        if not errors:
            good[name] = values

    names = list(good)
    if math.prod(len(v) for v in good.values()) <= MAX_VALIDATED_COMBINATIONS:
        combos: Iterator[Tuple[Any, ...]] = itertools.product(*good.values())
    else:
        base = tuple(good[n][0] for n in names)
        combos = itertools.chain([base], (base[:i] + (v,) + base[i + 1 :] for i, n in enumerate(names) for v in good[n][1:]))
    seen: Dict[str, str] = {}
    for combo in combos if names else ():
        params = dict(zip(names, combo))
        error = _config_error(*_train_arguments_for(spec, template, params))
        if error and error not in seen:
            seen[error] = " ".join(f"{k}={v}" for k, v in params.items())
    return problems + [f"{error} (with {where})" for error, where in seen.items()]


def base_config_digest(spec: SweepSpec, template: Optional[List[str]] = None) -> Optional[str]:
    """A digest of the configuration the command resolves to before the sweep's parameters (experiment
    files + fixed overrides), or ``None`` for a custom program. Runs of one sweep must share it: an
    experiment file edited halfway through a sweep would make its runs incomparable."""
    from vit_ablate.config import config_digest, load_config

    parsed = _train_arguments_for(spec, template if template is not None else spec.command, {})
    if parsed is None:
        return None
    try:
        return config_digest(load_config(parsed[0], parsed[1], validate=False))
    except ConfigError:
        return None


# ----------------------------------------------------------------------------------------- proposals
def proposal_seed(sweep_name: str, index: int) -> int:
    """The RNG seed of proposal ``index`` of sweep ``sweep_name`` (random and bayes are seeded by it)."""
    return int(hashlib.sha256(f"{sweep_name}/{index}".encode()).hexdigest()[:8], 16)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed ``random`` and ``numpy.random`` (what ``sweeps`` samples from), restoring both afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def propose(config: Mapping[str, Any], runs: Sequence[Any], seed: int) -> Optional[Dict[str, Any]]:
    """The next run's parameters (``{name: value}``) from ``sweeps.next_run``, or ``None`` when a grid
    is exhausted. ``runs`` are ``sweeps.SweepRun`` objects for every run proposed so far."""
    sweeps = _sweeps()
    with seeded(seed), _quiet():
        run = sweeps.next_run({k: v for k, v in config.items() if k != "run_cap"}, list(runs), validate=True)
    return None if run is None else {name: _plain(entry["value"]) for name, entry in run.config.items()}


def _plain(value: Any) -> Any:
    """numpy scalars → Python, so the manifest (JSON) and ``str()`` formatting match W&B's."""
    if isinstance(value, np.generic):
        return value.item()
    return [_plain(v) for v in value] if isinstance(value, list) else value


def grid_size(config: Mapping[str, Any]) -> Optional[int]:
    """How many runs a grid sweep holds (capped by run_cap); ``None`` for random and bayes."""
    if config.get("method") != "grid":
        return None
    runs: List[Any] = []
    sweeps = _sweeps()
    with _quiet():
        while (run := sweeps.next_run(dict(config), runs, validate=False)) is not None:
            runs.append(run)
    cap = config.get("run_cap")
    return min(len(runs), int(cap)) if cap else len(runs)


# ----------------------------------------------------------------------------------------- hyperband
# A run's status → the state a W&B run in that situation would have.
_RUN_STATE = {
    rundir.PENDING: "pending",
    rundir.RUNNING: "running",
    rundir.COMPLETED: "finished",
    rundir.DIVERGED: "finished",  # the process exits 0: W&B records it as finished
    rundir.FAILED: "failed",
    rundir.INTERRUPTED: "crashed",
    rundir.STOPPED: "killed",
}


def to_sweep_run(entry: Mapping[str, Any], run_dir: Optional[Path], metric: str, with_history: bool = True):
    """A run (name, params, status) plus its run directory's metrics as a ``sweeps.SweepRun``."""
    summary: Dict[str, Any] = {}
    history: List[Dict[str, Any]] = []
    if run_dir is not None:
        metrics = result_metrics(rundir.read_result(run_dir) or {}, metric)
        summary = {k: v for k, v in metrics.items() if v is not None}
        history = rundir.read_metrics(run_dir) if with_history else []
        if history and metric not in summary and metric in history[-1]:
            summary[metric] = history[-1][metric]
    sweeps = _sweeps()
    with _quiet():
        # by the fields' aliases: pydantic 2.14 no longer honours sweeps' `allow_population_by_field_name`
        return sweeps.SweepRun(
            name=str(entry["name"]),
            config={k: {"value": v} for k, v in (entry.get("params") or {}).items()},
            state=_RUN_STATE.get(str(entry.get("status")), "pending"),
            summaryMetrics=summary,
            sampledHistory=history,
        )


def runs_to_stop(config: Mapping[str, Any], runs: Sequence[Any]) -> List[str]:
    """Names of the running runs that hyperband ``early_terminate`` stops now (``sweeps.stop_runs``)."""
    if not config.get("early_terminate"):
        return []
    sweeps = _sweeps()
    with _quiet():
        return [run.name for run in sweeps.stop_runs(dict(config), list(runs), validate=False)]
