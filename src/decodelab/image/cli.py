"""`decodelab image`: generate class-conditional digits with any image method and write a PNG.

    decodelab image --label 3 --method zipar --seed 0 --out digit.png
    decodelab image --label 3 --method sjd -p window=16 --grid 8 --out sjd-3.png   # 8 samples
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("image", help="generate a class-conditional digit image (PNG) with an image method")
    p.add_argument("--model", default="builtin:digits", help="image-token model (builtin:digits, builtin:digits16)")
    p.add_argument("--label", type=int, required=True, help="digit class 0–9")
    p.add_argument("--method", default="raster", help="raster, sjd, zipar, nar, lpd, mulo")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    p.add_argument("--cfg-scale", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--grid", type=int, default=0, help="write a labelled grid of this many samples instead")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="method parameter")
    p.add_argument("--no-kv-cache", action="store_true", help="recompute the sequence every pass (image/cache.py)")
    p.add_argument("--json", action="store_true", help="print the stats as one JSON line")
    p.set_defaults(func=cmd_image)
    return p


def cmd_image(args) -> None:
    import torch

    from ..cli import parse_params
    from .generate import generate_images, image_methods
    from .plots import save_grid, save_png

    info = image_methods().get(args.method)
    if info is None:
        raise UserError(f"unknown image method {args.method!r}; available: {', '.join(sorted(image_methods()))}")
    if args.out.suffix.lower() != ".png":
        raise UserError(f"--out must name a .png file, got {str(args.out)!r}")
    if args.grid < 0:
        raise UserError(f"--grid must be ≥ 0, got {args.grid}")
    params = parse_params(args.param, {k: s.default for k, s in info.specs.items()})
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared CPU
    n = max(1, args.grid)
    gens = generate_images(args.model, [args.label] * n, method=args.method, seeds=args.seed,
                           cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k,
                           kv_cache=not args.no_kv_cache, **params)
    if args.grid:
        save_grid([(f"{args.method} {args.label}", [g.pixels for g in gens])], args.out)
    else:
        save_png(gens[0].pixels, args.out)
    if args.json:
        print(json.dumps({"method": args.method, "label": args.label, "out": str(args.out),
                          "token_ids": [g.token_ids for g in gens] if args.grid else gens[0].token_ids,
                          "stats": [_plain(g.stats) for g in gens] if args.grid else _plain(gens[0].stats)}))
    else:
        print(f"wrote {args.out} ({args.method}, {gens[0].stats['forward_passes']} forward passes)")


def _plain(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k != "order"}
