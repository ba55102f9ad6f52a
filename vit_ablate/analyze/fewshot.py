"""Few-shot linear evaluation on frozen features (paper §4.1), as big_vision's ``fewshot_lsr``.

The paper: "Few-shot accuracies are obtained by solving a regularized least-squares regression
problem that maps the (frozen) representation of a subset of training images to {−1, 1}^K target
vectors." This module follows the reference implementation (big_vision ``evaluators/fewshot_lsr.py``
with its common config ``configs/common_fewshot.py``) step by step:

* representation: the pre-logits (``VisionTransformer.forward_pre_logits``), model in eval mode;
* support set: for draw ``s`` each class's training indices are shuffled with a generator seeded from
  ``(seed, s)`` and k-shot takes the first k of every class — so the 5-shot set of a draw contains its
  1-shot set. A class with fewer than k training images contributes all it has;
* features are whitened with the support set's mean and standard deviation (+1e-5), and a constant
  feature of 100 is appended as an (almost unregularised) bias;
* targets are one-hot vectors rescaled to {−1, 1}^K, and ``W = argmin ‖XW − Y‖² + λ‖W‖²`` is solved
  in closed form (primal when N ≥ D, dual otherwise) in float64 on the CPU;
* λ is fixed at 2^10 = 1024 (``l2_reg = 2.0 ** 10`` in big_vision's common config; no sweep and no
  selection on test data); the prediction is the arg-max of ``XW``;
* accuracy is measured on the whole evaluation split and averaged over the draws (3 by default).

``fewshot_from_datamodule`` is what training calls after a completed run with ``evaluate.fewshot``
(the dict goes into result.json as ``fewshot``) and ``run_analysis`` calls for a checkpoint.
Features are computed only for the images the draws select (plus the evaluation split), on
``device``, in batches; every process computes the same numbers (no sharding, no collectives).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from vit_ablate.data.device_loader import derive_seed

__all__ = [
    "DEFAULT_SHOTS",
    "DEFAULT_DRAWS",
    "DEFAULT_L2_REG",
    "BIAS_CONSTANT",
    "FewShotResult",
    "linear_fewshot_accuracy",
    "sample_support",
    "fewshot_accuracy",
    "extract_features",
    "fewshot_evaluate",
    "fewshot_from_datamodule",
]

DEFAULT_SHOTS: Tuple[int, ...] = (1, 5, 10, 25)
DEFAULT_DRAWS = 3
DEFAULT_L2_REG = 2.0**10
BIAS_CONSTANT = 100.0
WHITEN_EPS = 1e-5


def linear_fewshot_accuracy(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    l2_reg: float = DEFAULT_L2_REG,
) -> float:
    """Accuracy on ``(test_x, test_y)`` of the ridge regression from ``train_x`` to {−1, 1}^K targets."""
    x = train_x.detach().to("cpu", torch.float64)
    y = train_y.detach().to("cpu", torch.long)
    if x.dim() != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"few-shot features must be (N, D) with N ≥ 1 matching labels, got {tuple(x.shape)} / {tuple(y.shape)}")
    mean = x.mean(dim=0, keepdim=True)
    std = x.std(dim=0, unbiased=False, keepdim=True) + WHITEN_EPS

    def prepare(features: Tensor) -> Tensor:
        z = (features.detach().to("cpu", torch.float64) - mean) / std
        return torch.cat([z, torch.full((len(z), 1), BIAS_CONSTANT, dtype=torch.float64)], dim=1)

    x = prepare(train_x)
    targets = 2.0 * torch.nn.functional.one_hot(y, num_classes).double() - 1.0
    n, d = x.shape
    if n >= d:
        w = torch.linalg.solve(x.t() @ x + l2_reg * torch.eye(d, dtype=torch.float64), x.t() @ targets)
    else:
        w = x.t() @ torch.linalg.solve(x @ x.t() + l2_reg * torch.eye(n, dtype=torch.float64), targets)
    test_y = test_y.detach().to("cpu", torch.long)
    if len(test_y) == 0:
        raise ValueError("few-shot evaluation needs at least one evaluation image")
    correct = 0
    for start in range(0, len(test_y), 8192):  # bounded memory for large evaluation splits
        chunk = prepare(test_x[start : start + 8192])
        correct += int(((chunk @ w).argmax(dim=1) == test_y[start : start + 8192]).sum())
    return correct / len(test_y)


def sample_support(
    labels: Tensor, shots: Sequence[int], draws: int, seed: int, num_classes: Optional[int] = None
) -> List[Dict[int, Tensor]]:
    """Per draw, ``{k: indices}`` of the k-shot support set (module docstring): nested over k."""
    labels = torch.as_tensor(labels).detach().cpu().long()
    shots = [int(k) for k in shots]
    if any(k < 1 for k in shots):
        raise ValueError(f"few-shot shot counts must be positive, got {shots}")
    if draws < 1:
        raise ValueError(f"few-shot draws must be positive, got {draws}")
    num_classes = int(num_classes) if num_classes is not None else int(labels.max()) + 1
    by_class = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    out = []
    for draw in range(draws):
        generator = torch.Generator().manual_seed(derive_seed("fewshot", int(seed), draw))
        shuffled = [idx[torch.randperm(len(idx), generator=generator)] for idx in by_class]
        out.append({k: torch.cat([idx[:k] for idx in shuffled]) for k in shots})
    return out


def fewshot_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    shots: Sequence[int] = DEFAULT_SHOTS,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
    num_classes: Optional[int] = None,
    l2_reg: float = DEFAULT_L2_REG,
) -> Dict[str, float]:
    """``{"1": acc, "5": acc, …}`` from precomputed features of a whole training split."""
    train_labels = torch.as_tensor(train_labels).cpu().long()
    test_labels = torch.as_tensor(test_labels).cpu().long()
    if num_classes is None:
        num_classes = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    support = sample_support(train_labels, shots, draws, seed, num_classes)
    result = {}
    for k in shots:
        accs = [
            linear_fewshot_accuracy(train_features[s[k]], train_labels[s[k]], test_features, test_labels, num_classes, l2_reg)
            for s in support
        ]
        result[str(int(k))] = float(sum(accs) / len(accs))
    return result


@torch.no_grad()
def extract_features(model, batches: Iterable[Tuple[Tensor, Tensor]], device=None) -> Tuple[Tensor, Tensor]:
    """(features (N, D) float32 CPU, labels (N,)) of ``model.forward_pre_logits`` over ``batches``.

    The model is put in eval mode for the duration (its previous mode is restored)."""
    device = torch.device(device) if device is not None else _model_device(model)
    dtype = next(model.parameters()).dtype  # e.g. bf16 weights of a `bf16-true` run
    was_training = model.training
    model.eval()
    feats: List[Tensor] = []
    labels: List[Tensor] = []
    try:
        for images, y in batches:
            out = model.forward_pre_logits(images.to(device, dtype, non_blocking=True))
            feats.append(out.float().cpu())
            labels.append(torch.as_tensor(y).cpu().long())
    finally:
        model.train(was_training)
    if not feats:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)


@dataclass
class FewShotResult:
    accuracies: Dict[str, float]  # shot count (as a string) → mean accuracy over draws
    per_draw: Dict[str, List[float]]
    shots: List[int]
    draws: int
    seed: int
    l2_reg: float
    train_split: str
    eval_split: str
    num_classes: int
    num_eval: int
    support_sizes: Dict[str, int] = field(default_factory=dict)  # images per k-shot support set (draw 0)
    capped: List[str] = field(default_factory=list)  # shots for which some class had fewer images

    def to_dict(self) -> Dict[str, object]:
        return {
            "accuracy": dict(self.accuracies),
            "per_draw": {k: list(v) for k, v in self.per_draw.items()},
            "shots": list(self.shots),
            "draws": self.draws,
            "seed": self.seed,
            "l2_reg": self.l2_reg,
            "train_split": self.train_split,
            "eval_split": self.eval_split,
            "num_classes": self.num_classes,
            "num_eval": self.num_eval,
            "support_sizes": dict(self.support_sizes),
            "capped": list(self.capped),
            "method": "ridge regression to {-1,1}^K on whitened pre-logits, bias constant 100 (big_vision fewshot_lsr)",
        }


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a ViT always has parameters
        return torch.device("cpu")


def fewshot_evaluate(
    model,
    datamodule,
    shots: Sequence[int] = DEFAULT_SHOTS,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
    device=None,
    *,
    l2_reg: float = DEFAULT_L2_REG,
    train_split: str = "train",
    eval_split: str = "val",
    batch_size: Optional[int] = None,
) -> FewShotResult:
    """Few-shot accuracies of ``model`` on the splits of ``datamodule``, with the details."""
    from vit_ablate.analyze.batches import split_batches

    device = torch.device(device) if device is not None else _model_device(model)
    if _model_device(model) != device:
        model.to(device)
    if batch_size is None:
        batch_size = int(getattr(datamodule, "per_device_eval_batch_size", 64) or 64)
    shots = [int(k) for k in shots]
    num_classes = int(datamodule.num_classes)
    train_labels = datamodule.split(train_split).labels.cpu().long()
    support = sample_support(train_labels, shots, draws, seed, num_classes)

    # Features of the union of every support set, computed once.
    needed = torch.unique(torch.cat([s[k] for s in support for k in shots]))
    position = torch.full((len(train_labels),), -1, dtype=torch.long)
    position[needed] = torch.arange(len(needed))
    train_feats, _ = extract_features(model, split_batches(datamodule, train_split, indices=needed, batch_size=batch_size, device=device), device)
    eval_feats, eval_labels = extract_features(model, split_batches(datamodule, eval_split, batch_size=batch_size, device=device), device)

    counts = torch.bincount(train_labels, minlength=num_classes)
    present = counts > 0
    accuracies: Dict[str, float] = {}
    per_draw: Dict[str, List[float]] = {}
    for k in shots:
        accs = []
        for s in support:
            idx = s[k]
            accs.append(
                linear_fewshot_accuracy(train_feats[position[idx]], train_labels[idx], eval_feats, eval_labels, num_classes, l2_reg)
            )
        per_draw[str(k)] = [float(a) for a in accs]
        accuracies[str(k)] = float(sum(accs) / len(accs))
    return FewShotResult(
        accuracies=accuracies,
        per_draw=per_draw,
        shots=shots,
        draws=int(draws),
        seed=int(seed),
        l2_reg=float(l2_reg),
        train_split=train_split,
        eval_split=eval_split,
        num_classes=num_classes,
        num_eval=int(len(eval_labels)),
        support_sizes={str(k): int(len(support[0][k])) for k in shots},
        capped=[str(k) for k in shots if bool((counts[present] < k).any())],
    )


def fewshot_from_datamodule(
    model,
    datamodule,
    shots: Sequence[int] = DEFAULT_SHOTS,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
    device=None,
    **kwargs,
) -> Dict[str, float]:
    """``{"1": acc, "5": acc, …}``: few-shot linear accuracy on ``datamodule``'s val split, averaged
    over ``draws`` support sets drawn from its train split (keyword arguments: ``fewshot_evaluate``)."""
    return fewshot_evaluate(model, datamodule, shots, draws, seed, device, **kwargs).accuracies

