"""``galjax deblend IMAGE.fits``: a survey image through the command line, with WCS and
units in the outputs, shards, --resume, two processes under jax.distributed, bad input."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from galjax.cli.main import main
from galjax.sim import LSST_R, simulate_mosaic

SHAPE = (140, 200)
FAST = ["--steps", "40", "--tile", "64", "--overlap", "64", "--quiet"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("survey")
    m = simulate_mosaic(jax.random.key(5), LSST_R, shape=SHAPE, n_galaxies=12, progress=False)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [100.0, 70.0]
    w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    hdr = w.to_header()
    hdr["BUNIT"] = "nJy"
    hdr["MAGZERO"] = 31.0
    fits.PrimaryHDU(m.image[..., 0], hdr).writeto(d / "image.fits")
    fits.PrimaryHDU(m.image[..., 0]).writeto(d / "nowcs.fits")
    fits.PrimaryHDU(m.variance[..., 0]).writeto(d / "var.fits")
    fits.PrimaryHDU(m.variance[:50, :50, 0]).writeto(d / "var_small.fits")
    psf = np.asarray(LSST_R.pixel_psf())[..., 0]
    fits.PrimaryHDU(psf).writeto(d / "psf.fits")
    fits.PrimaryHDU(np.pad(psf, ((0, 1), (0, 1)))).writeto(d / "psf_even.fits")
    (d / "corrupt.fits").write_bytes(b"SIMPLE  = T" + b"\0" * 100)
    return d


def _run(files, out, *extra, image="image.fits"):
    return main(
        [
            "deblend",
            str(files / image),
            "--psf",
            str(files / "psf.fits"),
            "--variance",
            str(files / "var.fits"),
            "--out",
            str(out),
            *FAST,
            *extra,
        ]
    )


def _key(t):
    return np.round(np.stack([np.asarray(t["x"]), np.asarray(t["y"])], -1), 3)


@pytest.fixture(scope="module")
def single(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    assert _run(files, out) == 0
    return out


def test_outputs_carry_wcs_and_units(single):
    t = Table.read(single / "catalog.ecsv")
    assert len(t) > 3
    for col in ("ra", "dec", "flux_r", "flux_err_r", "mag_r", "blend", "flags"):
        assert col in t.colnames
    assert str(t["ra"].unit) == "deg" and str(t["flux_r"].unit) == "nJy"
    w = WCS(fits.getheader(single / "model.fits"))
    ra, dec = w.celestial.pixel_to_world_values(np.asarray(t["x"]), np.asarray(t["y"]))
    np.testing.assert_allclose(np.asarray(t["ra"]), ra)
    np.testing.assert_allclose(np.asarray(t["dec"]), dec)
    for name in ("model.fits", "residual.fits"):
        hdr = fits.getheader(single / name)
        assert hdr["BUNIT"] == "nJy" and fits.getdata(single / name).shape == SHAPE
    assert (single / "summary.png").stat().st_size > 1000


def test_shards_give_the_same_catalogue(files, single, tmp_path, capsys):
    out = tmp_path / "sharded"
    assert _run(files, out, "--shard", "0/2") == 0
    assert not (out / "catalog.ecsv").exists()  # half the tiles: nothing merged yet
    assert "when all are" in capsys.readouterr().out
    assert _run(files, out, "--shard", "1/2") == 0
    a, b = Table.read(single / "catalog.ecsv"), Table.read(out / "catalog.ecsv")
    assert len(a) == len(b)
    np.testing.assert_array_equal(_key(a), _key(b))
    np.testing.assert_allclose(np.asarray(a["flux_r"]), np.asarray(b["flux_r"]), rtol=1e-5)


def test_resume_redoes_only_missing_tiles(files, single, tmp_path, capsys):
    out = tmp_path / "resumed"
    assert _run(files, out) == 0
    tiles = sorted((out / "tiles").glob("tile_*.npz"))
    tiles[1].unlink()
    (out / "catalog.ecsv").unlink()
    capsys.readouterr()
    assert _run(files, out, "--resume") == 0
    text = capsys.readouterr().out
    assert f"resuming: {len(tiles) - 1} of {len(tiles)} tiles" in text
    a, b = Table.read(single / "catalog.ecsv"), Table.read(out / "catalog.ecsv")
    np.testing.assert_array_equal(_key(a), _key(b))
    # a resume with other settings is refused
    assert _run(files, out, "--resume", "--threshold", "3") == 2


def test_image_without_wcs(files, tmp_path, capsys):
    assert _run(files, tmp_path / "o", image="nowcs.fits") == 0
    text = capsys.readouterr().out
    assert text.count("no WCS") == 1
    t = Table.read(tmp_path / "o" / "catalog.ecsv")
    assert "ra" not in t.colnames and len(t) > 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["--variance", "var_small.fits"], "--variance"),
        (["--psf", "psf_even.fits"], "--psf"),
        (["--image", "corrupt.fits"], "IMAGE"),
        (["--image", "missing.fits"], "IMAGE"),
        (["--sigma", "1", "--weight", "var.fits"], "weight"),
        (["--tile", "8"], "--tile"),
        (["--fields", "image.fits"], "--fields"),
    ],
)
def test_bad_input(files, tmp_path, capsys, args, message):
    opts = {"--psf": "psf.fits", "--variance": "var.fits", "--image": "image.fits"}
    extra = []
    it = iter(args)
    for a in it:
        if a in opts:
            opts[a] = next(it)
        elif a in ("--sigma",):
            extra += [a, next(it)]
            opts.pop("--variance", None)
        elif a in ("--weight", "--fields"):
            extra += [a, str(files / next(it))]
        else:
            extra += [a, next(it)]
    cmd = ["deblend", str(files / opts.pop("--image"))]
    for k, v in opts.items():
        cmd += [k, str(files / v)]
    rc = main([*cmd, "--out", str(tmp_path / "o"), "--quiet", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err
    assert "Traceback" not in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(files, single, tmp_path):
    """Two processes under jax.distributed on localhost share the tiles; process 0 merges."""
    out = tmp_path / "dist"
    port = _free_port()
    env = {**os.environ, "GALJAX_CPU_DEVICES": "1", "GALJAX_CACHE_DIR": "off"}
    cmd = [
        sys.executable,
        "-m",
        "galjax.cli.main",
        "deblend",
        str(files / "image.fits"),
        "--psf",
        str(files / "psf.fits"),
        "--variance",
        str(files / "var.fits"),
        "--out",
        str(out),
        *FAST,
        "--coordinator",
        f"localhost:{port}",
        "--num-processes",
        "2",
        "--wait",
        "600",
    ]
    procs = [
        subprocess.Popen(
            [*cmd, "--process-id", str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert "process 0/2" in logs[0] and "process 1/2" in logs[1]
    a, b = Table.read(single / "catalog.ecsv"), Table.read(Path(out) / "catalog.ecsv")
    np.testing.assert_array_equal(_key(a), _key(b))
    np.testing.assert_allclose(np.asarray(a["flux_r"]), np.asarray(b["flux_r"]), rtol=1e-5)


def test_simulate_mosaic_command(tmp_path, capsys):
    assert main(["simulate", "--mosaic", "96", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "galjax deblend" in text
    for name in ("image.fits", "variance.fits", "psf.fits", "truth.ecsv"):
        assert (tmp_path / "demo" / name).is_file()
    hdr = fits.getheader(tmp_path / "demo" / "image.fits")
    assert WCS(hdr).has_celestial and fits.getdata(tmp_path / "demo" / "image.fits").shape == (
        96,
        96,
    )
    rc = main(["simulate", "--mosaic", "96", "--out", str(tmp_path / "x.fits"), "--quiet"])
    assert rc == 2 and "--out" in capsys.readouterr().err


def test_real_hsc_scene_through_the_command(data_dir, tmp_path):
    """A real grizy HSC scene as FITS cubes (image, weights, PSF) with --find-stars."""
    from galjax.io import load_hsc_npz

    s = load_hsc_npz(data_dir / "hsc_blends_scarlet" / "hsc_cosmos_35.npz")
    ok = np.isfinite(s.variance) & (s.mask > 0)
    w = np.where(ok, 1.0 / np.where(ok, s.variance, 1.0), 0.0).astype(np.float32)
    fits.PrimaryHDU(np.moveaxis(s.images, -1, 0)).writeto(tmp_path / "image.fits")
    fits.PrimaryHDU(np.moveaxis(w, -1, 0)).writeto(tmp_path / "weight.fits")
    fits.PrimaryHDU(np.moveaxis(s.psfs, -1, 0)).writeto(tmp_path / "psf.fits")
    out = tmp_path / "out"
    rc = main(["deblend", str(tmp_path / "image.fits"), "--psf", str(tmp_path / "psf.fits"),
               "--weight", str(tmp_path / "weight.fits"), "--model", "hsc", "--find-stars",
               "--steps", "60", "--out", str(out), "--quiet"])  # fmt: skip
    assert rc == 0
    t = Table.read(out / "catalog.ecsv")
    assert len(t) >= 3 and t["point"].any()  # the scene's bright stars
    for band in "grizy":
        assert np.isfinite(np.asarray(t[f"flux_{band}"])).all()
    res = np.moveaxis(fits.getdata(out / "residual.fits"), 0, -1)
    chi2 = (res**2 * w)[w > 0].mean()
    assert chi2 < 0.2 * (s.images**2 * w)[w > 0].mean()  # the model explains the light


def test_tile_larger_than_memory_is_refused(files, tmp_path, capsys, monkeypatch):
    real = os.sysconf

    def small(name):  # a machine with 1 MB of free memory
        return 256 if name == "SC_AVPHYS_PAGES" else real(name)

    monkeypatch.setattr(os, "sysconf", small)
    assert _run(files, tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "--tile:" in err and "smaller --tile" in err
    assert not (tmp_path / "o").exists()


def test_pixel_stack_limit_names_the_option(files, tmp_path, capsys):
    assert _run(files, tmp_path / "o", "--pixstack", "5") == 2
    err = capsys.readouterr().err
    assert "--pixstack:" in err and "--resume" in err


def test_fields_detection_cap_is_reported(files, tmp_path, capsys):
    """The --fields mode detects at most --max-sources peaks per field, and says so."""
    rc = main(["deblend", "--fields", str(files / "image.fits"), "--psf", str(files / "psf.fits"),
               "--variance", str(files / "var.fits"), "--max-sources", "1", "--steps", "5",
               "--out", str(tmp_path / "o"), "--quiet"])  # fmt: skip
    assert rc == 0
    assert "reached --max-sources 1" in capsys.readouterr().err
