"""Few-shot linear evaluation on frozen features (paper §4.1), as big_vision's ``fewshot_lsr``.

"Few-shot accuracies are obtained by solving a regularized least-squares regression problem that maps
the (frozen) representation of a subset of training images to {−1, 1}^K target vectors." Step by step
as big_vision's ``evaluators/fewshot_lsr.py`` with ``configs/common_fewshot.py``:

* representation: the pre-logits (``forward_pre_logits``), model in eval mode;
* support sets: per draw, each class's training images are shuffled by a generator seeded from
  (seed, draw) and k-shot takes the first k of every class, so a draw's 1-shot set lies inside its
  5-shot set; a class with fewer than k images gives all it has;
* features whitened with the support set's mean and standard deviation (+1e-5), and a constant
  feature of 100 appended as an (almost unregularised) bias;
* ``W = argmin ‖XW − Y‖² + λ‖W‖²`` to {−1, 1}^K targets in closed form, float64, with λ = 2^10 fixed
  (no selection on test data); the prediction is the arg-max of ``XW``;
* accuracy on the whole validation split, averaged over the draws.

Training calls ``fewshot_from_datamodule`` after a run with ``evaluate.fewshot``. Every process computes
the same numbers from every image of both splits (no sharding, no collectives).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from vit_ablate.data.device_loader import DeviceLoader, derive_seed
from vit_ablate.data.sample_loader import FileImageDataset, eval_transform, make_sample_loader

DEFAULT_SHOTS: Tuple[int, ...] = (1, 5, 10, 25)
DEFAULT_DRAWS = 3
DEFAULT_L2_REG = 2.0**10  # big_vision common_fewshot.py
BIAS_CONSTANT = 100.0
WHITEN_EPS = 1e-5


def linear_fewshot_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
                            l2_reg: float = DEFAULT_L2_REG) -> float:
    """Accuracy on (test_x, test_y) of the ridge regression from whitened ``train_x`` to {−1, 1}^K targets."""
    x = train_x.detach().cpu().double()
    if x.dim() != 2 or len(x) != len(train_y) or not len(x) or not len(test_y):
        raise ValueError(f"few-shot evaluation needs (N, D) features with N ≥ 1 labels and evaluation images, got "
                         f"{tuple(x.shape)}, {len(train_y)} labels and {len(test_y)} evaluation images")
    mean, std = x.mean(dim=0), x.std(dim=0, unbiased=False) + WHITEN_EPS

    def design(features: Tensor) -> Tensor:
        z = (features.detach().cpu().double() - mean) / std
        return torch.cat([z, torch.full((len(z), 1), BIAS_CONSTANT, dtype=torch.float64)], dim=1)

    x = design(x)
    targets = 2.0 * F.one_hot(train_y.cpu().long(), num_classes).double() - 1.0
    n, d = x.shape
    if n >= d:  # primal: (XᵀX + λI)⁻¹ XᵀY
        w = torch.linalg.solve(x.t() @ x + l2_reg * torch.eye(d, dtype=x.dtype), x.t() @ targets)
    else:  # dual, the same solution: Xᵀ (XXᵀ + λI)⁻¹ Y
        w = x.t() @ torch.linalg.solve(x @ x.t() + l2_reg * torch.eye(n, dtype=x.dtype), targets)
    return float(((design(test_x) @ w).argmax(dim=1) == test_y.cpu()).double().mean())


def sample_support(labels: Tensor, shots: Sequence[int], draws: int, seed: int,
                   num_classes: Optional[int] = None) -> List[Dict[int, Tensor]]:
    """Per draw, ``{k: training indices}`` of the k-shot support set (module docstring)."""
    labels = torch.as_tensor(labels).cpu().long()
    if min(shots) < 1 or draws < 1:
        raise ValueError(f"few-shot shots and draws must be positive, got shots={list(shots)}, draws={draws}")
    by_class = [torch.nonzero(labels == c).flatten() for c in range(num_classes or int(labels.max()) + 1)]
    support = []
    for draw in range(draws):
        generator = torch.Generator().manual_seed(derive_seed("fewshot", int(seed), draw))
        shuffled = [idx[torch.randperm(len(idx), generator=generator)] for idx in by_class]
        support.append({int(k): torch.cat([idx[:k] for idx in shuffled]) for k in shots})
    return support


def fewshot_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, support: List[Dict[int, Tensor]],
                     num_classes: int, l2_reg: float = DEFAULT_L2_REG) -> Dict[str, List[float]]:
    """``{"1": [accuracy of each draw], "5": …}`` for support sets indexing the rows of ``train_x``."""
    return {str(k): [linear_fewshot_accuracy(train_x[s[k]], train_y[s[k]], test_x, test_y, num_classes, l2_reg)
                     for s in support] for k in support[0]}


def split_batches(datamodule, split: str, indices: Optional[Tensor] = None, batch_size: int = 64,
                  device: torch.device | str = "cpu") -> Iterable[Tuple[Tensor, Tensor]]:
    """Unaugmented ``(images, labels)`` batches of a split's ``indices`` (default all) on ``device``,
    through the data module's own evaluation pieces; unlike its ``eval_dataloader`` never sharded
    across ranks, since few-shot evaluation after training needs every image on every rank."""
    data = datamodule.split(split)
    indices = torch.arange(len(data)) if indices is None else torch.as_tensor(indices, dtype=torch.long).cpu()
    mean, std, size, native = datamodule.mean, datamodule.std, datamodule.img_size, datamodule.native_size
    if data.in_memory:
        loader = DeviceLoader(data.images[indices].to(device), data.labels[indices].to(device), batch_size=batch_size,
                              mean=mean, std=std, train=False, out_size=size if native not in (None, size) else None)
    else:
        files = FileImageDataset([data.paths[i] for i in indices.tolist()], data.labels[indices],
                                 eval_transform(size, mean, std, native))
        loader = make_sample_loader(files, batch_size=batch_size, train=False, seed=0,
                                    num_workers=int(datamodule.data_cfg.num_workers))
    for images, labels in loader:
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


@torch.no_grad()
def extract_features(model, batches: Iterable[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor]:
    """(pre-logits (N, D) float32 on the CPU, labels (N,)) over ``batches``, on the model's device and in
    its dtype (bf16 weights of a ``bf16-true`` run), in eval mode; the model's mode is restored."""
    weight = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        pairs = [(model.forward_pre_logits(x.to(weight.device, weight.dtype)).float().cpu(), torch.as_tensor(y).cpu().long())
                 for x, y in batches]
    finally:
        model.train(was_training)
    if not pairs:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat([f for f, _ in pairs]), torch.cat([y for _, y in pairs])


