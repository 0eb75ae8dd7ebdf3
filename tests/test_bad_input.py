"""Bad input to the API never becomes a silent wrong answer: a table of cases.

Each case is ``(id, call, expected)``: ``call(ctx)`` runs the API on the shared
context (tiny untrained models, two 24 x 24 fields, a unit-sum PSF), and
``expected`` is exactly one outcome:

- :class:`Raises`: the exception type and a message fragment (messages start with
  the argument's name);
- :class:`Warns`: a warning category and fragment, then the result's status row;
- :class:`Flags`: the result's status row (bits of
  :class:`~galjax.deblend.DeblendStatus`), with no ``RuntimeWarning``; optionally
  fluxes equal to the unit-scale run's times a factor.

Every result is also checked for the contract of a status row: fields flagged
``NONFINITE``/``NO_DATA`` have NaN fluxes and chi^2, zero models and latents,
unit amplitudes, ``converged`` False and ``residual`` = the cleaned field; every
other field has finite numbers; Laplace errors are finite and positive for every
real source of an unflagged field, NaN for a flagged one.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from galjax.core import checks
from galjax.core.optim import minimise
from galjax.deblend import (
    DeblendConfig,
    DeblendResult,
    DeblendStatus,
    deblend,
    laplace_flux_errors,
    pad_fields,
    status_text,
)
from galjax.deblend.config import static_config, traced_settings
from galjax.deblend.solve import deblend_chunk
from galjax.models import GalaxyModel, VAEConfig, init_vae
from galjax.sim import gaussian_psf

VCFG = dict(stamp_size=15, latent_dim=4, hidden=(16,), enc_channels=(4, 8), dec_channels=(8, 4),
            dec_start=4)  # fmt: skip
#: Few steps, no prior (the models have no flow); patience > n_steps: every fitted
#: field ends NOT_CONVERGED, so the status rows are exact.
CFG = DeblendConfig(n_steps=5, prior_weight=0.0, prior_weight_faint=None)
#: A constant objective (no sources) stops after ``patience`` steps: converged, OK.
CFG_STOP = DeblendConfig(n_steps=5, patience=1, prior_weight=0.0, prior_weight_faint=None)
S = DeblendStatus
NC, NONFINITE, NO_DATA, MASKED = (
    int(f) for f in (S.NOT_CONVERGED, S.NONFINITE, S.NO_DATA, S.MASKED_PIXELS)
)
N, H = 2, 24
POS = np.array([[[8.0, 8.0], [15.5, 14.0]], [[10.0, 12.0], [16.0, 7.0]]], np.float32)


@pytest.fixture(scope="module")
def ctx():
    gal = GalaxyModel(VAEConfig(**VCFG), init_vae(jax.random.key(0), VAEConfig(**VCFG)))
    pcfg = VAEConfig(**VCFG, psf_explicit=True)
    psfm = GalaxyModel(pcfg, init_vae(jax.random.key(1), pcfg))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:H, :H]
    blobs = [sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 4.0) for x, y in p) for p in POS]
    clean = 20.0 * np.stack(blobs)[..., None]
    fields = (clean + rng.normal(size=clean.shape)).astype(np.float32)
    ref = deblend(gal, fields, POS, sigma=1.0, config=CFG, progress=False)
    ref_err = laplace_flux_errors(gal, ref, POS, np.ones_like(fields))
    psf = np.asarray(gaussian_psf(2.5, 11))
    return dict(gal=gal, psfm=psfm, fields=fields, psf=psf, ref=ref, ref_err=ref_err)


class Raises(NamedTuple):
    exc: type
    match: str


class Warns(NamedTuple):
    category: type
    match: str
    status: tuple


class Flags(NamedTuple):
    status: tuple
    factor: float | None = None  # fluxes = factor * the unit-scale run's


def _db(model="gal", fields=None, pos=None, config=CFG, **kw):
    """``deblend`` on the context's data with some arguments replaced."""

    def call(c):
        kw.setdefault("sigma", None if "ivar" in kw else 1.0)
        f = c["fields"] if fields is None else fields(c)
        p = POS if pos is None else pos
        return deblend(c[model], f, p, config=config, progress=False, **kw)

    return call


