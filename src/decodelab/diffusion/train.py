"""Train `builtin:pyco-diffusion`: a masked-diffusion LM on builtin:pyco's Python corpus and tokenizer.

    python -m decodelab.diffusion.train --out runs/pyco-diffusion --init-from builtin:pyco \
        [--steps 600 --seq-len 256 --batch-size 8 --lr 1e-3 --threads 1]
    python -m decodelab.diffusion.train --out runs/pyco-diffusion --export-to DIR   # export the latest checkpoint

Objective: LLaDA / MDLM (diffusion/objective.py; "Large Language Diffusion Models", arXiv:2502.09992;
"Simple and Effective Masked Diffusion Language Models", arXiv:2406.07524) on random windows of the
stdlib train split (training/corpus.py, the same stream builtin:pyco was trained on; no FIM — a
diffusion model infills natively). Half the rows keep a random prefix (up to half the window)
unmasked, so the model also sees the prompt-conditioned case that generation is.

`--init-from` an AR Llama directory (builtin:pyco) is the AR-to-diffusion adaptation of DiffuLLaMA
("Scaling Diffusion Language Models via Adaptation from Autoregressive Models", arXiv:2410.17891)
and Dream ("Dream 7B", arXiv:2508.15487): the same weights, attention made bidirectional, logits
shifted by one position (Dream) so the AR head's next-token predictions keep their meaning.
The run directory keeps `ckpt.pt` (a killed run resumes), `log.jsonl` (loss per step, validation
masked-token loss / accuracy) and, at the end, `model/`: a float16 Hugging Face directory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ..training.train import TrainConfig, lr_at, sample_batch, tokenize_split
from .model import DiffusionConfig, DiffusionForMaskedLM
from .objective import diffusion_loss, mask_tokens

EVAL_RATIOS = (0.15, 0.5, 0.9)  # fixed mask ratios of the validation metric


def ar_to_diffusion(ar_dir: Path, mask_token_id: int, max_len: int) -> DiffusionForMaskedLM:
    """A DiffusionForMaskedLM with an AR Llama directory's weights and shifted logits (Dream)."""
    from safetensors.torch import load_file

    ar = json.loads((ar_dir / "config.json").read_text())
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "rms_norm_eps", "bos_token_id", "eos_token_id", "pad_token_id")
    conf = DiffusionConfig(**{k: ar[k] for k in keys if k in ar}, mask_token_id=mask_token_id,
                           max_position_embeddings=max_len, logit_shift=True,
                           rope_theta=(ar.get("rope_parameters") or {}).get("rope_theta", ar.get("rope_theta", 1e4)))
    model = DiffusionForMaskedLM(conf)
    state = {k: v.float() for k, v in load_file(ar_dir / "model.safetensors").items()}
    state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    model.load_state_dict(state, strict=True)
    return model


def scratch_model(cfg: TrainConfig, tok, max_len: int) -> DiffusionForMaskedLM:
    """A randomly initialised model of the config's size (the from-scratch comparison)."""
    torch.manual_seed(cfg.seed)
    m = {k: v for k, v in cfg.model.items() if k not in ("rope_theta", "max_position_embeddings")}
    return DiffusionForMaskedLM(DiffusionConfig(vocab_size=len(tok), mask_token_id=tok.mask_token_id,
                                                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                                pad_token_id=tok.pad_token_id, max_position_embeddings=max_len,
                                                rope_theta=cfg.model.get("rope_theta", 1e4), **m))


