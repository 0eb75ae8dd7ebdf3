"""Reading and writing astronomical data: FITS images and tables, cutouts, data sets.

Everything here runs on the host (numpy and astropy), outside ``jit``; it returns
float32 numpy arrays in galjax's ``(..., height, width, bands)`` convention.
"""

from galjax.io.datasets import (
    HSC_FILTERS,
    HSC_PIXEL_SCALE,
    CosmosSample,
    FirstSample,
    FitsFolder,
    Scene,
    SepField,
    load_cosmos,
    load_first,
    load_fits_folder,
    load_hsc_fits,
    load_hsc_npz,
    load_sep_field,
)
from galjax.io.fits import (
    Cutout,
    FitsImage,
    cutout,
    read_fits,
    read_fits_stack,
    read_table,
    write_fits,
    write_table,
)

__all__ = [
    "HSC_FILTERS",
    "HSC_PIXEL_SCALE",
    "CosmosSample",
    "Cutout",
    "FirstSample",
    "FitsFolder",
    "FitsImage",
    "Scene",
    "SepField",
    "cutout",
    "load_cosmos",
    "load_first",
    "load_fits_folder",
    "load_hsc_fits",
    "load_hsc_npz",
    "load_sep_field",
    "read_fits",
    "read_fits_stack",
    "read_table",
    "write_fits",
    "write_table",
]
