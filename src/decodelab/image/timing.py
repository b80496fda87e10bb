"""Wall time of the image methods, with and without the slot KV cache — meant for an idle machine.

    python -m decodelab.image.timing --out docs/visual/timing.json     # ≈ 1–2 min on an idle CPU

Per grid (builtin:digits 8×8, builtin:digits16 16×16) and method: seconds per image when the ten
labels 0–9 are decoded as one batch, with `kv_cache` off (every pass recomputes the sequence) and
on (image/cache.py), interleaved and best of `--repeats`; forward passes per image; whether both
runs gave the same tokens. The machine's load before, during and after is recorded with
decodelab.bench.machine and a warning is printed when it was busy (then the figures are not
reliable). One torch thread unless `--threads`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ..bench import machine
from .generate import generate_images

CONFIGS = {
    "builtin:digits": [("raster", {}), ("sjd", {"window": 16}), ("zipar", {"window": 4}), ("nar", {}),
                       ("lpd", {"steps": 8}), ("mulo", {"tau": 0.3})],
    "builtin:digits16": [("raster", {}), ("sjd", {"window": 16}),
                         ("sjd", {"window": 16, "init": "repeat_horizon", "update": "reinit"}), ("zipar", {"window": 8}), ("nar", {}),
                         ("lpd", {"steps": 20}), ("mulo", {"tau": 0.3})],
}
LABELS = list(range(10))


def time_one(lm, method: str, params: dict, kv_cache: bool, seed: int) -> tuple[float, list]:
    """(seconds per image, generations) for one batch of the ten labels."""
    start = time.perf_counter()
    gens = generate_images(lm, LABELS, method=method, seeds=seed, kv_cache=kv_cache, **params)
    return (time.perf_counter() - start) / len(LABELS), gens


def measure(lm, method: str, params: dict, repeats: int, seed: int) -> dict:
    """Best-of-`repeats` seconds per image with the cache off and on (interleaved)."""
    modes = (False, True)
    best = {mode: float("inf") for mode in modes}
    tokens = {}
    for _ in range(repeats):
        for mode in modes:
            seconds, gens = time_one(lm, method, params, mode, seed)
            best[mode] = min(best[mode], seconds)
            tokens[mode] = [g.token_ids for g in gens]
    row = {"method": method, "params": params, "forward_passes": float(np.mean([g.stats["forward_passes"] for g in gens])),
           "s_per_image_recompute": round(best[False], 5), "s_per_image_cached": round(best[True], 5),
           "cache_speedup": round(best[False] / best[True], 2), "same_tokens": tokens[False] == tokens[True]}
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="write the JSON report here")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit("--repeats must be ≥ 1")
    machine.set_threads(args.threads)
    from ..model import load

    before, start = machine.snapshot(), machine.sample()
    rows = []
    for name in args.models:
        lm = load(name)
        for method, params in CONFIGS[name]:
            rows.append({"model": name, **measure(lm, method, params, args.repeats, args.seed)})
            print(json.dumps(rows[-1]), flush=True)
    load_info = machine.report(before, machine.others_share(start, machine.sample()), machine.snapshot())
    report = {"command": "python -m decodelab.image.timing " + " ".join(argv), "batch": len(LABELS),
              "repeats": args.repeats, "machine_load": load_info, "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    warning = machine.warning(load_info)
    if warning:
        print(warning)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
