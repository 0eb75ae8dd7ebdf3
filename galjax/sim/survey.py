"""Survey descriptions and the galaxy population drawn for them.

A :class:`Survey` is a frozen dataclass: pixel scale, bands, PSF, noise,
stamp and field sizes, and the distribution of galaxy magnitudes, sizes,
shapes, colours and detail. :data:`LSST_R` is the built-in default; other
surveys are just other instances (:data:`SURVEYS` lists the built-ins).
:func:`sample_galaxy` draws :class:`~galjax.sim.GalaxyParams` in pixel units.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from .galaxy import GalaxyParams, RenderConfig
from .psf import moffat_psf

__all__ = ["Survey", "LSST_R", "LSST", "HSC", "HST_F814W", "SDSS_R", "SURVEYS", "sample_galaxy"]


@dataclasses.dataclass(frozen=True)
class Survey:
    """An imaging survey and its galaxy population (units in brackets).

    Attributes:
      name: identifier.
      bands: band names; images have ``len(bands)`` channels.
      pixel_scale: [arcsec / pixel].
      psf_fwhm: Moffat PSF FWHM per band [arcsec].
      psf_beta: Moffat index.
      psf_size: PSF stamp side [pixels, odd].
      sky_sigma: sky noise std per band [flux units per pixel].
      zeropoint: AB magnitude of a source of flux 1 [mag], per band. The default
        puts the LSST 10-year r-band 5-sigma point-source depth (27.5) at SNR 5
        with ``sky_sigma = 1``.
      gain: counts per flux unit for the Poisson term (None: sky noise only);
        the default makes the sky variance ``sky_sigma^2`` equal to the Poisson
        variance of a 21.2 mag/arcsec^2 sky, as in the LSST r band.
      stamp_size: side of isolated-galaxy stamps [pixels].
      field_size: side of blended fields [pixels].
      mag_min, mag_max: reference-band magnitude range of the population.
      mag_slope: slope of the number counts ``dN/dm ~ 10^(slope m)``.
      hlr_median: median disk half-light radius at ``mag_ref`` [arcsec].
      hlr_scatter: lognormal scatter of the size [dex].
      hlr_mag_slope: size change per magnitude [dex / mag] (fainter is smaller).
      mag_ref: magnitude where the median size applies.
      colour_scatter: per-band colour scatter [mag].
      colour_slope: mean colour per band step [mag], red bulges add ``bulge_colour``.
      bulge_colour: extra redness of bulges per band step [mag].
      detail: whether clumps and arms are drawn (False: smooth galaxies only).
      n_clumps: static number of clumps per galaxy.
      n_arms: static number of spiral arms.
      render: :class:`~galjax.sim.RenderConfig` used by this survey.
    """

    name: str = "lsst_r"
    bands: tuple[str, ...] = ("r",)
    pixel_scale: float = 0.2
    psf_fwhm: tuple[float, ...] = (0.7,)
    psf_beta: float = 2.5
    psf_size: int = 41
    sky_sigma: tuple[float, ...] = (1.0,)
    zeropoint: tuple[float, ...] = (31.0,)
    gain: float | None = 300.0
    stamp_size: int = 45
    field_size: int = 64
    mag_min: float = 20.0
    mag_max: float = 25.3
    mag_slope: float = 0.3
    hlr_median: float = 0.45
    hlr_scatter: float = 0.18
    hlr_mag_slope: float = 0.06
    mag_ref: float = 23.0
    colour_scatter: float = 0.15
    colour_slope: float = 0.2
    bulge_colour: float = 0.15
    detail: bool = True
    n_clumps: int = 6
    n_arms: int = 2
    render: RenderConfig = RenderConfig()

    def __post_init__(self):
        nb = len(self.bands)
        for name in ("psf_fwhm", "sky_sigma", "zeropoint"):
            val = getattr(self, name)
            if len(val) != nb:
                raise ValueError(f"{name}: expected {nb} values (one per band), got {len(val)}")
        if any(s <= 0 for s in self.sky_sigma):
            raise ValueError(f"sky_sigma: expected positive values, got {self.sky_sigma}")
        if any(f <= 0 for f in self.psf_fwhm) or self.pixel_scale <= 0:
            raise ValueError("psf_fwhm and pixel_scale must be positive")
        if self.psf_size % 2 != 1:
            raise ValueError(f"psf_size: expected an odd number of pixels, got {self.psf_size}")
        if self.gain is not None and self.gain <= 0:
            raise ValueError(f"gain: expected a positive value or None, got {self.gain}")
        if self.mag_max <= self.mag_min:
            raise ValueError(f"mag_max ({self.mag_max}) must exceed mag_min ({self.mag_min})")

    @property
    def n_bands(self) -> int:
        return len(self.bands)

    def psf(self, oversample: int | None = None):
        """Moffat PSF image ``(psf_size * s, psf_size * s, bands)`` for this survey.

        ``oversample=None`` uses ``self.render.oversample`` (the accurate path of
        :func:`~galjax.sim.render`); ``1`` gives the pixel-level PSF.
        """
        s = self.render.oversample if oversample is None else oversample
        fwhm = jnp.asarray(self.psf_fwhm, jnp.float32) / self.pixel_scale
        return moffat_psf(fwhm, self.psf_beta, self.psf_size, oversample=s)

    def pixel_psf(self):
        """The effective PSF at pixel sampling ``(psf_size, psf_size, bands)``, unit sum.

        This is the PSF to give a deblender working at pixel level.
        """
        return self.psf(1)

    def mag_to_flux(self, mag, band: int = 0):
        """Flux for an AB magnitude in a band: ``10^(-0.4 (mag - zeropoint))``."""
        return 10.0 ** (-0.4 * (mag - self.zeropoint[band]))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["render"] = self.render.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Survey:
        d = dict(d)
        if "render" in d:
            d["render"] = RenderConfig.from_dict(d["render"])
        for k in ("bands", "psf_fwhm", "sky_sigma", "zeropoint"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


#: LSST-like r band, 10-year depth (the built-in default): 0.2"/px, Moffat 0.7".
LSST_R = Survey()

#: LSST-like ugrizy.
LSST = Survey(
    name="lsst",
    bands=("u", "g", "r", "i", "z", "y"),
    psf_fwhm=(0.81, 0.77, 0.7, 0.67, 0.65, 0.63),
    sky_sigma=(1.0,) * 6,
    # 10-year 5-sigma depths (26.1, 27.4, 27.5, 26.8, 26.1, 24.9) at SNR 5.
    zeropoint=(29.6, 30.9, 31.0, 30.3, 29.6, 28.4),
)

#: HSC-like grizy coadd, 0.168"/px.
HSC = Survey(
    name="hsc",
    bands=("g", "r", "i", "z", "y"),
    pixel_scale=0.168,
    psf_fwhm=(0.77, 0.76, 0.58, 0.68, 0.68),
    psf_size=41,
    sky_sigma=(1.0,) * 5,
    # HSC Wide 5-sigma depths (26.5, 26.1, 25.9, 25.1, 24.4) at SNR 5.
    zeropoint=(30.25, 29.85, 29.65, 28.85, 28.15),
    field_size=64,
)

#: HST/ACS F814W (COSMOS-like), 0.03"/px.
HST_F814W = Survey(
    name="hst_f814w",
    bands=("F814W",),
    pixel_scale=0.03,
    psf_fwhm=(0.1,),
    psf_beta=3.0,
    psf_size=41,
    sky_sigma=(1.0,),
    zeropoint=(31.2,),
    gain=50.0,
    stamp_size=64,
    field_size=96,
    mag_min=20.0,
    mag_max=25.0,
)

#: SDSS-like r band with the 69x69 stamps of Regier et al.'s VAE talk.
SDSS_R = Survey(
    name="sdss_r",
    pixel_scale=0.396,
    psf_fwhm=(1.4,),
    sky_sigma=(1.0,),
    zeropoint=(25.9,),
    gain=100.0,
    stamp_size=69,
    field_size=96,
    mag_min=15.5,
    mag_max=19.5,
    mag_ref=17.5,
    hlr_median=1.2,
)

SURVEYS = {s.name: s for s in (LSST_R, LSST, HSC, HST_F814W, SDSS_R)}


def _truncated_exp(key, lo, hi, slope):
    # Inverse-CDF sample of p(m) ~ 10^(slope m) on [lo, hi].
    u = jax.random.uniform(key)
    a = slope * jnp.log(10.0)
    return lo + jnp.log1p(u * jnp.expm1(a * (hi - lo))) / a


def sample_galaxy(key, survey: Survey = LSST_R, x=None, y=None, detail: bool | None = None):
    """Draw one galaxy of the survey's population, in pixel units.

    Magnitudes follow ``dN/dm ~ 10^(slope m)`` on ``[mag_min, mag_max]``; sizes
    are lognormal with a magnitude trend; disks are exponential (n = 1, with a
    small scatter) and bulges Sersic n in [2, 5]; bulge fraction is
    Beta-distributed; colours redden with band index (bulges more than disks);
    with ``detail`` a fraction of the disk light goes to clumps and spiral arms.
    Use ``jax.vmap`` over keys for a batch.

    Args:
      key: PRNG key.
      survey: the :class:`Survey`.
      x, y: centre in pixels; defaults to the stamp centre plus a uniform
        sub-pixel offset in [-0.5, 0.5).
      detail: override ``survey.detail``.

    Returns:
      :class:`GalaxyParams` for one galaxy.
    """
    detail = survey.detail if detail is None else detail
    ks = jax.random.split(key, 20)
    nb = survey.n_bands
    u = lambda k, lo, hi: jax.random.uniform(k, minval=lo, maxval=hi)
    mag = _truncated_exp(ks[0], survey.mag_min, survey.mag_max, survey.mag_slope)
    ref = min(2, nb - 1) if nb > 1 else 0
    flux_ref = survey.mag_to_flux(mag, ref)
    log_hlr = (
        jnp.log10(survey.hlr_median)
        - survey.hlr_mag_slope * (mag - survey.mag_ref)
        + survey.hlr_scatter * jax.random.normal(ks[1])
    )
    hlr_pix = jnp.clip(10.0**log_hlr / survey.pixel_scale, 0.6, 0.22 * survey.stamp_size)
    # Per-band fluxes: colour relative to the reference band, redder bulges.
    # Default float dtype like the random draws (float64 under x64: no mixed promotion).
    steps = jnp.arange(nb, dtype=float) - ref
    zp = jnp.asarray(survey.zeropoint, float)
    colour = survey.colour_slope * steps + survey.colour_scatter * jax.random.normal(ks[2], (nb,))
    colour = colour - colour[ref]
    flux = flux_ref * 10.0 ** (-0.4 * (colour - (zp - zp[ref])))
    bt = jax.random.beta(ks[3], 1.2, 4.0)
    redden = 10.0 ** (0.4 * survey.bulge_colour * steps)
    bulge_frac = jnp.clip(bt * redden / (bt * redden + (1.0 - bt)), 0.0, 0.95)
    e_disk = jax.random.uniform(ks[4], minval=0.0, maxval=0.6) * jnp.array(
        [jnp.cos(a := u(ks[5], 0.0, 2 * jnp.pi)), jnp.sin(a)]
    )
    e_bulge = 0.4 * e_disk + 0.05 * jax.random.normal(ks[6], (2,))
    nc = survey.n_clumps
    clump_frac = (
        jnp.full((nb,), u(ks[7], 0.05, 0.25)) * (1.0 - bulge_frac) * (0.85**steps)
        if detail
        else jnp.zeros((nb,))
    )
    radius = jnp.sqrt(jax.random.uniform(ks[8], (nc,), minval=0.05, maxval=1.0)) * 1.6
    theta = jax.random.uniform(ks[9], (nc,), minval=0.0, maxval=2 * jnp.pi)
    clump_uv = jnp.stack([radius * jnp.cos(theta), radius * jnp.sin(theta)], axis=-1)
    weights = jax.random.dirichlet(ks[10], jnp.ones((nc,)))
    stamp_c = (survey.stamp_size - 1) / 2.0
    x = stamp_c + u(ks[11], -0.5, 0.5) if x is None else x
    y = stamp_c + u(ks[12], -0.5, 0.5) if y is None else y
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    return GalaxyParams(
        x=f32(x),
        y=f32(y),
        flux=flux.astype(jnp.float32),
        bulge_frac=bulge_frac.astype(jnp.float32),
        clump_frac=clump_frac.astype(jnp.float32),
        disk_hlr=f32(hlr_pix),
        disk_n=f32(jnp.clip(1.0 + 0.15 * jax.random.normal(ks[13]), 0.6, 1.6)),
        disk_e1=f32(e_disk[0]),
        disk_e2=f32(e_disk[1]),
        bulge_hlr=f32(jnp.maximum(hlr_pix * u(ks[14], 0.2, 0.5), 0.3)),
        bulge_n=f32(u(ks[15], 2.0, 5.0)),
        bulge_e1=f32(e_bulge[0]),
        bulge_e2=f32(e_bulge[1]),
        clump_uv=clump_uv.astype(jnp.float32),
        clump_sigma=(jnp.maximum(0.08 * hlr_pix, 0.35) * u(ks[16], 0.7, 1.4) * jnp.ones(nc)).astype(
            jnp.float32
        ),
        clump_weight=weights.astype(jnp.float32),
        arm_amp=f32((u(ks[17], 0.3, 0.8) if detail else 0.0) * (1.0 - bt)),
        arm_pitch=f32(u(ks[18], 0.2, 0.5)),
        arm_phase=f32(u(ks[19], 0.0, 2 * jnp.pi)),
    )
