"""Deblending speed: one vmapped call over many fields vs a Python loop over fields.

For n_fields in {1, 16, 256, 2048} LSST-like fields (1-4 galaxies each) it reports
galaxies per second for the single compiled call over all fields (200 fixed steps, and
with the per-field stopping rule; as one vmap, and as vmapped groups of fields run one
after another inside the call, ``DeblendConfig.group``), for a loop of the jitted
one-field function, compile
time, process peak memory, and the achieved GFLOP/s against the GFLOP/s this machine
reaches on the decoder's own layers run alone (the ceiling). It also times the library
default as a user calls it, ``deblend(model, ...)`` with ``DeblendConfig()`` (chunks of
one field on a CPU, padded source slots dropped, stopping rule, flux refit and
noise-bias correction), compile included, on every CPU device (one per core by
default, ``--cpu-devices``; a worker thread per device, see
``galjax.set_cpu_device_count``) and on one, and for each size. The single-call variants
run on one device. Writes benchmarks/results/deblend_speed.json.

    python benchmarks/deblend_speed.py
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import RESULTS_DIR, best_time, cost_analysis, format_table, machine_info, write_json

from galjax import set_cpu_device_count
from galjax.deblend import DeblendConfig, deblend, deblend_field
from galjax.deblend.objective import objective
from galjax.deblend.solve import deblend_chunk
from galjax.models import decode, default_model_dir, load_model
from galjax.sim import LSST_R, noise_variance, simulate_fields


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _ceiling_gflops(model, batches=(4, 16, 64, 256, 1024)) -> tuple[float, dict]:
    """GFLOP/s of the decoder's forward + backward alone: the best over batch sizes.

    Small batches stay in cache, large ones stream through memory, so the best rate
    is not at the largest batch on a CPU.
    """
    f = jax.jit(jax.grad(lambda z, p: jnp.sum(decode(p, model.vae_config, z)[0] ** 2)))
    rates = {}
    for batch in batches:
        z = jnp.zeros((batch, model.vae_config.latent_dim), jnp.float32)
        compiled = f.lower(z, model.vae_params).compile()
        flops = cost_analysis(compiled).get("flops", float("nan"))
        repeats = max(3, 2048 // batch)
        t = best_time(lambda c=compiled, z=z: c(z, model.vae_params).block_until_ready(), repeats)
        rates[str(batch)] = flops / t / 1e9
    return max(rates.values()), rates


def _flops_per_step(model, fields, pos, mask, ivar, cfg) -> float:
    """XLA's flop count of one objective + gradient evaluation per field."""

    def one(z, f, p, m, iv):
        return jax.value_and_grad(objective)(z, model, f, p, m, iv, None, cfg)

    z = jnp.zeros(pos.shape[1:2] + (model.vae_config.latent_dim,), jnp.float32)
    c = jax.jit(one).lower(z, fields[0], pos[0], mask[0], ivar[0]).compile()
    return cost_analysis(c).get("flops", float("nan"))


def _library_default(model, fields, pos, mask, sigma, n: int) -> dict | None:
    """``deblend()`` as a user calls it, twice: cold (compiles included) and warm; on
    every CPU device (the default), then on one (a one-device mesh)."""
    if n < 1:
        return None
    out = {"n_fields": n, "n_galaxies": int(mask[:n].sum()), "config": DeblendConfig().to_dict(),
           "devices": jax.local_device_count()}  # fmt: skip
    one = jax.sharding.Mesh(np.array(jax.local_devices()[:1]), ("data",))
    for suffix, mesh in (("", None), ("_one_device", one)):
        for name in ("cold", "warm"):
            t0 = time.perf_counter()
            res = deblend(model, fields[:n], pos[:n], mask[:n], sigma=sigma[:n], mesh=mesh,
                          progress=False)  # fmt: skip
            dt = time.perf_counter() - t0
            out[f"run_s_{name}{suffix}"] = dt
            out[f"s_per_galaxy_{name}{suffix}"] = dt / out["n_galaxies"]
        print(f"library default on {n} fields ({out['n_galaxies']} galaxies), "
              f"{'1' if mesh else out['devices']} device(s): "
              f"{out[f's_per_galaxy_cold{suffix}']:.4f} s/galaxy cold, "
              f"{out[f's_per_galaxy_warm{suffix}']:.4f} warm")  # fmt: skip
    out["mean_steps"] = float(np.mean(res.n_iter))
    return out


