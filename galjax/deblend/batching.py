"""Deblending many fields: :func:`deblend` (input checks, chunks of one compiled
shape, source-slot bucketing, worker threads or device sharding) and
:func:`pad_fields` (fields of different shapes into one batch).

One compiled call (:func:`~galjax.deblend.solve.deblend_chunk`) per chunk shape
solves all fields of a chunk; chunks bound the memory for any number of fields.
With several accelerators each chunk is sharded over them; with several CPU
devices each gets a worker thread solving its own chunks.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from galjax.core.checks import check_image
from galjax.core.chunks import chunk_starts, pad_chunk
from galjax.deblend.config import (
    FAILED,
    DeblendConfig,
    DeblendResult,
    DeblendStatus,
    blank_failed,
    static_config,
    traced_settings,
)
from galjax.deblend.inputs import as_numeric, check_psfs, prepare_inputs
from galjax.deblend.photometry import debias_fluxes
from galjax.deblend.solve import deblend_chunk
from galjax.image.transforms import crop_or_pad
from galjax.models.store import GalaxyModel
from galjax.train.parallel import data_mesh, shard_batch

__all__ = [
    "deblend",
    "pad_fields",
    "to_caller_units",
    "slot_bucket",
    "chunk_slots",
    "take_slots",
    "put_slots",
    "SLOT_FILL",
]


def pad_fields(images, ivars, positions, psfs=None):
    """Stack fields of different shapes into one batch for a single compiled call.

    Each field goes to the lower-left corner (same pixel coordinates) of an
    ``(H, W)`` canvas, ``H, W`` the largest height and width; padded pixels get
    zero weight, so they do not enter the objective. Positions are padded to the
    largest source count with a mask; PSFs of different sizes are zero-padded
    about their centres to the largest (odd) size. Host-side numpy preparation for
    :func:`deblend` (not traced).

    Args:
      images: sequence of ``(h_i, w_i, bands)`` fields.
      ivars: matching inverse-variance maps (0 = unusable pixel).
      positions: sequence of ``(n_i, 2)`` source positions ``(x, y)``.
      psfs: optional sequence of ``(ph_i, pw_i, bands)`` PSFs: odd sizes, positive sums,
        centred (:func:`~galjax.deblend.inputs.check_psfs`).

    Returns:
      ``(fields, ivar, positions, mask, psfs)``: ``(n, H, W, bands)`` float32 twice,
      ``(n, n_max, 2)``, ``(n, n_max)`` bool and ``(n, PH, PW, bands)`` (or None).

    >>> f, iv, p, m, _ = pad_fields([np.ones((4, 5, 1)), np.ones((6, 3, 1))],
    ...                             [np.ones((4, 5, 1)), np.ones((6, 3, 1))],
    ...                             [np.array([[1.0, 2.0]]), np.zeros((0, 2))])
    >>> f.shape, float(iv[0, 5, 0, 0]), m.tolist()
    ((2, 6, 5, 1), 0.0, [[True], [False]])
    """
    if isinstance(images, str | bytes) or not hasattr(images, "__len__"):
        raise TypeError(f"images: expected a sequence of fields, got {type(images).__name__}")
    images = [np.asarray(check_image(f"images[{i}]", a, min_ndim=3)) for i, a in enumerate(images)]
    if len(images) == 0:
        raise ValueError("images: expected at least one field")
    if len(ivars) != len(images) or len(positions) != len(images):
        raise ValueError(
            f"ivars, positions: expected {len(images)} entries each (one per field), got "
            f"{len(ivars)} and {len(positions)}"
        )
    if any(a.ndim != 3 for a in images):
        shapes = [a.shape for a in images]
        raise ValueError(f"images: expected (h, w, bands) fields, got shapes {shapes}")
    bands = {a.shape[-1] for a in images}
    if len(bands) != 1:
        raise ValueError(f"images: all fields need the same number of bands, got {sorted(bands)}")
    b = bands.pop()
    h, w = max(a.shape[0] for a in images), max(a.shape[1] for a in images)
    n_max = max(max((len(p) for p in positions), default=1), 1)
    n = len(images)
    fields = np.zeros((n, h, w, b), np.float32)
    ivar = np.zeros_like(fields)
    pos = np.zeros((n, n_max, 2), np.float32)
    mask = np.zeros((n, n_max), bool)
    for i, (img, iv, p) in enumerate(zip(images, ivars, positions, strict=True)):
        iv = np.asarray(as_numeric(f"ivars[{i}]", iv), np.float32)
        if iv.shape != img.shape:
            raise ValueError(f"ivars[{i}]: expected shape {img.shape}, got {iv.shape}")
        if not np.all(np.isfinite(iv) & (iv >= 0)):
            raise ValueError(f"ivars[{i}]: expected finite values >= 0 (0 for a masked pixel)")
        p = np.asarray(as_numeric(f"positions[{i}]", p), np.float32)
        if p.size and (p.ndim != 2 or p.shape[1] != 2):
            raise ValueError(f"positions[{i}]: expected (n_i, 2) (x, y) pixels, got {p.shape}")
        p = p.reshape(-1, 2)
        fields[i, : img.shape[0], : img.shape[1]] = img
        ivar[i, : img.shape[0], : img.shape[1]] = iv
        pos[i, : len(p)], mask[i, : len(p)] = p, True
    if psfs is None:
        return fields, ivar, pos, mask, None
    if len(psfs) != n:
        raise ValueError(f"psfs: expected {n} PSFs (one per field), got {len(psfs)}")
    psfs = [check_psfs(q, 1, b, name=f"psfs[{i}]") for i, q in enumerate(psfs)]
    ph, pw = max(q.shape[0] for q in psfs), max(q.shape[1] for q in psfs)
    out = np.stack([np.asarray(crop_or_pad(q, ph, pw)) for q in psfs])
    return fields, ivar, pos, mask, out


def deblend(model: GalaxyModel, fields, positions, mask=None, *, sigma=None, ivar=None,
            psf=None, config: DeblendConfig = DeblendConfig(), max_sources: int | None = None,
            on_chunk: Callable[[int, DeblendResult], None] | None = None, mesh=None,
            progress: bool = True, point=None) -> DeblendResult:  # fmt: skip
    """Deblend many fields with one compiled, vmapped MAP optimisation per chunk.

    The inputs are checked and converted on the host (:mod:`~galjax.deblend.inputs`):
    non-finite pixels and absurd ones (``|y| sqrt(w) > 1e8``) are masked with a
    warning (status ``MASKED_PIXELS``), and each field and band is solved in noise
    units, ``y' = s y`` and ``w' = w / s^2`` with ``s = ref_b / median(sigma)``
    (``ref_b`` the model's survey sky sigma, else 1); the results come back in the
    caller's units, so scaling fields and sigma together changes nothing but the
    units of the results. A field without a usable pixel is not fitted (status
    ``NO_DATA``); a field whose solve turned non-finite is flagged ``NONFINITE``;
    both get NaN fluxes and chi^2 (:class:`~galjax.deblend.DeblendResult`), and one
    ``RuntimeWarning`` counts them.

    Args:
      model: trained :class:`~galjax.models.GalaxyModel` (e.g. ``load_model(dir)``).
      fields: ``(n_fields, h, w, bands)`` images, ``n_fields >= 1``.
      positions: ``(n_fields, n_max, 2)`` source positions ``(x, y)``, 0-based
        pixels, padded to a static ``n_max`` (0: no sources; the residual is the field).
      mask: ``(n_fields, n_max)`` True (or 1) for real sources (default all).
      sigma: noise std, broadcastable to ``fields`` (per pixel or per band), > 0;
        ``+inf`` marks a masked pixel; or
      ivar: inverse variance, finite and >= 0 (0 = ignore the pixel). Exactly one is
        required.
      psf: ``(ph, pw, bands)`` effective PSF shared by all fields, or
        ``(n_fields, ph, pw, bands)`` one per field (explicit-PSF models only): odd
        sizes, positive sum per band, centroid within 1 pixel of the central pixel.
      config: :class:`~galjax.deblend.DeblendConfig`; with ``debias`` (the default) the model's
        calibrated noise-bias table (``model.meta["flux_bias"]``) is divided out of
        each chunk's fluxes (:func:`~galjax.deblend.debias_fluxes`).
      max_sources: refuse more than this many sources per field.
      on_chunk: called as ``on_chunk(start, result)`` with numpy results after each
        chunk, e.g. to write them so a long run never loses finished fields. With
        several CPU devices chunks finish out of order; the calls come from the
        worker threads, one at a time.
      mesh: optional 1-D ``jax.sharding.Mesh``: each chunk is sharded over it (the
        fields of a chunk then run in step). By default this process's devices are
        used when there are several (under ``jax.distributed`` each process deblends
        the fields it is given): accelerators through such a mesh; CPU devices (see
        :func:`galjax.set_cpu_device_count`) each get a worker thread that solves
        its own chunks, so every field stops on its own. The results are the same.
      progress: tqdm progress bar over chunks.
      point: ``(n_fields, n_max)`` True for sources to model as point sources (stars:
        the PSF times a flux per band at a fitted sub-pixel offset, no prior); needs
        an explicit-PSF model. :func:`~galjax.deblend.point_source_tests` finds them from a first
        run. None: all sources are galaxies.

    Returns:
      :class:`DeblendResult` of numpy arrays with leading axis ``n_fields``; its
      ``status`` holds each field's :class:`~galjax.deblend.DeblendStatus` flags.

    >>> import jax, numpy as np
    >>> from galjax.models import GalaxyModel, VAEConfig, init_vae
    >>> cfg = VAEConfig(stamp_size=15, latent_dim=4, hidden=(16,), enc_channels=(4, 8),
    ...                 dec_channels=(8, 4), dec_start=4)
    >>> model = GalaxyModel(cfg, init_vae(jax.random.key(0), cfg))  # untrained, no prior
    >>> fields = np.zeros((1, 24, 24, 1), np.float32)
    >>> positions = np.array([[[8.0, 8.0], [15.5, 14.0]]])  # (n_fields, n_max, 2)
    >>> res = deblend(model, fields, positions, sigma=1.0, progress=False,
    ...               config=DeblendConfig(n_steps=5, prior_weight=0.0, prior_weight_faint=None))
    >>> res.fluxes.shape  # (n_fields, n_max, bands)
    (1, 2, 1)
    >>> from galjax.deblend import status_text
    >>> status_text(res.status[0])  # 5 steps: the stopping rule has not fired
    'not_converged'
    """
    from tqdm.auto import tqdm

    if not isinstance(config, DeblendConfig):
        raise TypeError(f"config: expected a DeblendConfig, got {type(config).__name__}")
    if model.flow_params is None and config.prior_weight > 0:
        warnings.warn("model has no flow prior: maximum-likelihood fit", stacklevel=2)
    inp = prepare_inputs(model, fields, positions, mask, sigma, ivar, psf, max_sources)
    fields, positions, mask, ivar, psf = inp.fields, inp.positions, inp.mask, inp.ivar, inp.psf
    point = _check_point(model, point, mask)
    n = fields.shape[0]
    n_slots = mask.shape[1]
    if n_slots == 0:  # no source slots: solved on one empty slot, dropped again below
        positions = np.full((n, 1, 2), (fields.shape[2] - 1) / 2.0, np.float32)
        mask = np.zeros((n, 1), bool)
    cpu = jax.default_backend() == "cpu"
    # Several CPU devices: one worker thread per local device, each solving whole
    # chunks. Only this process's devices are used: under jax.distributed every
    # process solves the fields it is given (its share, e.g. galjax.deblend.tiles.share).
    threads = mesh is None and cpu and jax.local_device_count() > 1
    workers = jax.local_devices() if threads else []
    if mesh is None and not workers and jax.local_device_count() > 1:
        mesh = data_mesh(jax.local_devices())
    n_dev = 1 if mesh is None else mesh.devices.size
    chunk = config.chunk or (1 if cpu else 256)
    group = None if mesh is not None else (config.group or (1 if cpu else None))
    chunk = min(chunk, n)
    chunk = -(-chunk // n_dev) * n_dev  # a multiple of the device count
    # The model goes into the compiled solve as a pytree (its configs static). Its
    # metadata is not used there: dropped, so that models differing only in it share
    # one compilation.
    init = model.init_params if config.use_init_encoder else None
    solver = model.replace(init_params=init, meta=None)
    # One compiled solve per structure: the float settings are traced (DeblendHyper).
    static = static_config(config)
    hyper = traced_settings(config, fields.dtype)
    # The model's calibrated noise-bias table, divided out chunk by chunk.
    bias = (model.meta or {}).get("flux_bias") if config.debias else None
    per_field_psf = psf is not None and psf.ndim == 4
    psf_arr = None if psf is None or per_field_psf else jnp.asarray(psf)
    starts = chunk_starts(n, chunk)
    bar = tqdm(total=len(starts), desc="deblending", unit="chunk", disable=not progress)
    report = threading.Lock()  # on_chunk and the bar: one call at a time

    def solve(start, solver, device=None):
        sl = slice(start, min(start + chunk, n))
        m = sl.stop - sl.start
        # Only the chunk's real sources are solved: padded slots cost as much as real ones.
        slots = chunk_slots(mask[sl])
        pos_c, mask_c = take_slots(positions[sl], slots), take_slots(mask[sl], slots)
        arrays = (fields[sl], pos_c, mask_c, ivar[sl]) + ((psf[sl],) if per_field_psf else ())
        if point is not None:
            arrays += (take_slots(point[sl], slots),)
        batch = pad_chunk(arrays, chunk)  # the last chunk padded to the compiled shape
        if mesh is not None:
            batch = shard_batch(batch, mesh)
        elif device is not None:
            batch = jax.device_put(batch, device)
        point_c = batch.pop() if point is not None else None
        if not per_field_psf:
            batch = [*batch, psf_arr if device is None else jax.device_put(psf_arr, device)]
        res = deblend_chunk(solver, *batch, static, group, hyper, point_c)
        res = jax.tree.map(lambda a, m=m: np.asarray(a)[:m], res)
        if bias is not None:  # in noise units: the SNRs stay finite in float32
            res = jax.tree.map(np.asarray, debias_fluxes(res, ivar[sl], bias))
        res = to_caller_units(res, inp.scale[sl], inp.clean[sl])
        res = _restore_slots(res, slots, mask[sl])
        masked = np.where(inp.masked[sl], np.int32(DeblendStatus.MASKED_PIXELS), np.int32(0))
        res = res._replace(status=(res.status | masked).astype(np.int32))
        if n_slots == 0:
            res = res._replace(**{k: getattr(res, k)[:, :0] for k in (*SLOT_FILL, "mask")})
        with report:
            if on_chunk is not None:
                on_chunk(start, res)
            bar.update(1)
        return res

    try:
        if workers:
            outs = _run_workers(solve, starts, solver, workers)
        else:
            outs = [solve(start, solver) for start in starts]
    finally:
        bar.close()
    out = jax.tree.map(lambda *a: np.concatenate(a), *outs)
    _warn_failed(out.status)
    return out


def to_caller_units(res: DeblendResult, scale, clean) -> DeblendResult:
    """A result solved in noise units (``s y``, :mod:`~galjax.deblend.inputs`) back in
    the caller's: models, fluxes, residual and the real sources' amplitudes divided by
    ``s``; failed fields blanked with ``residual = clean`` (numpy).

    Args:
      res: :class:`DeblendResult` of ``m`` fields (numpy).
      scale: ``(m, bands)`` float64 ``s``.
      clean: ``(m, h, w, bands)`` the cleaned fields in the caller's units.
    """
    inv = 1.0 / np.asarray(scale, np.float64)
    dt = res.fluxes.dtype

    def back(a, inv):
        return (np.asarray(a, np.float64) * inv).astype(dt)

    real = np.asarray(res.mask)[..., None]
    out = res._replace(
        models=back(res.models, inv[:, None, None, None, :]),
        fluxes=back(res.fluxes, inv[:, None, :]),
        residual=back(res.residual, inv[:, None, None, :]),
        amplitudes=np.where(real, back(res.amplitudes, inv[:, None, :]), res.amplitudes),
    )
    return jax.tree.map(np.asarray, blank_failed(out, clean))


def _warn_failed(status) -> None:
    """One RuntimeWarning counting the fields flagged NO_DATA or NONFINITE."""
    status = np.asarray(status)
    failed = int(np.sum((status & int(FAILED)) != 0))
    if not failed:
        return
    why = {
        DeblendStatus.NO_DATA: "no_data (no usable pixel)",
        DeblendStatus.NONFINITE: "nonfinite (non-finite objective, parameters or outputs)",
    }
    counts = {t: int(np.sum((status & int(f)) != 0)) for f, t in why.items()}
    counts = ", ".join(f"{c} {t}" for t, c in counts.items() if c)
    warnings.warn(
        f"fields: {failed} of {status.size} field(s) flagged and not fitted, their fluxes and "
        f"chi2 NaN (DeblendResult.status): {counts}",
        RuntimeWarning,
        stacklevel=3,
    )


def _check_point(model: GalaxyModel, point, mask):
    """``point`` as ``(n_fields, n_max)`` bool (None stays None when it has no True)."""
    if point is None:
        return None
    point = np.asarray(point, bool)
    if point.shape != mask.shape:
        raise ValueError(f"point: expected shape {mask.shape} (like mask), got {point.shape}")
    point = point & mask
    if not point.any():
        return None
    vcfg = model.vae_config
    if not vcfg.psf_explicit:
        raise ValueError(
            "point: point sources need a model that draws sources before the PSF "
            "(psf_explicit) and the field's PSF"
        )
    if vcfg.latent_dim < vcfg.bands + 2:
        raise ValueError(
            f"point: point sources keep {vcfg.bands} fluxes and an offset in the latent slots; "
            f"the model's latent_dim {vcfg.latent_dim} < bands + 2"
        )
    return point


def _run_workers(solve, starts, model, devices):
    """``[solve(start, model_on_device, device) for start in starts]`` on worker threads.

    One thread per device pulls the next chunk from a shared queue, so a device that
    finishes early takes more chunks. JAX releases the GIL while a device computes,
    and each CPU device runs its own chunk: ``n`` devices keep ``n`` cores busy even
    though one field's small convolutions gain nothing from several threads. The
    first exception stops the other workers and is raised here.
    """
    todo = iter(enumerate(starts))
    take = threading.Lock()
    outs = [None] * len(starts)
    errors = []

    def work(device):
        local = jax.device_put(model, device)
        while not errors:
            with take:
                item = next(todo, None)
            if item is None:
                return
            i, start = item
            try:
                outs[i] = solve(start, local, device)
            except BaseException as err:  # re-raised in the calling thread
                errors.append(err)

    threads = [threading.Thread(target=work, args=(d,), daemon=True) for d in devices]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except BaseException as err:  # e.g. KeyboardInterrupt: the workers stop after their chunk
        errors.append(err)
        raise
    if errors:
        raise errors[0]
    return outs


def slot_bucket(k: int, n_max: int) -> int:
    """Slots compiled for a chunk whose fields hold at most ``k`` sources.

    ``k`` itself up to 4, then the next power of two (capped at ``n_max``): few
    compiled shapes (one per bucket) however large ``n_max`` is.
    """
    k = max(k, 1)
    return min(k if k <= 4 else 1 << (k - 1).bit_length(), n_max)


def chunk_slots(mask):
    """``(m, k)`` slot indices that move each field's real sources to the front.

    ``k = slot_bucket(max real sources in the chunk)``; a stable sort keeps the
    sources' order. The cost of a field-step grows with the slot count (every slot
    is decoded, shifted and placed), so a chunk of one- and two-source fields runs
    on 1 or 2 slots instead of ``n_max``. Host-side numpy.
    """
    k = slot_bucket(int(mask.sum(axis=1).max(initial=0)), mask.shape[1])
    return np.argsort(~mask, axis=1, kind="stable")[:, :k]


def take_slots(a, slots):
    """``a[f, slots[f]]`` for each field: ``(m, n_max, ...)`` -> ``(m, k, ...)`` (numpy)."""
    return np.take_along_axis(a, slots.reshape(slots.shape + (1,) * (a.ndim - 2)), axis=1)


def put_slots(a, slots, n_max: int, fill=0.0):
    """The inverse of :func:`take_slots`: ``(m, k, ...)`` -> ``(m, n_max, ...)``, ``fill``
    in the slots not taken (numpy)."""
    full = np.full((a.shape[0], n_max) + a.shape[2:], fill, a.dtype)
    np.put_along_axis(full, slots.reshape(slots.shape + (1,) * (a.ndim - 2)), a, axis=1)
    return full


#: The per-source fields of a :class:`DeblendResult` and the value an unused slot holds.
SLOT_FILL = {
    "models": 0.0,
    "latents": 0.0,
    "fluxes": 0.0,
    "amplitudes": 1.0,
    "prior_weights": 0.0,
    "point": False,
}


def _restore_slots(res: DeblendResult, slots, mask) -> DeblendResult:
    """Scatter a chunk's compacted per-source outputs back to the caller's slots.

    Padded slots get what an untrimmed solve gives them: empty models, zero latents
    and fluxes, unit amplitudes (masked sources never move from their zero start).
    """
    if slots.shape[1] == mask.shape[1] and np.all(slots == np.arange(mask.shape[1])):
        return res._replace(mask=mask)
    out = {k: put_slots(getattr(res, k), slots, mask.shape[1], f) for k, f in SLOT_FILL.items()}
    return res._replace(mask=mask, **out)
