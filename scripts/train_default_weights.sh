#!/usr/bin/env bash
# Reproduces the weights shipped in galjax/weights/lsst_r (the `galjax deblend --demo` model).
# About 40 minutes on 2 CPU cores; every stage is seeded.
set -euo pipefail
OUT=${1:-galjax/weights/lsst_r}
galjax train vae  --out "$OUT" --survey lsst_r --n-stamps 32768 --steps 8000 --batch 64 --lr 1e-3 --seed 0
# The flow prior on 4 draws from q(z|x) per stamp (--posterior-samples 4, the default).
galjax train flow --out "$OUT" --n-stamps 16384 --steps 4000 --batch 256 --lr 1e-3 --seed 1
galjax train init --out "$OUT" --n-fields 4096 --steps 3000 --batch 64 --lr 5e-4 --seed 2
# The flux noise-bias table and the model error of the Laplace flux errors, calibrated on
# 1024 other simulated fields.
galjax train calibrate --out "$OUT" --n-fields 1024 --seed 3
rm -rf "$OUT"/logs_*/checkpoint.msgpack* "$OUT"/logs_*/best.msgpack*
