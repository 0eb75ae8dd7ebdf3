"""Model directories: configuration, weights and format version on disk.

A deblender model directory holds ``model.json`` (format version, galjax
version, the VAE and flow configs, the survey it was trained for, the training
recipe) and ``vae.msgpack``, ``flow.msgpack`` and optionally ``init.msgpack``
(the encoder retrained on blended cutouts, used to initialise the MAP). Files are
written atomically; a directory written by another format version is refused
with a clear message.
"""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np

from galjax.core.files import atomic_write, clean_stale_tmp

from .flow import FlowConfig, init_flow
from .vae import VAEConfig, init_vae

__all__ = ["MODEL_FORMAT", "GalaxyModel", "save_model", "load_model", "default_model_dir"]

#: Version of the on-disk layout; bumped when it changes incompatibly.
MODEL_FORMAT = 1


@dataclasses.dataclass(frozen=True, eq=False)
class GalaxyModel:
    """A trained VAE + flow prior (+ optional initialisation encoder), as a pytree.

    The parameters are the pytree's children; the configs and the metadata are
    static (part of its tree structure), so a model passes as it is into jitted
    code: ``jax.jit(f)(model, ...)`` compiles once per model structure and array
    shapes, and ``f`` reads ``model.vae_config`` as a Python value.

    Attributes:
      vae_config: :class:`~galjax.models.VAEConfig` (static).
      vae_params: the VAE's parameters.
      flow_config: :class:`~galjax.models.FlowConfig` of the latent prior (static;
        None if not trained yet).
      flow_params: the flow's parameters (or None).
      init_params: VAE parameters whose encoder was retrained on blended cutouts
        (None: use ``vae_params``'s encoder).
      meta: free-form JSON-like metadata (survey, recipe, calibration; static,
        compared by content).

    >>> import jax
    >>> from galjax.models import VAEConfig, init_vae
    >>> cfg = VAEConfig(stamp_size=15, latent_dim=4, hidden=(8,), enc_channels=(4,),
    ...                 dec_channels=(4,), dec_start=8)
    >>> model = GalaxyModel(cfg, init_vae(jax.random.key(0), cfg))
    >>> leaves, tree = jax.tree.flatten(model)
    >>> jax.tree.unflatten(tree, leaves).vae_config == cfg
    True
    """

    vae_config: VAEConfig
    vae_params: Any
    flow_config: FlowConfig | None = None
    flow_params: Any = None
    init_params: Any = None
    meta: dict | None = None

    def replace(self, **changes) -> GalaxyModel:
        """A copy with the given attributes changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    # The name the NamedTuple it was before offered, kept for existing callers.
    _replace = replace


class _StaticMeta:
    """``meta`` in a model's tree structure: compared and hashed by content (JAX caches
    compilations on the structure, and a dict is not hashable)."""

    __slots__ = ("value", "_key")

    def __init__(self, value):
        self.value = value
        # Canonical JSON: equal metadata give equal keys (arrays by their values).
        self._key = json.dumps(value, sort_keys=True, default=_json_default)

    def __eq__(self, other):
        return isinstance(other, _StaticMeta) and self._key == other._key

    def __hash__(self):
        return hash(self._key)


def _json_default(x):
    return x.tolist() if hasattr(x, "tolist") else repr(x)


_CHILDREN = ("vae_params", "flow_params", "init_params")


def _flatten_with_keys(m: GalaxyModel):
    children = tuple((jax.tree_util.GetAttrKey(k), getattr(m, k)) for k in _CHILDREN)
    return children, (m.vae_config, m.flow_config, _StaticMeta(m.meta))


def _flatten(m: GalaxyModel):
    return tuple(getattr(m, k) for k in _CHILDREN), (m.vae_config, m.flow_config,
                                                     _StaticMeta(m.meta))  # fmt: skip


def _unflatten(aux, children) -> GalaxyModel:
    vae_config, flow_config, meta = aux
    vae_params, flow_params, init_params = children
    return GalaxyModel(vae_config, vae_params, flow_config, flow_params, init_params, meta.value)


jax.tree_util.register_pytree_with_keys(GalaxyModel, _flatten_with_keys, _unflatten, _flatten)


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
    clean_stale_tmp(d)  # left by a save that was killed mid-write
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


def _read(path: Path, target, meta_path: Path, key: str, summary: str):
    """Weights in ``path`` restored into ``target`` (a tree of shapes from model.json's
    ``key``), their leaf shapes checked: flax restores values without comparing shapes."""
    if not path.is_file():
        raise FileNotFoundError(f"model: {str(path)!r} is missing (model.json lists {key})")
    try:
        params = flax.serialization.from_bytes(target, path.read_bytes())
    except Exception as err:  # msgpack/flax raise several types for corrupt data
        raise ValueError(
            f"model: cannot read weights {str(path)!r} with the {key!r} of {meta_path} "
            f"({summary}): {err}"
        ) from err
    want = jax.tree_util.tree_flatten_with_path(target)[0]
    got = jax.tree.leaves(params)
    for (where, t), leaf in zip(want, got, strict=True):
        if tuple(t.shape) != tuple(np.shape(leaf)):
            raise ValueError(
                f"model: {meta_path}: {key!r} ({summary}) does not match the weights in "
                f"{path.name}: {jax.tree_util.keystr(where)} has shape "
                f"{tuple(np.shape(leaf))} in the file, {tuple(t.shape)} by {key!r}"
            )
    return params


def _config(meta: dict, meta_path: Path, key: str, cls):
    """``cls.from_dict(meta[key])`` with a message naming model.json's key on failure."""
    if key not in meta:
        raise ValueError(f"model: {meta_path}: no {key!r} entry")
    try:
        if not isinstance(meta[key], dict):
            raise TypeError(f"expected a JSON object, got {type(meta[key]).__name__}")
        return cls.from_dict(meta[key])
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"model: {meta_path}: {key!r} is malformed ({err})") from err


