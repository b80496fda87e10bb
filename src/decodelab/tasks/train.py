"""Train the task models `builtin:tasks-ar` and `builtin:tasks-diffusion` (same size, same data).

    python -m decodelab.tasks.train --kind diffusion --out runs/tasks-diffusion [--steps 1000 --batch-size 32]
    python -m decodelab.tasks.train --kind ar        --out runs/tasks-ar        [--steps 1000 --batch-size 32]

Data: `TRAIN_PER_TASK` items per task from `decodelab.tasks.make(task, n, TRAIN_SEED)`, minus any
item whose prompt also appears in the evaluation items (seed 0: the first 1,000 items; seeds 1–4: the first 200), so the evaluation
in evaluate.py is on unseen items. A row is `prompt answer <|eos|>`; the AR model learns the answer
and the EOS by next-token cross-entropy; the diffusion model sees the answer followed by EOS
padding up to a random canvas of ≤ `MAX_GEN` tokens (LLaDA's SFT recipe: EOS padding is part of
the response) and learns it with the masked-diffusion objective (diffusion/objective.py), the
prompt never masked. The run directory keeps `ckpt.pt` (a killed run resumes), `log.jsonl` and,
at the end, `model/`: a Hugging Face directory in float16 with the tokenizer.
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

from ..diffusion.objective import diffusion_loss, mask_tokens
from ..diffusion.train import resume
from . import tokenizer as task_tokenizer
from .generators import make, names

TRAIN_SEED, TRAIN_PER_TASK, EVAL_SEEDS, EVAL_N = 1000, 6000, range(5), 1000
MAX_GEN, MAX_LEN = 24, 128
MODEL = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=MAX_LEN, rms_norm_eps=1e-6, tie_word_embeddings=True)


def training_items() -> list[tuple[str, str]]:
    held_out = {it.prompt for t in names() for s in EVAL_SEEDS for it in make(t, EVAL_N if s == 0 else 200, s)}
    return [(it.prompt, it.answer) for t in names() for it in make(t, TRAIN_PER_TASK, TRAIN_SEED)
            if it.prompt not in held_out]


def build_model(kind: str, tok, init_from: Path | None = None):
    """A fresh model; `init_from` (diffusion only): an AR Llama directory whose weights initialise it,
    with Dream's shifted logits so the AR head's next-token predictions keep their meaning."""
    torch.manual_seed(0)
    if kind == "ar":
        from transformers import LlamaConfig, LlamaForCausalLM

        conf = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id, **MODEL)
        return LlamaForCausalLM(conf)
    from ..diffusion.model import DiffusionConfig, DiffusionForMaskedLM

    conf = DiffusionConfig(vocab_size=len(tok), mask_token_id=tok.mask_token_id, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                           logit_shift=init_from is not None, **MODEL)
    model = DiffusionForMaskedLM(conf)
    if init_from is not None:  # AR-to-diffusion adaptation (Dream 7B, arXiv:2508.15487)
        from safetensors.torch import load_file

        state = {k: v.float() for k, v in load_file(Path(init_from) / "model.safetensors").items()}
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
        model.load_state_dict(state, strict=True)
    return model


def make_batch(rows: list[tuple[list[int], list[int]]], kind: str, tok, rng: random.Random):
    """(ids [B, T], attention [B, T], target-region [B, T] bool) right-padded with <|pad|>."""
    seqs, regions = [], []
    for prompt, answer in rows:
        resp = answer + [tok.eos_token_id]
        if kind == "diffusion":
            resp += [tok.eos_token_id] * (rng.randint(len(resp), MAX_GEN) - len(resp))
        seqs.append(prompt + resp)
        regions.append([False] * len(prompt) + [True] * len(resp))
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
    attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    region = torch.tensor([r + [False] * (width - len(r)) for r in regions])
    return ids, attn, region


def loss_of(model, kind, ids, attn, region, mask_id, gen):
    if kind == "ar":
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
        target = ids[:, 1:].masked_fill(~region[:, 1:], -100)
        return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=-100)
    noisy, masked, p_mask = mask_tokens(ids, region, mask_id, gen)
    logits = model(input_ids=noisy, attention_mask=attn).logits
    return diffusion_loss(logits, ids, masked, p_mask, region)


def lr_at(step: int, steps: int, lr: float, warmup: int = 100) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))


def export_checkpoint(kind: str, out: Path, dest: Path) -> Path:
    """Export the run's latest checkpoint (e.g. of a run still in progress) to `dest`."""
    tok = task_tokenizer.build(MAX_LEN)
    state = torch.load(out / "ckpt.pt", weights_only=False)
    model = build_model(kind, tok)
    model.load_state_dict(state["model"])
    model.config.logit_shift = state.get("logit_shift", False)
    return export(model, tok, dest, kind, state["step"], 0, state["wall"])


def train(kind: str, out: Path, steps: int, batch_size: int = 32, lr: float = 2e-3,
          init_from: Path | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    tok = task_tokenizer.build(MAX_LEN)
    cache = out / "data.json"  # the tokenised items, so a resumed run skips generating them
    if not cache.exists():
        cache.write_text(json.dumps([(tok.encode(p, add_special_tokens=False), tok.encode(a, add_special_tokens=False))
                                     for p, a in training_items()]))
    data = [tuple(row) for row in json.loads(cache.read_text())]
    model = build_model(kind, tok, init_from)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    rng, gen, step, wall = random.Random(0), torch.Generator().manual_seed(0), 0, 0.0
    ckpt = out / "ckpt.pt"
    state = resume(ckpt, model, opt)
    if state:
        rng.setstate(state["rng"])
        gen.set_state(state["gen"])
        step, wall = state["step"], state["wall"]
    with (out / "log.jsonl").open("a") as log:
        while step < steps:
            t0 = time.perf_counter()
            ids, attn, region = make_batch(rng.sample(data, batch_size), kind, tok, rng)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, lr)
            loss = loss_of(model, kind, ids, attn, region, tok.mask_token_id, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step, wall = step + 1, wall + time.perf_counter() - t0
            log.write(json.dumps({"step": step, "loss": round(loss.item(), 4), "wall_s": round(wall, 1)}) + "\n")
            log.flush()
            if step % 200 == 0 or step == steps:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": rng.getstate(),
                            "gen": gen.get_state(), "step": step, "wall": wall,
                            "logit_shift": bool(getattr(model.config, "logit_shift", False))}, ckpt)
    return export(model, tok, out / "model", kind, steps, batch_size, wall)


def export(model, tok, dest: Path, kind: str, steps: int, batch_size: int, wall: float) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    summary = {"kind": kind, "steps": steps, "batch_size": batch_size, "wall_time_s": round(wall, 1),
               "params": sum(p.numel() for p in model.parameters()), "device": "cpu (shared 2-core, nice 10)",
               "torch": torch.__version__, "command": f"python -m decodelab.tasks.train --kind {kind} --steps {steps}"}
    (dest / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return dest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("ar", "diffusion"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="diffusion only: initialise from this AR model directory (shifted logits)")
    parser.add_argument("--export-to", type=Path, default=None, help="only export the latest checkpoint here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.export_to:
        print(export_checkpoint(args.kind, args.out, args.export_to))
        return
    print(train(args.kind, args.out, args.steps, args.batch_size, args.lr, args.init_from))


if __name__ == "__main__":
    main()
