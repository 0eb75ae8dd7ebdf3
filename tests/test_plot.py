"""Tests for galjax.plot: figures are built headless and files are written."""

import numpy as np
import pytest
from matplotlib.figure import Figure

from galjax.plot import field_panels, image_grid


def _galaxies(n=5, size=24, bands=3, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size / 2
    prof = np.exp(-(xx**2 + yy**2) / 20.0)[None, ..., None]
    amp = rng.uniform(1, 100, (n, 1, 1, bands))
    return (amp * prof + rng.normal(0, 0.5, (n, size, size, bands))).astype(np.float32)


@pytest.mark.parametrize(
    "bands_in, bands, ext",
    [(1, None, "png"), (3, None, "png"), (5, (4, 2, 0), "pdf"), (3, 1, "png")],
)
def test_image_grid_writes_file(tmp_path, bands_in, bands, ext):
    imgs = _galaxies(bands=bands_in)
    path = tmp_path / "out" / f"grid.{ext}"
    fig = image_grid(imgs, ncols=3, titles=[f"g{i}" for i in range(5)], path=path, bands=bands)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 5  # empty grid cells are removed
    assert path.is_file() and path.stat().st_size > 1000


def test_image_grid_single_image_shared_norm_and_constant(tmp_path):
    fig = image_grid(_galaxies(bands=1)[0], path=tmp_path / "one.png")
    assert len(fig.axes) == 1
    fig = image_grid(np.zeros((2, 8, 8, 1)), share_norm=True, path=tmp_path / "zeros.png")
    assert (tmp_path / "zeros.png").stat().st_size > 0


def test_image_grid_bad_input():
    with pytest.raises(ValueError, match="titles"):
        image_grid(_galaxies(), titles=["a"])
    with pytest.raises(ValueError, match="bands"):
        image_grid(_galaxies(bands=2), bands=(0, 1))
    with pytest.raises(ValueError, match="bands"):
        image_grid(_galaxies(bands=2), bands=3)
    with pytest.raises(ValueError, match="images"):
        image_grid(np.ones((4, 4)))
    with pytest.raises(ValueError, match="ncols"):
        image_grid(_galaxies(), ncols=0)


def test_field_panels_writes_file(tmp_path):
    field = _galaxies(n=1, size=40, bands=2)[0]
    model = field + np.random.default_rng(1).normal(0, 0.5, field.shape).astype(np.float32)
    path = tmp_path / "panels.png"
    fig = field_panels(
        field, model, field - model, sigma=0.5, positions=[[20.0, 20.0], [5, 30]], path=path, band=1
    )
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["field", "model", "residual / sigma"]
    assert len(fig.axes[0].collections) == 1  # the position markers
    assert fig.axes[0].get_xlim() == (-0.5, 39.5)
    assert path.is_file() and path.stat().st_size > 1000
    fig = field_panels(field, model, path=tmp_path / "nosigma.pdf")  # residual computed
    assert fig.axes[2].get_title() == "residual"
    assert (tmp_path / "nosigma.pdf").stat().st_size > 1000


def test_field_panels_bad_input():
    f = np.ones((16, 16, 1))
    with pytest.raises(ValueError, match="model"):
        field_panels(f, np.ones((16, 15, 1)))
    with pytest.raises(ValueError, match="positions"):
        field_panels(f, f, positions=[1.0, 2.0])
    with pytest.raises(ValueError, match="sigma"):
        field_panels(f, f, sigma=np.ones((3, 1)))
    with pytest.raises(ValueError, match="band"):
        field_panels(f, f, band=2)
    with pytest.raises(ValueError, match="field"):
        field_panels(np.ones((2, 16, 16, 1)), np.ones((2, 16, 16, 1)))


def test_vae_figures_reconstructions_traversal_embedding(tmp_path):
    import jax

    from galjax.models.vae import VAEConfig, decode, encode, init_vae, traverse
    from galjax.plot import latent_embedding, latent_traversal, reconstructions

    cfg = VAEConfig(stamp_size=15, latent_dim=3, hidden=(16,), enc_channels=(4, 8),
                    dec_channels=(8, 4), dec_start=4, likelihood="learned")  # fmt: skip
    params = init_vae(jax.random.key(0), cfg)
    x = np.random.default_rng(0).normal(size=(5, 15, 15, 1)).astype(np.float32)
    mu, _ = encode(params, cfg, x)
    f_mu, f_ls = decode(params, cfg, mu)
    fig = reconstructions(x, f_mu, np.exp(f_ls), tmp_path / "rec.png", n=4)
    assert len(fig.axes) == 16 and (tmp_path / "rec.png").stat().st_size > 0
    grid = traverse(params, cfg, dims=[0, 2], n_steps=5)
    assert grid.shape == (2, 5, 15, 15, 1)
    # The middle column is the prior mean decoded; the rows differ along their dimension.
    np.testing.assert_allclose(grid[0, 2], grid[1, 2], rtol=1e-5, atol=1e-6)
    assert not np.allclose(grid[0, 0], grid[0, -1])
    fig = latent_traversal(grid, tmp_path / "trav.png", dims=[0, 2])
    assert len(fig.axes) == 10
    z = np.random.default_rng(1).normal(size=(50, 3))
    fig = latent_embedding(z, color=z[:, 0], path=tmp_path / "emb.png", label="z0")
    assert isinstance(fig, Figure) and (tmp_path / "emb.png").stat().st_size > 0
    with pytest.raises(ValueError, match="f_mu"):
        reconstructions(x, f_mu[:2])
    with pytest.raises(ValueError, match="dims"):
        traverse(params, cfg, dims=[5])
    with pytest.raises(ValueError, match="color"):
        latent_embedding(z, color=np.ones(3))
