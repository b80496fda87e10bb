"""The `digits` bench: every image method side by side on one grid, with what the papers report.

    python -m decodelab.image.bench --model builtin:digits --per-class 20 --out docs/visual
    python -m decodelab.image.bench --model builtin:digits16 --per-class 5 --out docs/visual

Per method: forward passes per image (target; the drafter's separately), passes relative to raster,
NLL per token of the samples under the raster model, the digit classifier's accuracy on the
class-conditional samples, and the per-position marginal KL to an independent set of raster
samples (a second raster run gives the noise floor). Writes `bench-<grid>.json`, a Markdown
table on stdout, and `samples-<grid>.png` (two samples per class per method). No timings: the
numbers are meant to be rerun anywhere. The same bench runs as the shared bench's `digits` suite:
`decodelab bench --suite digits [--model builtin:digits16] [--limit IMAGES_PER_CLASS] [--methods sjd,nar]`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .data import split
from .generate import generate_images
from .methods import SAMPLING
from .metrics import classifier, marginal_kl, nll_per_token
from .model import image_spec
from .plots import save_grid

CONFIGS = {
    8: [("raster", {}), ("raster (2nd run)", {}), ("sjd", {"window": 16}), ("sjd", {"window": 16, "init": "sample_horizon"}),
        ("sjd", {"window": 16, "init": "repeat_horizon", "update": "reinit"}),
        ("zipar", {"window": 4}), ("zipar", {"window": 2}), ("zipar", {"min_window": 2}),
        ("zipar", {"window": 4, "placeholder": "above"}), ("zipar", {"window": 2, "placeholder": "above"}),
        ("zipar", {"min_window": 2, "placeholder": "above"}), ("nar", {}),
        ("lpd", {"steps": 8}), ("lpd", {"steps": 16}), ("mulo", {"tau": 0.3}), ("mulo", {"tau": 0.1, "radius": 0})],
    16: [("raster", {}), ("raster (2nd run)", {}), ("sjd", {"window": 16}), ("sjd", {"window": 16, "init": "sample_horizon"}),
         ("sjd", {"window": 16, "init": "repeat_horizon", "update": "reinit"}),
         ("zipar", {"window": 8}), ("zipar", {"window": 6}), ("zipar", {"window": 4}), ("zipar", {"min_window": 4}),
         ("zipar", {"window": 6, "placeholder": "above"}), ("zipar", {"window": 4, "placeholder": "above"}),
         ("zipar", {"min_window": 4, "placeholder": "above"}),
         ("zipar", {"window": 6, "placeholder": "above", "weights": "zipar"}),
         ("zipar", {"window": 4, "placeholder": "above", "weights": "zipar"}),
         ("zipar", {"min_window": 4, "placeholder": "above", "weights": "zipar"}),
         ("nar", {}), ("lpd", {"steps": 20}), ("lpd", {"steps": 32}), ("lpd", {"steps": 20, "cfg_schedule": "linear"}),
         ("mulo", {"tau": 0.3}),
         ("mulo", {"tau": 0.1, "radius": 0})],
}


def run_config(lm, method: str, params: dict, labels: list[int], seed: int, sampling: dict,
               kv_cache: bool = True) -> dict:
    gens = generate_images(lm, labels, method=method.split(" ")[0], seeds=seed, kv_cache=kv_cache, **sampling, **params)
    tokens = np.array([g.token_ids for g in gens])
    return {"method": method.split(" ")[0], "params": params, "tokens": tokens,
            "pixels": np.stack([g.pixels for g in gens]),
            "forward_passes": [g.stats["forward_passes"] for g in gens],
            "draft_forward_passes": [g.stats.get("draft_forward_passes", 0) for g in gens]}


def summarise(lm, res: dict, ref: dict, labels: list[int], raster_passes: float) -> dict:
    levels = image_spec(lm).levels
    passes = float(np.mean(res["forward_passes"]))
    return {"method": res["method"], "params": res["params"], "forward_passes": passes,
            "forward_passes_range": [int(min(res["forward_passes"])), int(max(res["forward_passes"]))],
            "draft_forward_passes": float(np.mean(res["draft_forward_passes"])),
            "passes_vs_raster": raster_passes / passes,
            "nll_per_token": float(nll_per_token(lm, labels, res["tokens"]).mean()),
            "classifier_accuracy": classifier().accuracy(res["pixels"], labels),
            "marginal_kl_vs_raster": marginal_kl(ref["tokens"], labels, res["tokens"], labels, levels)}


def table(rows: list[dict]) -> str:
    head = ("| method | passes / image (min–max) | × fewer than raster | drafter passes | NLL / token | "
            "classifier acc. | marginal KL vs raster |\n|---|---|---|---|---|---|---|\n")
    return head + "\n".join(
        f"| {r['label']} | {r['forward_passes']:.1f} ({r['forward_passes_range'][0]}–{r['forward_passes_range'][1]}) | "
        f"{r['passes_vs_raster']:.2f} | {r['draft_forward_passes']:.0f} | {r['nll_per_token']:.3f} | "
        f"{100 * r['classifier_accuracy']:.1f}% | {r['marginal_kl_vs_raster']:.3f} |" for r in rows)


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "—"


def reference_accuracy() -> dict:
    from .data import dequantise, quantise

    images, labels = split("val")
    clf = classifier()
    return {"real_val": clf.accuracy(images, labels), "quantised_val": clf.accuracy(dequantise(quantise(images)), labels)}


def run_bench(model: str, per_class: int | None, seed: int, sampling: dict, only: list[str] | None, kv_cache: bool,
              out: Path, tag: str, command: str, lpd: Path | None = None) -> dict:
    """Run the configs of the model's grid; writes bench-<grid>[-tag].json and the sample grid PNG
    under `out` and returns the report. per_class None: 20 images per class on 8×8, 5 on 16×16.
    `lpd`: an LPD model directory to use instead of the one beside the model."""
    from ..model import load

    lm = load(model)
    if lpd is not None:
        lm.state["image:lpd"] = load(str(lpd))
    grid = image_spec(lm).height
    per_class = per_class or (20 if grid <= 8 else 5)
    known = {name.split(" ")[0] for name, _ in CONFIGS[grid]}
    if only and not set(only) <= known:
        raise UserError(f"unknown image method(s) {sorted(set(only) - known)}; the digits suite runs {sorted(known)}")
    labels = [c for c in range(10) for _ in range(per_class)]
    results, rows = {}, []
    for name, params in CONFIGS[grid]:
        if only and name.split(" ")[0] not in only and not name.startswith("raster"):
            continue
        label = f"{name} {_params(params)}".strip() if params else name
        results[label] = run_config(lm, name, params, labels, seed + (10_000 if "2nd" in name else 0), sampling, kv_cache)
        print(f"# done {label}", file=sys.stderr, flush=True)
    raster_passes = float(np.mean(results["raster"]["forward_passes"]))
    for label, res in results.items():
        ref = results["raster (2nd run)"] if label == "raster" else results["raster"]
        rows.append({"label": label, **summarise(lm, res, ref, labels, raster_passes)})
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": model, "grid": grid, "per_class": per_class, "seed": seed, **sampling, "kv_cache": kv_cache,
              "classifier_reference": reference_accuracy(), "rows": rows, "command": command}
    suffix = f"{grid}{'-' + tag if tag else ''}"
    (out / f"bench-{suffix}.json").write_text(json.dumps(report, indent=1) + "\n")
    picks = [i for c in range(10) for i in range(c * per_class, c * per_class + min(2, per_class))]
    save_grid([(label, [res["pixels"][i] for i in picks]) for label, res in results.items()],
              out / f"samples-{suffix}.png", title=f"{model}: two samples per class 0–9, cfg {sampling['cfg_scale']}")
    return report


def run_suite(args) -> None:
    """`decodelab bench --suite digits`: this bench through the shared CLI. --model (default
    builtin:digits), --methods (image methods; raster always runs), --limit (images per class;
    default 20 on 8×8, 5 on 16×16), --seed, --out, --json and -p cfg_scale= / temperature=."""
    from ..cli import parse_params

    suites = [s.strip() for arg in args.suite for s in arg.split(",") if s.strip()]
    if suites != ["digits"]:
        raise UserError("the digits suite runs alone (image models, not text prompts): --suite digits")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit (images per class) must be ≥ 1, got {args.limit}")
    sampling = {"cfg_scale": 1.0, "temperature": 1.0}
    given = parse_params(args.param, {k: SAMPLING[k].default for k in sampling})
    if set(given) - set(sampling):
        raise UserError(f"the digits suite takes -p cfg_scale=… and -p temperature=… only, got {sorted(set(given) - set(sampling))}")
    sampling.update({k: SAMPLING[k].check(k, v) for k, v in given.items()})
    model = args.model or "builtin:digits"
    only = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    command = " ".join(["decodelab bench --suite digits --model", model, f"--seed {args.seed}"]
                       + [f"--limit {args.limit}"] * bool(args.limit) + [f"--methods {args.methods}"] * bool(args.methods)
                       + [f"-p {p}" for p in args.param])
    report = run_bench(model, args.limit, args.seed, sampling, only, True, Path(args.out), "", command)
    print(json.dumps({"out": args.out, "rows": report["rows"]}) if args.json else table(report["rows"]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin:digits")
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg-scale", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--only", nargs="*", help="method names to run (raster always runs)")
    p.add_argument("--no-kv-cache", action="store_true", help="recompute the sequence every pass (image/cache.py)")
    p.add_argument("--out", type=Path, default=Path("docs/visual"))
    p.add_argument("--tag", default="", help="suffix of the output files (bench-<grid>-<tag>.json, samples-…png)")
    p.add_argument("--lpd", type=Path, help="an LPD model directory instead of the one beside --model")
    p.add_argument("--table", type=Path, help="only print the Markdown table of a saved bench-*.json")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text())["rows"]))
        return
    torch.set_num_threads(1)
    sampling = {"cfg_scale": args.cfg_scale, "temperature": args.temperature}
    report = run_bench(args.model, args.per_class, args.seed, sampling, args.only, not args.no_kv_cache, args.out,
                       args.tag, "python -m decodelab.image.bench " + " ".join(argv), args.lpd)
    print(table(report["rows"]))
    print(json.dumps({"classifier_reference": report["classifier_reference"]}))


if __name__ == "__main__":
    main()