def _decoder_grad_ms(model, k: int = 4, steps: int = 100) -> dict:
    """ms per decoder forward + backward (k stamps): called alone and inside a loop,
    for galjax's decoder and the same layers with Flax's ConvTranspose / Conv."""
    import flax.linen as nn

    cfg = model.vae_config

    class FlaxDecoder(nn.Module):  # the same layers and parameter names, lax's own gradient
        @nn.compact
        def __call__(self, z):
            h = z
            for w in cfg.hidden:
                h = nn.leaky_relu(nn.Dense(w)(h))
            c0 = cfg.dec_channels[0]
            h = nn.leaky_relu(nn.Dense(cfg.dec_start**2 * c0)(h))
            h = h.reshape(-1, cfg.dec_start, cfg.dec_start, c0)
            for c in cfg.dec_channels:
                h = nn.leaky_relu(nn.ConvTranspose(c, (3, 3), strides=(2, 2), padding="SAME")(h))
            return nn.Conv(cfg.bands, (3, 3), padding="SAME")(h)

    p = model.vae_params
    flax_dec = lambda z, p: FlaxDecoder().apply({"params": p["decoder"]}, z)
    ours = lambda z, p: decode(p, cfg, z)[0]
    z = jnp.zeros((k, cfg.latent_dim), jnp.float32) + 0.1
    out = {}
    for name, f in (("galjax", ours), ("flax_lax_gradient", flax_dec)):
        g = jax.grad(lambda z, p, f=f: jnp.sum(f(z, p) ** 2))
        alone = jax.jit(g)
        loop = jax.jit(
            lambda z, p, g=g: jax.lax.fori_loop(0, steps, lambda i, z: z - 1e-6 * g(z, p), z)
        )
        t_alone = best_time(lambda a=alone: a(z, p).block_until_ready(), repeats=200)
        t_loop = best_time(lambda lp=loop: lp(z, p).block_until_ready(), repeats=5) / steps
        out[name] = {"alone_ms": 1e3 * t_alone, "in_loop_ms": 1e3 * t_loop}
    print("decoder fwd+bwd ms (4 stamps):", out)
    return out