def _set(i, *index_value):
    """The fields with pixels set: ``_set(field, (index, value), ...)``."""

    def fields(c):
        f = c["fields"].copy()
        for idx, v in index_value:
            f[(i, *idx)] = v
        return f

    return fields


def _scaled(c_):
    return lambda c: c["fields"] * np.float32(c_)


def _psf(c, fn):
    return fn(c["psf"].copy())


def _shifted(p):
    """A point PSF 5 px right of the central pixel."""
    q = np.zeros_like(p)
    q[p.shape[0] // 2, p.shape[1] // 2 + 5] = 1.0
    return q


def _laplace(fields=None, pos=POS, **kw):
    """``deblend`` then ``laplace_flux_errors`` (unit ivar): ``(result, errors)``."""

    def call(c):
        f = c["fields"] if fields is None else fields(c)
        res = deblend(c["gal"], f, pos, sigma=1.0, config=CFG, progress=False)
        return res, laplace_flux_errors(c["gal"], res, pos, np.ones_like(f), **kw)

    return call


def _lfe(**kw):
    """``laplace_flux_errors`` on the unit-scale result with arguments replaced."""

    def call(c):
        args = dict(positions=POS, ivar=np.ones_like(c["fields"]))
        args.update(kw)
        return laplace_flux_errors(c["gal"], c["ref"], **args)

    return call


def _pad(images=None, ivars=None, positions=None, psfs=None):
    one = np.ones((5, 6, 1), np.float32)

    def call(c):
        return pad_fields(
            [one, one] if images is None else images,
            [one, one] if ivars is None else ivars,
            [np.zeros((1, 2))] * 2 if positions is None else positions,
            psfs,
        )

    return call


def _solve_with_weight(value):
    """One field through the compiled solve (no boundary checks), a pixel's weight set."""

    def call(c):
        iv = np.ones((1, H, H, 1), np.float32)
        iv[0, 3, 3, 0] = value
        res = deblend_chunk(c["gal"], c["fields"][:1], POS[:1], np.ones((1, 2), bool), iv, None,
                            static_config(CFG), 1, traced_settings(CFG, np.float32))  # fmt: skip
        return jax.tree.map(np.asarray, res)

    return call


def _check(fn, *args, **kw):
    return lambda c: fn(*args, **kw)


BRIGHT = 1e4
COINCIDENT = POS.copy()
COINCIDENT[:, 1] = COINCIDENT[:, 0]
NAN_POS = POS.copy()
NAN_POS[0, 1] = np.nan
RAGGED = [np.ones((5, 6, 1)), np.ones((5, 6, 2))]

CASES = [
    # --- DeblendConfig: every setting finite and in range, the setting named
    (
        "cfg-prior-weight-nan",
        _check(DeblendConfig, prior_weight=np.nan),
        Raises(ValueError, "^prior_weight: .*nan"),
    ),
    (
        "cfg-prior-weight-inf",
        _check(DeblendConfig, prior_weight=np.inf),
        Raises(ValueError, "^prior_weight: "),
    ),
    (
        "cfg-prior-weight-negative",
        _check(DeblendConfig, prior_weight=-1.0),
        Raises(ValueError, "^prior_weight: .*>= 0"),
    ),
    (
        "cfg-prior-weight-string",
        _check(DeblendConfig, prior_weight="0.1"),
        Raises(TypeError, "^prior_weight: "),
    ),
    (
        "cfg-prior-weight-faint-nan",
        _check(DeblendConfig, prior_weight_faint=np.nan),
        Raises(ValueError, "^prior_weight_faint: "),
    ),
    (
        "cfg-prior-weight-faint-negative",
        _check(DeblendConfig, prior_weight_faint=-2.0),
        Raises(ValueError, "^prior_weight_faint: "),
    ),
    (
        "cfg-learning-rate-inf",
        _check(DeblendConfig, learning_rate=np.inf),
        Raises(ValueError, "^learning_rate: .*inf"),
    ),
    (
        "cfg-learning-rate-zero",
        _check(DeblendConfig, learning_rate=0.0),
        Raises(ValueError, "^learning_rate: .*> 0"),
    ),
    (
        "cfg-learning-rate-nan",
        _check(DeblendConfig, learning_rate=np.nan),
        Raises(ValueError, "^learning_rate: "),
    ),
    ("cfg-decay-zero", _check(DeblendConfig, decay=0.0), Raises(ValueError, r"^decay: .*\(0, 1\]")),
    ("cfg-decay-above-one", _check(DeblendConfig, decay=1.5), Raises(ValueError, "^decay: ")),
    ("cfg-decay-nan", _check(DeblendConfig, decay=np.nan), Raises(ValueError, "^decay: ")),
    ("cfg-tol-nan", _check(DeblendConfig, tol=np.nan), Raises(ValueError, "^tol: .*nan")),
    ("cfg-tol-negative", _check(DeblendConfig, tol=-1e-3), Raises(ValueError, "^tol: ")),
    (
        "cfg-faint-snr-nan",
        _check(DeblendConfig, faint_snr=(np.nan, 100.0)),
        Raises(ValueError, "^faint_snr: "),
    ),
    (
        "cfg-faint-snr-reversed",
        _check(DeblendConfig, faint_snr=(100.0, 30.0)),
        Raises(ValueError, "^faint_snr: .*low < high"),
    ),
    (
        "cfg-faint-snr-text",
        _check(DeblendConfig, faint_snr=("a", 1.0)),
        Raises(TypeError, "^faint_snr: "),
    ),
    (
        "cfg-n-steps-zero",
        _check(DeblendConfig, n_steps=0),
        Raises(ValueError, "^n_steps: must be >= 1"),
    ),
    (
        "cfg-n-steps-float",
        _check(DeblendConfig, n_steps=1.5),
        Raises(TypeError, "^n_steps: expected an integer"),
    ),
    ("cfg-patience-zero", _check(DeblendConfig, patience=0), Raises(ValueError, "^patience: ")),
    ("cfg-chunk-zero", _check(DeblendConfig, chunk=0), Raises(ValueError, "^chunk: ")),
    ("cfg-group-negative", _check(DeblendConfig, group=-1), Raises(ValueError, "^group: ")),
    ("deblend-config-not-a-config", _db(config={"n_steps": 5}), Raises(TypeError, "^config: ")),
    # --- fields
    (
        "fields-rank-3",
        _db(fields=lambda c: c["fields"][0]),
        Raises(ValueError, r"^fields: expected \(n_fields, h, w, bands\)"),
    ),
    (
        "fields-wrong-bands",
        _db(fields=lambda c: np.repeat(c["fields"], 2, -1)),
        Raises(ValueError, "^fields: expected 1 band"),
    ),
    (
        "fields-string",
        _db(fields=lambda c: "field.fits"),
        Raises(TypeError, "^fields: expected a numeric array"),
    ),
    (
        "fields-none",
        _db(fields=lambda c: None),
        Raises(TypeError, "^fields: expected a numeric array"),
    ),
    (
        "fields-bool",
        _db(fields=lambda c: c["fields"] > 0),
        Raises(TypeError, "^fields: expected a real numeric"),
    ),
    (
        "fields-zero-fields",
        _db(fields=lambda c: c["fields"][:0], pos=POS[:0]),
        Raises(ValueError, "^fields: expected at least one field"),
    ),
    (
        "fields-empty-image",
        _db(fields=lambda c: c["fields"][:, :0]),
        Raises(ValueError, "^fields: fields are empty"),
    ),
    (
        "fields-all-nan",
        _db(fields=_set(1, ((), np.nan))),
        Warns(RuntimeWarning, "1 of 2 field.*1 no_data", (NC, NO_DATA | MASKED)),
    ),
    (
        "fields-one-nan-pixel",
        _db(fields=_set(0, ((3, 3, 0), np.nan))),
        Warns(RuntimeWarning, "^fields: 1 non-finite pixel", (NC | MASKED, NC)),
    ),
    (
        "fields-one-1e30-pixel",
        _db(fields=_set(0, ((3, 3, 0), 1e30))),
        Warns(
            RuntimeWarning,
            r"^fields: 1 pixel\(s\) with .*> 1e\+08 were masked .*in 1 field",
            (NC | MASKED, NC),
        ),
    ),
    (
        "fields-all-inf",
        _db(fields=_set(0, ((), np.inf))),
        Warns(RuntimeWarning, "1 no_data", (NO_DATA | MASKED, NC)),
    ),
    ("fields-and-sigma-1e30", _db(fields=_scaled(1e30), sigma=1e30), Flags((NC, NC), factor=1e30)),
    (
        "fields-and-sigma-1e-30",
        _db(fields=_scaled(1e-30), sigma=1e-30),
        Flags((NC, NC), factor=1e-30),
    ),
    # --- sigma / ivar
    ("sigma-nan", _db(sigma=np.nan), Raises(ValueError, "^sigma: expected values > 0.*got nan")),
    ("sigma-zero", _db(sigma=0.0), Raises(ValueError, "^sigma: expected values > 0.*got 0")),
    ("sigma-negative", _db(sigma=-1.0), Raises(ValueError, "^sigma: .*got -1")),
    ("sigma-minus-inf", _db(sigma=-np.inf), Raises(ValueError, "^sigma: .*got -inf")),
    (
        "sigma-inf-everywhere",
        _db(sigma=np.inf),
        Warns(RuntimeWarning, "2 of 2 field.*2 no_data", (NO_DATA, NO_DATA)),
    ),
    (
        "sigma-inf-one-field",
        _db(sigma=np.array([1.0, np.inf])[:, None, None, None]),
        Warns(RuntimeWarning, "1 no_data", (NC, NO_DATA)),
    ),
    (
        "sigma-one-nan-pixel",
        _db(sigma=np.where(np.arange(H)[:, None, None] == 3, np.nan, 1.0)),
        Raises(ValueError, "^sigma: .*nan"),
    ),
    (
        "sigma-wrong-shape",
        _db(sigma=np.ones(5)),
        Raises(ValueError, "^sigma: expected a shape broadcastable"),
    ),
    (
        "sigma-extra-axis",
        _db(sigma=np.ones((1, N, H, H, 1))),
        Raises(ValueError, "^sigma: expected a shape broadcastable"),
    ),
    ("sigma-string", _db(sigma="1.0"), Raises(TypeError, "^sigma: expected a numeric array")),
    (
        "sigma-and-ivar",
        _db(sigma=1.0, ivar=1.0),
        Raises(ValueError, "^sigma/ivar: give exactly one"),
    ),
    ("sigma-neither", _db(sigma=None), Raises(ValueError, "^sigma/ivar: give exactly one")),
    ("ivar-nan", _db(ivar=np.nan), Raises(ValueError, "^ivar: expected finite values >= 0")),
    ("ivar-negative", _db(ivar=-1.0), Raises(ValueError, "^ivar: .*got -1")),
    ("ivar-inf", _db(ivar=np.inf), Raises(ValueError, "^ivar: .*got inf")),
    (
        "ivar-all-zero",
        _db(ivar=0.0),
        Warns(RuntimeWarning, "2 of 2 field.*2 no_data", (NO_DATA, NO_DATA)),
    ),
    (
        "ivar-zero-one-field",
        _db(ivar=np.array([0.0, 1.0])[:, None, None, None]),
        Warns(RuntimeWarning, "1 no_data", (NO_DATA, NC)),
    ),
    ("ivar-per-band", _db(ivar=np.ones(1)), Flags((NC, NC), factor=1.0)),
    # --- positions and mask
    ("positions-nan", _db(pos=NAN_POS), Raises(ValueError, "^positions: non-finite")),
    (
        "positions-nan-masked",
        _db(pos=NAN_POS, mask=np.array([[True, False], [True, True]])),
        Flags((NC, NC)),
    ),
    (
        "positions-outside",
        _db(pos=POS + 100.0),
        Raises(ValueError, "^positions: sources outside the field"),
    ),
    (
        "positions-three-coordinates",
        _db(pos=np.zeros((N, 2, 3))),
        Raises(ValueError, r"^positions: expected \(n_fields=2"),
    ),
    (
        "positions-wrong-field-count",
        _db(pos=np.concatenate([POS, POS])),
        Raises(ValueError, "^positions: expected"),
    ),
    (
        "positions-string",
        _db(pos="catalogue.csv"),
        Raises(TypeError, "^positions: expected a numeric array"),
    ),
    (
        "mask-float-fraction",
        _db(mask=np.full((N, 2), 0.5)),
        Raises(ValueError, "^mask: expected True/False"),
    ),
    ("mask-float-zero-one", _db(mask=np.array([[1.0, 0.0], [1.0, 1.0]])), Flags((NC, NC))),
    (
        "mask-wrong-shape",
        _db(mask=np.ones((N, 3), bool)),
        Raises(ValueError, r"^mask: expected shape \(2, 2\)"),
    ),
    ("zero-source-slots", _db(pos=np.zeros((N, 0, 2)), config=CFG_STOP), Flags((0, 0))),
    (
        "max-sources-exceeded",
        _db(max_sources=1),
        Raises(ValueError, "^positions: 2 sources per field exceed max_sources=1"),
    ),
    # --- PSF
    ("psf-explicit-ok", lambda c: _db("psfm", psf=c["psf"])(c), Flags((NC, NC))),
    (
        "psf-explicit-per-field",
        lambda c: _db("psfm", psf=np.stack([c["psf"]] * 2))(c),
        Flags((NC, NC)),
    ),
    (
        "psf-missing",
        _db("psfm"),
        Raises(ValueError, "^psf: this model draws galaxies before the PSF"),
    ),
    (
        "psf-even",
        lambda c: _db("psfm", psf=c["psf"][1:, 1:])(c),
        Raises(ValueError, "^psf: expected odd sizes"),
    ),
    (
        "psf-off-centre",
        lambda c: _db("psfm", psf=_psf(c, _shifted))(c),
        Raises(ValueError, r"^psf: centroid \(dx, dy\) = \(5"),
    ),
    (
        "psf-negative-sum",
        lambda c: _db("psfm", psf=-c["psf"])(c),
        Raises(ValueError, "^psf: PSF must sum to a positive"),
    ),
    (
        "psf-nan",
        lambda c: _db("psfm", psf=c["psf"] * np.nan)(c),
        Raises(ValueError, "^psf: expected finite values"),
    ),
    (
        "psf-wrong-bands",
        lambda c: _db("psfm", psf=np.repeat(c["psf"], 2, -1))(c),
        Raises(ValueError, "^psf: expected 1 band"),
    ),
    (
        "psf-per-field-wrong-count",
        lambda c: _db("psfm", psf=np.stack([c["psf"]] * 3))(c),
        Raises(ValueError, "^psf: expected 2 per-field PSFs"),
    ),
    (
        "psf-per-field-one-off-centre",
        lambda c: _db("psfm", psf=np.stack([c["psf"], _shifted(c["psf"])]))(c),
        Raises(ValueError, r"^psf\[1\]: centroid"),
    ),
    (
        "psf-given-to-built-in-psf-model",
        lambda c: _db(psf=c["psf"])(c),
        Warns(UserWarning, "^psf: ignored", (NC, NC)),
    ),
    (
        "point-without-explicit-psf",
        _db(point=np.ones((N, 2), bool)),
        Raises(ValueError, "^point: point sources need a model"),
    ),
    (
        "point-wrong-shape",
        lambda c: _db("psfm", psf=c["psf"], point=np.ones((N, 3), bool))(c),
        Raises(ValueError, r"^point: expected shape \(2, 2\)"),
    ),
    # --- inside the solver (no boundary checks): a non-finite objective is flagged
    ("solve-infinite-weight", _solve_with_weight(np.inf), Flags((NONFINITE,))),
    ("solve-nan-weight", _solve_with_weight(np.nan), Flags((NONFINITE,))),
    ("solve-finite-weight", _solve_with_weight(1.0), Flags((NC,))),
    # --- Laplace flux errors
    ("laplace-unit", _laplace(), Flags((NC, NC))),
    ("laplace-bright-sources", _laplace(fields=_scaled(BRIGHT)), Flags((NC, NC))),
    ("laplace-coincident-sources", _laplace(pos=COINCIDENT), Flags((NC, NC))),
    (
        "laplace-no-data-field",
        _laplace(fields=_set(1, ((), np.nan))),
        Warns(RuntimeWarning, "1 no_data", (NC, NO_DATA | MASKED)),
    ),
    ("laplace-model-error-negative", _lfe(model_error=-0.1), Raises(ValueError, "^model_error: ")),
    ("laplace-model-error-nan", _lfe(model_error=np.nan), Raises(ValueError, "^model_error: ")),
    ("laplace-chunk-zero", _lfe(chunk=0), Raises(ValueError, "^chunk: ")),
    (
        "laplace-ivar-wrong-shape",
        _lfe(ivar=np.ones((N, H, H, 2))),
        Raises(ValueError, "^ivar: expected shape"),
    ),
    (
        "laplace-ivar-nan",
        _lfe(ivar=np.full((N, H, H, 1), np.nan)),
        Raises(ValueError, "^ivar: expected finite"),
    ),
    (
        "laplace-positions-wrong-shape",
        _lfe(positions=POS[:, :1]),
        Raises(ValueError, "^positions: expected shape"),
    ),
    # --- pad_fields
    (
        "pad-no-images",
        _pad(images=[], ivars=[], positions=[]),
        Raises(ValueError, "^images: expected at least one field"),
    ),
    ("pad-images-string", _pad(images="a.fits"), Raises(TypeError, "^images: expected a sequence")),
    (
        "pad-count-mismatch",
        _pad(ivars=[np.ones((5, 6, 1))]),
        Raises(ValueError, "^ivars, positions: expected 2 entries"),
    ),
    (
        "pad-bands-differ",
        _pad(images=RAGGED, ivars=RAGGED),
        Raises(ValueError, "^images: all fields need the same number of bands"),
    ),
    (
        "pad-ivar-shape",
        _pad(ivars=[np.ones((5, 5, 1))] * 2),
        Raises(ValueError, r"^ivars\[0\]: expected shape"),
    ),
    (
        "pad-ivar-negative",
        _pad(ivars=[-np.ones((5, 6, 1))] * 2),
        Raises(ValueError, r"^ivars\[0\]: expected finite values >= 0"),
    ),
    (
        "pad-positions-shape",
        _pad(positions=[np.zeros(3)] * 2),
        Raises(ValueError, r"^positions\[0\]: expected \(n_i, 2\)"),
    ),
    (
        "pad-psf-even",
        _pad(psfs=[np.ones((4, 4, 1))] * 2),
        Raises(ValueError, r"^psfs\[0\]: expected odd sizes"),
    ),
    # --- core.checks
    (
        "check-psf-centred",
        _check(
            checks.check_psf_centred,
            "psf",
            np.roll(np.pad(np.ones((1, 1, 1)), ((5, 5), (5, 5), (0, 0))), 3, 0),
        ),
        Raises(ValueError, r"^psf: centroid \(dx, dy\) = \(0, 3\)"),
    ),
    (
        "check-odd-psf",
        _check(checks.check_odd_psf, "psf", np.ones((4, 5, 1))),
        Raises(ValueError, "^psf: expected odd sizes"),
    ),
    (
        "check-psf-zero-sum",
        _check(checks.check_psf, "psf", np.zeros((3, 3, 1))),
        Raises(ValueError, "^psf: PSF must sum to a positive"),
    ),
    (
        "check-finite",
        _check(checks.check_finite, "x", np.array([1.0, np.nan])),
        Raises(ValueError, "^x: expected finite values, found 1"),
    ),
    (
        "check-positive",
        _check(checks.check_positive, "x", np.array([1.0, 0.0])),
        Raises(ValueError, "^x: expected values > 0"),
    ),
    (
        "check-range",
        _check(checks.check_range, "x", np.array([2.0]), 0.0, 1.0),
        Raises(ValueError, r"^x: expected values in \[0.0, 1.0\]"),
    ),
    (
        "check-image-rank",
        _check(checks.check_image, "image", np.ones((4, 4))),
        Raises(ValueError, r"^image: .*x\[\.\.\., None\]"),
    ),
    (
        "check-float-array-string",
        _check(checks.as_float_array, "x", "abc"),
        Raises(TypeError, "^x: expected a numeric array"),
    ),
    (
        "check-probabilities",
        _check(checks.check_probabilities, "p", np.array([1.5])),
        Raises(ValueError, r"^p: expected probabilities in \[0, 1\]"),
    ),
    (
        "check-labels-fraction",
        _check(checks.check_labels, "labels", [0.5, 1.0]),
        Raises(TypeError, "^labels: expected integer class indices"),
    ),
]


def _assert_row_contract(res: DeblendResult, clean=None):
    """The status contract of ``res`` (module docstring)."""
    status = np.asarray(res.status)
    assert status.dtype == np.int32
    failed = (status & (NONFINITE | NO_DATA)) != 0
    ok = ~failed
    assert np.all(np.isnan(res.fluxes[failed])) and np.all(np.isnan(res.chi2[failed]))
    assert np.all(res.models[failed] == 0) and np.all(res.latents[failed] == 0)
    assert np.all(res.amplitudes[failed] == 1) and not np.any(res.converged[failed])
    for name in ("fluxes", "chi2", "models", "latents", "residual", "amplitudes"):
        assert np.all(np.isfinite(getattr(res, name)[ok])), name
    assert np.all(np.asarray(res.converged) == ((status & (NC | NONFINITE | NO_DATA)) == 0))
    if clean is not None:
        np.testing.assert_array_equal(res.residual[failed], clean[failed])


def _assert_outcome(out, status, ctx, factor=None):
    res, err = (out, None) if isinstance(out, DeblendResult) else out
    assert [status_text(s) for s in res.status] == [status_text(s) for s in status]
    _assert_row_contract(res)
    if factor is not None:
        np.testing.assert_allclose(res.fluxes / factor, ctx["ref"].fluxes, rtol=1e-3)
    if err is not None:
        failed = (np.asarray(res.status) & (NONFINITE | NO_DATA)) != 0
        assert np.all(np.isnan(err[failed]))
        real = np.asarray(res.mask) & ~failed[:, None]
        assert np.all(np.isfinite(err[real]) & (err[real] > 0))
        assert np.all(err[~np.asarray(res.mask) & ~failed[:, None]] == 0)


@pytest.mark.parametrize("call, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_api_bad_input(ctx, call, expected):
    if isinstance(expected, Raises):
        with pytest.raises(expected.exc, match=expected.match):
            call(ctx)
    elif isinstance(expected, Warns):
        with pytest.warns(expected.category, match=expected.match):
            out = call(ctx)
        _assert_outcome(out, expected.status, ctx)
    else:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            out = call(ctx)
        assert not [w for w in seen if issubclass(w.category, RuntimeWarning)]
        _assert_outcome(out, expected.status, ctx, expected.factor)


def test_the_table_is_large_enough():
    assert len(CASES) >= 45 and len({c[0] for c in CASES}) == len(CASES)


def test_flagged_residual_is_the_cleaned_field(ctx):
    f = ctx["fields"].copy()
    f[1, :, :, 0] = np.nan
    f[0, 2, 2, 0] = 1e30
    with pytest.warns(RuntimeWarning):
        res = deblend(ctx["gal"], f, POS, sigma=1.0, config=CFG, progress=False)
    clean = np.where(np.isfinite(f) & (np.abs(f) < 1e8), f, 0.0)
    _assert_row_contract(res, clean)
    assert status_text(res.status[1]) == "no_data|masked_pixels"


@pytest.mark.parametrize("c", [1e-20, 1e-12, 1e-2, 1e6, 1e20])
def test_results_do_not_depend_on_the_units(ctx, c):
    """Fields and sigma scaled together by ``c``: the fluxes scale by ``c``, nothing else
    changes (the solve runs in noise units)."""
    ref = ctx["ref"]
    res = deblend(ctx["gal"], ctx["fields"] * np.float32(c), POS, sigma=c, config=CFG,
                  progress=False)  # fmt: skip
    np.testing.assert_allclose(res.fluxes / c, ref.fluxes, rtol=1e-3)
    np.testing.assert_allclose(res.latents, ref.latents, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(res.chi2, ref.chi2, rtol=1e-3)
    np.testing.assert_array_equal(res.status, ref.status)
    err = laplace_flux_errors(ctx["gal"], res, POS, np.full(res.residual.shape, c**-2.0))
    np.testing.assert_allclose(err / c, ctx["ref_err"], rtol=1e-3)


@pytest.mark.parametrize("patience", [None, 3], ids=["fixed-steps", "stopping-rule"])
def test_minimise_stops_on_a_nonfinite_objective(patience):
    """sqrt(x) steps past x = 0 into NaN: the step is not taken, the loop reports it."""
    tol = None if patience is None else 1e-3
    x, info = minimise(lambda x: jnp.sum(jnp.sqrt(x)), jnp.ones(2), optax.sgd(3.0), 20, tol=tol,
                       patience=patience)  # fmt: skip
    assert not bool(info.finite) and not bool(info.converged)
    assert np.all(np.isfinite(np.asarray(x))) and np.all(np.asarray(x) > 0)
    ok, _ = minimise(lambda x: jnp.sum((x - 2.0) ** 2), jnp.ones(2), optax.sgd(0.1), 20, tol=tol,
                     patience=patience)  # fmt: skip
    np.testing.assert_allclose(ok, 2.0, atol=0.05)


def test_very_bright_sources_start_inside_the_latent_range_and_get_finite_errors(ctx):
    """Sources 1e6x the context's (SNR ~ 1e7, not absurd): the encoder's latents are
    clipped to Z0_MAX, Adam moves them at most ~learning_rate per step, and the
    Laplace errors are finite and positive."""
    from galjax.deblend.solve import Z0_MAX
    from galjax.image.transforms import cutouts
    from galjax.models.vae import encode

    bright = ctx["fields"] * np.float32(1e6)
    gal = ctx["gal"]
    raw, _ = encode(gal.vae_params, gal.vae_config, cutouts(bright[0], POS[0], 15))
    assert np.max(np.abs(raw)) > Z0_MAX  # the clip is what keeps the start in range
    res = deblend(ctx["gal"], bright, POS, sigma=1.0, config=CFG, progress=False)
    bound = Z0_MAX + 2 * CFG.n_steps * CFG.learning_rate
    assert np.all(np.abs(res.latents) <= bound)
    err = laplace_flux_errors(ctx["gal"], res, POS, np.ones_like(bright))
    assert np.all(np.isfinite(err)) and np.all(err > 0)
