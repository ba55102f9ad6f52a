"""trainer.cuda_graph: the whole training step as one callable, stepped through Lightning's manual
optimization. On a CPU it runs eagerly and must train exactly like automatic optimization; the graph
capture and replay themselves are checked on a CUDA device (skipped elsewhere)."""

import pytest
import torch
import torch.nn.functional as F

from vit_ablate.model import build_model
from vit_ablate.training.module import ViTModule
from vit_ablate.training.run import train
from vit_ablate.training.whole_step import ReplayingOptimizer, WholeTrainStep

from .test_run import _state


def _train_until_epoch(cfg, epoch, monkeypatch):
    """Train ``cfg`` and fail at the start of ``epoch``, leaving the checkpoint of the epoch before."""
    def fail(module):
        if module.current_epoch == epoch:
            raise RuntimeError("interrupted on purpose")

    with monkeypatch.context() as patch:
        patch.setattr(ViTModule, "on_train_epoch_start", fail, raising=False)
        with pytest.raises(RuntimeError, match="on purpose"):
            train(cfg)


def _checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("extra", [[], ["augment.mixup=0.8", "augment.label_smoothing=0.1"]], ids=["labels", "mixup"])
def test_a_whole_step_run_trains_exactly_like_automatic_optimization(tiny, tmp_path, extra):
    """Same weights, optimizer state, step count, schedule and metrics after two epochs (warmup,
    clipping at 1.0, cosine decay), with hard labels and with mixup's soft targets."""
    # on the CPU: the eager whole step against Lightning's own (on a GPU both are checked by the replay test below)
    args = ["trainer.max_epochs=2", "optim.warmup_steps=5", "optim.grad_clip=0.5", *extra]
    automatic = train(tiny(*args, "name=automatic"))
    whole = train(tiny(*args, "name=whole", "trainer.cuda_graph=true"))
    assert automatic["status"] == whole["status"] == "completed"
    for key, value in automatic["final"].items():
        assert whole["final"][key] == pytest.approx(value, abs=1e-6), key
    ours, theirs = (_checkpoint(tmp_path / name / "checkpoints" / "last.ckpt") for name in ("whole", "automatic"))
    assert ours["global_step"] == theirs["global_step"] == 32  # 2 epochs × 1024 / 64
    assert max((ours["state_dict"][k] - theirs["state_dict"][k]).abs().max().item() for k in theirs["state_dict"]) <= 1e-6
    (ours_opt,), (theirs_opt,) = ours["optimizer_states"], theirs["optimizer_states"]
    assert ours_opt["param_groups"][0]["lr"] == pytest.approx(theirs_opt["param_groups"][0]["lr"], rel=1e-9)
    for index, state in theirs_opt["state"].items():
        for key, value in state.items():
            assert torch.allclose(torch.as_tensor(ours_opt["state"][index][key]), torch.as_tensor(value), atol=1e-7), (index, key)


