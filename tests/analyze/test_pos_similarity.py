"""Position-embedding similarity: the 2-D table's analytic answer, and which models have none."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vit_ablate.analyze.pos_similarity import cosine_similarity_matrix, position_table, similarity_by_distance, similarity_mosaic
from vit_ablate.model import build_model

# what these tests change of the shared tiny model: a 3×3 grid of 8-px patches, two heads
SIZE = dict(variant="Ti/8", heads=2, img_size=24, num_classes=4)


@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_2d_table_similarity_equals_the_analytic_one(pool, tiny):
    torch.manual_seed(0)
    model = build_model(tiny.model(**SIZE, pos_embed="2d", pool=pool))
    table2d = model.pos_embed.placement.table
    with torch.no_grad():  # rows and columns far from the init scale, so nothing is near-degenerate
        table2d.rows.normal_()
        table2d.cols.normal_()
    x, y = table2d.rows.detach().double(), table2d.cols.detach().double()
    rows, cols = model.grid_size
    assert (rows, cols) == (3, 3)
    sim = cosine_similarity_matrix(position_table(model))
    assert sim.shape == (9, 9)
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        for j in range(rows * cols):
            r2, c2 = divmod(j, cols)
            num = x[r] @ x[r2] + y[c] @ y[c2]
            den = torch.sqrt(x[r] @ x[r] + y[c] @ y[c]) * torch.sqrt(x[r2] @ x[r2] + y[c2] @ y[c2])
            assert sim[i, j].item() == pytest.approx((num / den).item(), abs=1e-6)


def test_1d_and_sincos_tables(tiny):
    torch.manual_seed(0)
    model = build_model(tiny.model(**SIZE, pos_embed="1d"))
    table = position_table(model)
    assert table.shape == (9, 32)  # the class token's row is not a patch
    full = model.pos_embed.placement.table.weight[0, 1:].detach()
    assert torch.equal(table, full)
    sim = cosine_similarity_matrix(table)
    assert torch.allclose(sim.diagonal(), torch.ones(9, dtype=torch.float64))
    assert torch.allclose(sim, sim.t())
    sincos = cosine_similarity_matrix(position_table(build_model(tiny.model(**SIZE, pos_embed="sincos2d"))))
    profile = similarity_by_distance(sincos, (3, 3))
    assert profile[0]["distance"] == 0.0 and profile[0]["mean_similarity"] == pytest.approx(1.0)
    assert profile[0]["pairs"] == 9
    # a fixed sin-cos table is most similar to its nearest neighbours
    assert profile[1]["mean_similarity"] > profile[-1]["mean_similarity"]


@pytest.mark.parametrize("kind", ["none", "relative", "rope2d"])
def test_models_without_an_additive_table_have_none(kind, tiny):
    assert position_table(build_model(tiny.model(**SIZE, pos_embed=kind))) is None


def test_every_layer_placement_shows_the_first_table(tiny):
    torch.manual_seed(0)
    model = build_model(tiny.model(**SIZE, depth=2, pos_embed="1d", pos_embed_at="every_layer"))
    expected = model.pos_embed.placement.tables[0].weight[0, 1:].detach()
    assert torch.equal(position_table(model), expected)


def test_zero_rows_give_zero_similarity_not_nan():
    sim = cosine_similarity_matrix(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    assert torch.isfinite(sim).all()
    assert sim[0, 1].item() == 0.0


def test_mosaic_places_each_patch_map_at_its_grid_cell():
    rows, cols = 2, 3
    n = rows * cols
    sim = np.arange(n * n, dtype=float).reshape(n, n)
    mosaic = similarity_mosaic(sim, (rows, cols))
    assert mosaic.shape == (rows * (rows + 1) - 1, cols * (cols + 1) - 1)
    for r in range(rows):
        for c in range(cols):
            block = mosaic[r * (rows + 1) : r * (rows + 1) + rows, c * (cols + 1) : c * (cols + 1) + cols]
            assert np.array_equal(block, sim[r * cols + c].reshape(rows, cols))
    assert np.isnan(mosaic[rows, 0])  # the gap between map rows
