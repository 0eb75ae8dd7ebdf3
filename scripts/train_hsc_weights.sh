#!/usr/bin/env bash
# Reproduces galjax/weights/hsc: an explicit-PSF grizy model of HSC-like simulated
# galaxies, used to deblend real HSC scenes with their own PSFs
# (benchmarks/deblend_hsc.py, notebooks/deblending.ipynb). Every stage is seeded.
set -euo pipefail
OUT=${1:-galjax/weights/hsc}
galjax train vae  --out "$OUT" --survey hsc --psf-explicit --n-stamps 16384 --steps 4000 --batch 64 --lr 1e-3 --seed 0
galjax train flow --out "$OUT" --n-stamps 8192 --steps 3000 --batch 256 --lr 1e-3 --seed 1
galjax train init --out "$OUT" --n-fields 2048 --steps 2000 --batch 64 --lr 5e-4 --seed 2
# The flux noise-bias table and the model error of the Laplace flux errors, calibrated on
# 1024 other simulated fields.
galjax train calibrate --out "$OUT" --n-fields 1024 --seed 3
rm -rf "$OUT"/logs_*  # training logs are not shipped
