"""Tests for galjax.detect: matched filters vs brute force, peak finding, the real ESO field."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from galjax.detect import (
    combine_snr,
    detect,
    find_peaks,
    match_positions,
    matched_filter,
    matched_filter_fourier,
    noise_power_spectrum,
)
from galjax.image.background import estimate_background
from galjax.sim import gaussian_psf as _gaussian_psf


def gaussian_psf(fwhm, size):
    """galjax.sim.gaussian_psf (float32), built under standard promotion.

    Under x64 with strict promotion, gaussian_psf mixes a float64 numpy constant
    with float32 (sim/psf.py); detect casts the PSF to the image dtype anyway.
    """
    with jax.numpy_dtype_promotion("standard"):
        return _gaussian_psf(fwhm, size=size)


def _dtype():
    return jnp.zeros(()).dtype  # float32, or float64 under JAX_ENABLE_X64=1


def _gaussian_field(positions, fluxes, fwhm, shape, sigma, seed):
    """Point-sampled circular Gaussians plus white noise, ``(h, w, 1)`` numpy."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    s = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    img = np.zeros(shape)
    for (x, y), f in zip(positions, fluxes, strict=True):
        img += f * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / s**2) / (2 * np.pi * s**2)
    img += np.random.default_rng(seed).normal(0.0, sigma, shape)
    return img[..., None].astype(_dtype())


# -- matched filter ---------------------------------------------------------------


def _snr_loops(image, psf, weight):
    """Literal S(x) = sum_p w phi(p - x) d / sqrt(sum_p w phi(p - x)^2), zero outside."""
    h, w = image.shape
    ph, pw = psf.shape
    cy, cx = ph // 2, pw // 2
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            num = den = 0.0
            for v in range(ph):
                for u in range(pw):
                    py, px = y + v - cy, x + u - cx
                    if 0 <= py < h and 0 <= px < w:
                        num += weight[py, px] * psf[v, u] * image[py, px]
                        den += weight[py, px] * psf[v, u] ** 2
            out[y, x] = num / np.sqrt(den) if den > 0 else 0.0
    return out


@pytest.mark.parametrize("noise_kind", ["none", "scalar", "map"])
def test_matched_filter_brute_force(noise_kind):
    rng = np.random.default_rng(0)
    h, w, bands = 11, 9, 2
    image = rng.normal(size=(h, w, bands))
    image[3, 4, 1] = np.nan  # masked with a warning, weight 0
    psf = rng.uniform(0.1, 1.0, size=(5, 3, bands))
    psf[2, 1] += 3.0
    psf /= psf.sum(axis=(0, 1))
    noise = {
        "none": None,
        "scalar": 2.0,
        "map": rng.uniform(0.5, 2.0, size=(h, w, bands)),
    }[noise_kind]
    with pytest.warns(RuntimeWarning, match="image: 1 non-finite"):
        snr = np.asarray(matched_filter(image.astype(_dtype()), psf, noise))
    sigma = np.broadcast_to(1.0 if noise is None else noise, image.shape)
    weight = np.where(np.isfinite(image), 1.0 / sigma**2, 0.0)
    clean = np.where(np.isfinite(image), image, 0.0)
    tol = 1e-4 if _dtype() == jnp.float32 else 1e-10
    for b in range(bands):
        ref = _snr_loops(clean[..., b], psf[..., b], weight[..., b])
        np.testing.assert_allclose(snr[..., b], ref, rtol=tol, atol=tol)
        # The same with scipy: correlate(d w, phi) / sqrt(correlate(w, phi^2)).
        num = signal.correlate(clean[..., b] * weight[..., b], psf[..., b], mode="same")
        den = signal.correlate(weight[..., b], psf[..., b] ** 2, mode="same")
        np.testing.assert_allclose(snr[..., b], num / np.sqrt(den), rtol=tol, atol=tol)


