"""The simulator against GalSim, the reference renderer (as JAX-GalSim does)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from galjax.sim import RenderConfig, moffat_psf, render_sersic

galsim = pytest.importorskip("galsim")

SCALE = 0.2  # arcsec / pixel
N = 45
GSP = dict(folding_threshold=1e-4, maxk_threshold=1e-5, kvalue_accuracy=1e-6, xvalue_accuracy=1e-6)


def _galsim_image(n, hlr, e1, e2, x0, y0, fwhm=0.7, beta=2.5):
    gsp = galsim.GSParams(**GSP)
    gal = galsim.Sersic(n, half_light_radius=hlr, flux=1.0, gsparams=gsp).shear(g1=e1, g2=e2)
    psf = galsim.Moffat(beta=beta, fwhm=fwhm, gsparams=gsp)
    centre = (N - 1) / 2
    img = galsim.Convolve(gal, psf, gsparams=gsp).drawImage(
        nx=N, ny=N, scale=SCALE, offset=(x0 - centre, y0 - centre)
    )
    return img.array


@pytest.fixture(scope="module")
def renderer():
    cfg = RenderConfig(oversample=3, pad=22)
    # Untruncated Moffat as in GalSim: analytic normalisation over a stamp covering the field.
    psf = moffat_psf(0.7 / SCALE, 2.5, size=2 * N - 1, oversample=3, normalise=False)

    @jax.jit
    def render(n, hlr, e1, e2, x0, y0):
        return render_sersic(
            1.0, hlr, n, e1, e2, x0, y0, height=N, width=N, psf=psf, psf_oversample=3, config=cfg
        )[..., 0]

    return render


@pytest.mark.parametrize("n", [0.5, 1.0, 2.5, 4.0])
@pytest.mark.parametrize("hlr", [0.3, 0.8])
def test_sersic_moffat_matches_galsim(renderer, n, hlr):
    e1, e2, x0, y0 = 0.2, -0.1, 22.3, 21.8
    ref = _galsim_image(n, hlr, e1, e2, x0, y0)
    ours = np.asarray(renderer(n, hlr / SCALE, e1, e2, x0, y0))
    assert np.max(np.abs(ours - ref)) / ref.max() < 1e-3
    assert abs(ours.sum() - ref.sum()) < 1e-3


def test_no_psf_pixel_integration_matches_galsim():
    # Without a PSF GalSim's drawImage integrates the profile over the pixel too.
    gal = galsim.Sersic(1.0, half_light_radius=0.6, flux=1.0, gsparams=galsim.GSParams(**GSP))
    gal = gal.shear(g1=0.3, g2=0.1)
    ref = gal.drawImage(nx=N, ny=N, scale=SCALE, method="real_space").array
    ours = np.asarray(render_sersic(1.0, 3.0, 1.0, 0.3, 0.1, 22.0, 22.0, height=N, width=N))
    assert np.max(np.abs(ours[..., 0] - ref)) / ref.max() < 1e-3


def test_flux_conserved_large_stamp():
    for n in (0.5, 1.0, 4.0):
        img = render_sersic(1.0, 2.0, n, 0.1, 0.2, 100.4, 99.7, height=201, width=201)
        enclosed = 1.0 if n < 4 else 0.9995  # n = 4 has ~5e-4 of its light beyond 50 r_e
        assert abs(float(jnp.sum(img)) - enclosed) < 1e-3
