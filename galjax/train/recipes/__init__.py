"""Training recipes, one module per model family.

- :mod:`galjax.train.recipes.galaxy`: the galaxy VAE, its flow prior and the
  initialisation encoder of the deblender (the staged MADNESS schedule).
"""

from galjax.train.recipes.galaxy import (
    encode_dataset,
    make_blend_cutouts,
    make_stamps,
    train_flow,
    train_init_encoder,
    train_vae,
    vae_loss,
)

__all__ = [
    "make_stamps",
    "make_blend_cutouts",
    "vae_loss",
    "train_vae",
    "encode_dataset",
    "train_flow",
    "train_init_encoder",
]
