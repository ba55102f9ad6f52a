"""Position embeddings (``model.pos_embed``) and where additive ones are added (``model.pos_embed_at``).

Paper Appendix D.4 / Table 8 compares no embedding, a learned 1-D table, a learned 2-D table (X and Y
tables of D/2 each, concatenated) and 1-D relative attention, added at the input, at every layer, or
one table shared by every layer. Beyer et al. (2022) add fixed 2-D sin-cos; RoPE-ViT (Heo et al. 2024)
adds 2-D rotary embeddings.

The model calls three hooks: ``embed`` (after prefix tokens are prepended), ``before_block(i)`` and
``make_attention_position(i)`` (a module that edits q/k or returns an attention bias for layer i).
Adding a kind is one class and one ``@POSITION_EMBEDDINGS.register`` line; an additive table only
implements ``make_table``.

Fine-tuning at another resolution (paper §3.2) changes the token grid: every learned table laid out on
the grid is a ``GridTable`` that moves tensors saved for another grid onto its own. Fixed tables
(sin-cos, RoPE) are unsaved buffers, recomputed for the new grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import nn
from torch.nn.init import trunc_normal_

from vit_ablate.model.schema import PLACEMENTS, POSITION_EMBEDDINGS, ModelConfig
from vit_ablate.schema import ConfigError

Grid = Tuple[int, int]


@dataclass(frozen=True)
class PositionContext:
    """What a position embedding needs to know about the model it lives in."""

    grid_size: Grid  # patch rows, patch columns
    num_prefix_tokens: int  # class token(s) ahead of the patches
    dim: int
    heads: int
    depth: int
    at: str  # model.pos_embed_at
    rope_theta: float = 100.0

    @classmethod
    def of(cls, spec: ModelConfig, num_prefix_tokens: int, grid_size: Grid) -> "PositionContext":
        return cls(tuple(grid_size), num_prefix_tokens, spec.dim, spec.heads, spec.depth, spec.pos_embed_at, spec.rope_theta)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


def square_grid(patches: int, what: str) -> Grid:
    """The (side, side) grid of ``patches`` tokens; a source that does not say its grid must be square."""
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(f"{what}: {patches} patch positions are not a square grid, so it cannot be resampled")
    return side, side


class GridTable(nn.Module):
    """A learned table laid out on the token grid; ``resample`` says how one of its tensors moves."""

    grid_size: Grid

    def resample_tensors(self, tensors: Mapping[str, torch.Tensor], old_grid: Optional[Grid]) -> Dict[str, torch.Tensor]:
        """This module's tensors (local names) saved for ``old_grid`` (None: infer a square grid from the
        shapes), moved onto ``self.grid_size``. A tensor of another width is returned as is: the caller's
        shape check names it."""
        out = dict(tensors)
        for name, mine in self.named_parameters(recurse=False):
            saved = tensors.get(name)
            if saved is None or saved.ndim != mine.ndim or saved.shape[-1] != mine.shape[-1]:
                continue
            if saved.shape != mine.shape or old_grid not in (None, self.grid_size):
                out[name] = self.resample(name, saved, old_grid).to(saved.dtype)
        return out

    def resample(self, name: str, tensor: torch.Tensor, old_grid: Optional[Grid]) -> torch.Tensor:
        raise NotImplementedError  # abstract: each table knows its layout


def resample_position_tensors(
    model: nn.Module, state: Mapping[str, torch.Tensor], old_grid: Optional[Grid] = None
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """``state`` (the model's own names) with every grid table moved onto the model's grid, and the names
    of the tensors whose shape changed. Raises ValueError naming a tensor that cannot be moved."""
    out = dict(state)
    changed: List[str] = []
    for prefix, module in model.named_modules():
        if not isinstance(module, GridTable):
            continue
        local = {name[len(prefix) + 1:]: t for name, t in state.items() if name.startswith(prefix + ".")}
        try:
            moved = module.resample_tensors(local, old_grid)
        except ValueError as exc:
            raise ValueError(f"{prefix}.{exc}") from None
        for name, tensor in moved.items():
            if tensor.shape != local[name].shape:
                changed.append(f"{prefix}.{name}")
            out[f"{prefix}.{name}"] = tensor
    return out, changed


class PositionEmbedding(nn.Module):
    """No position information: the base behaviour of every hook is to do nothing."""

    placements: Tuple[str, ...] = ("input",)  # the model.pos_embed_at values this kind supports
    timm_names: Optional[Dict[str, str]] = {}  # our suffix → timm's name; None: timm has no equivalent
    timm_kwargs: Dict[str, object] = {"pos_embed": "none"}  # timm VisionTransformer arguments

    def __init__(self, ctx: PositionContext):
        super().__init__()
        self.ctx = ctx

    @classmethod
    def check(cls, ctx: PositionContext) -> None:
        """Raise ConfigError for a model this kind cannot serve (called before anything is built)."""
        if ctx.at not in cls.placements:
            raise ConfigError(f"model.pos_embed_at={ctx.at!r} is not valid with model.pos_embed={cls.registry_name!r}; "
                              f"it supports {', '.join(cls.placements)}")

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens

    def before_block(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        return tokens

    def make_attention_position(self, index: int) -> Optional[nn.Module]:
        """A fresh module for layer ``index``'s attention, or None. Owned by that attention layer."""
        return None

    def patch_table(self) -> Optional[torch.Tensor]:
        """The (num_patches, D) table added to patch tokens, for the similarity plot (Figure 7)."""
        return None


@POSITION_EMBEDDINGS.register("none")
class NoPositionEmbedding(PositionEmbedding):
    """The Table 8 "no positional information" row: the model sees a bag of patches."""


# --------------------------------------------------------------------------------------------
# Additive tables and where they are added
# --------------------------------------------------------------------------------------------
class Placement(nn.Module):
    """Holds the table(s) of an additive embedding and adds them at the right points."""

    def __init__(self, make_table: Callable[[], nn.Module], depth: int):
        super().__init__()
        self.table = make_table()

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens

    def before_block(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        return tokens

    def first_table(self) -> nn.Module:
        return self.table


@PLACEMENTS.register("input")
class AtInput(Placement):
    """Added once to the input sequence (the paper's default)."""

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + self.table()


@PLACEMENTS.register("every_layer")
class AtEveryLayer(Placement):
    """A separate learned table added to the input of every layer (Table 8, "every layer")."""

    def __init__(self, make_table: Callable[[], nn.Module], depth: int):
        nn.Module.__init__(self)
        self.tables = nn.ModuleList(make_table() for _ in range(depth))

    def before_block(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + self.tables[index]()

    def first_table(self) -> nn.Module:
        return self.tables[0]


@PLACEMENTS.register("every_layer_shared")
class AtEveryLayerShared(Placement):
    """One table added to the input of every layer (Table 8, "every layer, shared")."""

    def before_block(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + self.table()


class AdditivePositionEmbedding(PositionEmbedding):
    """A (prefix + patches) × D table added to the tokens; subclasses only say how to make one."""

    placements = tuple(PLACEMENTS.names())

    def __init__(self, ctx: PositionContext):
        super().__init__(ctx)
        self.placement = PLACEMENTS.get(ctx.at)(lambda: self.make_table(ctx), ctx.depth)

    def make_table(self, ctx: PositionContext) -> nn.Module:  # abstract: a module whose forward() gives (1, T, D)
        raise NotImplementedError

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.placement.embed(tokens)

    def before_block(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        return self.placement.before_block(index, tokens)

    def patch_table(self) -> torch.Tensor:
        return self.placement.first_table()()[0, self.ctx.num_prefix_tokens:]


class LearnedTable1d(GridTable):
    no_weight_decay_names = ("weight",)

    def __init__(self, grid_size: Grid, num_prefix: int, dim: int):
        super().__init__()
        self.grid_size, self.num_prefix = tuple(grid_size), num_prefix
        self.weight = nn.Parameter(torch.zeros(1, num_prefix + grid_size[0] * grid_size[1], dim))
        trunc_normal_(self.weight, std=0.02)  # as timm

    def forward(self) -> torch.Tensor:
        return self.weight

    def resample(self, name: str, weight: torch.Tensor, old_grid: Optional[Grid]) -> torch.Tensor:
        # the patch part reshaped to its 2-D grid and interpolated bicubically (timm's and big_vision's
        # rule for fine-tuning at a higher resolution, paper §3.2); prefix tokens are kept
        patches = weight.shape[1] - self.num_prefix
        old = tuple(old_grid) if old_grid else square_grid(patches, "weight")
        if patches != old[0] * old[1]:
            raise ValueError(f"weight: shape {tuple(weight.shape)} does not hold {self.num_prefix} prefix token(s) and a {old[0]}×{old[1]} grid")
        return resample_abs_pos_embed(weight, list(self.grid_size), list(old), num_prefix_tokens=self.num_prefix)


@POSITION_EMBEDDINGS.register("1d")
class Learned1d(AdditivePositionEmbedding):
    """A learned embedding per sequence position, class token included (paper eq. 1)."""

    timm_names = {"placement.table.weight": "pos_embed"}
    timm_kwargs = {"pos_embed": "learn"}

    def make_table(self, ctx: PositionContext) -> nn.Module:
        return LearnedTable1d(ctx.grid_size, ctx.num_prefix_tokens, ctx.dim)


class LearnedTable2d(GridTable):
    """Patch (r, c) gets [X_r ; Y_c]: a row table and a column table of D/2 each (paper D.4)."""

    no_weight_decay_names = ("prefix", "rows", "cols")

    def __init__(self, grid_size: Grid, num_prefix: int, dim: int):
        super().__init__()
        self.grid_size = tuple(grid_size)
        # the class token has no (r, c): it gets its own learned vector, and none exists without it
        self.prefix = nn.Parameter(torch.zeros(1, num_prefix, dim)) if num_prefix else None
        self.rows = nn.Parameter(torch.zeros(grid_size[0], dim // 2))
        self.cols = nn.Parameter(torch.zeros(grid_size[1], dim - dim // 2))
        for p in (self.prefix, self.rows, self.cols):
            if p is not None:
                trunc_normal_(p, std=0.02)

    def forward(self) -> torch.Tensor:
        rows, cols = self.grid_size
        grid = torch.cat([self.rows[:, None, :].expand(rows, cols, -1), self.cols[None, :, :].expand(rows, cols, -1)], dim=-1)
        grid = grid.reshape(1, rows * cols, -1)
        return grid if self.prefix is None else torch.cat([self.prefix, grid], dim=1)

    def resample(self, name: str, table: torch.Tensor, old_grid: Optional[Grid]) -> torch.Tensor:
        # each axis table is interpolated along its own axis, like one column of a 2-D grid; the prefix has no position
        length = {"rows": self.grid_size[0], "cols": self.grid_size[1]}.get(name, table.shape[0])
        if table.shape[0] == length:
            return table
        return resample_abs_pos_embed(table[None], [length, 1], [table.shape[0], 1], num_prefix_tokens=0)[0]


@POSITION_EMBEDDINGS.register("2d")
class Learned2d(AdditivePositionEmbedding):
    timm_names = None

    @classmethod
    def check(cls, ctx: PositionContext) -> None:
        super().check(ctx)
        if ctx.dim % 2:
            raise ConfigError(f"model.pos_embed='2d' needs an even model.dim (got {ctx.dim})")

    def make_table(self, ctx: PositionContext) -> nn.Module:
        return LearnedTable2d(ctx.grid_size, ctx.num_prefix_tokens, ctx.dim)


def sincos_2d_table(grid_size: Grid, dim: int, temperature: float = 10_000.0) -> torch.Tensor:
    """big_vision's ``posemb_sincos_2d``: [sin x, cos x, sin y, cos y], D/4 frequencies each."""
    y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in grid_size), indexing="ij")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / max(quarter - 1, 1))
    y, x = y.flatten()[:, None] * omega, x.flatten()[:, None] * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).float()


class SinCosTable2d(nn.Module):
    def __init__(self, grid_size: Grid, num_prefix: int, dim: int):
        super().__init__()
        table = torch.cat([torch.zeros(num_prefix, dim), sincos_2d_table(grid_size, dim)], dim=0)
        self.register_buffer("table", table[None], persistent=False)  # fixed, recomputed on load

    def forward(self) -> torch.Tensor:
        return self.table


@POSITION_EMBEDDINGS.register("sincos2d")
class SinCos2d(AdditivePositionEmbedding):
    """Fixed 2-D sin-cos (Beyer et al. 2022's baseline); the class token gets zeros."""

    placements = ("input", "every_layer_shared")  # a fixed table is the same at every layer
    timm_names = None

    @classmethod
    def check(cls, ctx: PositionContext) -> None:
        super().check(ctx)
        if ctx.dim % 4:
            raise ConfigError(f"model.pos_embed='sincos2d' needs model.dim divisible by 4 (got {ctx.dim})")

    def make_table(self, ctx: PositionContext) -> nn.Module:
        return SinCosTable2d(ctx.grid_size, ctx.num_prefix_tokens, ctx.dim)


# --------------------------------------------------------------------------------------------
# Position inside attention
# --------------------------------------------------------------------------------------------
def relative_offset_index(grid_size: Grid, num_prefix: int, two_d: bool) -> Tuple[torch.Tensor, int]:
    """(T, T) indices into an offset table and the number of patch offsets: 1-D raster offsets
    j − i (paper D.4: 2N − 1 of them) or 2-D displacements (dy, dx) ((2H − 1)(2W − 1)). Pairs with a
    prefix token point one past the patch offsets, at the prefix slot."""
    h, w = grid_size
    pos = torch.arange(h * w)
    if two_d:
        rows, cols = pos // w, pos % w
        offsets = (2 * h - 1) * (2 * w - 1)
        patch_index = (rows[None, :] - rows[:, None] + h - 1) * (2 * w - 1) + (cols[None, :] - cols[:, None] + w - 1)
    else:
        offsets = 2 * h * w - 1
        patch_index = pos[None, :] - pos[:, None] + h * w - 1
    index = torch.full((num_prefix + h * w,) * 2, offsets, dtype=torch.long)
    index[num_prefix:, num_prefix:] = patch_index
    return index, offsets


class RelativeLogits(GridTable):
    """One layer's relative attention term (paper D.4): a learned vector r per offset between patches
    (raster j − i, or the 2-D displacement with ``two_d``); ``q_i · r_{j−i}``, scaled like the content
    logits, is added to the attention logits before the softmax (SDPA's additive float mask). Pairs
    involving a prefix token share one extra learned vector: the class token has no place in the image.
    ``per_head``: a learned scalar per head and offset instead (T5, Swin), independent of the content."""

    no_weight_decay_names = ("table",)

    def __init__(self, grid_size: Grid, num_prefix: int, width: int, two_d: bool = False, init_std: float = 0.02,
                 per_head: bool = False):
        super().__init__()
        self.grid_size, self.num_prefix, self.two_d, self.per_head = tuple(grid_size), num_prefix, two_d, per_head
        index, offsets = relative_offset_index(self.grid_size, num_prefix, two_d)
        # one extra slot for pairs involving a prefix token, only when there is one (none under gap/map)
        self.table = nn.Parameter(torch.zeros(offsets + (1 if num_prefix else 0), width))
        trunc_normal_(self.table, std=init_std)
        self.register_buffer("index", index, persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, scale: float):
        # The vector of each pair's offset, (T, T, width), then one batched matmul with the queries: its
        # backward adds into the small table once, where gathering from (B, h, T, offsets) logits scatters
        # over the whole batch (3× slower on a CPU). index_select's backward is one index_add; an indexing
        # gather's sorts the indices first (slow on a GPU: results/bench/gpu_whole_step).
        pairs = self.table.index_select(0, self.index.flatten()).unflatten(0, self.index.shape).to(q.dtype)
        if self.per_head:  # contiguous: SDPA's fused kernels copy or pad a mask whose last dimension is strided
            return q, k, pairs.permute(2, 0, 1)[None].contiguous()
        return q, k, torch.einsum("bhid,ijd->bhij", q * scale, pairs)

    def resample(self, name: str, table: torch.Tensor, old_grid: Optional[Grid]) -> torch.Tensor:
        extra = 1 if self.num_prefix else 0
        if not self.two_d:
            return resample_raster_offsets(table, extra, old_grid, self.grid_size)
        side = math.isqrt(table.shape[0] - extra)  # a square grid's (2S − 1)² displacements
        old = tuple(old_grid) if old_grid else ((side + 1) // 2,) * 2
        offsets = (2 * old[0] - 1) * (2 * old[1] - 1)
        if offsets != table.shape[0] - extra:
            raise ValueError(f"table: shape {tuple(table.shape)} is not the 2-D offsets of the source grid {old}")
        image = table[:offsets].reshape(2 * old[0] - 1, 2 * old[1] - 1, -1)
        return torch.cat([displacements_to_grid(image, old, self.grid_size).reshape(-1, table.shape[1]), table[offsets:]])


def resample_raster_offsets(table: torch.Tensor, extra: int, old_grid: Optional[Grid], new_grid: Grid) -> torch.Tensor:
    """A table of the 2N − 1 raster offsets of ``old_grid`` (rows; then ``extra`` prefix slots, kept)
    moved to ``new_grid``'s offsets through the (dy, dx) each offset stands for (paper §3.2)."""
    if (table.shape[0] - extra) % 2 != 1:
        raise ValueError(f"table: shape {tuple(table.shape)} is not 2N−1 offsets{' and a prefix slot' if extra else ''}")
    patches = (table.shape[0] - extra + 1) // 2
    old = tuple(old_grid) if old_grid else square_grid(patches, "table")
    if patches != old[0] * old[1]:
        raise ValueError(f"table: shape {tuple(table.shape)} does not hold the offsets of a {old[0]}×{old[1]} grid")
    resampled = relative_offsets_to_grid(table[: 2 * patches - 1], old, new_grid)
    return torch.cat([resampled, table[2 * patches - 1:]], dim=0).to(table.dtype)


def displacements_to_grid(image: torch.Tensor, old_grid: Grid, new_grid: Grid) -> torch.Tensor:
    """A (2H − 1, 2W − 1, C) table over image displacements (dy, dx) moved to ``new_grid``'s
    (2H' − 1, 2W' − 1, C): sampled bicubically at the same displacement in image units
    (dy' · H/H', dx' · W/W'), clamped at the border."""
    (h, w), (nh, nw) = old_grid, new_grid
    dim = image.shape[-1]
    image = image.permute(2, 0, 1)[None].double()  # 1, C, 2H−1, 2W−1
    new_dy = torch.arange(-(nh - 1), nh, dtype=torch.float64)
    new_dx = torch.arange(-(nw - 1), nw, dtype=torch.float64)
    # grid_sample's coordinates run from −1 (first cell) to 1 (last cell) with align_corners=True,
    # clamped: an upsampled grid's outermost displacements lie a fraction of a cell beyond the old table,
    # where bicubic weights would extrapolate past its border values
    y = ((new_dy * h / nh) / max(h - 1, 1)).clamp(-1.0, 1.0)
    x = ((new_dx * w / nw) / max(w - 1, 1)).clamp(-1.0, 1.0)
    sample_at = torch.stack(torch.meshgrid(x, y, indexing="xy"), dim=-1)[None]  # 1, 2H'−1, 2W'−1, (x, y)
    sampled = F.grid_sample(image, sample_at, mode="bicubic", padding_mode="border", align_corners=True)[0]
    return sampled.permute(1, 2, 0).reshape(2 * nh - 1, 2 * nw - 1, dim)


def relative_offsets_to_grid(table: torch.Tensor, old_grid: Grid, new_grid: Grid) -> torch.Tensor:
    """A 1-D relative table (2N−1 raster offsets, paper D.4) moved from ``old_grid`` to ``new_grid``.

    A raster offset d = dy·W + dx stands for the image displacement (dy, dx) of the patch pairs that
    have it. The old table is laid out as an image over (dy, dx) ∈ [−(H−1), H−1] × [−(W−1), W−1],
    moved to the new grid's displacements (``displacements_to_grid``), and each new raster offset gets
    the mean over the displacements it stands for, weighted by how many patch pairs have each one.
    """
    (h, w), (nh, nw) = old_grid, new_grid
    dim = table.shape[1]
    dy = torch.arange(-(h - 1), h)[:, None]
    dx = torch.arange(-(w - 1), w)[None, :]
    sampled = displacements_to_grid(table[(dy * w + dx + h * w - 1)], old_grid, new_grid).reshape(-1, dim)
    new_dy = torch.arange(-(nh - 1), nh, dtype=torch.float64)
    new_dx = torch.arange(-(nw - 1), nw, dtype=torch.float64)
    pairs = ((nh - new_dy.abs())[:, None] * (nw - new_dx.abs())[None, :]).reshape(-1, 1)
    raster = ((new_dy[:, None] * nw + new_dx[None, :]).reshape(-1) + nh * nw - 1).long()
    total = torch.zeros(2 * nh * nw - 1, dim, dtype=torch.float64).index_add_(0, raster, sampled * pairs)
    weight = torch.zeros(2 * nh * nw - 1, 1, dtype=torch.float64).index_add_(0, raster, pairs)
    return (total / weight).to(table.dtype)


@POSITION_EMBEDDINGS.register("relative")
class Relative1d(PositionEmbedding):
    """1-D relative attention in every layer (Table 8, "relative" row); its own table per layer."""

    timm_names = None
    table_options: Dict[str, object] = {}  # what a diagnostic variant changes of RelativeLogits

    def make_attention_position(self, index: int) -> nn.Module:
        width = self.ctx.heads if self.table_options.get("per_head") else self.ctx.head_dim
        return RelativeLogits(self.ctx.grid_size, self.ctx.num_prefix_tokens, width, **self.table_options)


# Diagnostic variants of D.4's relative attention (not in the paper). Where the paper's 1-D raster
# version trails the learned 1-D table, each changes one thing, to say which closes the gap: the offsets
# (2-D displacements: a raster offset of W − 1 stands both for (0, W − 1) and for (1, −1), neighbours and
# far apart alike), the content dependence (a scalar per head and offset instead of q · r), or the initial
# scale (r 10× larger, so the position term is not negligible next to the content logits at the start).
@POSITION_EMBEDDINGS.register("relative_2d_offsets")
class Relative2dOffsets(Relative1d):
    table_options = {"two_d": True}


@POSITION_EMBEDDINGS.register("relative_head_bias")
class RelativeHeadBias1d(Relative1d):
    table_options = {"per_head": True}


@POSITION_EMBEDDINGS.register("relative_large_init")
class RelativeLargeInit(Relative1d):
    table_options = {"init_std": 0.2}


class Rotary2d(nn.Module):
    """Axial 2-D RoPE: half of each head's channels rotate with the row, half with the column."""

    def __init__(self, grid_size: Grid, num_prefix: int, head_dim: int, theta: float):
        super().__init__()
        quarter = head_dim // 4
        freqs = 1.0 / theta ** (torch.arange(quarter, dtype=torch.float64) / quarter)
        rows, cols = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in grid_size), indexing="ij")
        angles = torch.cat([rows.flatten()[:, None] * freqs, cols.flatten()[:, None] * freqs], dim=1)  # N, dh/2
        self.num_prefix = num_prefix
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def _rotate(self, t: torch.Tensor) -> torch.Tensor:
        prefix, patches = t[..., : self.num_prefix, :], t[..., self.num_prefix:, :]
        first, second = patches.chunk(2, dim=-1)
        cos, sin = self.cos.to(t.dtype), self.sin.to(t.dtype)
        return torch.cat([prefix, torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)], dim=-2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, scale: float):
        return self._rotate(q), self._rotate(k), None


@POSITION_EMBEDDINGS.register("rope2d")
class Rope2d(PositionEmbedding):
    """2-D rotary position embedding on queries and keys of the patch tokens (RoPE-ViT, axial)."""

    timm_names = None

    @classmethod
    def check(cls, ctx: PositionContext) -> None:
        super().check(ctx)
        if ctx.head_dim % 4:
            raise ConfigError(f"model.pos_embed='rope2d' needs a head dimension (dim/heads) divisible by 4 (got {ctx.head_dim})")

    def make_attention_position(self, index: int) -> nn.Module:
        return Rotary2d(self.ctx.grid_size, self.ctx.num_prefix_tokens, self.ctx.head_dim, self.ctx.rope_theta)
