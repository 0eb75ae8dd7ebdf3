"""Model architectures (Flax Linen) and their likelihoods as pure functions.

- :mod:`galjax.models.vae`: galaxy VAE with a per-pixel Gaussian likelihood.
- :mod:`galjax.models.flow`: coupling normalizing flow (distrax) as a latent prior.
- :mod:`galjax.models.store`: model directories (config + weights + version).
- :mod:`galjax.models.pixelcnn`: PixelCNN++ likelihoods (a package).
- :mod:`galjax.models.gan`: conditional WGAN-GP networks and losses.
- :mod:`galjax.models.classifier`: CNN/FCN classifiers and the binned-PDF regressor.
- :mod:`galjax.models.masknet`: the contaminant-mask network and its model directories.
"""

from . import classifier, flow, gan, masknet, pixelcnn, store, vae
from .classifier import BinnedPDFRegressor, CNNClassifier, FCNClassifier, predict_pdf, predict_proba
from .flow import FlowConfig, FlowPrior, flow_distribution, init_flow, log_prior, sample_prior
from .store import MODEL_FORMAT, GalaxyModel, default_model_dir, load_model, save_model
from .vae import (
    LSST_CONV,
    REGIER_MLP,
    VAE,
    ElboTerms,
    VAEConfig,
    canonical_conv,
    decode,
    elbo,
    encode,
    gaussian_loglik,
    init_vae,
    kl_normal,
    reconstruct,
    sample,
)

__all__ = [
    "classifier", "flow", "gan", "masknet", "pixelcnn", "store", "vae",
    "BinnedPDFRegressor", "CNNClassifier", "FCNClassifier", "predict_pdf", "predict_proba",
    "MODEL_FORMAT", "GalaxyModel", "default_model_dir", "load_model", "save_model",
    "FlowConfig", "FlowPrior", "flow_distribution", "init_flow", "log_prior", "sample_prior",
    "LSST_CONV", "REGIER_MLP", "VAE", "ElboTerms", "VAEConfig", "canonical_conv", "decode",
    "elbo", "encode",
    "gaussian_loglik", "init_vae", "kl_normal", "reconstruct", "sample",
]  # fmt: skip
