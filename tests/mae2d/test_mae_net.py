"""The masked autoencoder's network: tokens, masking, both blocks, the energy descent."""

import numpy as np
import pytest
import torch

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.tasks.mae2d.net import (
    EnergyBlock,
    MAEConfig,
    build_mae,
    patchify,
    random_visible,
    sincos_position_codes,
    unpatchify,
)

TINY = {
    "vit": dict(
        block="vit",
        embed_dim=32,
        depth=2,
        num_heads=4,
        decoder_dim=16,
        decoder_heads=2,
        dropout=0.0,
    ),
    "energy": dict(
        block="energy", embed_dim=32, depth=1, num_heads=2, head_dim=8, steps=4, dropout=0.0
    ),
}


def tiny(block, **kw):
    torch.manual_seed(0)
    return build_mae(MAEConfig(img_size=16, patch_size=4, **{**TINY[block], **kw})).eval()


def test_patchify_round_trip_and_order():
    x = torch.arange(2 * 8 * 12, dtype=torch.float32).reshape(2, 1, 8, 12)
    t = patchify(x, 4)
    assert t.shape == (2, 6, 16)
    # token 1 is the second patch of the first row: rows 0-3, columns 4-7
    np.testing.assert_array_equal(t[0, 1].numpy(), x[0, 0, :4, 4:8].reshape(-1).numpy())
    assert torch.equal(unpatchify(t, 4, 8, 12), x)
    with pytest.raises(InputError):
        patchify(torch.zeros(1, 1, 6, 8), 4)


def test_position_codes_distinct_and_bounded():
    pc = sincos_position_codes(4, 32)
    assert pc.shape == (16, 32)
    assert float(pc.abs().max()) <= 1.0
    d = torch.cdist(pc, pc) + torch.eye(16)
    assert float(d.min()) > 0.1  # every position has its own code


def test_random_visible_exact_count():
    g = torch.Generator().manual_seed(1)
    v = random_visible(50, 64, 0.75, generator=g)
    assert v.dtype == torch.bool and v.shape == (50, 64)
    assert (v.sum(1) == 16).all()
    # every token is hidden about equally often (uniform choice)
    freq = (~random_visible(4000, 64, 0.75, generator=g)).float().mean(0)
    assert float((freq - 0.75).abs().max()) < 0.05
    assert (random_visible(3, 4, 0.99).sum(1) == 1).all()  # at least one visible


@pytest.mark.parametrize("block", ["vit", "energy"])
def test_hidden_pixels_do_not_leak(block):
    """What lies under a hidden token changes nothing: the model sees visible tokens only."""
    m = tiny(block)
    x = torch.rand(3, 1, 16, 16)
    vis = random_visible(3, 16, 0.5, generator=torch.Generator().manual_seed(0))
    hid_pix = unpatchify((~vis)[..., None].expand(-1, -1, 16).float(), 4, 16, 16).bool()
    x2 = torch.where(hid_pix, torch.rand_like(x) * 10, x)
    with torch.no_grad():
        a, b = m(x, vis), m(x2, vis)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # ...but a visible token does change the prediction
    x3 = torch.where(hid_pix, x, x + 1.0)
    with torch.no_grad():
        assert float((m(x3, vis) - a).abs().max()) > 1e-3


@pytest.mark.parametrize("block", ["vit", "energy"])
def test_batch_of_different_visible_counts_equals_single_images(block):
    """Padding the shorter token lists (vit) must not change any image's result."""
    m = tiny(block)
    x = torch.rand(3, 1, 16, 16)
    vis = torch.zeros(3, 16, dtype=torch.bool)
    vis[0, [0, 5, 9]] = True
    vis[1, :12] = True
    # image 2: nothing visible (a tile of a large hole) still gives finite values
    with torch.no_grad():
        batch = m(x, vis)
        singles = torch.cat([m(x[i : i + 1], vis[i : i + 1]) for i in range(3)])
    assert torch.isfinite(batch).all()
    torch.testing.assert_close(batch, singles, rtol=1e-4, atol=1e-5)


def test_bad_inputs():
    m = tiny("vit")
    with pytest.raises(InputError, match="16, 16"):
        m(torch.zeros(1, 1, 8, 8), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(InputError, match="bool"):
        m(torch.zeros(1, 1, 16, 16), torch.ones(1, 16))
    with pytest.raises(InputError, match="multiple"):
        MAEConfig(img_size=30, patch_size=4).validate()
    with pytest.raises(InputError, match="block"):
        MAEConfig(block="mlp").validate()


def _energy_terms(blk, g):
    """The energy written out independently (loops over heads and tokens)."""
    b, n, d = g.shape
    total = torch.zeros(b, dtype=torch.float64)
    g = g.double()
    for h in range(blk.wq.shape[0]):
        q = g @ blk.wq[h].double().t()
        k = g @ blk.wk[h].double().t()
        for c in range(n):
            s = blk.beta * (k @ q[:, c : c + 1].transpose(1, 2)).squeeze(-1)  # (b, n)
            s = torch.cat([s[:, :c], s[:, c + 1 :]], 1)
            total -= torch.logsumexp(s, 1) / blk.beta
    total -= 0.5 * (torch.relu(g @ blk.xi.double().t()) ** 2).sum((1, 2))
    return total


def test_energy_matches_written_out_formula():
    torch.manual_seed(3)
    blk = EnergyBlock(16, heads=3, head_dim=5, mlp_ratio=2, steps=3, alpha=1.0, beta=0.3)
    with torch.no_grad():
        for p in (blk.wq, blk.wk, blk.xi):
            p.normal_(0, 0.3)
    g = torch.randn(2, 7, 16)
    torch.testing.assert_close(blk.energy(g).double(), _energy_terms(blk, g), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("scale", [0.002, 0.05])
def test_energy_decreases_monotonically_on_random_tokens(scale):
    """The source documents' defaults (D 256, 12 heads, T 12, alpha 10, beta 0.125)."""
    torch.manual_seed(0)
    cfg = MAEConfig(block="energy")
    blk = EnergyBlock(
        cfg.embed_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_ratio, cfg.steps, cfg.alpha, cfg.beta
    ).eval()
    with torch.no_grad():
        for p in (blk.wq, blk.wk, blk.xi):
            p.normal_(0, scale)
    x = torch.randn(4, 64, cfg.embed_dim)
    out, e = blk.descend(x, record=True)
    assert e.shape == (cfg.steps + 1, 4)
    assert torch.isfinite(e).all()
    # float32 rounding of sums of ~1e4 is ~1e-3; the steps lower E by far more
    assert bool((e[1:] - e[:-1] <= 1e-6 * e[:-1].abs()).all()), e
    assert bool((e[-1] < e[0]).all())
    assert not out.requires_grad  # eval: no graph kept


def test_energy_block_trains_through_the_descent():
    """In training the steps are differentiated (double backward) and reach the weights."""
    m = tiny("energy").train()
    x = torch.rand(2, 1, 16, 16)
    vis = random_visible(2, 16, 0.5)
    m(x, vis).pow(2).mean().backward()
    blk = m.blocks[0]
    for p in (blk.wq, blk.wk, blk.xi, blk.norm.gamma):
        assert p.grad is not None and float(p.grad.abs().sum()) > 0
    # under no_grad (validation, inference) the descent still runs
    with torch.no_grad():
        assert torch.isfinite(m.eval()(x, vis)).all()
