"""Train the embedded image-token models on scikit-learn digits (minutes on a CPU).

    python -m decodelab.image.train --grid 8 --variant raster --out src/decodelab/builtin/digits
    python -m decodelab.image.train --all          # every embedded image model, in order

Class-conditional with label dropout 0.1 (the null class, for classifier-free guidance), AdamW,
cosine learning rate, the checkpoint with the lowest validation loss is kept. Variants: `raster`
(plain next-token), `lpd` (random orders + group schedules, position queries; layouts.py), `nar`
(anti-diagonal mask, horizontal + vertical heads; layouts.py). The log is one JSON line per
evaluation, written next to the model as `training_log.jsonl`.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import layouts
from .data import LEVELS, token_grids
from .model import ImageSpec, llama_config, run_model, save, slot_mask
from .zipar import zipar_training_layout

BUILTIN = Path(__file__).resolve().parent.parent / "builtin"
# (grid, variant, directory, steps, batch): the embedded models (sized for a shared 2-core CPU). MuLo-SD's drafter for digits16 is
# builtin:digits itself (the 2×2-pooled 16×16 grid is exactly the 8×8 grid).
BATCH = 48
EMBEDDED = [
    (8, "raster", "digits", 900, BATCH),
    (4, "raster", "digits/drafter", 500, BATCH),
    (8, "nar", "digits/nar", 600, BATCH),
    (8, "lpd", "digits/lpd", 400, 32),
    (16, "raster", "digits16", 250, 24),
]
LABEL_DROPOUT = 0.1


def batch_loss(model, spec: ImageSpec, tokens: torch.Tensor, labels: torch.Tensor, rng: random.Random,
               zipar: tuple[list[int], float] | None = None) -> torch.Tensor:
    """Mean CE over the grid for one batch. tokens [B, N], labels [B] (may hold the null class).
    `zipar` = (windows, share), raster only: that share of the samples is trained under the cached
    ZipAR sampler's context (a window drawn from `windows`; `_zipar_loss`)."""
    cls = labels + spec.levels
    if spec.variant == "raster" and zipar:
        windows, share = zipar
        return _zipar_loss(model, spec, tokens, cls, [rng.choice(windows) if rng.random() < share else spec.width
                                                      for _ in range(len(tokens))])
    if spec.variant == "raster":
        ids = torch.cat([cls[:, None], tokens[:, :-1]], dim=1)
        b, n = tokens.shape
        positions = torch.arange(n).expand(b, n)
        logits = run_model(model, ids, positions, slot_mask(torch.ones(b, n, dtype=torch.bool)))
        return F.cross_entropy(logits[..., : spec.levels].reshape(-1, spec.levels), tokens.reshape(-1))
    if spec.variant == "lpd":
        return _lpd_loss(model, spec, tokens, cls, rng)
    return _nar_loss(model, spec, tokens, cls)


@functools.cache
def _zipar_layout(h: int, w: int, window: int, rule: str = "above") -> tuple[torch.Tensor, list[tuple[int, int]]]:
    return zipar_training_layout(h, w, window, rule)


def _zipar_loss(model, spec, tokens, cls, windows: list[int]) -> torch.Tensor:
    logits, targets = zipar_logits(model, spec, tokens, cls, windows)
    return F.cross_entropy(logits.reshape(-1, spec.levels), targets.reshape(-1), ignore_index=-100)


def zipar_logits(model, spec, tokens, cls, windows: list[int], rule: str = "above") -> tuple[torch.Tensor, torch.Tensor]:
    """Raster-model CE with sample b seen as the cached fixed-window ZipAR sampler (window
    windows[b], `placeholder="above"`) sees it: every slot under the mask of the pass it is fed at,
    and each early row start's first token predicted from its placeholder (an extra query column;
    zipar.zipar_training_layout). Window W is plain raster training. Mean over the N tokens and
    the query columns. `zipar_logits`: logits [B, N + H - 2, K] and targets (-100: no target)."""
    b, n = tokens.shape
    extra = spec.height - 2
    ids = torch.cat([cls[:, None], tokens[:, :-1], tokens.new_full((b, extra), spec.mask_id)], dim=1)
    positions = torch.cat([torch.arange(n).expand(b, n), torch.zeros(b, extra, dtype=torch.long)], dim=1)
    targets = torch.cat([tokens, tokens.new_full((b, extra), -100)], dim=1)
    attend = torch.empty(b, n + extra, n + extra, dtype=torch.bool)
    for row, window in enumerate(windows):
        attend[row], extras = _zipar_layout(spec.height, spec.width, window, rule)
        for k, (p, source) in enumerate(extras):
            ids[row, n + k], positions[row, n + k], targets[row, n + k] = tokens[row, source], p, tokens[row, p]
    return run_model(model, ids, positions, attend)[..., : spec.levels], targets


