"""`vit-ablate bench`: the tool runs, its JSON holds every number, the A/B comparison uses identical
weights, and the FLOP count is torch's FlopCounterMode with attention counted.

Nothing here is a timed test: the benchmarks run a couple of steps of a tiny model on the synthetic data
and only their structure is checked, never their speed.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from vit_ablate.bench import benchmark, count_model_flops, device_peak_flops
from vit_ablate.bench.context import CORE_COMPONENTS, parse_components
from vit_ablate.bench.gpu import sdpa_kernels_used
from vit_ablate.config import ConfigError, to_container
from vit_ablate.model import build_model

FAST = dict(rounds=2, warmup=1, progress=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine run several times faster on one thread (no OpenMP barriers
    # waiting for a descheduled sibling); restored afterwards so other test modules are unaffected.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny(tiny):
    """The suite's tiny run (tests/conftest.py) with two heads, in batches of 8 of 128 training images."""
    return tiny.but("data.batch_size=8", "data.synthetic.num_train=128", heads=2)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny):
    """Every section but startup once (gpu through its CPU code path, ddp skipped for want of GPUs)."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    bench = benchmark(
        tiny(), steps=2, json_path=str(path), ddp=2, sections=["model", "components", "framework", "data", "gpu"],
        gpu_on_cpu=True, gpu_compile=False, mfu_reference=tiny.model(), mfu_batch=4, peak_tflops=1.0, feed=True, **FAST,
    )
    return bench, json.loads(path.read_text())


# ------------------------------------------------------------------------------------------ FLOPs
def test_flops_count_every_matmul_of_the_tiny_model(tiny):
    # 16 patches of 8×8×3 px, 17 tokens of width 32, MLP 64, one block, 8 classes; FLOPs = 2 × MACs
    tokens, dim, mlp = 17, 32, 64
    stem = 2 * 16 * (8 * 8 * 3) * dim
    block = 2 * tokens * dim * 3 * dim + 2 * 2 * tokens * tokens * dim + 2 * tokens * dim * dim + 2 * 2 * tokens * dim * mlp
    assert count_model_flops(tiny.model()) == stem + block + 2 * dim * 8  # attention scores and weighted sum included
    assert count_model_flops(tiny.model(pos_embed="relative")) > count_model_flops(tiny.model())  # its bias logits


def test_vit_b16_matches_the_reference_gmacs():
    # shared/paper_reference.md: ViT-B/16 at 224 is 17.58 GMACs forward, ≈ 105 GFLOPs per training image
    spec = {"variant": "B/16", "img_size": 224, "num_classes": 1000}
    assert count_model_flops(spec) / 2e9 == pytest.approx(17.58, rel=0.005)
    assert count_model_flops(spec, training=True) / 1e9 == pytest.approx(105, rel=0.01)


# ------------------------------------------------------------------------------------------ the tool
def test_json_has_every_field(full_run):
    bench, data = full_run
    for key in ("environment", "config", "settings", "model", "components", "framework", "data", "gpu", "ddp", "rows", "notes"):
        assert key in data, key
    assert "errors" not in data, data.get("errors")
    assert data["complete"] is True
    env = data["environment"]
    for key in ("torch", "timm", "lightning", "device_name", "cpu_count", "torch_threads", "command_line", "config_digest"):
        assert env[key] not in (None, ""), key
    assert data["settings"]["flops_per_image"]["forward"] == count_model_flops(bench.model_cfg)
    model = data["model"]
    assert model["reference"] == "timm" and len(model["ratio_rounds"]) == 2 and model["ratio"] > 0
    assert set(data["components"]["variants"]) == {f"model.{k}={v}" for k, v in CORE_COMPONENTS}
    framework = data["framework"]
    assert framework["lightning"]["img_s"] > 0 and framework["plain"]["img_s"] > 0 and framework["ratio"] > 0
    assert len(framework["lightning"]["step_seconds"]) == 4  # rounds × steps, the warmup step left out
    pipeline = data["data"]
    assert pipeline["pipeline"] == "synthetic" and pipeline["img_s"] > 0 and pipeline["stand_in_reason"] is None
    assert pipeline["ratio_to_model"] == pytest.approx(pipeline["img_s"] / model["candidates"]["ours"]["img_s"])
    assert pipeline["feed"]["ratio"] > 0  # training fed by the loader vs a resident batch
    gpu = data["gpu"]
    assert set(gpu["configs"]) == {"fp32 eager", "bf16-mixed eager", "bf16-mixed whole step as one CUDA graph"}
    assert gpu["sdpa_default_uses"] and gpu["mfu_reference"]["mfu"] > 0
    assert data["ddp"]["skipped"]
    table = bench.table()
    for section in ("model", "components", "framework", "data", "gpu", "ddp"):
        assert section in table
    assert "results/bench/targets.md" in table  # the targets live outside the package


def test_ab_comparison_uses_identical_weights(full_run):
    _, data = full_run
    model = data["model"]
    assert model["weights_identical"] is True and model["loss_match"] is True
    ours, theirs = model["candidates"]["ours"]["loss_step0"], model["candidates"]["timm"]["loss_step0"]
    assert ours == pytest.approx(theirs, abs=1e-6)
    # not trivially equal: timm's non-zero head was loaded, so the loss is not ln(classes)
    assert abs(ours - math.log(8)) > 1e-4


def test_components_timm_lacks_compare_with_our_default_and_cifar_falls_back(tmp_path, tiny):
    cfg = tiny("model.norm=post", "model.num_classes=10", "data.name=cifar10", f"data.root={tmp_path / 'missing'}",
               "augment.random_crop_padding=4", "augment.hflip=true")
    bench = benchmark(cfg, steps=1, sections=["model", "data"], **FAST)
    model = bench.results["model"]
    assert model["reference"] == "default" and "model.norm" in model["timm_unavailable"]
    assert next(r for r in bench.rows if r.section == "model").ratio > 0
    data = bench.results["data"]
    assert data["pipeline"] == "cifar10 (stand-in)" and "not found" in data["stand_in_reason"] and data["loader"] == "DeviceLoader"
    assert "STAND-IN" in bench.table()


def test_cli_bench_writes_json_and_reports_progress(tmp_path, capsys, tiny):
    from vit_ablate.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", *tiny.args(), "--steps", "1", "--json", str(out), "--only", "model"]) == 0
    data = json.loads(out.read_text())
    assert data["settings"]["sections"] == ["model"] and data["model"]["loss_match"] is True
    printed = capsys.readouterr()
    assert "ours vs timm" in printed.out and "bench: model section (1/1)" in printed.err
    assert main(["bench", *tiny.args(), "--only", "modle"]) == 2  # unknown section: a usage error


# ------------------------------------------------------------------------------------------ parts
def test_gpu_section_is_skipped_without_cuda(tiny):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    bench = benchmark(tiny(), steps=1, sections=["gpu"], **FAST)
    assert bench.rows[0].note.startswith("skipped") and bench.results["gpu"]["skipped"]


def test_startup_stages_come_from_a_fresh_process_in_order(tiny):
    from vit_ablate.bench.startup import STAGES, measure_startup

    (start,) = measure_startup(to_container(tiny()), runs=1)
    ends = [start[stage] for stage in STAGES]
    assert all(0 < a <= b for a, b in zip(ends, ends[1:]))  # each stage ends after the one before
    assert start["process_s"] > start["first_batch"]  # the interpreter's own start and exit on top


def test_device_peaks():
    assert device_peak_flops("NVIDIA H100 80GB HBM3")[0] == 989e12
    assert device_peak_flops("NVIDIA H100 PCIe")[0] == 756e12
    assert device_peak_flops("NVIDIA H200")[0] == 989e12
    assert device_peak_flops("NVIDIA A100-SXM4-80GB")[0] == 312e12
    assert device_peak_flops("Some Accelerator")[0] is None
    assert device_peak_flops("NVIDIA H100 PCIe", override_tflops=500)[0] == 500e12


def test_sdpa_kernel_detection_on_cpu(tiny):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    images = torch.randn(2, 3, 32, 32)
    model = build_model(tiny.model())
    assert sdpa_kernels_used(lambda: model(images), torch.device("cpu")) == ["cpu_fused"]
    with sdpa_kernel([SDPBackend.MATH]):
        assert sdpa_kernels_used(lambda: model(images), torch.device("cpu")) == ["math"]


def test_component_lists():
    cpu = torch.device("cpu")
    assert parse_components(None, cpu) == parse_components("core", cpu) == list(CORE_COMPONENTS)
    assert len(parse_components("all", cpu)) == 8 == len(parse_components(None, torch.device("cuda")))
    assert parse_components("model.pos_embed=rope2d,stem=conv", cpu) == [("pos_embed", "rope2d"), ("stem", "conv")]
    with pytest.raises(ConfigError):
        parse_components("colour=red", cpu)


def test_interleaving_alternates_step_by_step():
    from vit_ablate.bench.timing import interleaved

    calls = []

    def fn(name):
        def step():
            calls.append(name)
            return torch.tensor(1.0)

        return step

    result = interleaved({"a": fn("a"), "b": fn("b")}, images_per_step=4, steps=3, rounds=2, warmup=2, device=torch.device("cpu"))
    assert calls[:4] == ["a", "a", "b", "b"]  # warmup: the first (seeded, loss-recording) step and one more each
    assert calls[4:] == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b", "b", "a"]  # turns alternate A B, B A
    assert all(len(m.img_s) == 2 and len(m.turns) == 6 and m.loss_step0 == 1.0 for m in result.values())


def test_paired_ratio_is_robust_to_a_burst():
    from vit_ablate.bench.timing import Measured, paired_ratio

    # b is half as fast as a, except for one step of a that a burst of load slowed tenfold
    a = Measured("a", img_s=[1.0], turns=[1.0, 1.0, 1.0, 10.0])
    b = Measured("b", img_s=[1.0], turns=[2.0, 2.0, 2.0, 2.0])
    pair = paired_ratio(a, b)
    assert pair["ratio"] == 2.0 and pair["pairs"] == 4
    # without paired steps: the per-round ratio and its range
    pair = paired_ratio(Measured("a", img_s=[2.0, 4.0, 3.0]), Measured("b", img_s=[1.0, 1.0, 1.0]))
    assert pair["ratio"] == 3.0 and (pair["low"], pair["high"]) == (2.0, 4.0)


def test_cli_only_gives_overrides_back_and_passes_options(monkeypatch, tiny):
    """`--only model key=value`: argparse hands the override to --only; the CLI must not lose it."""
    import vit_ablate.bench as bench_pkg
    from vit_ablate.cli import main

    seen = {}

    def fake_run_bench(cfg, **kwargs):
        seen.update(kwargs, precision=cfg.trainer.precision, dim=cfg.model.dim)
        return "table"

    monkeypatch.setattr(bench_pkg, "run_bench", fake_run_bench)
    argv = ["bench", *tiny.args(), "--only", "model", "components", "trainer.precision=32-true", "model.dim=48",
            "--rounds", "5", "--peak-tflops", "123", "--no-compile"]
    assert main(argv) == 0
    assert seen["sections"] == ["model", "components"]
    assert seen["precision"] == "32-true" and seen["dim"] == 48
    assert seen["rounds"] == 5 and seen["peak_tflops"] == 123.0 and seen["gpu_compile"] is False
