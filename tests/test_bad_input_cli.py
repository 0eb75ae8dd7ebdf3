"""Bad input on the command line: every case ends in ``galjax <cmd>: error: ...`` (or an
``argparse`` option error) with exit status 2, no traceback, and no output folder.

Table-driven (brief "Testing style"): each case is ``(id, argv, fragment)``; the argv
holds ``{placeholders}`` for the files of the module fixture ``env``. Deblending runs
use a tiny untrained model, 24x24 fields and ``--steps 5``. The resume, stale-chunk and
atomic-file tests follow the table.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest
from astropy.table import Table

from galjax.cli import main
from galjax.io import write_fits, write_table
from galjax.models import FlowConfig, GalaxyModel, VAEConfig, init_flow, init_vae, save_model

CFG = VAEConfig(stamp_size=15, latent_dim=4, hidden=(16,), enc_channels=(4, 8),
                dec_channels=(8, 4), dec_start=4)  # fmt: skip
FLOW = FlowConfig(dim=4, n_layers=2, hidden=(8,))
H = 24


def _gauss_psf(size=11, dx=0.0):
    yy, xx = np.mgrid[:size, :size] - size // 2
    p = np.exp(-((xx - dx) ** 2 + yy**2) / (2 * 1.5**2))
    return (p / p.sum())[..., None].astype(np.float32)


def _model_variant(root, name, edit=None, drop=None):
    """A copy of the tiny model folder with model.json edited or a file removed."""
    d = root / name
    shutil.copytree(root / "model", d)
    if drop:
        (d / drop).unlink()
    if edit:
        meta = json.loads((d / "model.json").read_text())
        edit(meta)
        (d / "model.json").write_text(json.dumps(meta))
    return d


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input_cli")
    k = jax.random.key(0)
    meta = {"survey": {"bands": ["r"]}}
    save_model(
        root / "model", GalaxyModel(CFG, init_vae(k, CFG), FLOW, init_flow(k, FLOW), meta=meta)
    )
    import dataclasses

    xcfg = dataclasses.replace(CFG, psf_explicit=True)
    save_model(root / "explicit", GalaxyModel(xcfg, init_vae(k, xcfg), meta=meta))
    _model_variant(root, "no_vae_config", edit=lambda m: m.pop("vae_config"))
    _model_variant(root, "bad_vae_config", edit=lambda m: m["vae_config"].update(bogus=1))
    _model_variant(root, "list_vae_config", edit=lambda m: m.update(vae_config=[1, 2]))
    _model_variant(root, "no_flow", drop="flow.msgpack")
    _model_variant(root, "no_vae", drop="vae.msgpack")

    def latent(m):
        m["vae_config"]["latent_dim"] = 6
        m["flow_config"]["dim"] = 6

    _model_variant(root, "latent", edit=latent)
    _model_variant(root, "flow_hidden", edit=lambda m: m["flow_config"].update(hidden=[16]))
    _model_variant(root, "format", edit=lambda m: m.update(format=99))
    (_model_variant(root, "badjson") / "model.json").write_text("{not json")

    rng = np.random.default_rng(0)
    fields = rng.normal(size=(2, H, H, 1)).astype(np.float32)
    write_fits(root / "fields.fits", fields)
    write_fits(root / "fields2b.fits", rng.normal(size=(2, H, H, 2)).astype(np.float32))
    write_fits(root / "nan.fits", np.full((2, H, H, 1), np.nan, np.float32))
    write_fits(root / "var_zero.fits", np.zeros((2, H, H, 1), np.float32))
    write_fits(root / "var_neg.fits", -np.ones((2, H, H, 1), np.float32))
    write_fits(root / "var_nan.fits", np.full((2, H, H, 1), np.nan, np.float32))
    write_fits(root / "var_shape.fits", np.ones((1, H, H, 1), np.float32))
    write_fits(root / "psf.fits", _gauss_psf())
    write_fits(root / "psf_even.fits", np.ones((10, 10, 1), np.float32) / 100)
    write_fits(root / "psf_off.fits", _gauss_psf(15, dx=5.0))
    write_fits(root / "psf_2b.fits", np.concatenate([_gauss_psf()] * 3, axis=-1))
    good = {"field": [0, 0, 1], "x": [5.0, 15.2, 12.0], "y": [6.0, 17.1, 11.5]}
    tables = {
        "pos": good,
        "pos_text": {**good, "x": ["5.0", "abc", "12"]},
        "pos_ftext": {**good, "field": ["a", "0", "1"]},
        "pos_float_field": {**good, "field": [0.0, 2.5, 1.0]},
        "pos_nan": {**good, "y": [6.0, np.nan, 11.5]},
        "pos_inf": {**good, "x": [5.0, np.inf, 12.0]},
        "pos_range": {**good, "field": [0, 0, 2]},
        "pos_negfield": {**good, "field": [0, -1, 1]},
        "pos_noy": {"field": good["field"], "x": good["x"]},
        "pos_many": {"field": [0] * 5, "x": [3.0, 6, 9, 12, 15], "y": [3.0, 6, 9, 12, 15]},
        "pos_point": {**good, "point": ["yes", "no", "no"]},
    }
    for name, cols in tables.items():
        write_table(root / f"{name}.ecsv", Table(cols))
    stamps = root / "stamps.fits"
    write_fits(stamps, rng.normal(size=(4, 20, 20, 1)).astype(np.float32))

    from galjax.models.masknet import MaskNet, save_mask_model

    net = MaskNet(features=2, dilations=(1, 2))
    save_mask_model(root / "mask", net, net.init(k, np.zeros((1, 8, 8, 1)))["params"], [0.5] * 5)
    img = rng.normal(100.0, 5.0, (40, 36, 1)).astype(np.float32)
    write_fits(root / "img.fits", img)
    img[3, 4, 0], img[10, 20, 0], img[30, 2, 0] = np.nan, np.inf, -np.inf
    write_fits(root / "img_nan.fits", img)
    paths = {p.stem if p.is_file() else p.name: str(p) for p in root.iterdir()}
    return {**paths, "root": root}


def run(argv):
    """``main(argv)``'s exit status, ``argparse``'s SystemExit included."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