def _lpd_loss(model, spec, tokens, cls, rng) -> torch.Tensor:
    b, n = tokens.shape
    gid = torch.empty(b, n, dtype=torch.long)
    for row in range(b):  # a uniformly random order and a random schedule per sample
        steps = rng.choice([s for s in (256, 128, 64, 32, 24, 20, 16, 12, 8) if s <= n])
        groups = torch.repeat_interleave(torch.arange(steps), torch.tensor(layouts.group_sizes(n, steps)))
        gid[row, torch.randperm(n)] = groups
    ids, positions = layouts.lpd_inputs(tokens, spec.mask_id)
    ids[:, 0] = cls
    logits = run_model(model, ids, positions, layouts.lpd_mask(gid))[:, n + 1:, : spec.levels]
    return F.cross_entropy(logits.reshape(-1, spec.levels), tokens.reshape(-1))


def _nar_loss(model, spec, tokens, cls) -> torch.Tensor:
    b, n = tokens.shape
    ids = torch.cat([cls[:, None], tokens], dim=1)
    positions = torch.arange(n + 1).expand(b, -1)
    attend = layouts.nar_mask(spec.height, spec.width).expand(b, -1, -1)
    out = run_model(model, ids, positions, attend)
    logits = layouts.nar_logits(out, spec.levels, spec.vertical_offset, spec.height, spec.width)
    return F.cross_entropy(logits.reshape(-1, spec.levels), tokens.reshape(-1))


def _initial_model(spec: ImageSpec, init: Path | None):
    """A fresh model, or `init`'s weights. A raster checkpoint can seed another variant of the same
    grid (e.g. NAR on 16×16 from builtin:digits16): every tensor of the same shape is copied; the
    rows a variant adds to the embedding / output head (NAR's vertical head) start as copies of
    the horizontal head's gray-level rows."""
    from transformers import LlamaForCausalLM

    if init is None:
        return LlamaForCausalLM(llama_config(spec))
    source = LlamaForCausalLM.from_pretrained(init)
    if source.config.vocab_size == spec.vocab_size:
        source.config.image = llama_config(spec).image  # the variant it is trained as from now on
        return source
    c = source.config
    model = LlamaForCausalLM(llama_config(spec, c.hidden_size, c.num_hidden_layers, c.num_attention_heads))
    state = model.state_dict()
    for name, tensor in source.state_dict().items():
        if name in state and state[name].shape == tensor.shape:
            state[name] = tensor
        elif name in state and state[name].shape[1:] == tensor.shape[1:]:  # embedding / head rows
            rows = min(len(tensor), len(state[name]))
            state[name][:rows] = tensor[:rows]
            extra = len(state[name]) - rows
            if name == "lm_head.weight" and extra > 0:
                state[name][rows:] = tensor[:extra]
    model.load_state_dict(state)
    return model


