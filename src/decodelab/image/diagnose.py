"""Where the approximate methods lose quality on a grid: per-position cross-entropy of the true tokens.

    python -m decodelab.image.diagnose zipar --windows 16 8 6 4 --placeholder latest above
    python -m decodelab.image.diagnose lpd [--lpd DIR] [--per-class 5]

Both teacher-force the held-out digits (the first `--val` images of the validation split) through
the method's own decoding code, so what is measured is exactly the context each token is predicted
from:

* `zipar` — runs `zipar.zipar` (cached, the released code's frozen states) with every sampled
  token replaced by the true one; reports the mean CE of the true tokens, by row and by column
  (columns split into the ×2-upsampled grid's "copy" rows — odd rows, copies of the row above —
  and "new" rows, even rows ≥ 2). Window s = W is raster decoding.
* `lpd` — one forward pass over the LPD model's full layout per order: CE and accuracy (argmax =
  true token) per group for uniformly random orders (its training distribution) and for the
  locality-aware order at the same schedule, and with 256 groups (one token per step: any-order
  autoregression, whose mean CE is comparable to the raster model's). Then LPD samples: the raster
  model's NLL of every sampled token (raster teacher forcing), averaged by the group it was decoded
  in — which tokens the parallel decoding gets wrong — and, on 16×16, the share of 2×2 blocks
  whose cells differ (a broken copy), beside raster samples' share.

Prints JSON lines. No timings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from . import layouts
from . import zipar as zipar_module
from .lpd import lpd_order
from .model import ImageModel, Processing, image_spec, run_model
from .train import _grid_tensors


def _rounded(values) -> list[float]:
    return [round(float(v), 3) for v in values]


def zipar_teacher_ce(lm, x: torch.Tensor, y: torch.Tensor, window: int, placeholder: str,
                     kv_cache: bool = True) -> tuple[torch.Tensor, int]:
    """x [B, N] true tokens, y [B] labels → (CE [B, N] of each true token under `zipar.zipar`'s own
    decoding with every sampled token replaced by the true one, forward passes)."""
    ce = torch.zeros(x.shape)
    queue: list[int] = []
    frontier = zipar_module.frontier_probs

    def probs(model, labels, tokens, known, queries):
        queue[:] = list(queries[0])  # the same positions in every row of the batch
        return frontier(model, labels, tokens, known, queries)

    def teacher(p, gens):
        pos = queue.pop(0)
        ce[:, pos] = -torch.log(p.gather(1, x[:, pos:pos + 1]).squeeze(1).clamp_min(1e-12))
        return x[:, pos]

    model = ImageModel(lm, Processing(), kv_cache=kv_cache)
    saved = zipar_module.frontier_probs, zipar_module.sample
    zipar_module.frontier_probs, zipar_module.sample = probs, teacher
    try:
        with torch.no_grad():
            zipar_module.zipar(model, y, [torch.Generator()] * len(y), window=window, placeholder=placeholder)
    finally:
        zipar_module.frontier_probs, zipar_module.sample = saved
    return ce, model.forward_passes


def zipar_ce(lm, windows: list[int], placeholders: list[str], val: int) -> list[dict]:
    spec = image_spec(lm)
    h, w = spec.height, spec.width
    x, y = _grid_tensors("val", h)
    x, y = x[:val], y[:val]
    out = []
    for placeholder in placeholders:
        for s in windows:
            ce, passes = zipar_teacher_ce(lm, x, y, s, placeholder)
            grid = ce.view(len(y), h, w)
            out.append({"method": "zipar", "window": s, "placeholder": placeholder, "passes": passes,
                        "ce": round(float(ce.mean()), 4), "ce_by_row": _rounded(grid.mean((0, 2))),
                        "ce_by_column_new_rows": _rounded(grid[:, 2::2].mean((0, 1))),
                        "ce_by_column_copy_rows": _rounded(grid[:, 1::2].mean((0, 1)))})
    return out


def _group_ids(orders: list[list[list[int]]], n: int) -> torch.Tensor:
    gid = torch.empty(len(orders), n, dtype=torch.long)
    for row, groups in enumerate(orders):
        for k, group in enumerate(groups):
            gid[row, group] = k
    return gid


def _random_orders(count: int, n: int, steps: int, gen: torch.Generator) -> list[list[list[int]]]:
    sizes = layouts.group_sizes(n, steps)
    orders = []
    for _ in range(count):
        perm = torch.randperm(n, generator=gen).tolist()
        starts = [sum(sizes[:k]) for k in range(steps)]
        orders.append([perm[a:a + size] for a, size in zip(starts, sizes)])
    return orders


def lpd_ce(lpd_lm, steps: int, rho: int, val: int) -> list[dict]:
    spec = image_spec(lpd_lm)
    n = spec.n
    x, y = _grid_tensors("val", spec.height)
    x, y = x[:val], y[:val]
    gen = torch.Generator().manual_seed(0)
    cases = [("random", steps, _random_orders(len(y), n, steps, gen)),
             ("locality", steps, [lpd_order(spec.height, spec.width, steps, rho, gen) for _ in y]),
             ("random", n, _random_orders(len(y), n, n, gen))]
    out = []
    for order, k, orders in cases:
        gid = _group_ids(orders, n)
        ids, positions = layouts.lpd_inputs(x, spec.mask_id)
        ids[:, 0] = y + spec.levels
        with torch.no_grad():
            logits = run_model(lpd_lm.model, ids, positions, layouts.lpd_mask(gid))[:, n + 1:, : spec.levels]
        ce = F.cross_entropy(logits.reshape(-1, spec.levels), x.reshape(-1), reduction="none").view(len(y), n)
        right = (logits.argmax(-1) == x).float()
        shown = range(min(k, 20))
        out.append({"method": "lpd", "order": order, "steps": k, "ce": round(float(ce.mean()), 4),
                    "accuracy": round(float(right.mean()), 4),
                    "ce_by_group": _rounded(ce[gid == g].mean() for g in shown),
                    "accuracy_by_group": _rounded(right[gid == g].mean() for g in shown),
                    "accuracy_by_true_level": _rounded(right[x == t].mean() for t in range(spec.levels)),
                    **_block_mates(gid, ce, spec.height, spec.width)})
    return out


def _block_mates(gid: torch.Tensor, ce: torch.Tensor, h: int, w: int) -> dict:
    """On a ×2-upsampled grid (16×16) every 2×2 block holds one value: the CE of tokens with a block
    mate in an earlier group (a copy is enough) vs tokens decoded before or with all their mates."""
    if h != 16:
        return {}
    blocks = gid.view(-1, h // 2, 2, w // 2, 2).permute(0, 1, 3, 2, 4).reshape(-1, h // 2, w // 2, 4)
    known = (blocks.min(-1, keepdim=True).values < blocks).view(-1, h // 2, w // 2, 2, 2)
    known = known.permute(0, 1, 3, 2, 4).reshape(len(gid), h * w)  # back to raster order
    return {"ce_block_mate_known": round(float(ce[known].mean()), 4), "ce_no_block_mate_known":
            round(float(ce[~known].mean()), 4), "share_block_mate_known": round(float(known.float().mean()), 3)}


def _nonuniform(tokens: torch.Tensor, h: int) -> float:
    """Share of the 2×2 blocks of a ×2-upsampled grid whose four cells differ (0 in the data)."""
    blocks = tokens.view(-1, h // 2, 2, h // 2, 2).permute(0, 1, 3, 2, 4).reshape(-1, 4)
    return round(float((blocks.max(-1).values != blocks.min(-1).values).float().mean()), 4)


def lpd_sample_nll(lm, steps: int, per_class: int, seed: int) -> dict:
    """LPD samples' tokens scored by the raster model, averaged by decoding group."""
    from .generate import generate_images

    labels = [c for c in range(10) for _ in range(per_class)]
    gens = generate_images(lm, labels, method="lpd", seeds=seed, steps=steps)
    tokens = torch.tensor([g.token_ids for g in gens])
    with torch.no_grad():
        p = ImageModel(lm, Processing()).raster_probs(torch.tensor(labels), tokens, torch.ones_like(tokens, dtype=torch.bool))
    nll = -torch.log(p.gather(-1, tokens[..., None]).squeeze(-1).clamp_min(1e-30))
    gid = _group_ids([g.stats["order"] for g in gens], tokens.shape[1])
    raster = torch.tensor([g.token_ids for g in generate_images(lm, labels, method="raster", seeds=seed)])
    spec = image_spec(lm)
    blocks = {"nonuniform_blocks": _nonuniform(tokens, spec.height), "raster_nonuniform_blocks": _nonuniform(raster, spec.height)}
    return {"method": "lpd samples", "steps": steps, "images": len(labels), "nll_under_raster": round(float(nll.mean()), 4),
            **(blocks if spec.height == 16 else {}),
            "nll_by_group": _rounded(nll[gid == g].mean() for g in range(steps)),
            "share_of_nll_by_group": _rounded(nll[gid == g].sum() / nll.sum() for g in range(steps))}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("zipar", "lpd"))
    p.add_argument("--model", default="builtin:digits16")
    p.add_argument("--val", type=int, default=64, help="validation images teacher-forced")
    p.add_argument("--windows", type=int, nargs="*", default=[16, 8, 6, 4])
    p.add_argument("--placeholder", nargs="*", default=list(zipar_module.PLACEHOLDERS))
    p.add_argument("--lpd", type=Path, help="an LPD model directory to use instead of the one beside --model")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rho", type=int, default=2)
    p.add_argument("--per-class", type=int, default=5, help="lpd: samples per class scored by the raster model")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from ..model import load
    from .generate import companion

    lm = load(args.model)
    if args.what == "zipar":
        rows = zipar_ce(lm, args.windows, args.placeholder, args.val)
    else:
        if args.lpd:
            lm.state["image:lpd"] = load(str(args.lpd))
        lpd_lm = companion(lm, "lpd")
        rows = lpd_ce(lpd_lm, args.steps, args.rho, args.val) + [lpd_sample_nll(lm, args.steps, args.per_class, args.seed)]
    for row in rows:
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