D = ["deblend", "--fields", "{fields}", "--model", "{model}", "--steps", "5", "--quiet",
     "--out", "{out}"]  # fmt: skip
DP = [*D, "--positions", "{pos}"]
DPS = [*DP, "--sigma", "1"]
TRAIN = ["train", "vae", "--out", "{out}", "--stamps", "{stamps}", "--quiet"]
MASK = ["mask", "{img}", "--out", "{out}/m.fits", "--model", "{mask}"]
SIM = ["simulate", "--quiet", "--out", "{out}/f.fits"]
GAN = ["gan", "train", "--data", "{root}/nothing.npz", "--out", "{out}"]

CASES = [
    # deblend: the noise
    ("sigma-nan", [*DP, "--sigma", "nan"], "argument --sigma: expected a finite number"),
    ("sigma-inf", [*DP, "--sigma", "inf"], "argument --sigma: expected a finite number"),
    ("sigma-zero", [*DP, "--sigma", "0"], "argument --sigma: expected a finite number > 0"),
    ("sigma-negative", [*DP, "--sigma", "-2"], "argument --sigma"),
    ("sigma-text", [*DP, "--sigma", "abc"], "argument --sigma: expected a number"),
    ("sigma-and-variance", [*DPS, "--variance", "{var_zero}"], "not allowed with argument"),
    ("no-noise", DP, "--sigma/--variance: give the noise"),
    ("variance-zeros", [*DP, "--variance", "{var_zero}"], "--variance: no pixel has a positive"),
    ("variance-negative", [*DP, "--variance", "{var_neg}"], "--variance: no pixel has a positive"),
    ("variance-nan", [*DP, "--variance", "{var_nan}"], "--variance: no pixel has a positive"),
    ("variance-shape", [*DP, "--variance", "{var_shape}"], "--variance: shape"),
    ("variance-missing", [*DP, "--variance", "{root}/nope.fits"], "--variance: no such file"),
    # deblend: option combinations
    (
        "demo-with-fields",
        ["deblend", "--demo", "--fields", "{fields}", "--out", "{out}"],
        "--demo: simulates its own fields",
    ),  # fmt: skip
    ("demo-with-sigma", ["deblend", "--demo", "--sigma", "1", "--out", "{out}"], "--demo"),
    ("demo-with-psf", ["deblend", "--demo", "--psf", "{psf}", "--out", "{out}"], "--psf"),
    ("demo-n-zero", ["deblend", "--demo", "--n", "0", "--out", "{out}"], "argument --n"),
    ("no-fields", ["deblend", "--sigma", "1", "--out", "{out}"], "--fields: give a survey IMAGE"),
    ("fields-missing", [*DPS[:2], "{root}/nope.fits", *DPS[3:]], "--fields: no such file"),
    ("fields-all-nan", [*DPS[:2], "{nan}", *DPS[3:]], "--fields: no field has a usable pixel"),
    ("fields-bands", [*DPS[:2], "{fields2b}", *DPS[3:]], "--fields: "),
    ("resume-find-stars", [*DPS, "--resume", "--find-stars"], "--resume: not available"),
    ("steps-zero", [*DPS, "--steps", "0"], "argument --steps: expected a positive integer"),
    ("max-sources-zero", [*DPS, "--max-sources", "0"], "argument --max-sources"),
    ("chunk-negative", [*DPS, "--chunk", "-1"], "argument --chunk"),
    ("prior-weight-nan", [*DPS, "--prior-weight", "nan"], "argument --prior-weight"),
    ("prior-weight-negative", [*DPS, "--prior-weight", "-1"], "argument --prior-weight"),
    ("prior-weight-faint-inf", [*DPS, "--prior-weight-faint", "inf"], "--prior-weight-faint"),
    # deblend: the positions table
    (
        "positions-text-x",
        [*D, "--sigma", "1", "--positions", "{pos_text}"],
        "--positions: column 'x'",
    ),  # fmt: skip
    (
        "positions-text-field",
        [*D, "--sigma", "1", "--positions", "{pos_ftext}"],
        "--positions: column 'field'",
    ),  # fmt: skip
    (
        "positions-float-field",
        [*D, "--sigma", "1", "--positions", "{pos_float_field}"],
        "whole field indices, got 2.5",
    ),  # fmt: skip
    (
        "positions-nan",
        [*D, "--sigma", "1", "--positions", "{pos_nan}"],
        "--positions: column 'y' of",
    ),  # fmt: skip
    ("positions-inf", [*D, "--sigma", "1", "--positions", "{pos_inf}"], "non-finite value"),
    (
        "positions-field-range",
        [*D, "--sigma", "1", "--positions", "{pos_range}"],
        "indices must be in [0, 1]",
    ),  # fmt: skip
    (
        "positions-field-negative",
        [*D, "--sigma", "1", "--positions", "{pos_negfield}"],
        "indices must be in",
    ),  # fmt: skip
    ("positions-no-y", [*D, "--sigma", "1", "--positions", "{pos_noy}"], "no column 'y'"),
    ("positions-too-many", [*D, "--sigma", "1", "--positions", "{pos_many}"], "--max-sources=4"),
    (
        "positions-point-text",
        [*D, "--sigma", "1", "--positions", "{pos_point}"],
        "column 'point'",
    ),  # fmt: skip
    (
        "positions-missing",
        [*D, "--sigma", "1", "--positions", "{root}/nope.ecsv"],
        "--positions: no such file",
    ),  # fmt: skip
    # deblend: the PSF
    ("detect-needs-psf", [*D, "--sigma", "1"], "--psf: detection (no --positions) needs the PSF"),
    ("explicit-model-no-psf", [*DPS[:4], "{explicit}", *DPS[5:]], "--psf: the model"),  # fmt: skip
    ("psf-even", [*DPS, "--psf", "{psf_even}"], "--psf: expected odd sizes"),
    ("psf-off-centre", [*DPS, "--psf", "{psf_off}"], "--psf: centroid"),
    ("psf-bands", [*DPS, "--psf", "{psf_2b}"], "--psf: "),
    ("find-stars-no-explicit", [*DPS, "--psf", "{psf}", "--find-stars"], "--find-stars"),
    # deblend: model folders
    ("model-missing", [*DPS[:4], "{root}/nope", *DPS[5:]], "--model: no model folder"),
    ("model-unknown-name", [*DPS[:4], "nope_r", *DPS[5:]], "galjax ships no model of that"),
    ("model-no-vae-config", [*DPS[:4], "{no_vae_config}", *DPS[5:]], "no 'vae_config' entry"),
    (
        "model-bad-vae-config",
        [*DPS[:4], "{bad_vae_config}", *DPS[5:]],
        "'vae_config' is malformed",
    ),  # fmt: skip
    (
        "model-list-vae-config",
        [*DPS[:4], "{list_vae_config}", *DPS[5:]],
        "'vae_config' is malformed",
    ),  # fmt: skip
    ("model-no-flow-weights", [*DPS[:4], "{no_flow}", *DPS[5:]], "flow.msgpack is missing"),
    ("model-no-vae-weights", [*DPS[:4], "{no_vae}", *DPS[5:]], "--model: "),
    ("model-latent-dim", [*DPS[:4], "{latent}", *DPS[5:]], "latent_dim=6"),
    ("model-flow-hidden", [*DPS[:4], "{flow_hidden}", *DPS[5:]], "'flow_config'"),
    ("model-format", [*DPS[:4], "{format}", *DPS[5:]], "has format 99"),
    ("model-bad-json", [*DPS[:4], "{badjson}", *DPS[5:]], "not valid JSON"),
    # train
    (
        "train-n-stamps-zero",
        ["train", "vae", "--out", "{out}", "--n-stamps", "0"],
        "argument --n-stamps: expected a positive integer",
    ),  # fmt: skip
    ("train-steps-zero", [*TRAIN, "--steps", "0"], "argument --steps"),
    ("train-batch-negative", [*TRAIN, "--batch", "-4"], "argument --batch"),
    ("train-lr-nan", [*TRAIN, "--lr", "nan"], "argument --lr"),
    ("train-lr-zero", [*TRAIN, "--lr", "0"], "argument --lr"),
    ("train-checkpoint-every-zero", [*TRAIN, "--checkpoint-every", "0"], "--checkpoint-every"),
    ("train-latent-dim-zero", [*TRAIN, "--latent-dim", "0"], "argument --latent-dim"),
    ("train-posterior-samples", [*TRAIN, "--posterior-samples", "-1"], "--posterior-samples"),
    ("train-survey", [*TRAIN, "--survey", "nope"], "galjax train: error: --survey: unknown"),
    ("train-survey-set", [*TRAIN, "--survey-set", "nope=1"], "galjax train: error: --survey-set"),
    ("train-stamps-shape", TRAIN, "galjax train: error: --stamps: expected (n, 45, 45, 1)"),
    (
        "train-flow-no-model",
        ["train", "flow", "--out", "{root}/nope", "--quiet"],
        "galjax train: error: model: no model.json",
    ),  # fmt: skip
    # mask
    ("mask-tile-zero", [*MASK, "--tile", "0"], "argument --tile: expected a positive integer"),
    ("mask-tile-negative", [*MASK, "--tile", "-5"], "argument --tile"),
    ("mask-tile-small", [*MASK, "--tile", "4"], "galjax mask: error: --tile: expected more"),
    ("mask-threshold-nan", [*MASK, "--threshold", "nan"], "argument --threshold"),
    ("mask-threshold-above-one", [*MASK, "--threshold", "1.5"], "argument --threshold"),
    ("mask-threshold-count", [*MASK, "--threshold", "0.5", "0.5"], "--threshold: expected 1 or 5"),
    ("mask-band", [*MASK, "--band", "3"], "galjax mask: error: --band: 3 out of range"),
    (
        "mask-image-missing",
        ["mask", "{root}/nope.fits", "--out", "{out}/m.fits", "--model", "{mask}"],
        "galjax mask: error: ",
    ),  # fmt: skip
    ("mask-model-missing", [*MASK[:4], "--model", "{root}/nope"], "galjax mask: error: --model"),
    ("mask-model-not-mask", [*MASK[:4], "--model", "{model}"], "galjax mask: error: --model"),
    # simulate and gan
    ("simulate-n-zero", [*SIM, "--n", "0"], "argument --n: expected a positive integer"),
    ("simulate-n-max-zero", [*SIM, "--n-max", "0"], "argument --n-max"),
    ("simulate-chunk-zero", [*SIM, "--chunk", "0"], "argument --chunk"),
    ("simulate-survey", [*SIM, "--survey", "nope"], "galjax simulate: error: --survey"),
    ("simulate-out-suffix", ["simulate", "--out", "{out}/f.txt"], "galjax simulate: error: --out"),
    ("gan-steps-zero", [*GAN, "--steps", "0"], "argument --steps"),
    ("gan-smear-negative", [*GAN, "--smear", "-1"], "argument --smear"),
    (
        "gan-sample-no-run",
        ["gan", "sample", "--run", "{root}/nope", "--class", "FRI"],
        "galjax gan sample: error: --run: ",
    ),  # fmt: skip
]