def _grid_tensors(part: str, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens, labels = token_grids(part, grid)
    return torch.from_numpy(tokens).reshape(len(labels), -1), torch.from_numpy(labels)


def train(grid: int, variant: str, out: Path, steps: int, batch_size: int = BATCH, lr: float = 2e-3,
          seed: int = 0, eval_every: int = 100, init: Path | None = None, minutes: float = 0,
          zipar_windows: list[int] | None = None, zipar_share: float = 0.5) -> dict:
    """`minutes` > 0 bounds the run: the cosine schedule follows max(step / steps, elapsed / minutes)
    and training stops (with a final evaluation) once that reaches 1. `zipar_windows` (raster
    only): a `zipar_share` of the samples is seen as the cached ZipAR sampler sees it (a window from
    the list); the log then also holds the validation CE under ZipAR s = 6 and the checkpoint kept
    is the one with the lowest raster + ZipAR validation CE."""
    zipar = (zipar_windows, zipar_share) if zipar_windows else None
    if zipar and variant != "raster":
        raise ValueError("--zipar-windows applies to the raster variant only")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    spec = ImageSpec(grid, grid, LEVELS, variant)
    model = _initial_model(spec, init)
    warm = json.loads((init / "training_summary.json").read_text()) if init else None
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    train_x, train_y = _grid_tensors("train", grid)
    val_x, val_y = _grid_tensors("val", grid)
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "training_log.jsonl").open("w")
    best, best_score, best_state, start, done = math.inf, math.inf, None, time.monotonic(), 0
    for step in range(1, steps + 1):
        progress = max(step / steps, (time.monotonic() - start) / (60 * minutes) if minutes > 0 else 0)
        last = step == steps or progress >= 1
        model.train()
        idx = torch.randint(len(train_y), (batch_size,))
        labels = torch.where(torch.rand(batch_size) < LABEL_DROPOUT, 10, train_y[idx])
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / 100) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))
        loss = batch_loss(model, spec, train_x[idx], labels, rng, zipar)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        done = step
        if step % eval_every == 0 or last:
            val = _evaluate(model, spec, val_x, val_y, random.Random(1))
            entry = {"step": step, "train_loss": round(loss.item(), 4), "val_loss": round(val, 4)}
            if zipar:
                entry["val_loss_zipar6"] = round(_evaluate(model, spec, val_x, val_y, random.Random(1), ([6], 1.0)), 4)
            log.write(json.dumps(entry) + "\n")
            log.flush()
            score = val + entry.get("val_loss_zipar6", 0)
            if score < best_score:
                best, best_score, best_state = val, score, {k: v.clone() for k, v in model.state_dict().items()}
        if last:
            break
    model.load_state_dict(best_state)
    summary = {"grid": grid, "variant": variant, "levels": LEVELS, "steps": done, "batch_size": batch_size,
               "lr": lr, "seed": seed, "label_dropout": LABEL_DROPOUT, "best_val_loss_nats_per_token": round(best, 4),
               "params": sum(p.numel() for p in model.parameters()),
               "command": f"python -m decodelab.image.train --grid {grid} --variant {variant} --steps {steps} "
                          f"--batch-size {batch_size} --lr {lr} --seed {seed}{f' --init {init}' if init else ''}"
                          f"{f' --minutes {minutes}' if minutes else ''} --out {out}",
               "hardware": "shared 2-core CPU (nice -n 10)", "initialised_from": warm}
    if zipar:
        summary["zipar_windows"], summary["zipar_share"] = zipar_windows, zipar_share
        summary["command"] += f" --zipar-windows {' '.join(map(str, zipar_windows))} --zipar-share {zipar_share}"
    save(model, spec, out, summary)
    return summary


@torch.no_grad()
def _evaluate(model, spec, val_x, val_y, rng, zipar: tuple[list[int], float] | None = None) -> float:
    model.eval()
    losses = [batch_loss(model, spec, val_x[i:i + 128], val_y[i:i + 128], rng, zipar).item() * len(val_y[i:i + 128])
              for i in range(0, len(val_y), 128)]
    return sum(losses) / len(val_y)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", type=int, choices=(4, 8, 16), default=8)
    p.add_argument("--variant", choices=("raster", "lpd", "nar"), default="raster")
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--batch-size", type=int, default=BATCH)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=0, help="wall-clock bound (the cosine schedule follows it)")
    p.add_argument("--init", type=Path, help="continue from this model directory's weights")
    p.add_argument("--zipar-windows", type=int, nargs="*", help="raster: train a share of the samples under the cached "
                   "ZipAR sampler's context with these windows (placeholder 'above')")
    p.add_argument("--zipar-share", type=float, default=0.5, help="with --zipar-windows: share of the samples")
    p.add_argument("--out", type=Path)
    p.add_argument("--all", action="store_true", help="train every embedded image model into src/decodelab/builtin")
    p.add_argument("--only", nargs="*", help="with --all: only these directories (e.g. digits digits/lpd)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.all:
        for grid, variant, name, steps, batch in EMBEDDED:
            if not args.only or name in args.only:
                print(json.dumps(train(grid, variant, BUILTIN / name, steps, batch)), flush=True)
        return
    if args.out is None:
        p.error("--out is required without --all")
    print(json.dumps(train(args.grid, args.variant, args.out, args.steps, args.batch_size, args.lr, seed=args.seed,
                           init=args.init, minutes=args.minutes, zipar_windows=args.zipar_windows,
                           zipar_share=args.zipar_share)))


if __name__ == "__main__":
    main()