def fewshot_evaluate(model, datamodule, shots: Sequence[int] = DEFAULT_SHOTS, draws: int = DEFAULT_DRAWS, seed: int = 0,
                     device=None, *, l2_reg: float = DEFAULT_L2_REG) -> Dict[str, Any]:
    """Few-shot accuracy of ``model`` (moved to ``device`` when given), support sets from ``datamodule``'s
    train split, measured on its val split, with the details ``vit-ablate analyze`` records."""
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    batch_size, num_classes = datamodule.per_device_eval_batch_size, int(datamodule.num_classes)
    labels = datamodule.split("train").labels.cpu().long()
    support = sample_support(labels, shots, draws, seed, num_classes)
    needed = torch.unique(torch.cat([idx for s in support for idx in s.values()]))  # each image's features once
    row = torch.empty(len(labels), dtype=torch.long)
    row[needed] = torch.arange(len(needed))
    train_x, train_y = extract_features(model, split_batches(datamodule, "train", needed, batch_size, device))
    eval_x, eval_y = extract_features(model, split_batches(datamodule, "val", None, batch_size, device))
    per_draw = fewshot_accuracy(train_x, train_y, eval_x, eval_y, [{k: row[i] for k, i in s.items()} for s in support],
                                num_classes, l2_reg)
    counts = torch.bincount(labels, minlength=num_classes)
    return {"accuracy": {k: sum(a) / len(a) for k, a in per_draw.items()}, "per_draw": per_draw, "draws": int(draws),
            "seed": int(seed), "l2_reg": float(l2_reg), "num_classes": num_classes, "num_eval": len(eval_y),
            "support_sizes": {str(k): len(i) for k, i in support[0].items()},
            "capped": [str(k) for k in support[0] if bool((counts[counts > 0] < k).any())]}


def fewshot_from_datamodule(model, datamodule, shots: Sequence[int] = DEFAULT_SHOTS, draws: int = DEFAULT_DRAWS,
                            seed: int = 0, device=None, **kwargs) -> Dict[str, float]:
    """``{"1": accuracy, "5": …}`` of ``fewshot_evaluate`` (its keyword arguments pass through): what
    training writes into result.json after a run with ``evaluate.fewshot``."""
    return fewshot_evaluate(model, datamodule, shots, draws, seed, device, **kwargs)["accuracy"]