def _step_ms_by_sources(model, fields, pos, mask, ivar, steps: int = 100) -> dict:
    """Milliseconds per MAP step of one field solved on k = 1..n_max source slots."""
    cfg = DeblendConfig(n_steps=steps, patience=10**6)
    i = int(np.argmax(mask.sum(axis=1)))  # a field with the most sources
    out = {}
    for k in range(1, mask.shape[1] + 1):
        b = (fields[i : i + 1], pos[i : i + 1, :k], mask[i : i + 1, :k], ivar[i : i + 1])
        c = deblend_chunk.lower(model, *b, None, cfg, None).compile()
        t = best_time(lambda c=c, b=b: jax.block_until_ready(c(model, *b, None)), repeats=5)
        out[str(k)] = 1e3 * t / steps
    print("ms per MAP step by source slots:", {k: round(v, 3) for k, v in out.items()})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 256, 2048])
    ap.add_argument(
        "--fixed-max",
        type=int,
        default=256,
        help="largest size also run with 200 fixed steps (2048 x 200 steps takes "
        "about 10 minutes on 2 cores; above this the fixed-step time is extrapolated)",
    )
    ap.add_argument("--loop-fields", type=int, default=32, help="fields timed in the Python loop")
    ap.add_argument(
        "--default-fields",
        type=int,
        default=256,
        help="fields run through deblend() with the default config (0: skip)",
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--cpu-devices", type=int, default=None,
                    help="CPU devices for deblend()'s default (default: one per core)")  # fmt: skip
    args = ap.parse_args()
    set_cpu_device_count(args.cpu_devices)  # before the first JAX computation

    model = load_model(default_model_dir("lsst_r"))
    n_all = max(args.sizes)
    truth = simulate_fields(jax.random.key(args.seed), n_all, LSST_R, n_max=4, progress=True)
    var = noise_variance(truth.image, np.asarray(LSST_R.sky_sigma), LSST_R.gain)
    sigma = np.sqrt(np.asarray(var, np.float32))
    ivar = (1.0 / sigma**2).astype(np.float32)
    fields, pos, mask = truth.image.astype(np.float32), truth.positions, truth.mask
    fixed = DeblendConfig(n_steps=200, patience=10**6)  # never stops early
    early = DeblendConfig(n_steps=200)
    ceiling, ceiling_by_batch = _ceiling_gflops(model)
    flops_step = _flops_per_step(model, fields, pos, mask, ivar, fixed)
    print(f"ceiling (decoder layers alone, best batch): {ceiling:.1f} GFLOP/s {ceiling_by_batch}; "
          f"{flops_step / 1e6:.1f} MFLOP per field-step")  # fmt: skip

    # Python loop over fields of the jitted one-field function (per-field cost, then scaled).
    one = jax.jit(lambda f, p, m, iv: deblend_field(model, f, p, m, iv, None, fixed))
    t0 = time.perf_counter()
    one(fields[0], pos[0], mask[0], ivar[0]).latents.block_until_ready()
    loop_compile = time.perf_counter() - t0
    k = min(args.loop_fields, n_all)
    t0 = time.perf_counter()
    for i in range(k):
        one(fields[i], pos[i], mask[i], ivar[i]).latents.block_until_ready()
    loop_per_field = (time.perf_counter() - t0) / k

    dec_ms = _decoder_grad_ms(model)
    step_ms = _step_ms_by_sources(model, fields, pos, mask, ivar)
    default = _library_default(model, fields, pos, mask, sigma, min(args.default_fields, n_all))

    # Variants of the single compiled call over n fields: (config, group, largest n run).
    # "vmap": one vmap over all fields; "g16"/"g1": vmapped groups of 16 / 1 fields run
    # one after another inside the call (DeblendConfig.group; 1 is the CPU default).
    variants = {
        "fixed200_vmap": (fixed, None, args.fixed_max),
        "fixed200_g16": (fixed, 16, args.fixed_max),
        "early_vmap": (early, None, args.fixed_max),
        "early_g1": (early, 1, max(args.sizes)),
    }
    rows = []
    for n in sorted(args.sizes):
        sl = slice(0, n)
        batch = (fields[sl], pos[sl], mask[sl], ivar[sl])
        n_gal = int(mask[sl].sum())
        row = {"n_fields": n, "n_galaxies": n_gal}
        for name, (cfg, group, n_up_to) in variants.items():
            if n > n_up_to:
                continue
            t0 = time.perf_counter()
            compiled = deblend_chunk.lower(model, *batch, None, cfg, group).compile()
            row[f"compile_s_{name}"] = time.perf_counter() - t0
            # Small calls: best of 3 after a warm-up run (the first run of an executable
            # pays one-off costs, as the loop's first call does); large ones: one run.
            repeats = 3 if n <= 16 else 1
            if repeats > 1:
                jax.block_until_ready(compiled(model, *batch, None))
            dt = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                res = jax.block_until_ready(compiled(model, *batch, None))
                dt = min(dt, time.perf_counter() - t0)
            steps = float(np.asarray(res.n_iter).sum())
            row[f"run_s_{name}"] = dt
            row[f"galaxies_per_s_{name}"] = n_gal / dt
            row[f"mean_steps_{name}"] = steps / n
            row[f"gflops_{name}"] = flops_step * steps / dt / 1e9
        # The loop's cost per field does not depend on its galaxy count (n_max is static), so
        # the loop over these same n fields runs n_gal / (n * loop_per_field) galaxies per s.
        row["loop_galaxies_per_s"] = n_gal / n / loop_per_field
        for name in ("fixed200_vmap", "fixed200_g16"):
            if f"galaxies_per_s_{name}" in row:
                ratio = row[f"galaxies_per_s_{name}"] / row["loop_galaxies_per_s"]
                row[f"{name}_over_loop"] = ratio
                row[f"gflops_fraction_of_ceiling_{name}"] = row[f"gflops_{name}"] / ceiling
        # deblend() as a user calls it, on every CPU device (compiled shapes warm by now).
        t0 = time.perf_counter()
        deblend(model, fields[sl], pos[sl], mask[sl], sigma=sigma[sl], progress=False)
        row["galaxies_per_s_default"] = n_gal / (time.perf_counter() - t0)
        row["peak_rss_mib"] = _peak_rss_mib()
        rows.append(row)
        print(f"n={n}: {row}")

    cols = [
        ("n_fields", "fields", "d"),
        ("n_galaxies", "galaxies", "d"),
        ("compile_s_early_g1", "compile [s]", ".1f"),
        ("galaxies_per_s_fixed200_vmap", "gal/s 200 steps, vmap", ".1f"),
        ("galaxies_per_s_fixed200_g16", "gal/s 200 steps, groups of 16", ".1f"),
        ("loop_galaxies_per_s", "loop gal/s (200)", ".1f"),
        ("fixed200_vmap_over_loop", "vmap/loop", ".2f"),
        ("fixed200_g16_over_loop", "g16/loop", ".2f"),
        ("gflops_fraction_of_ceiling_fixed200_g16", "g16 of ceiling", ".2f"),
        ("galaxies_per_s_early_vmap", "gal/s stop rule, vmap", ".1f"),
        ("galaxies_per_s_early_g1", "gal/s stop rule, groups of 1", ".1f"),
        ("mean_steps_early_g1", "mean steps", ".0f"),
        ("galaxies_per_s_default", f"gal/s deblend(), {jax.local_device_count()} devices", ".1f"),
        ("peak_rss_mib", "peak RSS [MiB]", ".0f"),
    ]
    print(format_table(rows, cols))
    payload = {
        "benchmark": "deblend_speed",
        "machine": machine_info(),
        "ceiling_gflops_decoder_alone": ceiling,
        "ceiling_gflops_by_batch": ceiling_by_batch,
        "mflop_per_field_step": flops_step / 1e6,
        "loop": {
            "compile_s": loop_compile,
            "seconds_per_field_200_steps": loop_per_field,
            "fields_timed": k,
        },  # fmt: skip
        "rows": rows,
        "library_default": default,
        "step_ms_by_sources": step_ms,
        "decoder_grad_ms_4_stamps": dec_ms,
        "notes": "fixed200: 200 Adam steps per field (stopping disabled); early: the per-field "
        "stopping rule (DeblendConfig defaults). vmap: one vmap over all fields of the call; "
        "g16 / g1: vmapped groups of 16 / 1 fields run one after another in the same compiled "
        "call (DeblendConfig.group). gal/s counts galaxies (1-4 per field; every field has 4 "
        "source slots here). Peak RSS is the process maximum so far (sizes run in increasing "
        "order). gal/s deblend(): the library default as a user calls it (chunks of one "
        "field, a worker thread per CPU device, flux refit and noise-bias correction).",
    }
    write_json(RESULTS_DIR / "deblend_speed.json", payload)


if __name__ == "__main__":
    main()
