"""End to end: the shipped deblender recovers the true fluxes of simulated blends.

Five simulated LSST-like fields of 1-4 galaxies (``galjax.sim``, known truth) are
deblended with the shipped ``lsst_r`` model and the library defaults, and each
galaxy's flux is compared with the truth in units of the noise.

Why these tolerances (they come from the noise, not from a measured error):

- The deblender states a 1-sigma flux error per galaxy
  (:func:`galjax.deblend.laplace_flux_errors`): the pixel noise propagated through
  the Gauss-Newton posterior of the latents and fluxes (so a galaxy whose light is
  hard to tell from a neighbour's gets a larger error), plus the fractional model
  error calibrated for the model on other simulations. If those errors are right,
  a flux lands more than 5 sigma from the truth with probability 5.7e-7, so one
  such galaxy among the ~10 here is a real failure (a wrong flux, or an error
  stated too small), not bad luck.
- For the same reason the mean pull over ``n`` galaxies has a standard deviation
  of ``1 / sqrt(n)``; a mean beyond ``5 / sqrt(n)`` is a systematic flux bias
  (e.g. a broken noise-bias correction) that the per-galaxy check would miss.
- So that the 5-sigma check cannot pass by stating huge errors, the stated errors
  must be informative: below 10 % of the flux (a 5-sigma band narrower than half
  the flux). Only galaxies with an optimal SNR >= 25 are scored, where the
  photon-noise floor ``F / SNR`` (the error of a matched filter that knows the
  galaxy's exact shape) is at most 4 %; the deblender, which also infers the shape,
  may exceed that floor by 2.5 times.

The simulator's shape (5 fields, 4 source slots) is the one ``tests/test_cli.py``
compiles, so in a full run the simulator is not compiled twice.
"""

import jax
import numpy as np
import pytest

from galjax.deblend import DeblendConfig, deblend, laplace_flux_errors
from galjax.models import default_model_dir, load_model
from galjax.sim import LSST_R, simulate_fields

SNR_MIN = 25.0  # photon-noise floor F / SNR <= 4 % for the scored galaxies
N_SIGMA = 5.0  # two-sided Gaussian tail beyond 5 sigma: 5.7e-7 per galaxy
MAX_FRACTIONAL_ERROR = 0.10  # 2.5 x the largest floor: the stated errors stay informative


@pytest.fixture(scope="module")
def run():
    model = load_model(default_model_dir("lsst_r"))
    truth = simulate_fields(jax.random.key(2025), 5, LSST_R, n_max=4)
    ivar = 1.0 / truth.sigma**2
    # The defaults, with all fields in one compiled call (per-field results unchanged).
    res = deblend(model, truth.image, truth.positions, truth.mask, ivar=ivar,
                  config=DeblendConfig(chunk=5), progress=False)  # fmt: skip
    err = laplace_flux_errors(model, res, truth.positions, ivar)
    true_flux = truth.sources.sum(axis=(2, 3))  # (n, n_max, bands)
    sel = truth.mask & (truth.snr >= SNR_MIN)
    blended = np.broadcast_to(truth.mask.sum(axis=1, keepdims=True) > 1, sel.shape)
    return dict(flux=res.fluxes[sel, 0], err=err[sel, 0], true=true_flux[sel, 0],
                snr=truth.snr[sel], blended=blended[sel])  # fmt: skip


def test_the_fields_hold_blends_of_measurable_galaxies(run):
    assert run["true"].size >= 5 and run["blended"].sum() >= 3


def test_fluxes_within_five_stated_sigma_of_the_truth(run):
    pull = (run["flux"] - run["true"]) / run["err"]
    assert np.all(np.abs(pull) <= N_SIGMA), f"pulls {np.round(pull, 2)}, SNR {run['snr']}"


def test_no_systematic_flux_bias(run):
    pull = (run["flux"] - run["true"]) / run["err"]
    assert abs(np.mean(pull)) <= N_SIGMA / np.sqrt(pull.size), f"pulls {np.round(pull, 2)}"


def test_stated_errors_are_informative(run):
    frac = run["err"] / run["true"]
    assert np.all(run["err"] > 0)
    assert np.all(frac <= MAX_FRACTIONAL_ERROR), f"errors / flux {np.round(frac, 3)}"