def maskable_rows(ids: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """[B, T] bool: half the rows keep a random prefix of up to T/2 tokens unmasked (the prompt)."""
    b, t = ids.shape
    prefix = torch.randint(0, t // 2 + 1, (b, 1), generator=gen)
    prefix = torch.where(torch.rand(b, 1, generator=gen) < 0.5, prefix, torch.zeros_like(prefix))
    return torch.arange(t)[None] >= prefix


@torch.no_grad()
def validate(model, stream: torch.Tensor, seq_len: int, mask_id: int, batches: int = 4, batch: int = 8) -> dict:
    """Masked-token CE and accuracy at fixed mask ratios on the first windows of the valid split."""
    model.eval()
    rows = torch.stack([stream[i * seq_len:(i + 1) * seq_len].long() for i in range(batches * batch)])
    out = {}
    for ratio in EVAL_RATIOS:
        gen = torch.Generator().manual_seed(0)
        ce = correct = n = 0.0
        for chunk in rows.split(batch):
            masked = torch.rand(chunk.shape, generator=gen) < ratio
            logits = model(input_ids=chunk.masked_fill(masked, mask_id)).logits.float()[masked]
            ce += torch.nn.functional.cross_entropy(logits, chunk[masked], reduction="sum").item()
            correct += (logits.argmax(-1) == chunk[masked]).sum().item()
            n += masked.sum().item()
        out[f"valid_ce@{ratio}"], out[f"valid_acc@{ratio}"] = round(ce / n, 4), round(correct / n, 4)
    model.train()
    return out


def _pyco_tokenizer():
    from transformers import PreTrainedTokenizerFast

    from ..model.lm import builtin_path

    return PreTrainedTokenizerFast.from_pretrained(builtin_path("builtin:pyco"))


def _ar_dir(init_from: str) -> Path:
    from ..model.lm import builtin_path

    return builtin_path(init_from) if init_from.startswith("builtin:") else Path(init_from)


def build(cfg: TrainConfig, tok, init_from: str | None, seq_len: int) -> DiffusionForMaskedLM:
    if init_from:
        return ar_to_diffusion(_ar_dir(init_from), tok.mask_token_id, max(seq_len, cfg.model["max_position_embeddings"]))
    return scratch_model(cfg, tok, max(seq_len, cfg.model["max_position_embeddings"]))


def resume(ckpt: Path, model, opt) -> dict | None:
    """Restore model and optimizer from a run's checkpoint; the rest of it (step, RNG) is the caller's."""
    if not ckpt.exists():
        return None
    state = torch.load(ckpt, weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    return state


def train(out: Path, steps: int, seq_len: int, batch_size: int, lr: float, init_from: str | None,
          ckpt_every: int = 25, eval_every: int = 100, stop_after: int | None = None, command: str = "") -> Path:
    cfg = TrainConfig.load("pyco")
    cfg.steps, cfg.seq_len, cfg.batch_size, cfg.lr, cfg.fim_rate, cfg.warmup = steps, seq_len, batch_size, lr, 0.0, 50
    out.mkdir(parents=True, exist_ok=True)
    tok = _pyco_tokenizer()
    train_stream, valid_stream = tokenize_split(tok, "train", cfg, out), tokenize_split(tok, "valid", cfg, out)
    model = build(cfg, tok, init_from, seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    gen, step, wall = torch.Generator().manual_seed(cfg.seed), 0, 0.0
    ckpt = out / "ckpt.pt"
    state = resume(ckpt, model, opt)
    if state:
        gen.set_state(state["gen"])
        step, wall = state["step"], state["wall"]
    mask_id = tok.mask_token_id
    end = min(steps, stop_after or steps)
    with (out / "log.jsonl").open("a") as log:
        if step == 0:
            log.write(json.dumps({"step": 0, "init_from": init_from, **validate(model, valid_stream, seq_len, mask_id)}) + "\n")
        while step < end:
            t0 = time.perf_counter()
            ids = sample_batch(train_stream, cfg, None, gen)[:, :-1]
            maskable = maskable_rows(ids, gen)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            noisy, masked, p_mask = mask_tokens(ids, maskable, mask_id, gen)
            loss = diffusion_loss(model(input_ids=noisy).logits, ids, masked, p_mask, maskable)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step, wall = step + 1, wall + time.perf_counter() - t0
            rec = {"step": step, "loss": round(loss.item(), 4), "lr": lr_at(step - 1, cfg), "wall_s": round(wall, 1)}
            if step % eval_every == 0 or step == end:
                rec.update(validate(model, valid_stream, seq_len, mask_id))
            log.write(json.dumps(rec) + "\n")
            log.flush()
            if step % ckpt_every == 0 or step == end:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                            "step": step, "wall": wall, "config": model.config.to_dict(), "init_from": init_from,
                            "command": command}, ckpt)
    return export(out, out / "model")


def export(out: Path, dest: Path) -> Path:
    """Export the run's latest checkpoint (also of a run in progress) as a float16 HF directory."""
    state = torch.load(out / "ckpt.pt", weights_only=False)
    model = DiffusionForMaskedLM(DiffusionConfig.from_dict(state["config"]))
    model.load_state_dict(state["model"])
    dest.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(dest, safe_serialization=True)
    tok = _pyco_tokenizer()
    tok.save_pretrained(dest)
    init = state.get("init_from")
    summary = {"steps": state["step"], "wall_time_s": round(state["wall"], 1), "init_from": init,
               "params": sum(p.numel() for p in model.parameters()),
               "device": "cpu (shared 2-core, nice 10, 1 thread)", "torch": torch.__version__,
               "command": state.get("command") or "python -m decodelab.diffusion.train --out RUN"
               + (f" --init-from {init}" if init else "")}
    (dest / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return dest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--init-from", default=None, help="an AR Llama directory or builtin:NAME (e.g. builtin:pyco)")
    parser.add_argument("--steps", type=int, default=600, help="LR schedule length")
    parser.add_argument("--stop-after", type=int, default=None, help="end early (the schedule still spans --steps)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--export-to", type=Path, default=None, help="only export the latest checkpoint here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.export_to:
        print(export(args.out, args.export_to))
        return
    command = "python -m decodelab.diffusion.train " + " ".join(argv if argv is not None else sys.argv[1:])
    print(train(args.out, args.steps, args.seq_len, args.batch_size, args.lr, args.init_from,
                stop_after=args.stop_after, command=command))


if __name__ == "__main__":
    main()
