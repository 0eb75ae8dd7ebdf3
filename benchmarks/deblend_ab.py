"""Deblending throughput of one galjax source tree, for A/B comparisons on one machine.

Times the library default (``deblend`` with ``DeblendConfig()``, the shipped ``lsst_r``
model, one CPU device per core) on ``--n`` simulated LSST-like fields after a warm-up
call that compiles. Run it for two trees back to back (``PYTHONPATH=/path/to/other/tree``
for the reference) so that both see the same machine and load; absolute speeds vary
between machines by 2-3x, the ratio does not. Writes
``benchmarks/results/deblend_ab_<label>.json``.

    PYTHONPATH=/tmp/ref python benchmarks/deblend_ab.py --label before
    python benchmarks/deblend_ab.py --label after
"""

from __future__ import annotations

import argparse
import time

from _common import RESULTS_DIR, machine_info, write_json

from galjax import set_cpu_device_count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=128, help="fields timed (after 32 warm-up fields)")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--label", required=True, help="name of this tree in the results file")
    args = ap.parse_args()
    set_cpu_device_count(None)  # before the first JAX computation

    import jax
    import numpy as np

    import galjax
    from galjax.deblend import deblend
    from galjax.models import default_model_dir, load_model
    from galjax.sim import LSST_R, noise_variance, simulate_fields

    model = load_model(default_model_dir("lsst_r"))
    f = simulate_fields(jax.random.key(args.seed), args.n + 32, LSST_R, n_max=4)
    sky = np.asarray(LSST_R.sky_sigma)
    sigma = np.sqrt(np.asarray(noise_variance(f.image, sky, LSST_R.gain)))
    warm = slice(0, 32)
    deblend(model, f.image[warm], f.positions[warm], f.mask[warm], sigma=sigma[warm],
            progress=False)  # fmt: skip
    timed = slice(32, None)
    t0 = time.perf_counter()
    res = deblend(model, f.image[timed], f.positions[timed], f.mask[timed], sigma=sigma[timed],
                  progress=False)  # fmt: skip
    seconds = time.perf_counter() - t0
    n_gal = int(f.mask[timed].sum())
    row = {
        "label": args.label,
        "galjax_source": galjax.__file__,
        "n_fields": args.n,
        "n_galaxies": n_gal,
        "seconds": seconds,
        "seconds_per_galaxy": seconds / n_gal,
        "mean_steps": float(np.mean(res.n_iter)),
    }
    print(f"{args.label}: {seconds:.1f} s for {n_gal} galaxies, "
          f"{seconds / n_gal:.4f} s/galaxy, mean {row['mean_steps']:.1f} steps")  # fmt: skip
    payload = {"benchmark": "deblend_ab", "machine": machine_info(), **row,
               "data": "galjax's own simulator, LSST-like r band, true centres"}  # fmt: skip
    write_json(RESULTS_DIR / f"deblend_ab_{args.label}.json", payload)


if __name__ == "__main__":
    main()
