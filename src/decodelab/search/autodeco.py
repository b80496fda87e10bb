"""AutoDeco: small heads on a frozen model predict each token's temperature and top-p.

Wang et al., "The End of Manual Decoding: Towards Truly End-to-End Language Models", arXiv:2510.26697.
On the last (normed) hidden state h of the frozen base model:

- temperature head  T̂ = 2·σ(MLP_T(h)),  MLP = Linear(d, 256) – ReLU – Linear(256, 1);
- top-p head  P̂ = σ(MLP_P([h, stopgrad(T̂), max-prob, entropy, variance, top-5 mass])), the four
  statistics of softmax(l / T̂);
- decoding: the next token is drawn from the top-P̂ nucleus of softmax(l / T̂), computed in the same
  forward pass (the request's penalties and grammar act on l first).

Training (`python -m decodelab.search.autodeco train`, base frozen; `train` below): L_T = cross-entropy
of softmax(l / max(T̂, 0.01)) on the training split, where 60 % of the positions whose base argmax is
already right are dropped; L_P = cross-entropy of the soft top-p distribution q ∝ p·exp(−30·ReLU(c − P̂)),
p = softmax(l / T̂), c = the probability mass ranked above each token (ours: exclusive, so the top token
always survives), with T̂ detached. The heads for `builtin:pyco` ship in
`src/decodelab/builtin/pyco-autodeco/heads.safetensors`; their training log is docs/search/autodeco-log.jsonl.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..processors.distortion import log_kept_mass
from ..processors.warpers import Temperature, TopP

WIDTH = 256
DEFAULT_HEADS = Path(__file__).resolve().parent.parent / "builtin" / "pyco-autodeco" / "heads.safetensors"


def mlp(d_in: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 1))


def distribution_stats(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """[..., V] logits, [...] T̂ → [..., 4]: max-prob, entropy, variance, top-5 mass of softmax(l / T̂)."""
    logp = (logits / temperature[..., None]).log_softmax(dim=-1)
    p = logp.exp()
    entropy = -(p * logp).nan_to_num(0.0).sum(-1)
    top5 = p.topk(min(5, p.shape[-1]), dim=-1).values.sum(-1)
    return torch.stack([p.amax(-1), entropy, p.var(-1), top5], dim=-1)


class AutoDecoHeads(nn.Module):
    """T̂ and P̂ from the hidden state h [..., d] and the logits l [..., V] of the same position."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.temperature = mlp(hidden_size)
        self.top_p = mlp(hidden_size + 5)

    def forward(self, hidden: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # hidden [..., d], logits [..., V] → T̂ [...] in (0, 2), P̂ [...] in (0, 1)
        t_hat = 2 * torch.sigmoid(self.temperature(hidden)).squeeze(-1)
        t_used = t_hat.detach().clamp_min(0.01)
        features = torch.cat([hidden, t_used[..., None], distribution_stats(logits.float(), t_used)], dim=-1)
        return t_hat, torch.sigmoid(self.top_p(features)).squeeze(-1)


def load_heads(lm, path: str | Path | None = None) -> AutoDecoHeads:
    """Heads from a safetensors file (default: the shipped ones for builtin:pyco), checked against lm."""
    from safetensors.torch import load_file

    path = Path(path) if path else DEFAULT_HEADS
    if not path.is_file():
        raise UserError(f"autodeco heads not found: {path} (train them: python -m decodelab.search.autodeco train)")
    try:
        state = load_file(str(path))
        d = state["temperature.0.weight"].shape[1]
    except Exception as exc:  # not a safetensors file of these heads
        raise UserError(f"{path} is not an autodeco heads file: {str(exc).splitlines()[0][:200]}") from None
    if d != hidden_size(lm):
        raise UserError(f"autodeco heads in {path} take hidden size {d}; {lm.name} has {hidden_size(lm)} "
                        "(the shipped heads are for builtin:pyco; pass heads= trained for this model)")
    heads = AutoDecoHeads(d)
    try:
        heads.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"{path} is not an autodeco heads file: {str(exc).splitlines()[0][:200]}") from None
    return heads.eval()


