r"""The embedded procedural dataset: position embeddings matter, with a provable ceiling without them.

Appendix D.4 of the ViT paper (Table 8) finds that *any* position embedding beats none while the kind
matters little; on natural images the gap takes ImageNet-scale runs to see. Here labels depend on *where*
things are, so a model that cannot see positions is capped at a ceiling known in advance, while one with
position embeddings can reach ~100%: the ablation is answerable on a CPU in a minute.

Construction (sizes from ``data.synthetic``; by default cell = 8, grid = 4 → 32×32 RGB images):

* A ``grid × grid`` array of ``cell × cell`` cells, all background: i.i.d. uniform pixel noise in
  ``[80, 100]`` per channel. Low on purpose: the proof needs i.i.d. noise, not strong noise, and strong
  noise swamps a fresh ViT's small position embeddings (std 0.02) and slows learning the relative bit.
* Exactly two cells carry a glyph (plus, square ring, diagonal cross, disc) in a saturated colour with a
  per-instance jitter of ±20 and per-pixel noise of ±12: glyph pixels have a channel ≥ 178, background
  pixels never exceed 100.
* Class = (content, relation, half), ``label = (content * 2 + relation) * 2 + half``, 8 classes: the
  glyph pair ``(plus, ring)`` or ``(cross, disc)``; the second glyph immediately ``right`` of or
  ``below`` the first (a *relative*-position bit); the pair in the ``top`` or ``bottom`` half (an
  *absolute*-position bit). The first glyph's cell is uniform over the placements valid for
  (relation, half), so no single position gives the class away.
* Labels are exactly balanced (``arange(N) % 8``, shuffled); train, val and test are separate draws
  seeded from ``data.synthetic.seed`` (``data.val_split`` does not apply). All of it is vectorised.

The ceiling (``POSITION_FREE_CEILING = 1 / NUM_ARRANGEMENTS = 1/4``)
--------------------------------------------------------------------
Let ``S(X)`` be the multiset of the ``grid²`` cells of image ``X`` (cells cut on the grid).

*Claim 1 — given the content, S(X) does not depend on the arrangement.* Condition on content ``k``
and arrangement ``a = (relation, half)``. The background noise of the ``grid²`` cells is i.i.d. and
drawn independently of ``(k, a)``; the two glyph instances (colour jitter and pixel noise) are drawn
i.i.d. independently of where they are put. ``a`` only chooses *which* two cells receive the two
glyphs. Hence ``S(X) | (k, a)`` is {glyph_k1 over noise, glyph_k2 over noise, grid² − 2 noise cells}
with the same distribution for every ``a``: ``P(S | k, a) = P(S | k)``.

*Claim 2 — a permutation-invariant model is a function of S(X).* Take a ViT with a patch stem whose
patch size ``p`` divides ``cell``, **no position embedding**, and CLS-token, global-average or
attention (MAP) pooling, evaluated on the unaugmented image. Patch embedding, self-attention, MLPs
and layer norms are permutation-equivariant over the patch tokens and each of those poolings is
permutation-invariant, so the logits are a function of the multiset of patches.
Each cell is cut into ``(cell/p)²`` whole patches, so that multiset is a function of ``S(X)``.
(A hybrid/conv stem, 1-D/2-D/relative/RoPE position embeddings, or a patch size that straddles cells
break the premise — those are exactly the models the ablation expects to do better.)

*Bound.* For any classifier ``h(S)`` and balanced classes, ``P(a | k) = 1/A`` with ``A = 4``
arrangements, and by Claim 1::

    P(h correct) = Σ_k Σ_a P(k) P(a|k) P(h(S) = (k, a) | k)
                 = Σ_k P(k) · (1/A) · Σ_a P(h(S) = (k, a) | k)  ≤  Σ_k P(k) / A  =  1/A.

Equality holds for "name the content (easy), guess the arrangement", so the ceiling is exactly
``1/4``. It bounds the *expected* accuracy whatever the model learned in training (training-time
augmentation cannot help). A measured accuracy on ``n`` test images fluctuates around it with a
standard deviation of about ``sqrt(1/4 · 3/4 / n)`` (≈ 0.0096 for n = 2048);
``position_free_upper_bound(n)`` returns ceiling + 3 such deviations for tests to compare against.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Tuple

import torch
from torch import Tensor

from vit_ablate.data.base import DATASETS, ImageDataModule, Split, balanced_indices
from vit_ablate.data.device_loader import derive_seed

__all__ = ["GLYPHS", "CONTENTS", "RELATIONS", "HALVES", "NUM_CLASSES", "NUM_ARRANGEMENTS", "POSITION_FREE_CEILING",
           "CLASS_NAMES", "SyntheticSample", "generate_synthetic", "placements", "SyntheticDataModule"]

# ----------------------------------------------------------------------------------------------------
# Class structure
# ----------------------------------------------------------------------------------------------------
GLYPHS: Tuple[str, ...] = ("plus", "ring", "cross", "disc")  # glyph id = index + 1; 0 = background
GLYPH_COLOURS: Tuple[Tuple[int, int, int], ...] = ((230, 50, 50), (50, 210, 70), (60, 100, 245), (235, 215, 45))
CONTENTS: Tuple[Tuple[int, int], ...] = ((1, 2), (3, 4))  # (first glyph id, second glyph id)
RELATIONS: Tuple[str, ...] = ("right", "below")  # where the second glyph is, relative to the first
RELATION_OFFSETS: Tuple[Tuple[int, int], ...] = ((0, 1), (1, 0))  # (row, col) step
HALVES: Tuple[str, ...] = ("top", "bottom")

NUM_CONTENTS = len(CONTENTS)
NUM_ARRANGEMENTS = len(RELATIONS) * len(HALVES)
NUM_CLASSES = NUM_CONTENTS * NUM_ARRANGEMENTS
POSITION_FREE_CEILING = 1.0 / NUM_ARRANGEMENTS  # see the module docstring for the proof

CLASS_NAMES: List[str] = [
    f"{GLYPHS[CONTENTS[c][0] - 1]}+{GLYPHS[CONTENTS[c][1] - 1]}/{RELATIONS[r]}/{HALVES[h]}"
    for c in range(NUM_CONTENTS)
    for r in range(len(RELATIONS))
    for h in range(len(HALVES))
]

# Pixel statistics (uint8). Background pixels stay in [BG_LOW, BG_HIGH]; a glyph pixel's brightest
# channel is ≥ min(max(colour)) - COLOUR_JITTER - PIXEL_NOISE = 210 - 32 = 178 > BG_HIGH.
BG_LOW, BG_HIGH = 80, 100
COLOUR_JITTER = 20
PIXEL_NOISE = 12


def label_of(content: Tensor, relation: Tensor, half: Tensor) -> Tensor:
    return (content * len(RELATIONS) + relation) * len(HALVES) + half


def decode_label(label: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """label → (content, relation, half)."""
    half = label % len(HALVES)
    relation = (label // len(HALVES)) % len(RELATIONS)
    content = label // (len(HALVES) * len(RELATIONS))
    return content, relation, half


def glyph_masks(cell: int) -> Tensor:
    """Bool ``(len(GLYPHS) + 1, cell, cell)``; row 0 (background) is empty. Shapes are defined on
    cell-centred coordinates in [-1, 1], so they scale with ``data.synthetic.cell``."""
    u = (torch.arange(cell, dtype=torch.float64) + 0.5) / cell * 2 - 1
    v, u = torch.meshgrid(u, u, indexing="ij")
    au, av = u.abs(), v.abs()
    shapes = [
        torch.zeros(cell, cell, dtype=torch.bool),  # background
        torch.minimum(au, av) < 0.3,  # plus
        torch.maximum(au, av) > 0.7,  # square ring (1-px outline at cell 8)
        (au - av).abs() < 0.2,  # diagonal cross
        u**2 + v**2 < 0.45,  # disc
    ]
    return torch.stack(shapes)


def placements(grid: int) -> Dict[Tuple[int, int], List[Tuple[int, int]]]:
    """(relation, half) → every valid (row, col) of the first glyph, in row-major order."""
    half_rows = grid // 2
    table: Dict[Tuple[int, int], List[Tuple[int, int]]] = {}
    for r, (dr, dc) in enumerate(RELATION_OFFSETS):
        for h in range(len(HALVES)):
            rows = range(h * half_rows, (h + 1) * half_rows)
            table[(r, h)] = [
                (i, j) for i in rows for j in range(grid) if i + dr in rows and j + dc < grid
            ]
    return table


@dataclasses.dataclass
class SyntheticSample:
    """A generated split with the generator's metadata (used by the tests that check the ceiling)."""

    images: Tensor  # uint8 (N, 3, cell*grid, cell*grid)
    labels: Tensor  # int64 (N,)
    cells: Tensor  # uint8 (N, grid, grid): glyph id per cell, 0 = background
    anchors: Tensor  # int64 (N, 2): (row, col) of the first glyph


