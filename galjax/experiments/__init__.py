"""Studies that combine every layer below (data, models, training, scores), one module each.

- :mod:`galjax.experiments.radio`: the radio-galaxy WGAN study of Rustige et al.
  (2023): checkpoint scoring and selection, augmented classifiers over k folds,
  best-matching pairs, the smearing study.
"""

from galjax.experiments import radio
from galjax.experiments.radio import *  # noqa: F403
from galjax.experiments.radio import __all__ as _radio_all

__all__ = ["radio", *_radio_all]
