"""Out-of-distribution scores for galaxy images from PixelCNN++ likelihoods.

Raw likelihoods of deep generative models are dominated by global properties:
size, brightness, background and overall complexity (Nalisnick et al. 2019;
Serra et al. 2020; Ren et al. 2019). The corrections:

- :mod:`galjax.ood.likelihood`: likelihood ratios of two models per image
  (:func:`llr`) or per pixel (:func:`llr_map`), against an archetype model (Zanisi
  et al. 2021; archetypes from :func:`galjax.fit.fit_sersic`,
  :func:`galjax.fit.render_archetypes`, :func:`galjax.sim.add_background`) or a
  background model trained on perturbed inputs (Ren et al. 2019,
  :func:`perturbed_sampler`).
- :mod:`galjax.ood.complexity`: input complexity (Serra et al. 2020,
  :func:`compressed_bits`, :func:`complexity_score`).

Evaluate with :func:`galjax.scores.metrics.auroc` and draw per-pixel ratios with
:func:`galjax.plot.ood.llr_figure`. Convention: a *score* is larger for *more
anomalous* inputs; ``auroc`` puts the out-of-distribution sample in the positive class.
"""

from galjax.ood import complexity, likelihood
from galjax.ood.complexity import COMPRESSORS, complexity_score, compressed_bits
from galjax.ood.likelihood import llr, llr_map, perturbed_sampler

__all__ = [
    "complexity",
    "likelihood",
    "COMPRESSORS",
    "complexity_score",
    "compressed_bits",
    "llr",
    "llr_map",
    "perturbed_sampler",
]
