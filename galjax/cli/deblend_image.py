"""``galjax deblend IMAGE.fits --psf PSF.fits --out DIR``: a survey image, end to end.

The image is read tile by tile from memory-mapped FITS
(:class:`galjax.io.SurveyImage`); each tile is detected and deblended
(:func:`galjax.deblend.survey.deblend_tile`) and written atomically to
``DIR/tiles/tile_XXXXXX.npz`` as soon as it finishes. When every tile is on disk
they are merged into ``catalog.ecsv`` (RA/Dec, fluxes in the image's unit, AB
magnitudes, blend ids, flags), ``model.fits`` and ``residual.fits`` (the input WCS
and BUNIT) and ``summary.png``.

Work is shared by tiles: ``--shard i/N`` takes every N-th tile starting at i (job
arrays); under ``jax.distributed`` (``--distributed``, or ``--coordinator``/
``--num-processes``/``--process-id``) each process takes its share the same way
and process 0 merges once every tile is on disk. ``--resume`` skips finished tiles.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["run_image", "TileStore", "save_tile", "load_tile", "image_settings"]

_FORMAT = "galjax-deblend-tiles-1"
_OPTION_NAMES = {
    "image": "IMAGE",
    "variance": "--variance",
    "weight": "--weight",
    "sigma": "--sigma",
    "mask": "--mask",
    "zeropoint": "--zeropoint",
    "psf": "--psf",
    "hdu": "--hdu",
    "tile": "--tile",
    "overlap": "--overlap",
    "pixstack": "--pixstack",
}


def _as_option(err: Exception) -> Exception:
    """Rename an API error's leading argument name to its command-line option."""
    text = str(err)
    head, sep, rest = text.partition(":")
    base = head.split("[")[0].strip()
    if sep and base in _OPTION_NAMES:
        return type(err)(f"{_OPTION_NAMES[base]}{head[len(base) :]}:{rest}")
    return err


def save_tile(path: Path, result) -> Path:
    """One :class:`~galjax.deblend.survey.TileResult` as an ``.npz``, written atomically."""
    from galjax.core.files import atomic_write

    arrays = {f"src_{k}": np.asarray(v) for k, v in result.sources.items()}
    shapes = np.array([m.shape for m in result.models], np.int64).reshape(-1, 3)
    flat = (
        np.concatenate([m.ravel() for m in result.models])
        if result.models
        else np.zeros(0, np.float32)
    )
    t = result.tile

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(
                f,
                index=t.index,
                core=np.array(t.core),
                read=np.array(t.read),
                boxes=result.boxes,
                model_shapes=shapes,
                model_pixels=flat,
                background=result.background,
                **arrays,
            )

    return atomic_write(path, write)


def load_tile(path: Path):
    """Read a tile written by :func:`save_tile` back as a ``TileResult``."""
    from galjax.deblend.catalog import TileResult
    from galjax.deblend.tiles import Tile

    with np.load(path) as z:
        d = {k: z[k] for k in z.files}
    tile = Tile(int(d["index"]), tuple(int(v) for v in d["core"]), tuple(int(v) for v in d["read"]))
    sizes = np.prod(d["model_shapes"], axis=1) if len(d["model_shapes"]) else np.zeros(0, int)
    ends = np.cumsum(sizes)
    models = [
        d["model_pixels"][e - s : e].reshape(shape)
        for s, e, shape in zip(sizes, ends, d["model_shapes"], strict=True)
    ]
    sources = {k[4:]: v for k, v in d.items() if k.startswith("src_")}
    return TileResult(tile, sources, d["boxes"], models, d["background"])