def generate_synthetic(num: int, *, cell: int = 8, grid: int = 4, seed: int = 0) -> SyntheticSample:
    """Draw ``num`` images deterministically from ``seed`` (see the module docstring); the config
    checks the geometry (``cell`` ≥ 2, ``grid`` even and ≥ 4)."""
    g = torch.Generator().manual_seed(seed)
    n, size = num, cell * grid

    # Balanced labels: every class num // 8 or num // 8 + 1 times.
    labels = (torch.arange(n) % NUM_CLASSES)[torch.randperm(n, generator=g)]
    content, relation, half = decode_label(labels)

    # First-glyph cell uniform over the placements valid for (relation, half). Drawing modulo the lcm
    # of the placement counts keeps it exactly uniform for each count.
    table = placements(grid)
    counts = torch.tensor([[len(table[(r, h)]) for h in range(len(HALVES))] for r in range(len(RELATIONS))])
    padded = torch.zeros(len(RELATIONS), len(HALVES), int(counts.max()), 2, dtype=torch.long)
    for (r, h), cells_rh in table.items():
        padded[r, h, : len(cells_rh)] = torch.tensor(cells_rh)
    period = math.lcm(*counts.flatten().tolist())
    pick = torch.randint(0, period, (n,), generator=g) % counts[relation, half]
    anchors = padded[relation, half, pick]
    seconds = anchors + torch.tensor(RELATION_OFFSETS)[relation]
    glyph_ids = torch.tensor(CONTENTS)[content]  # (N, 2)

    rows = torch.arange(n)
    cells = torch.zeros(n, grid, grid, dtype=torch.uint8)
    cells[rows, anchors[:, 0], anchors[:, 1]] = glyph_ids[:, 0].to(torch.uint8)
    cells[rows, seconds[:, 0], seconds[:, 1]] = glyph_ids[:, 1].to(torch.uint8)

    # Pixels. Background noise for every cell, then the two glyph instances, each drawn i.i.d. and
    # independently of where it goes — the premise of the ceiling.
    images = torch.randint(BG_LOW, BG_HIGH + 1, (n, 3, size, size), generator=g, dtype=torch.uint8)
    base = torch.tensor(GLYPH_COLOURS, dtype=torch.int16)[glyph_ids - 1]  # (N, 2, 3)
    colour = base + torch.randint(-COLOUR_JITTER, COLOUR_JITTER + 1, (n, 2, 3), generator=g, dtype=torch.int16)
    noise = torch.randint(-PIXEL_NOISE, PIXEL_NOISE + 1, (n, 2, 3, cell, cell), generator=g, dtype=torch.int16)
    paint = (colour[..., None, None] + noise).clamp_(0, 255).to(torch.uint8)  # (N, 2, 3, c, c)
    masks = glyph_masks(cell)[glyph_ids].unsqueeze(2)  # (N, 2, 1, c, c)

    # Paint in place, touching only the two glyph cells: pixel (row, col) indices of each cell.
    index_n = rows[:, None, None, None]
    index_c = torch.arange(3)[None, :, None, None]
    offsets = torch.arange(cell)
    for k, where in enumerate((anchors, seconds)):
        index_y = (where[:, :1] * cell + offsets)[:, None, :, None]  # (N, 1, c, 1)
        index_x = (where[:, 1:] * cell + offsets)[:, None, None, :]  # (N, 1, 1, c)
        current = images[index_n, index_c, index_y, index_x]  # (N, 3, c, c)
        images[index_n, index_c, index_y, index_x] = torch.where(masks[:, k], paint[:, k], current)
    return SyntheticSample(images=images, labels=labels, cells=cells, anchors=anchors)


