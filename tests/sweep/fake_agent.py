"""A stand-in for ``wandb agent`` (which needs a W&B server): runs the sweep's uploaded command for the
parameter sets it is given, with the environment the real agent sets, using the real macro expansion.

    python fake_agent.py SWEEP_ID CONFIG.json PARAMS.json
"""

import json
import os
import subprocess
import sys

from vit_ablate.sweep.engine import expand_command

sweep_id, config_file, params_file = sys.argv[1:4]
config = json.load(open(config_file))
for index, params in enumerate(json.load(open(params_file))):
    run_id = f"{os.getpid()}x{index}"
    env = dict(os.environ, WANDB_SWEEP_ID=sweep_id, WANDB_RUN_ID=run_id)
    argv = expand_command(config["command"], params, config.get("program"))
    print("fake agent runs", argv, flush=True)
    subprocess.run(argv, env=env, check=False)
