"""Training recipes, one module per model family, each on :func:`galjax.train.fit`.

- :mod:`galjax.train.recipes.galaxy`: the galaxy VAE, its flow prior and the
  initialisation encoder of the deblender (the staged MADNESS schedule).
- :mod:`galjax.train.recipes.pixelcnn`: PixelCNN++ (clipped Adam, exponential decay, EMA).
- :mod:`galjax.train.recipes.gan`: the conditional WGAN-GP, with kept checkpoints.
- :mod:`galjax.train.recipes.classifier`: classifiers and binned-PDF regressors.
- :mod:`galjax.train.recipes.masknet`: the contaminant-mask network on injections.
"""

from galjax.train.recipes import classifier, galaxy, gan, masknet, pixelcnn
from galjax.train.recipes.classifier import train_classifier, train_pdf_regressor
from galjax.train.recipes.galaxy import (
    encode_dataset,
    make_blend_cutouts,
    make_stamps,
    train_flow,
    train_init_encoder,
    train_vae,
    vae_loss,
)
from galjax.train.recipes.gan import (
    checkpoint_path,
    list_checkpoints,
    load_gan_checkpoint,
    save_gan_checkpoint,
    train_gan,
)
from galjax.train.recipes.masknet import make_injection_sampler, train_mask_net
from galjax.train.recipes.pixelcnn import pixelcnn_optimizer, train_pixelcnn

__all__ = [
    "classifier", "galaxy", "gan", "masknet", "pixelcnn",
    "make_stamps", "make_blend_cutouts", "vae_loss", "train_vae", "encode_dataset",
    "train_flow", "train_init_encoder",
    "train_classifier", "train_pdf_regressor",
    "checkpoint_path", "list_checkpoints", "load_gan_checkpoint", "save_gan_checkpoint",
    "train_gan",
    "make_injection_sampler", "train_mask_net",
    "pixelcnn_optimizer", "train_pixelcnn",
]  # fmt: skip
