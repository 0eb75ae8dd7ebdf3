"""Reading and writing astronomical data: FITS images and tables, cutouts, data sets.

Everything here runs on the host (numpy and astropy), outside ``jit``; it returns
float32 numpy arrays in galjax's ``(..., height, width, bands)`` convention.
"""

from galjax.io import datasets, fits, radio
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
    write_mask_fits,
    write_table,
)
from galjax.io.radio import (
    CLASS_NAMES,
    RadioData,
    augment_images,
    check_classes_present,
    check_gan_images,
    class_index,
    load_radio,
    prepare_images,
)

__all__ = [
    "datasets",
    "fits",
    "radio",
    "CLASS_NAMES",
    "RadioData",
    "augment_images",
    "check_classes_present",
    "check_gan_images",
    "class_index",
    "load_radio",
    "prepare_images",
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
    "write_mask_fits",
    "write_table",
]