def load_model(directory) -> GalaxyModel:
    """Load a model directory written by :func:`save_model`.

    The weights are checked against the configurations in ``model.json``: a leaf
    whose shape differs (weights of another ``latent_dim``, say) is refused here,
    not deep inside a later compiled call.

    Raises:
      FileNotFoundError: the directory, ``model.json`` or ``vae.msgpack`` is missing.
      ValueError: another format version; ``vae_config``/``flow_config`` missing or
        malformed; ``flow_config`` set but ``flow.msgpack`` missing; corrupt weights,
        or weights whose shapes disagree with ``model.json``.
    """
    d = Path(directory)
    meta_path = d / "model.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"model: no model.json in {str(d)!r}")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"model: {str(meta_path)!r} is not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise ValueError(f"model: {str(meta_path)!r} does not hold a JSON object")
    if meta.get("format") != MODEL_FORMAT:
        raise ValueError(
            f"model: {str(d)!r} has format {meta.get('format')!r} (galjax "
            f"{meta.get('galjax_version', '?')}); this galjax reads format {MODEL_FORMAT}. "
            "Retrain it with `galjax train` or use a matching galjax version."
        )
    vcfg = _config(meta, meta_path, "vae_config", VAEConfig)
    # The parameter trees' structure only (no values are computed): the weights come
    # from the files, and an eager initialisation would cost seconds per model.
    template = jax.eval_shape(lambda k: init_vae(k, vcfg), jax.random.key(0))
    vsum = f"latent_dim={vcfg.latent_dim}, stamp_size={vcfg.stamp_size}, arch={vcfg.arch!r}"
    vae_params = _read(d / "vae.msgpack", template, meta_path, "vae_config", vsum)
    fcfg = flow_params = init_params = None
    if meta.get("flow_config") is not None:
        fcfg = _config(meta, meta_path, "flow_config", FlowConfig)
        if not (d / "flow.msgpack").is_file():
            raise ValueError(
                f"model: {meta_path}: 'flow_config' is set but {d / 'flow.msgpack'} is missing; "
                "restore the file (or retrain the prior with `galjax train flow`)"
            )
        if fcfg.dim != vcfg.latent_dim:
            raise ValueError(
                f"model: {meta_path}: 'flow_config' dim={fcfg.dim} differs from "
                f"'vae_config' latent_dim={vcfg.latent_dim}"
            )
        flow_template = jax.eval_shape(lambda k: init_flow(k, fcfg), jax.random.key(0))
        fsum = f"dim={fcfg.dim}, n_layers={fcfg.n_layers}"
        flow_params = _read(d / "flow.msgpack", flow_template, meta_path, "flow_config", fsum)
    if (d / "init.msgpack").is_file():
        init_params = _read(d / "init.msgpack", template, meta_path, "vae_config", vsum)
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
