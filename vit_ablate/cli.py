"""``vit-ablate``: parse the command line and dispatch. No logic lives here.

Exit codes: 0 success (a run that finished ``completed`` or ``diverged``), 1 a failed run,
2 a bad command line or configuration, 130 an interrupted run.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from typing import List, NoReturn, Optional

from vit_ablate import rundir
from vit_ablate.config import ConfigError, split_items
from vit_ablate.schema import did_you_mean

EXIT_USAGE = 2
STATUS_EXIT = {rundir.COMPLETED: 0, rundir.DIVERGED: 0, rundir.FAILED: 1, rundir.INTERRUPTED: 130}


def _config_epilog(items: List[str]) -> str:
    """Every key with its resolved value, meaning and valid values (the registries' names among them)."""
    from vit_ablate.config import describe, load_config

    cfg = load_config(*split_items(items))
    return (
        "Every key, resolved from the defaults and the arguments above; set any of them as key=value\n"
        "(e.g. model.pos_embed=2d); after each key its meaning and its valid values.\n\n" + describe(cfg)
    )


def cmd_train(args) -> int:
    from vit_ablate.config import load_config

    files, overrides = split_items(args.items)
    # before Lightning is imported: a bad config fails at once; and this machine must hold what the run
    # needs (init.path, the GPUs), which `config show` and a sweep's up-front check do not ask
    cfg = load_config(files, overrides, machine=True)
    from vit_ablate.training.run import train

    result = train(cfg)
    return STATUS_EXIT.get(result.get("status"), 1)


def cmd_config_show(args) -> int:
    from vit_ablate.config import load_config, to_yaml

    files, overrides = split_items(args.items)
    print(to_yaml(load_config(files, overrides)), end="")
    return 0


def _default_workers(gpus: Optional[str]) -> int:
    """Two runs at a time on a CPU-only machine (two one-thread runs finish 1.4× the runs per hour of
    one two-thread run on 2 cores, results/bench/sweep_throughput); one where runs get GPUs, whose
    packing depends on the model and the card's memory."""
    from vit_ablate.sweep.local import gpu_slots

    return min(2, os.cpu_count() or 1) if not any(gpu_slots(1, gpus)) else 1


def cmd_sweep(args) -> int:
    from vit_ablate.sweep import run_sweep

    summary = run_sweep(
        args.file, backend=args.backend, workers=args.workers if args.workers is not None else _default_workers(args.gpus),
        count=args.count, overrides=args.overrides,
        sweep_id=args.sweep_id, output_dir=args.output_dir, gpus=args.gpus,
    )
    print(summary.text)
    return summary.exit_code


# report, analyze and export read what the user names (folders, checkpoints): any ValueError or
# FileNotFoundError they raise is about that input and exits 2 like a bad config (main)
def cmd_report(args) -> int:
    from vit_ablate.report import run_report

    print(run_report(args.runs, by=args.by, metric=args.metric, baseline=args.baseline, out=args.out, wandb_path=args.wandb,
                     split=args.split).markdown)
    return 0


def cmd_analyze(args) -> int:
    from vit_ablate.analyze import run_analysis

    print(run_analysis(args.checkpoint, data=args.data, out=args.out, num_images=args.images, overrides=args.overrides))
    return 0


def cmd_export(args) -> int:
    from vit_ablate.export import export

    folder = export(args.run, args.to, args.out)
    print(f"wrote {folder}: model.safetensors and config.json, loadable by {'timm' if args.to == 'timm' else 'transformers'}")
    return 0


def cmd_bench(args) -> int:
    from vit_ablate.bench import run_bench
    from vit_ablate.config import load_config

    items, sections = list(args.items), None
    if args.only is not None:
        # `--only model key=value` : argparse hands the override to --only; give it back
        sections = [s for s in args.only if "=" not in s and not s.endswith((".yaml", ".yml"))]
        items += [s for s in args.only if s not in sections]
        sections = sections or None  # `--only key=value` alone: every section, with the override
    files, overrides = split_items(items)
    cfg = load_config(files, overrides)
    table = run_bench(
        cfg, steps=args.steps, json_path=args.json, ddp=args.ddp, sections=sections,
        rounds=args.rounds, peak_tflops=args.peak_tflops, gpu_compile=not args.no_compile, components=args.components,
    )
    print(table)
    return 0


def _usage_error(usage_parser: argparse.ArgumentParser, stray: List[str]) -> int:
    """The command's own usage, and for ``--model.norm=post`` the override as it is written."""
    from vit_ablate.config import SCHEMA

    message = f"unrecognized arguments: {' '.join(stray)}"
    dashed = [item for item in stray if item.startswith("--") and item[2:].partition("=")[0] in SCHEMA]
    if not dashed:
        options = [o for action in usage_parser._actions for o in action.option_strings]
        message += did_you_mean(stray[0].partition("=")[0], options)
    else:
        key, _, value = dashed[0][2:].partition("=")
        message += f"; overrides are written without dashes: {key}={value or 'VALUE'}"
    print(usage_parser.format_usage(), end="", file=sys.stderr)
    print(f"{usage_parser.prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vit-ablate", description="Vision Transformer ablation studies.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="train one run: vit-ablate train [EXPERIMENT.yaml ...] [key=value ...]",
        description="Train one run. YAML files are merged in order, then key=value overrides.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("items", nargs="*", metavar="FILE.yaml | key=value")
    train.set_defaults(usage_parser=train, func=cmd_train)

    config = sub.add_parser("config", help="inspect configurations")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_sub.add_parser("show", help="print the resolved config: vit-ablate config show [files] [key=value]")
    show.add_argument("items", nargs="*", metavar="FILE.yaml | key=value")
    show.set_defaults(usage_parser=show, func=cmd_config_show)

    sweep = sub.add_parser("sweep", help="run a W&B sweep file locally (no account) or on wandb")
    sweep.add_argument("file", help="a sweep YAML file, e.g. sweeps/quickstart.yaml")
    sweep.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to every run")
    sweep.add_argument("--backend", choices=["local", "wandb"], default="local")
    sweep.add_argument("--workers", type=int, default=None,
                       help="runs in parallel, each with cores/workers threads on a CPU (default: 2 on a machine without GPUs "
                            "(1 with one core): on 2 cores two one-thread runs finish 1.4x the runs per hour of one "
                            "two-thread run; 1 where runs get GPUs)")
    sweep.add_argument("--count", type=int, default=None, help="start at most this many runs in this invocation (resumed ones included)")
    sweep.add_argument("--sweep-id", default=None, help="join an existing W&B sweep (wandb backend)")
    sweep.add_argument("--output-dir", default="runs", help="where runs/<sweep>/ is written")
    sweep.add_argument("--gpus", default=None, help="GPU ids dealt round-robin to workers, e.g. 0,1; several workers may share one (--workers 4 --gpus 0); 'none' for CPU (default: all visible)")
    sweep.set_defaults(usage_parser=sweep, func=cmd_sweep)

    report = sub.add_parser("report", help="tables, statistics and plots over run directories")
    report.add_argument("runs", nargs="+", help="a sweep directory or run directories")
    report.add_argument("--by", nargs="+", default=None, help="config keys to group by (default: the swept keys)")
    report.add_argument("--metric", default="val/acc1")
    report.add_argument("--baseline", default=None, help="KEY=VALUE of the group the others are compared with")
    report.add_argument("--out", default=None, help="output directory (default: <first run dir>/report)")
    report.add_argument("--wandb", default=None, metavar="ENTITY/PROJECT/SWEEP", help="read runs from the W&B API")
    report.add_argument("--split", action="store_true", help="one report per setting of the config keys that differ outside the grouping keys")
    report.set_defaults(usage_parser=report, func=cmd_report)

    analyze = sub.add_parser("analyze", help="the paper's figures and few-shot accuracy for a checkpoint")
    analyze.add_argument("checkpoint")
    analyze.add_argument("overrides", nargs="*", metavar="key=value", help="data.* overrides for the images used")
    analyze.add_argument("--data", default=None, help="data.root for the images (default: the run's own data)")
    analyze.add_argument("--out", default=None, help="folder for the figures and the summary (default: <run dir>/analysis, or analysis/ beside the checkpoint)")
    analyze.add_argument("--images", type=int, default=64, help="images for attention statistics")
    analyze.set_defaults(usage_parser=analyze, func=cmd_analyze)

    export = sub.add_parser("export", help="a run's weights for timm or Hugging Face: vit-ablate export RUN --to timm|hf")
    export.add_argument("run", help="a run directory (its checkpoints/last.ckpt) or a .ckpt file")
    export.add_argument("--to", required=True, choices=("timm", "hf"), help="the library that will load the weights")
    export.add_argument("--out", default=None, help="output folder (default: RUN/export/<to>)")
    export.set_defaults(usage_parser=export, func=cmd_export)

    bench = sub.add_parser("bench", help="throughput against timm and a plain PyTorch loop")
    bench.add_argument("items", nargs="*", metavar="FILE.yaml | key=value")
    bench.add_argument("--steps", type=int, default=None, help="timed steps per round (default 3 on a CPU, 20 on a GPU)")
    bench.add_argument("--json", default=None)
    bench.add_argument("--ddp", type=int, default=0, help="also measure DDP scaling on N devices")
    bench.add_argument("--only", nargs="+", default=None, help="sections to run: model components framework data startup gpu")
    bench.add_argument("--rounds", type=int, default=None, help="timed rounds per candidate (default 2 on a CPU, 3 on a GPU)")
    bench.add_argument("--components", default=None, help="component variants: core (CPU default), all (GPU default), or key=value,...")
    bench.add_argument("--peak-tflops", type=float, default=None, help="the device's peak for MFU (default: a table of known GPUs)")
    bench.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurements (gpu section)")
    bench.set_defaults(usage_parser=bench, func=cmd_bench)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        if argv[:1] == ["train"] and any(a in ("-h", "--help") for a in argv[1:]):
            # `vit-ablate train [files] [overrides] --help` also prints the resolved configuration
            items = [a for a in argv[1:] if a not in ("-h", "--help")]
            train_parser = parser._subparsers._group_actions[0].choices["train"]
            train_parser.epilog = _config_epilog(items)
        args, extra = parser.parse_known_args(argv)
        # key=value overrides may also follow the options (`analyze ck.ckpt --out d data.root=x`)
        stray = [item for item in extra if item.startswith("-") or "=" not in item]
        target = "items" if hasattr(args, "items") else "overrides"
        if stray or (extra and not hasattr(args, target)):
            return _usage_error(args.usage_parser, stray or extra)
        if extra:
            setattr(args, target, [*getattr(args, target), *extra])
        try:
            return args.func(args)
        except (ValueError, FileNotFoundError) as exc:
            if args.func not in (cmd_report, cmd_analyze, cmd_export):
                raise
            raise ConfigError(str(exc)) from None
    except ConfigError as exc:
        print(f"vit-ablate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def run() -> NoReturn:
    """The console command: ``main``, then an exit that skips the interpreter's teardown of its modules
    (about a second after torch and Lightning are loaded, once per run of a sweep). What must happen at
    exit still does: the streams are flushed and the ``atexit`` handlers (logging, W&B, temporary
    folders, multiprocessing) run. An uncaught exception exits the usual way, with its traceback."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a reader that went away (`| head`): nothing left to tell it
            pass
    atexit._run_exitfuncs()
    os._exit(int(code))


if __name__ == "__main__":
    run()
