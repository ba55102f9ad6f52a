"""At which look would a comparison's existing 8-seed runs have stopped under a declared plan?
Regenerates each committed CPU report from its runs.csv with a copy of its sweep file that adds the plan."""
import re, sys
from pathlib import Path
from vit_ablate.report import run_report

PLANS = {"O'Brien–Fleming, 3 × 8 seeds (the hybrid's plan)": "stages=3 seeds_per_stage=8 spending=obrien_fleming",
         "O'Brien–Fleming, 6 × 4 seeds": "stages=6 seeds_per_stage=4 spending=obrien_fleming",
         "Pocock, 3 × 8 seeds": "stages=3 seeds_per_stage=8 spending=pocock",
         "Pocock, 6 × 4 seeds": "stages=6 seeds_per_stage=4 spending=pocock"}
CASES = [("protocol_cpu_pos_embed", "cpu_pos_embed", "val/acc1"), ("protocol_cpu_norm", "cpu_norm", "val/loss"),
         ("protocol_cpu_pooling_lr", "cpu_pooling_lr", "val/acc1"), ("protocol_cpu_hybrid", "cpu_hybrid", "val/acc1")]
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
print("| comparison | plan (α = 0.05, up to 24 seeds) | looks its 8 seeds allow: t vs boundary | where it stops |")
print("|---|---|---|---|")
for folder, sweep, metric in CASES:
    text = Path(f"sweeps/protocol/{sweep}.yaml").read_text()
    for label, line in PLANS.items():
        planned = re.sub(r"values: \[0, 1, 2, 3, 4, 5, 6, 7\]", "values: [" + ", ".join(map(str, range(24))) + "]", text)
        planned = planned.replace("# primary:", f"# sequential: {line}\n# primary:", 1)
        path = out / f"{sweep}-{abs(hash(label)) % 10**6}.yaml"
        path.write_text(planned)
        r = run_report([f"results/{folder}/runs.csv", str(path)], metric=metric, out=str(out / path.stem)).analysis.primary
        looks = "; ".join(f"n={l.n}: t={l.t:+.2f} vs ±{l.efficacy:.2f}" for l in r.looks)
        print(f"| {folder} | {label} | {looks} | {r.verdict} |", flush=True)
