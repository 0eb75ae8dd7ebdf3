"""End to end: the shipped deblender recovers the true fluxes of simulated blends.

Simulated LSST-like fields (``galjax.sim``, known truth) are deblended with the
shipped ``lsst_r`` model and the library defaults, and the fluxes are compared with
the true ones in units of the noise.

The tolerance comes from the noise, not from a measured error. The deblender states
a 1-sigma flux error per galaxy (:func:`galjax.deblend.laplace_flux_errors`): the
pixel noise propagated through the Gauss-Newton posterior of the latents and
fluxes, plus the fractional model error calibrated for the model on other
simulations. If those errors are right, a galaxy's flux lands more than 5 sigma
from the truth with probability 6e-7, so over the ~10 galaxies here one miss is a
real failure (a wrong flux, or errors stated too small), not bad luck. So that this
check cannot pass by stating huge errors, the stated errors must also be
informative: at most twice the photon-noise floor of the faintest galaxies tested.
That floor is ``F / SNR``, the error of a matched filter that knows the galaxy's
exact shape (``Field.snr``, the optimal SNR); at ``SNR >= 10`` it is at most 10 % of
the flux, so an error above 20 % would mean the deblender has lost the galaxy.
"""

import jax
import numpy as np
import pytest

from galjax.deblend import deblend, laplace_flux_errors
from galjax.models import default_model_dir, load_model
from galjax.sim import LSST_R, simulate_fields

SNR_MIN = 10.0  # galaxies fainter than this are at the detection limit: not scored
N_SIGMA = 5.0  # two-sided Gaussian tail beyond 5 sigma: 5.7e-7 per galaxy
MAX_FRACTIONAL_ERROR = 2.0 / SNR_MIN  # twice the noise floor F / SNR at SNR_MIN


@pytest.fixture(scope="module")
def run():
    model = load_model(default_model_dir("lsst_r"))
    truth = simulate_fields(jax.random.key(2025), 4, LSST_R, n_max=3)
    ivar = 1.0 / truth.sigma**2
    res = deblend(model, truth.image, truth.positions, truth.mask, ivar=ivar, progress=False)
    err = laplace_flux_errors(model, res, truth.positions, ivar)
    true_flux = truth.sources.sum(axis=(2, 3))  # (n, n_max, bands)
    sel = truth.mask & (truth.snr >= SNR_MIN)
    return dict(flux=res.fluxes[sel, 0], err=err[sel, 0], true=true_flux[sel, 0],
                snr=truth.snr[sel], n_blended=int((truth.mask.sum(axis=1) > 1).sum()))  # fmt: skip


def test_the_fields_hold_blends_of_measurable_galaxies(run):
    assert run["true"].size >= 6 and run["n_blended"] >= 3


def test_fluxes_within_five_stated_sigma_of_the_truth(run):
    pull = (run["flux"] - run["true"]) / run["err"]
    assert np.all(np.abs(pull) <= N_SIGMA), f"pulls {np.round(pull, 2)}, SNR {run['snr']}"


def test_stated_errors_are_informative(run):
    frac = run["err"] / run["true"]
    assert np.all(run["err"] > 0)
    assert np.all(frac <= MAX_FRACTIONAL_ERROR), f"errors / flux {np.round(frac, 3)}"