def hidden_size(lm) -> int:
    cfg = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    return int(cfg.hidden_size)


def step_distribution(sampler, heads: AutoDecoHeads, history, logits: torch.Tensor, hidden: torch.Tensor):
    """[B, V] logits and [B, d] last hidden states → (probs [B, V], T̂ [B], P̂ [B], log Z_t [B]): the
    request's logits processors, then temperature T̂ and top-P̂ of each row."""
    processed = logits
    for processor in sampler.logits_processors:
        processed = processor(history, processed)
    t_hat, p_hat = heads(hidden.float(), logits.float())
    rows = []
    for b in range(logits.shape[0]):
        scaled = Temperature(max(float(t_hat[b]), 0.01))(None, processed[b : b + 1])
        rows.append(TopP(float(p_hat[b]))(None, scaled))
    warped = torch.cat(rows)
    log_z = log_kept_mass(processed, warped, t_hat.clamp_min(0.01)[:, None])  # Σ_kept p^{1/T̂}, per row
    return warped.float().softmax(-1), t_hat, p_hat, log_z


@torch.inference_mode()
def autodeco(ctx, heads: AutoDecoHeads) -> Iterator[list[list[int]]]:
    """One token per row per step from top-P̂ of softmax(l / T̂) (T̂, P̂ from the heads in the same pass)."""
    from ..methods.autoregressive import sample_rows

    session = ctx.session()
    ids, mask = ctx.padded_prompts
    logits, hidden = session.forward(ids, pad_mask=mask, hidden=True)
    while True:
        history = ctx.history() if ctx.sampler.needs_history else None
        probs, t_hat, p_hat, log_z = step_distribution(ctx.sampler, heads, history, logits[:, -1], hidden[-1][:, -1])
        token = sample_rows(ctx, probs)  # [B]
        for b, z in enumerate(log_z.tolist()):
            ctx.log_z[b].append(z)
        yield [[t] for t in token.tolist()]
        logits, hidden = session.forward(token[:, None], hidden=True)


# ---------------------------------------------------------------- training (base model frozen)

def training_positions(lm, texts: list[str], seq_len: int, windows: int, seed: int):
    """(h [N, d], targets [N]) of `windows` random seq_len-token windows of the texts, from one frozen
    forward per window (h = the last normed hidden state, the LM head's input)."""
    gen = torch.Generator().manual_seed(seed)
    stream = [t for text in texts for t in lm.encode(text) + list(lm.eos_token_ids)[:1]]
    starts = torch.randint(0, len(stream) - seq_len - 1, (windows,), generator=gen).tolist()
    hs, ys = [], []
    with torch.no_grad():  # not inference_mode: the heads train on these tensors
        for s in starts:
            window = stream[s : s + seq_len + 1]
            _, hidden = lm.session().forward(window[:-1], hidden=True)
            hs.append(hidden[-1][0].float())
            ys.append(torch.tensor(window[1:]))
    return torch.cat(hs), torch.cat(ys)


