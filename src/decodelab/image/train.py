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


def batch_loss(model, spec: ImageSpec, tokens: torch.Tensor, labels: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Mean CE over the grid for one batch. tokens [B, N], labels [B] (may hold the null class)."""
    cls = labels + spec.levels
    if spec.variant == "raster":
        ids = torch.cat([cls[:, None], tokens[:, :-1]], dim=1)
        b, n = tokens.shape
        positions = torch.arange(n).expand(b, n)
        logits = run_model(model, ids, positions, slot_mask(torch.ones(b, n, dtype=torch.bool)))
        return F.cross_entropy(logits[..., : spec.levels].reshape(-1, spec.levels), tokens.reshape(-1))
    if spec.variant == "lpd":
        return _lpd_loss(model, spec, tokens, cls, rng)
    return _nar_loss(model, spec, tokens, cls)


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
          seed: int = 0, eval_every: int = 100, init: Path | None = None, minutes: float = 0) -> dict:
    """`minutes` > 0 bounds the run: the cosine schedule follows max(step / steps, elapsed / minutes)
    and training stops (with a final evaluation) once that reaches 1."""
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
    best, best_state, start, done = math.inf, None, time.monotonic(), 0
    for step in range(1, steps + 1):
        progress = max(step / steps, (time.monotonic() - start) / (60 * minutes) if minutes > 0 else 0)
        last = step == steps or progress >= 1
        model.train()
        idx = torch.randint(len(train_y), (batch_size,))
        labels = torch.where(torch.rand(batch_size) < LABEL_DROPOUT, 10, train_y[idx])
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / 100) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))
        loss = batch_loss(model, spec, train_x[idx], labels, rng)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        done = step
        if step % eval_every == 0 or last:
            val = _evaluate(model, spec, val_x, val_y, random.Random(1))
            log.write(json.dumps({"step": step, "train_loss": round(loss.item(), 4), "val_loss": round(val, 4)}) + "\n")
            log.flush()
            if val < best:
                best, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
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
    save(model, spec, out, summary)
    return summary


@torch.no_grad()
def _evaluate(model, spec, val_x, val_y, rng) -> float:
    model.eval()
    losses = [batch_loss(model, spec, val_x[i:i + 128], val_y[i:i + 128], rng).item() * len(val_y[i:i + 128])
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
                           init=args.init, minutes=args.minutes)))


if __name__ == "__main__":
    main()