@pytest.mark.parametrize(("argv", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_a_message(env, tmp_path, capsys, argv, fragment):
    out = tmp_path / "out"
    argv = [a.format(**env, out=out) for a in argv]
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert fragment.format(**env) in err, err
    assert "Traceback" not in err and ": error: " in err
    assert not out.exists()  # nothing created before the inputs pass their checks


def test_the_table_has_enough_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_raises_with_the_traceback(env, tmp_path, where):
    argv = [a.format(**env, out=tmp_path / "o") for a in [*DPS[:4], "{no_vae_config}", *DPS[5:]]]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    with pytest.raises(ValueError, match="--model: .*vae_config"):
        main(argv)


def test_cpu_devices_setting_is_reported(env, tmp_path, monkeypatch, capsys):
    jax.devices()  # JAX runs in this process: the setting is read, then kept
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("GALJAX_CPU_DEVICES", "zero")
    assert run(["deblend", "--demo", "--out", str(tmp_path / "o")]) == 2
    assert "galjax deblend: error: GALJAX_CPU_DEVICES" in capsys.readouterr().err


def test_checkpoint_every_reaches_the_training_config():
    from galjax.cli.main import build_parser
    from galjax.cli.train import _train_config

    args = build_parser().parse_args(["train", "vae", "--out", "x", "--checkpoint-every", "7"])
    assert _train_config(args, 20).checkpoint_every == 7
    args = build_parser().parse_args(["train", "vae", "--out", "x"])
    assert _train_config(args, 20).checkpoint_every == 1000


def test_mask_flags_nonfinite_pixels_as_bad(env, tmp_path, capsys):
    from astropy.io import fits

    out = tmp_path / "m.fits"
    argv = ["mask", env["img_nan"], "--out", str(out), "--model", env["mask"], "--threshold", "1"]
    assert run(argv) == 0
    with fits.open(out) as hdul:
        bits = hdul[0].data
    bad = 1 << 2  # MASK_CLASSES: cosmic_ray, hot, bad, ...
    assert {(3, 4), (10, 20), (30, 2)} == set(zip(*np.nonzero(bits & bad), strict=True))
    printed = capsys.readouterr().out
    assert "'bad': 3" in printed and "3 non-finite" in printed


# ----------------------------------------------------------------- deblending runs


def _catalog(out):
    return Table.read(out / "catalog.ecsv")


def _deblend(env, out, *extra):
    argv = [a.format(**env, out=out) for a in DPS] + list(extra)
    return run(argv)


def test_variance_map_with_bad_pixels_masks_them(env, tmp_path, capsys):
    var = np.ones((2, H, H, 1), np.float32)
    var[0, :4] = 0.0
    var[1, 5, 5] = np.nan
    write_fits(tmp_path / "var.fits", var)
    argv = [a.format(**env, out=tmp_path / "o") for a in DP] + [
        "--variance",
        str(tmp_path / "var.fits"),
    ]
    assert run(argv) == 0
    assert "97 pixel(s) with a variance <= 0 or not finite are masked" in capsys.readouterr().err
    cat = _catalog(tmp_path / "o")
    assert np.all(np.isfinite(cat["flux_r"])) and np.all(np.isfinite(cat["flux_err_r"]))
    assert list(cat["status"]) and set(cat["flags"]) <= {0, 1, 8, 9}


def test_field_without_usable_pixels_is_flagged(env, tmp_path, capsys):
    from galjax.deblend import DeblendStatus

    fields = np.random.default_rng(1).normal(size=(2, H, H, 1)).astype(np.float32)
    fields[1] = np.nan
    write_fits(tmp_path / "f.fits", fields)
    argv = [
        a.format(**{**env, "fields": str(tmp_path / "f.fits")}, out=tmp_path / "o") for a in DPS
    ]
    with pytest.warns(RuntimeWarning, match="1 no_data"):
        assert run(argv) == 0
    err = capsys.readouterr().err
    assert "1 of 2 field(s) flagged no_data" in err
    cat = _catalog(tmp_path / "o")
    one = cat["field"] == 1
    assert np.all(cat["flags"][one] & int(DeblendStatus.NO_DATA))
    assert all("no_data" in s for s in cat["status"][one])
    assert np.all(np.isnan(cat["flux_r"][one])) and np.all(np.isfinite(cat["flux_r"][~one]))


def test_every_field_without_usable_pixels_is_an_error(env, tmp_path, capsys):
    write_fits(tmp_path / "f.fits", np.full((2, H, H, 1), 1e30, np.float32))
    argv = [
        a.format(**{**env, "fields": str(tmp_path / "f.fits")}, out=tmp_path / "o") for a in DPS
    ]
    with pytest.warns(RuntimeWarning, match="2 no_data"):
        assert run(argv) == 2
    assert "no field has usable pixels; check --sigma/--variance units" in capsys.readouterr().err


def test_tiny_sigma_gives_finite_errors(env, tmp_path):
    """--sigma 1e-30 with fields in the same units: ivar is formed in float64."""
    fields = np.random.default_rng(2).normal(size=(2, H, H, 1)) * 1e-30
    write_fits(tmp_path / "f.fits", fields.astype(np.float32))
    argv = [a.format(**{**env, "fields": str(tmp_path / "f.fits")}, out=tmp_path / "o") for a in DP]
    assert run([*argv, "--sigma", "1e-30"]) == 0
    cat = _catalog(tmp_path / "o")
    assert np.all(np.isfinite(cat["flux_err_r"])) and np.all(cat["flux_err_r"] > 0)


def test_resume_equals_an_uninterrupted_run(env, tmp_path, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert _deblend(env, full) == 0
    assert _deblend(env, cut) == 0
    chunks = sorted((cut / "chunks").glob("chunk_*.npz"))
    assert len(chunks) == 2  # one field per chunk on CPU
    with np.load(chunks[1]) as z:
        assert z["fields"].tolist() == [1]  # each chunk names its global field indices
    chunks[1].unlink()
    (cut / "catalog.ecsv").unlink()
    capsys.readouterr()
    assert _deblend(env, cut, "--resume") == 0
    assert "resuming: 1 of 2 fields were finished, 1 to go" in capsys.readouterr().out
    a, b = _catalog(full), _catalog(cut)
    assert a.colnames == b.colnames
    for col in a.colnames:
        np.testing.assert_array_equal(a[col], b[col], err_msg=col)
    # chunks of a run with other settings are refused
    assert _deblend(env, cut, "--resume", "--seed", "3") == 2
    assert "--resume: the chunks in" in capsys.readouterr().err
    assert _deblend(env, cut, "--resume", "--steps", "6") == 2


def test_new_run_removes_stale_chunks_and_temporary_files(env, tmp_path):
    out = tmp_path / "o"
    (out / "chunks").mkdir(parents=True)
    stale = out / "chunks" / "chunk_00000007.npz"
    np.savez(stale, fields=np.array([7]))
    for folder in (out, out / "chunks"):
        tmp = folder / ".tmp-0123456789ab-catalog.ecsv"
        tmp.write_bytes(b"partial")
        os.utime(tmp, (0, 0))  # left by a process killed long ago
    young = out / ".tmp-ba9876543210-models.fits"
    young.write_bytes(b"being written")
    assert _deblend(env, out) == 0
    assert not stale.exists() and not list(out.rglob(".tmp-0123456789ab-*"))
    assert young.exists()  # may belong to a writer still running
    names = sorted(p.name for p in (out / "chunks").iterdir())
    assert names == ["chunk_00000000.npz", "chunk_00000001.npz", "manifest.json"]
    manifest = json.loads((out / "chunks" / "manifest.json").read_text())
    assert manifest["n_fields"] == 2 and "--fields" in manifest["inputs"]


def test_resume_refuses_chunks_without_a_manifest(env, tmp_path, capsys):
    out = tmp_path / "o"
    (out / "chunks").mkdir(parents=True)
    np.savez(out / "chunks" / "chunk_00000000.npz", fields=np.array([0]))
    assert _deblend(env, out, "--resume") == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_model_by_shipped_name():
    from galjax.cli.deblend_inputs import resolve_model_dir
    from galjax.models import default_model_dir

    assert resolve_model_dir("lsst_r") == default_model_dir("lsst_r")
    assert resolve_model_dir(None) == default_model_dir("lsst_r")
    with pytest.raises(FileNotFoundError, match="shipped: hsc, lsst_r"):
        resolve_model_dir("mask")