class TileStore:
    """The finished tiles of one run in ``out/tiles`` (one ``.npz`` per tile).

    ``exclusive`` (one process, no shard): a new run removes the tiles of an
    earlier one; ``--resume`` keeps those of a run with the same manifest. Shared
    runs (shards, several processes) never remove anything: they refuse a folder
    holding another run's tiles.
    """

    def __init__(self, out, manifest: dict, resume: bool, exclusive: bool):
        self.dir = Path(out) / "tiles"
        self.manifest = manifest
        self.resume, self.exclusive = resume, exclusive

    def path(self, index: int) -> Path:
        return self.dir / f"tile_{index:06d}.npz"

    def start(self) -> None:
        """Check or write the manifest; in an exclusive new run remove old tiles."""
        from galjax.core.files import atomic_write, clean_stale_tmp

        mpath = self.dir / "manifest.json"
        old = None
        if mpath.is_file():
            try:
                old = json.loads(mpath.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                old = {}
        same = isinstance(old, dict) and old.get("hash") == self.manifest["hash"]
        if old is not None and not same and (self.resume or not self.exclusive):
            raise ValueError(
                f"--out: {self.dir} holds the tiles of a run with other inputs or settings; "
                "use another --out, or remove it (or run once without --resume/--shard to "
                "start over)"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.exclusive:
            clean_stale_tmp(self.dir)
            if not self.resume:
                for p in self.dir.glob("tile_*.npz"):
                    p.unlink(missing_ok=True)
        text = json.dumps(self.manifest, indent=1, sort_keys=True, default=str) + "\n"
        if not same:
            atomic_write(mpath, lambda tmp: tmp.write_text(text))

    def done(self, index: int) -> bool:
        """A readable tile file exists (a damaged one is removed and redone)."""
        p = self.path(index)
        if not p.is_file():
            return False
        try:
            with np.load(p) as z:
                ok = int(z["index"]) == index
        except Exception as err:  # a damaged zip
            print(f"galjax deblend: warning: {p} is unreadable ({err}); redone", file=sys.stderr)
            ok = False
        if not ok:
            p.unlink(missing_ok=True)
        return ok

    def missing(self, tiles) -> list[int]:
        return [t.index for t in tiles if not self.path(t.index).is_file()]


class _LazyTiles:
    """A sequence of tile results read from disk on access (bounded memory)."""

    def __init__(self, store: TileStore, tiles):
        self.store, self.tiles = store, tiles

    def __len__(self):
        return len(self.tiles)

    def __getitem__(self, i):
        return load_tile(self.store.path(self.tiles[i].index))

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


def image_settings(args) -> dict:
    """The options that change the results of an image run (for the manifest)."""
    keys = (
        "threshold",
        "min_area",
        "deblend_contrast",
        "deblend_levels",
        "border",
        "background_box",
        "pixstack",
        "tile",
        "overlap",
        "steps",
        "prior_weight",
        "prior_weight_faint",
        "no_debias",
        "find_stars",
        "zeropoint",
        "sigma",
        "hdu",
    )
    return {k: getattr(args, k, None) for k in keys}


def _digest(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _check_memory(image, tile: int, overlap: int) -> None:
    """Refuse a tile whose working arrays would not fit in the available memory."""
    side = min(tile + 2 * overlap, max(image.shape))
    need = side * side * image.bands * 48  # data, ivar (f64), background, rms, masks, copies
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if need > 0.5 * avail:
        raise ValueError(
            f"--tile: a {side} x {side} pixel tile with {image.bands} band(s) needs about "
            f"{need / 2**30:.1f} GB, more than half of the {avail / 2**30:.1f} GB available; "
            "use a smaller --tile"
        )


def _check_pixel_scale(model, image) -> None:
    """A note when the image's pixels (from its WCS) differ from the model's by > 10 %."""
    ref = ((model.meta or {}).get("survey") or {}).get("pixel_scale")
    if ref and image.pixel_scale and abs(image.pixel_scale / ref - 1.0) > 0.1:
        print(
            f"galjax deblend: warning: IMAGE has {image.pixel_scale:.3f} arcsec pixels, the "
            f"model was trained on {ref:.3f}; galaxies will look {ref / image.pixel_scale:.2f}x "
            "their size to it (resample the image, or use a model of this survey)",
            file=sys.stderr,
        )


def _distributed(args) -> tuple[int, int]:
    """Start ``jax.distributed`` when asked; ``(process_index, process_count)``."""
    import jax

    if args.coordinator or args.distributed:
        kw = {}
        if args.coordinator:
            if args.num_processes is None or args.process_id is None:
                raise ValueError("--coordinator: also give --num-processes and --process-id")
            kw = dict(
                coordinator_address=args.coordinator,
                num_processes=args.num_processes,
                process_id=args.process_id,
            )
        jax.distributed.initialize(**kw)
    return jax.process_index(), jax.process_count()


def _open(args):
    from galjax.io import open_survey_image

    paths = args.image if len(args.image) > 1 else args.image[0]
    try:
        return open_survey_image(
            paths,
            variance=args.variance,
            weight=args.weight,
            sigma=args.sigma,
            mask=args.mask,
            zeropoint=args.zeropoint,
            hdu=args.hdu,
        )
    except (ValueError, FileNotFoundError) as err:
        raise _as_option(err) from err


def run_image(args, cfg) -> int:
    """The image mode of ``galjax deblend`` (``args.image`` given)."""
    import warnings

    from galjax.deblend.inputs import prepare_psf
    from galjax.deblend.survey import DetectionConfig, deblend_tile, name_bands
    from galjax.deblend.tiles import plan_tiles, share

    from .deblend_chunks import run_manifest
    from .deblend_inputs import load_deblend_model, read_psf

    t0 = time.perf_counter()
    for opt in ("fields", "positions", "demo"):
        if getattr(args, opt, None):
            raise ValueError(f"--{opt.replace('_', '-')}: not used with an IMAGE (survey mode)")
    proc, n_proc = _distributed(args)  # before anything starts JAX's backend
    model, folder = load_deblend_model(args.model)
    image = _open(args)
    if model.vae_config.bands != image.bands:
        raise ValueError(
            f"IMAGE: has {image.bands} band(s), the model {folder} {model.vae_config.bands}"
        )
    image = name_bands(model, image)
    psf = read_psf(args.psf, image.bands) if args.psf else None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            psf = prepare_psf(model, psf, image.bands)
    except ValueError as err:
        raise _as_option(err) from err
    for w in caught:
        print(f"galjax deblend: warning: {_as_option(ValueError(str(w.message)))}", file=sys.stderr)
    if args.find_stars and psf is None:
        raise ValueError(
            "--find-stars: needs a model that draws sources before the PSF (e.g. --model hsc) "
            "and --psf"
        )
    try:
        detection = DetectionConfig(
            threshold=args.threshold,
            min_area=args.min_area,
            deblend_contrast=args.deblend_contrast,
            deblend_levels=args.deblend_levels,
            border=args.border,
            background_box=args.background_box,
            pixstack=args.pixstack,
        )
    except ValueError as err:
        name, _, rest = str(err).partition(":")
        raise ValueError(f"--{name.replace('_', '-')}:{rest}") from err
    try:
        tiles = plan_tiles(image.shape, args.tile, args.overlap)
    except ValueError as err:
        raise _as_option(err) from err
    _check_pixel_scale(model, image)
    _check_memory(image, args.tile, args.overlap)
    shard_i, shard_n = args.shard
    mine = share(share(tiles, shard_i, shard_n), proc, n_proc)
    inputs = [getattr(args, k) for k in ("variance", "weight", "mask", "psf") if getattr(args, k)]
    model_files = sorted(p for p in Path(folder).iterdir() if p.suffix in (".json", ".msgpack"))
    digest = {"files": _digest([*args.image, *inputs, *model_files])}
    manifest = run_manifest(image_settings(args), digest, len(tiles), fmt=_FORMAT)
    out = Path(args.out)
    exclusive = shard_n == 1 and n_proc == 1
    store = TileStore(out, manifest, args.resume, exclusive)
    if image.wcs is None and proc == 0:
        print("galjax deblend: note: IMAGE has no WCS; the catalogue has pixel columns only")
    store.start()
    todo = [t for t in mine if not (args.resume and store.done(t.index))]
    if args.resume and len(todo) < len(mine):
        print(f"resuming: {len(mine) - len(todo)} of {len(mine)} tiles were finished")
    from tqdm.auto import tqdm

    n_src = 0
    for t in tqdm(todo, desc="tiles", unit="tile", disable=args.quiet):
        try:
            r = deblend_tile(
                model, image, t, psf, detection=detection, config=cfg, find_stars=args.find_stars
            )
        except ValueError as err:  # e.g. sep's pixel stack: finished tiles stay for --resume
            raise _as_option(ValueError(f"{err} (tile {t.index}; finished tiles are kept: "
                                        "rerun with --resume)")) from err  # fmt: skip
        save_tile(store.path(t.index), r)
        n_src += len(r.sources["x"])
    who = f"process {proc}/{n_proc}, " if n_proc > 1 else ""
    who += f"shard {shard_i}/{shard_n}, " if shard_n > 1 else ""
    print(f"{who}{len(todo)} tile(s), {n_src} sources in {time.perf_counter() - t0:.1f} s")
    if proc != 0 and n_proc > 1:
        return 0
    if n_proc > 1:  # process 0 merges once the others' tiles are on disk
        deadline = time.monotonic() + args.wait
        while store.missing(tiles) and time.monotonic() < deadline:
            time.sleep(0.5)
    left = store.missing(tiles)
    if left:
        print(
            f"{len(tiles) - len(left)} of {len(tiles)} tiles finished; the catalogue is written "
            "when all are (run the remaining shards, or --resume)"
        )
        return 0
    _merge(out, store, tiles, image, t0, model, psf)
    return 0


def _merge(out: Path, store: TileStore, tiles, image, t0, model, psf) -> None:
    import warnings

    from galjax.deblend.catalog import catalog_table, report_flags, write_images
    from galjax.deblend.survey import psf_mismatch
    from galjax.io import write_table

    light = [_light(store, t) for t in tiles]  # every tile read once, without its images
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        counts = report_flags(light)
    for w in caught:
        print(f"galjax deblend: warning: {w.message}", file=sys.stderr)
    table = catalog_table(image, light)
    msg = psf_mismatch(model, psf, table["hlr"].value, np.asarray(table["det_snr"]))
    if msg:
        print(f"galjax deblend: warning: {_as_option(ValueError(msg))}", file=sys.stderr)
    write_table(out / "catalog.ecsv", table)
    write_images(image, _LazyTiles(store, tiles), out / "model.fits", out / "residual.fits")
    _summary(out, image, table)
    print(
        f"deblended {counts['sources']} sources in {len(tiles)} tile(s) of a "
        f"{image.shape[0]} x {image.shape[1]} image in {time.perf_counter() - t0:.1f} s "
        f"({counts['not_converged']} not converged, {counts['truncated']} truncated)"
    )
    print(f"  outputs: {out}/catalog.ecsv, model.fits, residual.fits, summary.png")


def _light(store: TileStore, tile):
    """A tile result without its model images (for the catalogue)."""
    r = load_tile(store.path(tile.index))
    return r._replace(models=[], background=np.zeros((0, 0, 0), np.float32))


def _summary(out: Path, image, table) -> None:
    """Image, model and residual of the 256 x 256 region with the most sources."""
    from astropy.io import fits

    from galjax.core.files import atomic_write
    from galjax.plot import field_panels

    h, w = image.shape
    s = min(256, h, w)
    if len(table):
        hist, ye, xe = np.histogram2d(
            table["y"], table["x"], bins=(max(h // s, 1), max(w // s, 1)), range=((0, h), (0, w))
        )
        iy, ix = np.unravel_index(np.argmax(hist), hist.shape)
        y0, x0 = min(int(ye[iy]), h - s), min(int(xe[ix]), w - s)
    else:
        y0 = x0 = 0
    with (
        fits.open(out / "residual.fits", memmap=True) as r,
        fits.open(out / "model.fits", memmap=True) as m,
    ):
        res = np.moveaxis(
            np.asarray(r[0].data).reshape(-1, h, w)[:, y0 : y0 + s, x0 : x0 + s], 0, -1
        )
        mod = np.moveaxis(
            np.asarray(m[0].data).reshape(-1, h, w)[:, y0 : y0 + s, x0 : x0 + s], 0, -1
        )
    data = (res + mod).astype(np.float32)
    sel = (table["x"] >= x0) & (table["x"] < x0 + s) & (table["y"] >= y0) & (table["y"] < y0 + s)
    pos = np.stack([np.asarray(table["x"][sel]) - x0, np.asarray(table["y"][sel]) - y0], -1)
    fig = field_panels(data, mod.astype(np.float32), res.astype(np.float32), positions=pos)
    fig.suptitle(
        f"galjax deblend: region y {y0}:{y0 + s}, x {x0}:{x0 + s} ({int(sel.sum())} sources)"
    )
    atomic_write(out / "summary.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def add_image_options(db) -> None:
    """The survey-image options of ``galjax deblend``."""
    from galjax.deblend.tiles import parse_shard

    from .runtime import nonnegative_int, positive_float, positive_int, probability

    db.add_argument(
        "image",
        nargs="*",
        help="survey image: a FITS file (2-D, or a (bands, h, w) cube) or one FITS file per "
        "band, any size (read by tiles); deblends every detected source",
    )
    g = db.add_argument_group("survey image (IMAGE given)")
    g.add_argument("--weight", help="FITS inverse-variance map(s) of IMAGE (0 = bad pixel)")
    g.add_argument("--mask", help="FITS mask of IMAGE: nonzero = bad pixel")
    g.add_argument(
        "--zeropoint",
        type=float,
        default=None,
        help="AB zeropoint of IMAGE (default: MAGZERO/ZP/FLUXMAG0... from its header)",
    )
    g.add_argument(
        "--hdu", default=None, help="HDU index or EXTNAME of IMAGE (default: the first image)"
    )
    g.add_argument(
        "--threshold",
        type=positive_float,
        default=1.5,
        help="detection threshold in sigmas (default 1.5)",
    )
    g.add_argument(
        "--min-area", type=positive_int, default=5, help="minimum pixels above threshold"
    )
    g.add_argument(
        "--deblend-contrast",
        type=probability,
        default=0.005,
        help="flux fraction for a peak to become its own source (default 0.005)",
    )
    g.add_argument("--deblend-levels", type=positive_int, default=32, help="deblending thresholds")
    g.add_argument(
        "--border",
        type=nonnegative_int,
        default=0,
        help="leave sources within this many pixels of the image edge out of the catalogue",
    )
    g.add_argument(
        "--background-box", type=positive_int, default=64, help="background mesh (pixels)"
    )
    g.add_argument(
        "--pixstack",
        type=positive_int,
        default=1_000_000,
        help="sep's pixel stack: pixels above threshold at once (raise it when detection says so)",
    )
    g.add_argument(
        "--tile", type=positive_int, default=1024, help="tile side in pixels (memory bound)"
    )
    g.add_argument(
        "--overlap",
        type=nonnegative_int,
        default=128,
        help="pixels read around each tile: the largest blend solved whole",
    )
    g.add_argument(
        "--shard",
        type=_shard_type(parse_shard),
        default=(0, 1),
        help="i/N: process every N-th tile starting at i (job arrays); the last "
        "shard to finish writes the catalogue",
    )
    g.add_argument(
        "--distributed",
        action="store_true",
        help="jax.distributed.initialize() from the cluster environment (SLURM, ...): "
        "each process takes its share of the tiles, process 0 merges",
    )
    g.add_argument("--coordinator", help="HOST:PORT of process 0 for jax.distributed")
    g.add_argument("--num-processes", type=positive_int, help="processes under --coordinator")
    g.add_argument("--process-id", type=nonnegative_int, help="this process under --coordinator")
    g.add_argument(
        "--wait",
        type=positive_float,
        default=86400.0,
        help="seconds process 0 waits for the other processes' tiles (default 1 day)",
    )


def _shard_type(parse):
    import argparse

    def shard(text):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix("shard: ")) from None

    return shard
