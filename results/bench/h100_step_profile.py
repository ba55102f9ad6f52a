# Run on the H100 as: python3 results/bench/h100_step_profile.py  (DEV=cpu N=2 for a CPU dry run)
"""Where a ViT-Ti/4 training step's time goes on the H100 (host-bound?): per-phase times, batch scaling,
the cost of one tiny kernel launch, and the profiler's top host ops over three steps."""
import os, time, torch, torch.nn.functional as F
from timm.optim import create_optimizer_v2
from vit_ablate.config import load_config
from vit_ablate.model.vit import build_model
from vit_ablate.training.module import optimizer_kwargs

cfg = load_config(["experiments/cifar10_vit_ti4.yaml"])
dev = torch.device(os.environ.get("DEV", "cuda"))
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
N = int(os.environ.get("N", 30))

def setup(batch, drop_path=0.1):
    torch.manual_seed(0)
    m = build_model({**dict(cfg.model), "drop_path": drop_path}).to(dev).train()
    opt = create_optimizer_v2(m, **optimizer_kwargs(cfg))
    x = torch.randn(batch, 3, 32, 32, device=dev); y = torch.randint(0, 10, (batch,), device=dev)
    return m, opt, x, y

def timeit(fn, n=None):
    n = n or N
    for _ in range(min(5, n)): fn()
    sync(); t = time.perf_counter()
    for _ in range(n): fn()
    sync(); return (time.perf_counter() - t) / n * 1e3

for batch in (128, 512):
    m, opt, x, y = setup(batch)
    def fwd():
        with torch.no_grad(), torch.autocast(dev.type, torch.bfloat16): m(x)
    def fb():
        with torch.autocast(dev.type, torch.bfloat16): loss = F.cross_entropy(m(x).float(), y)
        loss.backward()
    def step():
        fb(); torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step(); opt.zero_grad(set_to_none=True)
    print(f"batch {batch}: fwd {timeit(fwd):.1f} ms, fwd+bwd {timeit(fb):.1f} ms, full step {timeit(step):.1f} ms")
m, opt, x, y = setup(128, drop_path=0.0)
def fb0():
    with torch.autocast(dev.type, torch.bfloat16): loss = F.cross_entropy(m(x).float(), y)
    loss.backward()
print(f"batch 128 drop_path 0: fwd+bwd {timeit(fb0):.1f} ms")
t = time.perf_counter(); [torch.empty(1, device=dev).add_(1) for _ in range(20 * N)]; sync()
print(f"tiny kernel launch: {(time.perf_counter()-t)/(20 * N)*1e6:.1f} us each ")
from torch.profiler import profile, ProfilerActivity
m, opt, x, y = setup(128)
def step():
    with torch.autocast(dev.type, torch.bfloat16): loss = F.cross_entropy(m(x).float(), y)
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
for _ in range(5): step()
sync()
with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])) as prof:
    for _ in range(3): step()
    sync()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=22, max_name_column_width=48))