def test_matched_filter_is_unit_variance_in_noise():
    """Pure noise with a varying rms map gives an SNR map of unit variance."""
    rng = np.random.default_rng(1)
    rms = np.linspace(0.5, 3.0, 64)[None, :, None] * np.ones((64, 64, 1))
    noise = rng.normal(size=(32, 64, 64, 1)) * rms
    snr = np.asarray(matched_filter(noise.astype(_dtype()), gaussian_psf(3.0, size=11), rms))
    # ~3000 independent beams: the sample std and mean scatter by ~0.015.
    assert abs(snr.std() - 1.0) < 0.05
    assert abs(snr.mean()) < 0.05


def _brute_coloured_snr(image, template, power):
    """``t_x^T C^-1 d / sqrt(t_x^T C^-1 t_x)`` with the circulant covariance from ``P``."""
    h, w = image.shape
    acov = np.real(np.fft.ifft2(power))  # c(dy, dx) for P = E|FFT n|^2 / (h w)
    iy, ix = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    iy, ix = iy.ravel(), ix.ravel()
    cov = acov[(iy[:, None] - iy[None, :]) % h, (ix[:, None] - ix[None, :]) % w]
    cinv_d = np.linalg.solve(cov, image.ravel())
    th, tw = template.shape
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            t = np.zeros((h, w))
            for v in range(th):
                for u in range(tw):
                    t[(y + v - th // 2) % h, (x + u - tw // 2) % w] += template[v, u]
            t = t.ravel()
            out[y, x] = t @ cinv_d / np.sqrt(t @ np.linalg.solve(cov, t))
    return out


def test_matched_filter_fourier_vs_brute_force():
    rng = np.random.default_rng(2)
    h, w = 8, 10
    kernel = rng.normal(size=(h, w))
    power = np.abs(np.fft.fft2(kernel)) ** 2 / (h * w) + 0.2  # symmetric: P(k) = P(-k)
    image = rng.normal(size=(2, h, w, 1))  # a batch of two
    template = np.asarray(gaussian_psf(2.0, size=5))[..., 0].astype(np.float64)
    snr = np.asarray(
        matched_filter_fourier(image.astype(_dtype()), template[..., None], power[..., None])
    )
    tol = 2e-4 if _dtype() == jnp.float32 else 1e-9
    for i in range(2):
        ref = _brute_coloured_snr(image[i, ..., 0], template, power)
        np.testing.assert_allclose(snr[i, ..., 0], ref, rtol=tol, atol=tol)


def test_fourier_white_noise_matches_direct_filter_and_power_spectrum():
    """White P = sigma^2 reduces to the direct filter (interior), and the periodogram finds it."""
    rng = np.random.default_rng(3)
    image = rng.normal(0.0, 2.0, size=(32, 32, 1)).astype(_dtype())
    psf = gaussian_psf(3.0, size=9)
    fourier = np.asarray(matched_filter_fourier(image, psf, jnp.full((32, 32, 1), 4.0)))
    direct = np.asarray(matched_filter(image, psf, 2.0))
    np.testing.assert_allclose(fourier[4:-4, 4:-4], direct[4:-4, 4:-4], rtol=1e-4, atol=1e-4)
    p = np.asarray(noise_power_spectrum(rng.normal(0.0, 2.0, size=(256, 16, 16, 1))))
    assert p.shape == (16, 16, 1)
    assert abs(p.mean() - 4.0) < 0.1


def test_combine_snr():
    snr = jnp.asarray(np.array([3.0, -4.0, 4.0]).reshape(1, 1, 3), _dtype())
    assert float(combine_snr(snr, "quadrature")[0, 0, 0]) == pytest.approx(5.0)
    assert float(combine_snr(snr, "chi2")[0, 0, 0]) == pytest.approx(41.0)
    assert float(combine_snr(snr, "sum")[0, 0, 0]) == pytest.approx(3.0 / np.sqrt(3.0))
    with pytest.raises(ValueError, match="method"):
        combine_snr(snr, "max")


# -- peak finding -----------------------------------------------------------------

_GRID = np.arange(10.0, 90.0, 16.0)
_TRUE = np.stack(np.meshgrid(_GRID, _GRID), -1).reshape(-1, 2)  # 25 sources, 16 px apart


def test_detect_synthetic_field_positions():
    true = _TRUE + np.random.default_rng(4).uniform(-0.5, 0.5, _TRUE.shape)
    fluxes = np.geomspace(60.0, 3000.0, len(true))  # SNR ~ 13 to 660
    image = _gaussian_field(true, fluxes, 3.0, (96, 96), 1.0, seed=5)
    det = detect(image, gaussian_psf(3.0, size=15), 1.0, threshold=5.0, max_peaks=64)
    match = match_positions(det.positions, true, 2.0, det.mask)
    assert match.completeness == 1.0 and match.purity == 1.0
    bright = fluxes[match.true_index] > 500.0
    assert (
        np.abs(np.asarray(det.positions)[match.found_index] - true[match.true_index])[bright].max()
        < 0.2
    )
    snr = np.asarray(det.snr)[np.asarray(det.mask)]
    assert np.all(np.diff(snr) <= 0)  # sorted by value
    assert det.snr_map.shape == (96, 96, 1) and det.snr_map.dtype == _dtype()


def _local_maxima_reference(snr, threshold):
    """Plain-numpy 3x3 local maxima above threshold, values in descending order."""
    h, w = snr.shape
    pad = np.pad(snr, 1, constant_values=-np.inf)
    vals = [
        snr[y, x]
        for y in range(h)
        for x in range(w)
        if snr[y, x] > threshold and snr[y, x] >= pad[y : y + 3, x : x + 3].max()
    ]
    return np.sort(vals)[::-1]


def _greedy_nms_reference(positions, min_sep):
    """Keep each position (in the given order) unless a kept one is closer than min_sep."""
    kept = []
    for i, p in enumerate(positions):
        if all(np.hypot(*(p - positions[k])) >= min_sep for k in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("min_sep", [2.0, 6.0])
def test_find_peaks_min_separation_matches_greedy_reference(min_sep):
    rng = np.random.default_rng(6)
    snr = rng.normal(size=(40, 40)) * 3.0  # many close local maxima
    snr_map = snr[..., None].astype(_dtype())
    # Without suppression: every local maximum, sorted, refined within half a pixel.
    every = find_peaks(snr_map, 4.0, 0.0, max_peaks=400)
    n = int(every.mask.sum())
    ref = _local_maxima_reference(snr, 4.0)
    assert n == len(ref) < 400
    np.testing.assert_allclose(np.asarray(every.values)[:n], ref, rtol=1e-6)
    pos_all = np.asarray(every.positions)[:n]
    for (x, y), v in zip(pos_all, ref, strict=True):  # the peak pixel is within 0.5 px
        near = {(int(c), int(r)) for c in (np.floor(x + 0.5), np.ceil(x - 0.5))
                for r in (np.floor(y + 0.5), np.ceil(y - 0.5))}  # fmt: skip
        near = [(c, r) for c, r in near if 0 <= c < 40 and 0 <= r < 40]
        assert any(abs(snr[r, c] - v) <= 1e-5 * abs(v) for c, r in near)
    # With suppression: greedy NMS on those refined positions, in value order.
    peaks = find_peaks(snr_map, 4.0, min_sep, max_peaks=400)
    mask = np.asarray(peaks.mask)
    pos = np.asarray(peaks.positions)[mask]
    keep = _greedy_nms_reference(pos_all, min_sep)
    assert len(keep) < n
    np.testing.assert_allclose(pos, pos_all[keep], atol=1e-6)
    d = np.hypot(*(pos[:, None] - pos[None]).transpose(2, 0, 1))
    assert d[np.triu_indices(len(pos), 1)].min() >= min_sep
    assert np.all(np.asarray(peaks.values)[~mask] == 0.0)
    assert np.all(np.asarray(peaks.positions)[~mask] == 0.0)
    # Fewer slots than peaks: the brightest survivors fill every slot.
    few = find_peaks(snr_map, 4.0, min_sep, max_peaks=5)
    assert bool(few.mask.all())
    np.testing.assert_allclose(few.positions, pos[:5], atol=1e-6)


def test_find_peaks_static_shapes_jit_vmap():
    fields = np.stack(
        [
            _gaussian_field(_TRUE[i::3], np.full(len(_TRUE[i::3]), 500.0), 3.0, (96, 96), 1.0, i)
            for i in range(3)
        ]
    )  # (3, 96, 96, 1), different numbers of sources
    psf = gaussian_psf(3.0, size=15)
    snr = jax.jit(jax.vmap(lambda im: combine_snr(matched_filter(im, psf, 1.0))))(fields)
    batched = find_peaks(snr, 5.0, 3.0, max_peaks=64)
    assert batched.positions.shape == (3, 64, 2)
    assert batched.values.shape == batched.mask.shape == (3, 64)
    assert batched.positions.dtype == _dtype()
    assert [int(m.sum()) for m in batched.mask] == [len(_TRUE[i::3]) for i in range(3)]
    fn = jax.jit(jax.vmap(lambda s, t: find_peaks(s, t, 3.0, max_peaks=64)))
    mapped = fn(snr, jnp.asarray([5.0, 5.0, 1e6], _dtype()))  # traced per-image threshold
    np.testing.assert_allclose(mapped.positions[:2], batched.positions[:2], atol=1e-5)
    assert not bool(mapped.mask[2].any())
    single = find_peaks(snr[1], 5.0, 3.0, max_peaks=64)  # same compiled shape as detect's
    np.testing.assert_allclose(single.positions, batched.positions[1], atol=1e-6)


def test_find_peaks_border():
    snr = np.zeros((96, 96, 1))
    snr[1, 10, 0], snr[10, 10, 0], snr[50, 94, 0] = 9.0, 8.0, 7.0
    p = find_peaks(snr.astype(_dtype()), 5.0, 3.0, max_peaks=64, border=2)
    assert int(p.mask.sum()) == 1
    np.testing.assert_allclose(p.positions[0], [10.0, 10.0])
    p = find_peaks(snr.astype(_dtype()), 5.0, 3.0, max_peaks=64, border=0)
    assert int(p.mask.sum()) == 3
    np.testing.assert_allclose(p.values[:3], [9.0, 8.0, 7.0])


def test_detect_multiband_quadrature():
    """A source present in only one of two bands is still detected."""
    img = np.zeros((48, 48, 2), np.float64)
    img[..., 0] = _gaussian_field([(20.0, 30.0)], [400.0], 3.0, (48, 48), 1.0, 7)[..., 0]
    img[..., 1] = np.random.default_rng(8).normal(size=(48, 48))
    psf = jnp.concatenate([gaussian_psf(3.0, size=11), gaussian_psf(4.0, size=11)], axis=-1)
    det = detect(img.astype(_dtype()), psf, jnp.ones(2), threshold=6.0, max_peaks=4)
    assert int(det.mask.sum()) == 1
    np.testing.assert_allclose(det.positions[0], [20.0, 30.0], atol=0.3)


# -- bad input --------------------------------------------------------------------


def test_detect_bad_input():
    img = np.random.default_rng(9).normal(size=(24, 24, 1)).astype(np.float32)
    psf = gaussian_psf(3.0, size=9)
    with pytest.raises(ValueError, match="noise"):
        detect(img, psf, 0.0)
    with pytest.raises(ValueError, match="noise"):
        detect(img, psf, -np.ones((24, 24, 1)))
    with pytest.raises(ValueError, match="noise"):
        detect(img, psf, np.ones((5, 1)))
    with pytest.raises(ValueError, match="psf"):
        detect(img, np.zeros((9, 9, 1)), 1.0)
    with pytest.raises(ValueError, match="psf.*odd"):
        detect(img, np.ones((8, 8, 1)), 1.0)
    with pytest.raises(ValueError, match="psf.*band"):
        detect(img, np.ones((9, 9, 2)), 1.0)
    with pytest.raises(ValueError, match="image"):
        detect(img[..., 0], psf, 1.0)
    with pytest.raises(ValueError, match="combine"):
        detect(img, psf, 1.0, combine="max")
    with pytest.raises(ValueError, match="max_peaks"):
        detect(img, psf, 1.0, max_peaks=0)
    with pytest.raises(ValueError, match="snr_map.*one band"):
        find_peaks(np.ones((8, 8, 2)), 1.0)
    with pytest.raises(ValueError, match="min_separation"):
        find_peaks(np.ones((8, 8, 1)), 1.0, min_separation=-1.0)
    with pytest.raises(ValueError, match="power_spectrum"):
        matched_filter_fourier(img, psf, np.zeros((24, 24, 1)))
    # NaN pixels and infinite noise are masked, not propagated.
    img[5, 5, 0] = np.nan
    noise = np.ones((24, 24, 1))
    noise[6, 6, 0] = np.inf
    with pytest.warns(RuntimeWarning, match="image"):
        det = detect(img, psf, noise)
    assert np.all(np.isfinite(np.asarray(det.snr_map)))


def test_match_positions():
    m = match_positions([[0.0, 0.0], [0.5, 0.0], [9.0, 9.0]], [[0.4, 0.0], [20.0, 0.0]], 2.0)
    assert m.found_index.tolist() == [1] and m.true_index.tolist() == [0]  # one-to-one, nearest
    assert m.completeness == 0.5 and m.purity == pytest.approx(1.0 / 3.0)
    m = match_positions([[0.0, 0.0], [0.5, 0.0]], [[0.4, 0.0]], 2.0, found_mask=[True, False])
    assert m.found_index.tolist() == [0] and m.purity == 1.0


# -- the real ESO/NTT field and its SExtractor catalogue ---------------------------


@pytest.fixture
def eso_field(data_dir):
    from galjax.io.datasets import load_sep_field

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_sep_field(data_dir / "field_eso_ntt_emmi_sep")


def test_estimate_background_matches_sextractor(eso_field):
    bkg = estimate_background(eso_field.image, box=64, filter_size=3)  # default.sex settings
    rms = eso_field.rms
    # Measured: max |back - SExtractor| = 0.015 rms, rms within 0.05 %.
    assert np.max(np.abs(bkg.level - eso_field.background)) < 0.05 * rms.mean()
    assert np.max(np.abs(bkg.rms / rms - 1.0)) < 0.005


def test_detect_eso_field_vs_sextractor_catalogue(eso_field):
    cat = eso_field.catalog
    true = np.stack([cat["x"], cat["y"]], axis=-1)  # 0-based, 65 objects
    # Gaussian PSF whose FWHM = 2 x median half-light radius (FLUX_RADIUS at 0.5).
    fwhm = 2.0 * float(np.median(cat["FLUX_RADIUS_1"]))
    assert 3.0 < fwhm < 3.5
    psf = gaussian_psf(fwhm, size=15)
    img = eso_field.image.astype(_dtype())
    # Measured: threshold 5 -> completeness 0.985, purity 0.63 (SExtractor merges knots
    # of extended galaxies and the field's noise is correlated: the SNR map's rms in
    # blank sky is 1.23); threshold 7 -> completeness 0.969, purity 0.887.
    det5 = detect(img, psf, eso_field.rms, threshold=5.0, background=eso_field.background)
    m5 = match_positions(det5.positions, true, 2.0, det5.mask)
    assert m5.completeness >= 0.95
    det7 = detect(img, psf, eso_field.rms, threshold=7.0, background=eso_field.background)
    m7 = match_positions(det7.positions, true, 2.0, det7.mask)
    assert m7.completeness >= 0.93
    assert m7.purity >= 0.82
    assert np.median(m7.distance) < 0.3  # measured 0.13 px
