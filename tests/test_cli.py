"""The ``galjax`` command line."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from galjax.cli import main


def test_simulate_writes_fields_truth_and_figure(tmp_path):
    out = tmp_path / "fields.fits"
    assert main(["simulate", "--n", "3", "--seed", "1", "--out", str(out), "--quiet"]) == 0
    with fits.open(out) as hdul:
        assert hdul[0].data.shape == (3, 1, 64, 64)  # stacks are stored as (n, bands, h, w)
        assert hdul[0].header["SURVEY"] == "lsst_r"
        noiseless = hdul["NOISELESS"].data
        assert np.all(np.isfinite(hdul[0].data)) and noiseless.min() >= 0
    truth = Table.read(tmp_path / "fields_truth.ecsv")
    assert 3 <= len(truth) <= 12
    assert set(truth["field"]) <= {0, 1, 2}
    assert np.all((truth["x"] >= 0) & (truth["x"] < 64))
    # The truth fluxes are the sources' total fluxes: the field holds at most that much light.
    for i in range(3):
        assert noiseless[i].sum() <= truth["flux_r"][truth["field"] == i].sum() * 1.001
    assert (tmp_path / "fields.png").stat().st_size > 0


def test_simulate_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit, match="--survey"):
        main(["simulate", "--survey", "nope", "--out", str(tmp_path / "f.fits")])
    with pytest.raises(SystemExit, match="--n"):
        main(["simulate", "--n", "0", "--out", str(tmp_path / "f.fits")])
    with pytest.raises(SystemExit, match="--out"):
        main(["simulate", "--n", "1", "--out", str(tmp_path / "f.txt")])
