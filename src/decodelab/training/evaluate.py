"""Numbers for the model card: validation cross-entropy of target, draft and a bigram baseline,
draft/target top-1 agreement, per-token decode cost of each (ms/token at batch 1 on this machine, and
the draft ÷ target ratio), and greedy completions of test-split function headers.

`decodelab model-card [--windows N]` prints them as JSON (docs/MODELS.md quotes that output).
"""

from __future__ import annotations

import math
import statistics

import torch

from ..model import LM, load
from .corpus import load_split


def _valid_stream(lm: LM, need: int | None = None) -> torch.Tensor:
    """`<bos> file <eos> …` over the validation split, stopping once it holds `need` tokens."""
    bos, eos = lm.tokenizer.bos_token_id, lm.tokenizer.eos_token_id
    ids: list[int] = []
    for f in load_split("valid"):
        if need is not None and len(ids) >= need:
            break
        ids += [bos, *lm.encode(f.text), eos]
    return torch.tensor(ids)


def _windows(stream: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """[n, length + 1] consecutive non-overlapping windows from the start of the stream."""
    n = min(n, (stream.numel() - 1) // length)
    return torch.stack([stream[i * length : (i + 1) * length + 1] for i in range(n)])


@torch.inference_mode()
def cross_entropy_and_argmax(lm: LM, windows: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Mean next-token CE (nats/token) and the argmax predictions [n, length]."""
    total, preds = 0.0, []
    for row in windows:
        logits = lm.session().forward(row[None, :-1])[0]
        total += torch.nn.functional.cross_entropy(logits, row[1:].to(lm.device), reduction="sum").item()
        preds.append(logits.argmax(-1).cpu())
    return total / windows[:, 1:].numel(), torch.stack(preds)


def bigram_cross_entropy(lm: LM, windows: torch.Tensor, add_k: float = 0.1, max_files: int | None = None) -> float:
    """CE of an add-k smoothed bigram model counted on the train split (its first max_files files)."""
    bos, eos = lm.tokenizer.bos_token_id, lm.tokenizer.eos_token_id
    V = lm.vocab_size
    pairs = []
    for f in load_split("train")[:max_files]:
        ids = torch.tensor([bos, *lm.encode(f.text), eos])
        pairs.append(ids[:-1] * V + ids[1:])
    counts = torch.bincount(torch.cat(pairs), minlength=V * V).double().view(V, V) + add_k
    logp = counts.log() - counts.sum(1, keepdim=True).log()
    a, b = windows[:, :-1].flatten(), windows[:, 1:].flatten()
    return float(-logp[a, b].mean())


def completions(lm: LM, n: int = 3, max_new_tokens: int = 48) -> list[dict]:
    from ..api import generate
    from ..bench.suites import load_suite

    out = []
    for p in load_suite("code").prompts[:n]:
        ids = lm.encode(p.text)[-(lm.max_length - max_new_tokens):]  # a short-context model sees the end
        out.append({"prompt": lm.decode(ids), "completion": generate(lm, ids, max_new_tokens=max_new_tokens).text})
    return out


@torch.inference_mode()
def ms_per_token(lm: LM, prompt: str, new_tokens: int = 64, repeats: int = 3) -> float:
    """Median wall time per greedy decode step at batch 1 (prefill excluded), in milliseconds."""
    from ..bench.decode_cost import session_ms

    ids = lm.encode(prompt)
    times = [session_ms(lm, ids, new_tokens) for _ in range(repeats + 1)]  # the first run warms up
    return statistics.median(times[1:])


def model_card(target: str = "builtin:pyco", draft: str = "builtin:pyco-draft", n_windows: int = 32,
               length: int = 512, bigram_files: int | None = None, backend: str = "auto") -> dict:
    t, d = load(target, backend=backend), load(draft, backend=backend)
    windows = _windows(_valid_stream(t, n_windows * length + 1), n_windows, length)
    ce_t, pred_t = cross_entropy_and_argmax(t, windows)
    ce_d, pred_d = cross_entropy_and_argmax(d, windows)
    prompt = "import os\n\n\ndef main():"
    ms_t, ms_d = ms_per_token(t, prompt), ms_per_token(d, prompt)
    n_params = [m.n_params for m in (t, d)]
    return {
        "validation_tokens": int(windows[:, 1:].numel()),
        "target_params": n_params[0], "draft_params": n_params[1],
        "target_ms_per_token": round(ms_t, 3), "draft_ms_per_token": round(ms_d, 3),
        "draft_cost_ratio": round(ms_d / ms_t, 4),
        "target_ce": round(ce_t, 4), "draft_ce": round(ce_d, 4),
        "bigram_ce": round(bigram_cross_entropy(t, windows, max_files=bigram_files), 4),
        "uniform_ce": round(math.log(t.vocab_size), 4),
        "top1_agreement": round(float((pred_t == pred_d).float().mean()), 4),
        "target_top1_accuracy": round(float((pred_t == windows[:, 1:]).float().mean()), 4),
        "draft_top1_accuracy": round(float((pred_d == windows[:, 1:]).float().mean()), 4),
        "completions": completions(t),
    }