def losses(heads: AutoDecoHeads, head_weight: torch.Tensor, h: torch.Tensor, y: torch.Tensor,
           gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_T, L_P) on a batch of positions; head_weight [V, d] is the frozen LM head."""
    logits = h @ head_weight.T  # [N, V]
    t_hat, p_hat = heads(h, logits)
    right = logits.argmax(-1) == y
    keep = ~right | (torch.rand(y.shape, generator=gen) >= 0.6)  # drop 60 % of the already-right positions
    ce = nn.functional.cross_entropy(logits / t_hat.clamp_min(0.01)[:, None], y, reduction="none")
    loss_t = (ce * keep).sum() / keep.sum().clamp_min(1)
    p = (logits / t_hat.detach().clamp_min(0.01)[:, None]).softmax(-1)
    sorted_p, order = p.sort(dim=-1, descending=True)
    above = sorted_p.cumsum(-1) - sorted_p  # mass ranked above each token
    mask = torch.exp(-30 * torch.relu(above - p_hat[:, None]))
    q = torch.zeros_like(p).scatter(-1, order, sorted_p * mask)
    q = q / q.sum(-1, keepdim=True)
    loss_p = -(q.gather(-1, y[:, None]).squeeze(-1).clamp_min(1e-12).log()).mean()
    return loss_t, loss_p


def train(lm, texts: list[str], valid: list[str], *, steps: int = 600, batch: int = 256, seq_len: int = 128,
          windows: int = 160, lr: float = 1e-3, seed: int = 0, log: Path | None = None) -> AutoDecoHeads:
    """Train the two heads on the frozen lm; one JSON line per logged step in `log`."""
    torch.manual_seed(seed)
    head_weight = lm.model.get_output_embeddings().weight.detach().float()
    h, y = training_positions(lm, texts, seq_len, windows, seed)
    hv, yv = training_positions(lm, valid, seq_len, max(windows // 8, 2), seed + 1)
    heads = AutoDecoHeads(h.shape[1])
    opt = torch.optim.Adam(heads.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    lines, t0 = [], time.time()
    for step in range(steps + 1):
        idx = torch.randint(0, len(y), (batch,), generator=gen)
        loss_t, loss_p = losses(heads, head_weight, h[idx], y[idx], gen)
        if step % 50 == 0 or step == steps:
            lines.append({"step": step, "loss_t": round(loss_t.item(), 4), "loss_p": round(loss_p.item(), 4),
                          **evaluate(heads, head_weight, hv, yv), "wall_s": round(time.time() - t0, 1)})
            if log is not None:
                log.write_text("".join(json.dumps(line) + "\n" for line in lines))
        if step < steps:
            opt.zero_grad()
            (loss_t + loss_p).backward()
            opt.step()
    return heads.eval()


@torch.no_grad()
def evaluate(heads: AutoDecoHeads, head_weight: torch.Tensor, h: torch.Tensor, y: torch.Tensor) -> dict:
    """Held-out NLL (nats/token) of the base at T = 1 and at the predicted T̂; mean and spread of T̂, P̂."""
    logits = h @ head_weight.T
    t_hat, p_hat = heads(h, logits)
    nll = lambda scaled: nn.functional.cross_entropy(scaled, y).item()  # noqa: E731
    return {"valid_nll_t1": round(nll(logits), 4), "valid_nll_that": round(nll(logits / t_hat.clamp_min(0.01)[:, None]), 4),
            "t_mean": round(t_hat.mean().item(), 4), "t_std": round(t_hat.std().item(), 4),
            "p_mean": round(p_hat.mean().item(), 4), "p_std": round(p_hat.std().item(), 4)}


def main(argv: list[str] | None = None) -> None:
    """python -m decodelab.search.autodeco train [--steps N] [--out FILE] [--log FILE]"""
    import argparse

    from safetensors.torch import save_file

    from ..model import load
    from ..training.corpus import load_split

    parser = argparse.ArgumentParser(prog="python -m decodelab.search.autodeco")
    parser.add_argument("command", choices=["train"])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--windows", type=int, default=160, help="training windows of --seq-len tokens")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--files", type=int, default=300, help="training-split files read")
    parser.add_argument("--out", type=Path, default=DEFAULT_HEADS)
    parser.add_argument("--log", type=Path, default=Path("docs/search/autodeco-log.jsonl"))
    args = parser.parse_args(argv)
    lm = load("builtin:pyco", dtype="float32", backend="transformers")  # the LM head as a module
    texts = [f.text for f in load_split("train")[: args.files]]
    valid = [f.text for f in load_split("valid")[: max(args.files // 10, 5)]]
    heads = train(lm, texts, valid, steps=args.steps, windows=args.windows, seq_len=args.seq_len, log=args.log)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, str(args.out))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes); log {args.log}")


if __name__ == "__main__":
    main()