def test_a_whole_step_run_resumes_from_its_checkpoint(tiny, tmp_path, monkeypatch):
    """Three epochs in one go equal three with a failure at the start of the third and a rerun from the
    checkpoint (the wrapped optimizer's state and the schedule come back through the ReplayingOptimizer)."""
    args = ["trainer.cuda_graph=true", "trainer.max_epochs=3"]
    straight = train(tiny(*args, "name=straight"))
    _train_until_epoch(tiny(*args, "name=resumed"), 2, monkeypatch)
    resumed = train(tiny(*args, "name=resumed"))
    assert resumed["status"] == "completed" and resumed["epochs"] == 3
    for key, value in straight["final"].items():
        assert resumed["final"][key] == pytest.approx(value, abs=1e-6), key
    a, b = _state(tmp_path / "straight" / "checkpoints" / "last.ckpt"), _state(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_the_replaying_optimizer_is_the_wrapped_one_for_schedules_and_checkpoints():
    model = torch.nn.Linear(3, 2)
    inner = torch.optim.AdamW(model.parameters(), lr=0.1)
    outer = ReplayingOptimizer(inner)
    assert outer.param_groups is inner.param_groups and outer.state is inner.state
    outer.param_groups[0]["lr"] = 0.05  # what a schedule built on the wrapper does
    assert inner.param_groups[0]["lr"] == 0.05
    called = []
    assert outer.step(lambda: called.append(1) or torch.tensor(2.0)) == 2.0 and called == [1]
    model(torch.ones(1, 3)).sum().backward()
    inner.step()
    saved = outer.state_dict()
    fresh = torch.optim.AdamW(model.parameters(), lr=0.1)
    ReplayingOptimizer(fresh).load_state_dict(saved)
    assert fresh.param_groups[0]["lr"] == 0.05 and set(fresh.state) == set(inner.state)


def _tiny_vit(tiny):
    torch.manual_seed(0)
    return build_model(tiny.model(depth=2, heads=2, drop_path=0.0, dropout=0.0))


def test_the_eager_whole_step_is_forward_loss_backward_clip_update(tiny):
    """On a CPU: the same update as the textbook step written out by hand."""
    a, b = _tiny_vit(tiny), _tiny_vit(tiny)
    images, labels = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.arange(8)
    opt_a, opt_b = torch.optim.AdamW(a.parameters(), lr=1e-2), torch.optim.AdamW(b.parameters(), lr=1e-2)
    step = WholeTrainStep(a, a, F.cross_entropy, opt_a, grad_clip=0.1)
    for _ in range(3):
        loss_a = step(images, labels)
        loss_b = F.cross_entropy(b(images), labels)
        loss_b.backward()
        torch.nn.utils.clip_grad_norm_(b.parameters(), 0.1)
        opt_b.step()
        opt_b.zero_grad()
        assert loss_a.item() == pytest.approx(loss_b.item(), abs=1e-6)
    assert all(p.grad is None for p in a.parameters())
    assert max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters())) <= 1e-6
    assert not step.captured


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-mixed"])
def test_the_replayed_graph_makes_the_eager_updates(tiny, autocast):
    """Captured once, replayed on new batches: the losses and weights of the eager step, step by step,
    with a changing learning rate; the warm-up before the capture leaves no trace."""
    device = torch.device("cuda")
    a, b = _tiny_vit(tiny).to(device), _tiny_vit(tiny).to(device)
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-3, weight_decay=0.05)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-3, weight_decay=0.05)
    graphed, eager = WholeTrainStep(a, a, F.cross_entropy, opt_a, grad_clip=1.0), WholeTrainStep(b, b, F.cross_entropy, opt_b, grad_clip=1.0)
    generator = torch.Generator().manual_seed(0)
    tolerance = 2e-2 if autocast else 1e-4
    for i in range(6):
        images = torch.randn(16, 3, 32, 32, generator=generator).to(device)
        labels = torch.randint(0, 8, (16,), generator=generator).to(device)
        for opt in (opt_a, opt_b):
            opt.param_groups[0]["lr"] = 1e-3 * (i + 1)
        with (torch.autocast("cuda", dtype=torch.bfloat16) if autocast else torch.enable_grad()):
            loss_a = graphed(images, labels)
            loss_b = eager._eager(images, labels)
        assert graphed.captured
        assert loss_a.item() == pytest.approx(loss_b.item(), abs=tolerance), i
    worst = max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
    assert worst <= tolerance
    assert float(opt_a.state[next(a.parameters())]["step"]) == 6.0


def test_a_checkpoint_with_capturable_groups_resumes_eagerly_on_the_cpu(tiny, tmp_path, monkeypatch):
    """A whole-step run's checkpoint keeps AdamW's capturable=True; a CPU cannot take such updates,
    so the resumed run turns the flag off before its first step."""
    cfg = tiny("trainer.max_epochs=2", "name=moved")
    _train_until_epoch(cfg, 1, monkeypatch)
    path = tmp_path / "moved" / "checkpoints" / "last.ckpt"
    checkpoint = _checkpoint(path)
    for group in checkpoint["optimizer_states"][0]["param_groups"]:
        group["capturable"] = True  # as written on a GPU by a trainer.cuda_graph run
    torch.save(checkpoint, path)
    result = train(cfg)
    assert result["status"] == "completed" and result["epochs"] == 2
    assert all(not g["capturable"] for g in _checkpoint(path)["optimizer_states"][0]["param_groups"])
