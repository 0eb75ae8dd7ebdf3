"""Model directories: configuration, weights and format version on disk.

A deblender model directory holds ``model.json`` (format version, galjax
version, the VAE and flow configs, the survey it was trained for, the training
recipe) and ``vae.msgpack``, ``flow.msgpack`` and optionally ``init.msgpack``
(the encoder retrained on blended cutouts, used to initialise the MAP). Files are
written atomically; a directory written by another format version is refused
with a clear message.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import flax.serialization
import jax

from galjax.core.files import atomic_write
from .flow import FlowConfig, init_flow
from .vae import VAEConfig, init_vae

__all__ = ["MODEL_FORMAT", "GalaxyModel", "save_model", "load_model", "default_model_dir"]

#: Version of the on-disk layout; bumped when it changes incompatibly.
MODEL_FORMAT = 1


class GalaxyModel(NamedTuple):
    """A trained VAE + flow prior (+ optional initialisation encoder).

    Attributes:
      vae_config, vae_params: the VAE.
      flow_config, flow_params: the latent prior (None if not trained yet).
      init_params: VAE parameters whose encoder was retrained on blended cutouts
        (None: use ``vae_params``'s encoder).
      meta: free-form metadata (survey, recipe, metrics).
    """

    vae_config: VAEConfig
    vae_params: Any
    flow_config: FlowConfig | None = None
    flow_params: Any = None
    init_params: Any = None
    meta: dict | None = None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("galjax")
    except PackageNotFoundError:
        return "unknown"


def save_model(directory, model: GalaxyModel) -> Path:
    """Write ``model`` to ``directory`` (created if needed); returns the path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = {"vae": model.vae_params, "flow": model.flow_params, "init": model.init_params}
    for name, params in files.items():
        if params is not None:
            data = flax.serialization.to_bytes(jax.device_get(params))
            atomic_write(d / f"{name}.msgpack", lambda tmp, data=data: tmp.write_bytes(data))
    meta = {
        "format": MODEL_FORMAT,
        "galjax_version": _version(),
        "vae_config": model.vae_config.to_dict(),
        "flow_config": None if model.flow_config is None else model.flow_config.to_dict(),
        "files": [f"{k}.msgpack" for k, v in files.items() if v is not None],
        "meta": model.meta or {},
    }
    text = json.dumps(meta, indent=2, default=str)
    atomic_write(d / "model.json", lambda tmp: tmp.write_text(text + "\n"))
    return d


def _read(path: Path, target):
    try:
        return flax.serialization.from_bytes(target, path.read_bytes())
    except FileNotFoundError:
        raise
    except Exception as err:  # msgpack/flax raise several types for corrupt data
        raise ValueError(f"model: cannot read weights {str(path)!r} ({err})") from err


def load_model(directory) -> GalaxyModel:
    """Load a model directory written by :func:`save_model`.

    Raises:
      FileNotFoundError: the directory or ``model.json`` is missing.
      ValueError: another format version, or corrupt/mismatched weights.
    """
    d = Path(directory)
    meta_path = d / "model.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"model: no model.json in {str(d)!r}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"model: {str(meta_path)!r} is not valid JSON ({err})") from err
    if meta.get("format") != MODEL_FORMAT:
        raise ValueError(
            f"model: {str(d)!r} has format {meta.get('format')!r} (galjax "
            f"{meta.get('galjax_version', '?')}); this galjax reads format {MODEL_FORMAT}. "
            "Retrain it with `galjax train` or use a matching galjax version."
        )
    vcfg = VAEConfig.from_dict(meta["vae_config"])
    template = init_vae(jax.random.key(0), vcfg)
    vae_params = _read(d / "vae.msgpack", template)
    fcfg = flow_params = init_params = None
    if meta.get("flow_config") is not None and (d / "flow.msgpack").is_file():
        fcfg = FlowConfig.from_dict(meta["flow_config"])
        flow_params = _read(d / "flow.msgpack", init_flow(jax.random.key(0), fcfg))
    if (d / "init.msgpack").is_file():
        init_params = _read(d / "init.msgpack", template)
    return GalaxyModel(vcfg, vae_params, fcfg, flow_params, init_params, meta.get("meta", {}))


def default_model_dir(survey: str = "lsst_r") -> Path:
    """Folder of the weights shipped inside the package for a built-in survey."""
    path = Path(str(resources.files("galjax") / "weights" / survey))
    if not (path / "model.json").is_file():
        raise FileNotFoundError(
            f"model: galjax ships no weights for {survey!r} (looked in {str(path)!r}); "
            "train them with `galjax train vae` and `galjax train flow`"
        )
    return path