@DATASETS.register("synthetic")
class SyntheticDataModule(ImageDataModule):
    """``data.name=synthetic``: 8 classes of ``3 × (cell·grid)²`` images (module docstring).

    Attributes: ``num_classes`` (8), ``img_size`` (``cell * grid``), ``in_chans`` (3), ``mean``/``std``
    (0.5: pixels to [-1, 1] as in the ViT reference code), ``class_names``, ``cell``, ``grid``,
    ``dataset_seed``. ``sample(split)`` returns the split with the generator's metadata.
    ``data.in_memory`` and ``data.val_split`` do not apply; ``data.train_subset`` does.
    """

    num_classes = NUM_CLASSES
    in_chans = 3

    def __init__(self, cfg):
        super().__init__(cfg)
        sc = cfg.data.synthetic
        self.cell, self.grid, self.dataset_seed = int(sc.cell), int(sc.grid), int(sc.seed)
        self.sizes = {"train": int(sc.num_train), "val": int(sc.num_val), "test": int(sc.num_test)}
        # never resized: a resize would cut patches across cells and void the ceiling (config refuses data.img_size)
        self.img_size = self.native_size = self.cell * self.grid
        self.class_names = list(CLASS_NAMES)
        self._samples: Dict[str, SyntheticSample] = {}

    def split_seed(self, split: str) -> int:
        """Train, val and test are separate draws, each seeded from the dataset seed and its name."""
        return derive_seed("synthetic", self.dataset_seed, split)

    def sample(self, split: str) -> SyntheticSample:
        if split not in self._samples:
            self._samples[split] = generate_synthetic(
                self.sizes[split], cell=self.cell, grid=self.grid, seed=self.split_seed(split)
            )
        return self._samples[split]

    def _load_split(self, name: str) -> Split:
        sample = self.sample(name)
        if name == "train" and self.data_cfg.train_subset is not None:
            index = balanced_indices(sample.labels, int(self.data_cfg.train_subset), self.num_classes)
            return Split(sample.labels[index], images=sample.images[index])
        return Split(sample.labels, images=sample.images)

    @staticmethod
    def position_free_ceiling() -> float:
        """The best expected accuracy of any patch-permutation-invariant model: 1 / #arrangements = 0.25."""
        return POSITION_FREE_CEILING

    @staticmethod
    def position_free_upper_bound(num_samples: int, z: float = 3.0) -> float:
        """The ceiling plus ``z`` binomial standard deviations on ``num_samples`` test images: what a
        measured accuracy of a position-free model should stay below."""
        p = POSITION_FREE_CEILING
        return p + z * math.sqrt(p * (1 - p) / num_samples)
