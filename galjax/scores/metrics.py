"""Image-quality and classification metrics as pure, ``jit``/``vmap``-safe functions.

Image metrics take ``(..., height, width, bands)`` arrays and reduce over the
image axes, so a batch of images gives one value per image. Inputs are checked
once at the boundary (shapes always; values only when they are concrete, i.e.
outside ``jit``).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from galjax.core.checks import as_float_array, check_image, is_concrete, mask_nonfinite

__all__ = [
    "mse",
    "ssim",
    "relative_flux_error",
    "elliptical_aperture_flux",
    "bits_per_dim",
    "roc_curve",
    "auc",
    "auroc",
    "chi2_per_pixel",
]

_IMAGE_AXES = (-3, -2, -1)


def _image_pair(pred, true):
    """Check two images of equal shape and cast them to a common float dtype."""
    pred = check_image("pred", pred)
    true = check_image("true", true)
    if pred.shape != true.shape:
        raise ValueError(f"pred, true: expected equal shapes, got {pred.shape} and {true.shape}")
    dtype = np.promote_types(pred.dtype, true.dtype)
    return pred.astype(dtype), true.astype(dtype)


def _as_mask(mask, shape, dtype):
    if mask is None:
        return jnp.ones(shape, dtype)
    mask = as_float_array("mask", mask, dtype)
    try:
        return jnp.broadcast_to(mask, shape)
    except ValueError as err:
        raise ValueError(
            f"mask: expected a shape broadcastable to {shape}, got {mask.shape}"
        ) from err


def mse(pred, true, mask=None):
    """Mean squared error per image.

    ``MSE = sum_p m_p (pred_p - true_p)^2 / sum_p m_p`` over pixels and bands
    ``p``, with weights ``m`` (1 when no mask is given).

    Args:
      pred: predicted images ``(..., h, w, bands)``.
      true: reference images, same shape.
      mask: optional weights broadcastable to that shape (1 = use, 0 = ignore).

    Returns:
      Array ``(...)``; NaN for an image whose mask is all zero.

    >>> import jax.numpy as jnp
    >>> float(mse(jnp.ones((4, 4, 1)), jnp.zeros((4, 4, 1))))
    1.0
    """
    pred, true = _image_pair(pred, true)
    return _mse(pred, true, _as_mask(mask, pred.shape, pred.dtype))


# The public functions check their inputs eagerly and then call one jitted core,
# so that an eager call compiles once instead of dispatching op by op.
@jax.jit
def _mse(pred, true, m):
    return jnp.sum(m * (pred - true) ** 2, axis=_IMAGE_AXES) / jnp.sum(m, axis=_IMAGE_AXES)


def _gaussian_window(size: int, sigma: float, dtype) -> jax.Array:
    x = jnp.arange(size, dtype=dtype) - (size - 1) / 2
    g = jnp.exp(-0.5 * (x / sigma) ** 2)
    return g / jnp.sum(g)


def _filter_valid(x, g):
    """Separable 'valid' filtering of ``(n, h, w, c)`` with the 1-D window ``g``."""
    c = x.shape[-1]
    dn = ("NHWC", "HWIO", "NHWC")
    # HIGHEST precision: the default may use TF32 on GPUs, and SSIM subtracts
    # filtered quantities of similar size, so 1e-3 relative errors would show.
    conv = lambda a, k: lax.conv_general_dilated(
        a,
        k,
        (1, 1),
        "VALID",
        dimension_numbers=dn,
        feature_group_count=c,
        precision=lax.Precision.HIGHEST,
    )
    k_h = jnp.broadcast_to(g[:, None, None, None], (g.shape[0], 1, 1, c))
    k_w = jnp.broadcast_to(g[None, :, None, None], (1, g.shape[0], 1, c))
    return conv(conv(x, k_h), k_w)


def ssim(
    pred,
    true,
    data_range,
    *,
    per_band: bool = False,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
):
    """Structural similarity index (Wang, Bovik, Sheikh & Simoncelli 2004).

    For every ``window_size x window_size`` window fully inside the image
    (Gaussian weights, standard deviation ``sigma`` pixels), per band:

    ``SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) /
    ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))``,

    with ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``, ``L = data_range`` (eq. 13 of the
    paper, with the Gaussian window of its section III-C). The map is averaged
    over windows (mean SSIM). This matches ``skimage.metrics.structural_similarity
    (gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` on the
    windows that do not touch the border.

    Args:
      pred: images ``(..., h, w, bands)`` with ``h, w >= window_size``.
      true: reference images, same shape.
      data_range: ``L``, the dynamic range of the data (e.g. ``true.max() -
        true.min()`` of the data set, or 1 for images in ``[0, 1]``); > 0.
      per_band: return one value per band instead of the mean over bands.
      window_size: side of the Gaussian window in pixels (11 in the paper).
      sigma: standard deviation of the window in pixels (1.5 in the paper).
      k1, k2: stabilising constants (0.01 and 0.03 in the paper).

    Returns:
      Array ``(...)``, or ``(..., bands)`` with ``per_band=True``; 1 for identical
      images.

    >>> import jax
    >>> x = jax.random.uniform(jax.random.key(0), (16, 16, 2))
    >>> round(float(ssim(x, x, data_range=1.0)), 6)
    1.0
    """
    pred, true = _image_pair(pred, true)
    h, w, c = pred.shape[-3:]
    if h < window_size or w < window_size:
        raise ValueError(
            f"pred, true: images must be at least {window_size}x{window_size} pixels for "
            f"window_size={window_size}, got shape {pred.shape}"
        )
    if is_concrete(data_range) and not float(np.min(np.asarray(data_range))) > 0:
        raise ValueError(f"data_range: expected a value > 0, got {data_range}")
    return _ssim(pred, true, data_range, per_band, window_size, sigma, k1, k2)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7))
def _ssim(pred, true, data_range, per_band, window_size, sigma, k1, k2):
    h, w, c = pred.shape[-3:]
    dtype = pred.dtype
    lead = pred.shape[:-3]
    x = pred.reshape((-1, h, w, c))
    y = true.reshape((-1, h, w, c))
    # Shift both images by the same per-image constant: the variances and
    # covariance are unchanged, but E[x^2] - E[x]^2 no longer cancels
    # catastrophically in float32 for images far from zero (e.g. sky counts).
    shift = jnp.mean(y, axis=(1, 2), keepdims=True)
    xc, yc = x - shift, y - shift
    g = _gaussian_window(window_size, sigma, dtype)
    stats = _filter_valid(jnp.concatenate([xc, yc, xc * xc, yc * yc, xc * yc], axis=-1), g)
    mu_xc, mu_yc, exx, eyy, exy = jnp.split(stats, 5, axis=-1)
    var_x = exx - mu_xc**2
    var_y = eyy - mu_yc**2
    cov = exy - mu_xc * mu_yc
    mu_x, mu_y = mu_xc + shift, mu_yc + shift
    L = jnp.asarray(data_range, dtype)
    c1, c2 = (k1 * L) ** 2, (k2 * L) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    per = jnp.mean(smap, axis=(1, 2)).reshape(lead + (c,))
    return per if per_band else jnp.mean(per, axis=-1)


def relative_flux_error(pred, true, mask=None):
    """Relative error of the total flux per band, ``(F_pred - F_true) / F_true``.

    ``F = sum_{y,x} m_{yx} I_{yx}`` is the (masked) sum over the image. Biswas et
    al. and MADNESS report the mean of ``|dF/F|`` over galaxies; take
    ``jnp.abs`` for that.

    Args:
      pred: predicted images ``(..., h, w, bands)`` (flux units per pixel).
      true: reference images, same shape; its flux must not be 0.
      mask: optional weights broadcastable to that shape.

    Returns:
      Array ``(..., bands)``; signed (positive when ``pred`` is too bright).

    >>> import jax.numpy as jnp
    >>> round(float(relative_flux_error(1.1 * jnp.ones((4, 4, 1)), jnp.ones((4, 4, 1)))[0]), 4)
    0.1
    """
    pred, true = _image_pair(pred, true)
    m = _as_mask(mask, pred.shape, pred.dtype)
    f_pred, f_true = _fluxes(pred, true, m)
    if is_concrete(f_true) and np.any(np.asarray(f_true) == 0):
        raise ValueError(
            "true: total flux is 0 in some image/band; the relative error is undefined"
        )
    return (f_pred - f_true) / f_true


@jax.jit
def _fluxes(pred, true, m):
    return jnp.sum(m * pred, axis=(-3, -2)), jnp.sum(m * true, axis=(-3, -2))


def elliptical_aperture_flux(image, x, y, a, b, theta, subsample: int = 5):
    """Flux inside an elliptical aperture: ``F = sum_{y,x} c_{yx} I_{yx}`` per band.

    ``c`` is the fraction of each pixel inside the ellipse, counted on a
    ``subsample x subsample`` grid of sub-pixel centres (as SExtractor does for its
    apertures). A point ``(u, v)`` is inside when
    ``((du cos t + dv sin t) / a)^2 + ((-du sin t + dv cos t) / b)^2 <= 1`` with
    ``du = u - x``, ``dv = v - y``.

    Args:
      image: ``(h, w, bands)``; pixel centres at integer ``(x, y)`` = (column, row).
      x, y: scalar aperture centre (pixels, 0-based).
      a, b: scalar semi-axes (pixels), positive.
      theta: scalar angle of the ``a`` axis, counter-clockwise from ``+x`` (rad).
      subsample: sub-pixels per pixel side.

    Returns:
      ``(bands,)`` aperture flux. Pure: ``vmap`` it over apertures or images.

    >>> import jax.numpy as jnp
    >>> round(float(elliptical_aperture_flux(jnp.ones((9, 9, 1)), 4.0, 4.0, 3.0, 3.0, 0.0)[0]), 1)
    28.4
    """
    image = check_image("image", image)
    if image.ndim != 3:
        raise ValueError(f"image: expected (h, w, bands), got {image.shape}; vmap for batches")
    if isinstance(subsample, bool) or not isinstance(subsample, int) or subsample < 1:
        raise ValueError(f"subsample: expected a positive integer, got {subsample!r}")
    for name, v in (("a", a), ("b", b)):
        if is_concrete(v) and not np.all(np.asarray(v) > 0):
            raise ValueError(f"{name}: expected a positive semi-axis, got {v}")
    x, y, a, b, theta = (jnp.asarray(v, image.dtype) for v in (x, y, a, b, theta))
    return _aperture_flux(image, x, y, a, b, theta, subsample)


@functools.partial(jax.jit, static_argnames="subsample")
def _aperture_flux(image, x, y, a, b, theta, subsample):
    h, w = image.shape[:2]
    dx = jnp.arange(w, dtype=image.dtype)[None, :] - x
    dy = jnp.arange(h, dtype=image.dtype)[:, None] - y
    c, s = jnp.cos(theta), jnp.sin(theta)
    cover = jnp.zeros((h, w), image.dtype)
    for i in range(subsample):  # sub-pixel offsets, accumulated to keep memory at (h, w)
        for j in range(subsample):
            u = dx + (j + 0.5) / subsample - 0.5
            v = dy + (i + 0.5) / subsample - 0.5
            r2 = ((u * c + v * s) / a) ** 2 + ((-u * s + v * c) / b) ** 2
            cover = cover + (r2 <= 1.0).astype(image.dtype)
    return jnp.sum(image * (cover / subsample**2)[..., None], axis=(0, 1))


def bits_per_dim(nll_nats, n_dims):
    """Convert a negative log-likelihood in nats to bits per dimension.

    ``bpd = NLL / (D ln 2)``. For a continuous density on 8-bit images rescaled
    to ``[0, 1]``, add ``D ln 256`` to the NLL first so that it refers to the
    discrete pixel values (Salimans et al. 2017 report 2.92 bits/dim on CIFAR-10).

    Args:
      nll_nats: NLL of each example in nats, any shape.
      n_dims: ``D``, number of dimensions per example (e.g. ``h * w * bands``); > 0.

    Returns:
      Array of the shape of ``nll_nats``.

    >>> round(float(bits_per_dim(1024 * 0.6931471805599453, 1024)), 6)
    1.0
    """
    nll = as_float_array("nll_nats", nll_nats)
    if is_concrete(n_dims) and not np.all(np.asarray(n_dims) > 0):
        raise ValueError(f"n_dims: expected a positive number of dimensions, got {n_dims}")
    return nll / (jnp.asarray(n_dims, nll.dtype) * math.log(2.0))


def _check_scores_labels(scores, labels):
    scores = as_float_array("scores", scores)
    labels = jnp.asarray(labels)
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(
            f"scores, labels: expected two 1-D arrays of equal length, got shapes "
            f"{scores.shape} and {labels.shape}"
        )
    if scores.shape[0] == 0:
        raise ValueError("scores: expected at least one example, got none")
    if is_concrete(scores) and not np.all(np.isfinite(np.asarray(scores))):
        raise ValueError("scores: expected finite values, found NaN/inf")
    if is_concrete(labels):
        lab = np.asarray(labels)
        if not np.all((lab == 0) | (lab == 1)):
            raise ValueError(f"labels: expected 0/1 or boolean values, got {np.unique(lab)}")
        n_pos = int(np.sum(lab == 1))
        if n_pos in (0, lab.size):
            raise ValueError(
                "labels: expected both classes (at least one positive and one negative), "
                f"got {n_pos} positive(s) out of {lab.size}"
            )
    return scores, labels.astype(scores.dtype)


def roc_curve(scores, labels):
    """Receiver operating characteristic of a score (higher = more positive).

    For each threshold ``t`` taken from the scores (descending), with ``t = +inf``
    first: ``TPR(t) = #{positives with s >= t} / P`` and
    ``FPR(t) = #{negatives with s >= t} / N``. The output has a fixed length
    ``n + 1`` so it works under ``jit``/``vmap``: tied scores give repeated points
    (the curve then goes straight across the tie, as in scikit-learn).

    Args:
      scores: ``(n,)`` real scores.
      labels: ``(n,)`` 1/True for positives, 0/False for negatives; both classes
        must occur (under ``jit`` a missing class gives NaN rates).

    Returns:
      ``(fpr, tpr, thresholds)``, each ``(n + 1,)``, non-decreasing in ``fpr`` and
      ``tpr``, from ``(0, 0)`` to ``(1, 1)``.

    >>> import jax.numpy as jnp
    >>> fpr, tpr, thr = roc_curve(jnp.array([0.1, 0.4, 0.35, 0.8]), jnp.array([0, 0, 1, 1]))
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    return _roc(*_check_scores_labels(scores, labels))


@jax.jit
def _roc(scores, labels):
    order = jnp.argsort(-scores)
    s, lab = scores[order], labels[order]
    tp = jnp.cumsum(lab)
    fp = jnp.cumsum(1 - lab)
    # Counts at the last member of each group of tied scores, so that a tie is
    # one straight segment instead of a staircase in arbitrary order.
    last = jnp.searchsorted(-s, -s, side="right") - 1
    tp, fp = tp[last], fp[last]
    zero = jnp.zeros((1,), s.dtype)
    tpr = jnp.concatenate([zero, tp / tp[-1]])
    fpr = jnp.concatenate([zero, fp / fp[-1]])
    thresholds = jnp.concatenate([jnp.full((1,), jnp.inf, s.dtype), s])
    return fpr, tpr, thresholds


def auc(scores, labels):
    """Area under the ROC curve (trapezoidal rule over :func:`roc_curve`).

    Equals the Mann-Whitney probability ``P(s_pos > s_neg) + P(s_pos = s_neg) / 2``.

    Args:
      scores: ``(n,)`` real scores.
      labels: ``(n,)`` 0/1 labels with both classes present.

    Returns:
      Scalar in ``[0, 1]``.

    >>> import jax.numpy as jnp
    >>> float(auc(jnp.array([0.1, 0.4, 0.35, 0.8]), jnp.array([0, 0, 1, 1])))
    0.75
    """
    return _auc(*_check_scores_labels(scores, labels))


@jax.jit
def _auc(scores, labels):
    fpr, tpr, _ = _roc(scores, labels)
    return jnp.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1])) / 2


def _two_samples(scores_in, scores_out):
    """Concatenate two score samples into float32 ``(scores, labels)``, ``scores_out`` = 1."""
    s_in = np.asarray(scores_in, np.float64).ravel()
    s_out = np.asarray(scores_out, np.float64).ravel()
    if s_in.size == 0 or s_out.size == 0:
        raise ValueError("scores_in, scores_out: expected non-empty samples")
    for name, s in (("scores_in", s_in), ("scores_out", s_out)):
        if not np.all(np.isfinite(s)):
            raise ValueError(f"{name}: expected finite scores, found NaN/inf")
    scores = np.concatenate([s_in, s_out]).astype(np.float32)
    labels = np.concatenate([np.zeros(s_in.size), np.ones(s_out.size)]).astype(np.int32)
    return scores, labels


def auroc(scores_in, scores_out) -> float:
    """:func:`auc` of two samples: ``scores_out`` the positives, ``scores_in`` the negatives.

    The convenience form for out-of-distribution scores (larger = more anomalous):
    ``P(s_out > s_in) + P(s_out = s_in) / 2`` over all pairs, computed by
    :func:`auc` on the concatenated samples (float32). 1 means every
    out-of-distribution input scores higher than every in-distribution one; 0.5 is
    chance; below 0.5 the score ranks the wrong way.

    Args:
      scores_in: in-distribution scores, any shape (flattened), finite, non-empty.
      scores_out: out-of-distribution scores, any shape (flattened), finite, non-empty.

    Returns:
      Python float in ``[0, 1]``.

    >>> auroc([0.0, 0.1, 0.2], [1.0, 2.0])
    1.0
    """
    return float(auc(*_two_samples(scores_in, scores_out)))


def chi2_per_pixel(residual, sigma=None, mask=None, *, ivar=None):
    """Reduced chi-square per pixel value of residual images.

    The sums run over the pixels and bands ``p`` of each image; a model that fits
    to the noise gives about 1. Give the noise one of two ways:

    - ``sigma``, the standard deviation: ``sum_p m_p (r_p / sigma_p)^2 / sum_p m_p``
      with weights ``m`` (the mask, 1 when none is given); pixels with
      ``sigma <= 0`` get weight 0 inside ``jit`` (outside, unmasked ones are refused).
      NaN for an image with no usable pixel.
    - ``ivar``, the inverse variance ``w = 1 / sigma^2`` (0: unusable pixel):
      ``sum_p m_p w_p r_p^2 / #{p : m_p w_p > 0}``, each usable pixel value counted
      once whatever its weight (the deblender's ``DeblendResult.chi2``). 0 for an
      image with no usable pixel (its sum is 0 too). Negative or non-finite
      ``ivar`` is refused outside ``jit``.

    With a 0/1 mask and ``w = 1 / sigma^2`` both give the same value. Non-finite
    residuals are masked (with a warning outside ``jit``).

    Args:
      residual: ``data - model``, ``(..., h, w, bands)``.
      sigma: per-pixel noise standard deviation, broadcastable to ``residual``.
      mask: optional weights broadcastable to ``residual`` (1 = use, 0 = ignore).
      ivar: per-pixel inverse variance, broadcastable to ``residual``, instead of
        ``sigma`` (keyword only).

    Returns:
      Array ``(...)``.

    >>> import jax.numpy as jnp
    >>> float(chi2_per_pixel(2 * jnp.ones((4, 4, 1)), 2.0))
    1.0
    >>> float(chi2_per_pixel(2 * jnp.ones((4, 4, 1)), ivar=jnp.full((4, 4, 1), 0.25)))
    1.0
    """
    if (sigma is None) == (ivar is None):
        raise ValueError("sigma, ivar: give exactly one (noise std or inverse variance)")
    residual = check_image("residual", residual)
    dtype = residual.dtype
    name, noise = ("sigma", sigma) if ivar is None else ("ivar", ivar)
    noise = jnp.broadcast_to(as_float_array(name, noise, dtype), residual.shape)
    residual, m = mask_nonfinite("residual", residual, _as_mask(mask, residual.shape, dtype))
    if is_concrete(noise) and is_concrete(m):
        if ivar is None:
            bad = (np.asarray(m) > 0) & ~(np.asarray(noise) > 0)
            what = "> 0 on unmasked pixels, found {} that are <= 0 or NaN"
        else:
            bad = ~(np.asarray(noise) >= 0) | ~np.isfinite(np.asarray(noise))
            what = "finite and >= 0, found {} that are not"
        if np.any(bad):
            raise ValueError(f"{name}: expected values {what.format(int(np.sum(bad)))}")
    if ivar is not None:
        return _chi2_ivar(residual, noise, m)
    return _chi2(residual, noise, m)


@jax.jit
def _chi2(residual, sigma, m):
    m = jnp.where(sigma > 0, m, 0)
    safe_sigma = jnp.where(sigma > 0, sigma, 1)  # avoids 0/0 -> NaN in masked pixels
    n = jnp.sum(m, axis=_IMAGE_AXES)
    chi2 = jnp.sum(m * (residual / safe_sigma) ** 2, axis=_IMAGE_AXES)
    return jnp.where(n > 0, chi2 / jnp.where(n > 0, n, 1), jnp.nan)


@jax.jit
def _chi2_ivar(residual, ivar, m):
    w = ivar * m
    # At least 1 in the count: an image without usable pixels gives 0/1, not 0/0.
    n_good = jnp.maximum(jnp.sum(w > 0, axis=_IMAGE_AXES), 1).astype(residual.dtype)
    return jnp.sum(w * residual**2, axis=_IMAGE_AXES) / n_good
