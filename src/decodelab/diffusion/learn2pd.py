"""Learn2PD: a learned per-position acceptance filter plus End-of-Text truncation.

"Learning to Parallel: Accelerating Diffusion Large Language Models via Adaptive Parallel
Decoding" trains a tiny filter to predict, for each masked position, whether the model's current
argmax already equals the token the position will finally hold (an oracle that commits a token as
soon as it is right), and stops decoding the padding once End-of-Text is committed.

Here the filter is a logistic regression on five features of a position — confidence p(x0), the
top-1 − top-2 margin, the normalised entropy, the position's offset in the canvas / gen_length, and
a bias — fitted on the model's own one-token-per-step (LLaDA) trajectories over training-seed task
items. It is stored as JSON next to the model (`learn2pd.json`), so it loads offline:

    python -m decodelab.diffusion.learn2pd --model builtin:tasks-diffusion --n 20 --out FILE.json
    python -m decodelab.diffusion.learn2pd --model builtin:pyco-diffusion --prompts code --n 24 --out FILE.json

(`--prompts code`: the first 48 tokens of `n` files of the code corpus's *valid* split,
training/corpus.py — not the test split the benchmark suites draw from.)

At decoding time (`method="learn2pd"`) a step commits every candidate whose predicted probability
is ≥ `accept` (plus the top-1); once a row commits `<|eos|>`, every masked position after it is set
to `<|eos|>` at once (End-of-Text prediction).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..errors import UserError
from .sampling import Rule, Step, top1

FEATURES = ("confidence", "margin", "entropy", "offset", "bias")


def features(step: Step) -> torch.Tensor:
    """[B, G, 5] features of every position (meaningful at candidates only)."""
    p = torch.softmax(step.logits, dim=-1)
    top2 = p.topk(2, dim=-1).values
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(-1) / torch.log(torch.tensor(float(p.shape[-1])))
    g = step.logits.shape[1]
    offset = (torch.arange(g, dtype=torch.float64) / g).expand(p.shape[0], g)
    return torch.stack([top2[..., 0], top2[..., 0] - top2[..., 1], entropy, offset, torch.ones_like(offset)], -1)


class Learned(Rule):
    def __init__(self, block_length: int, gen_length: int, weights: list[float], accept: float, eos_id: int | None):
        super().__init__(block_length, gen_length)
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.accept, self.eos_id = accept, eos_id

    def select(self, step: Step) -> torch.Tensor:
        prob = torch.sigmoid(features(step) @ self.weights)  # [B, G]
        out = top1(step.conf) | ((prob >= self.accept) & torch.isfinite(step.conf))
        if self.eos_id is not None:
            out |= end_of_text(step, out, self.eos_id)
        return out


def end_of_text(step: Step, out: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Learn2PD's End-of-Text prediction: the masked positions after a committed (or now committing) EOS,
    their proposals set to EOS."""
    fixed = step.canvas.canvas == eos_id
    eos_now = fixed | (out & (step.x0 == eos_id))
    after = eos_now.long().cumsum(-1) > 0
    after &= ~eos_now & step.masked
    step.x0[after] = eos_id
    return after


def load_filter(path: Path) -> dict:
    try:
        spec = json.loads(Path(path).read_text())
        if spec.get("features") != list(FEATURES) or len(spec.get("weights", [])) != len(FEATURES):
            raise ValueError("unexpected features")
        return spec
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the learn2pd filter {path}: {exc}") from None


class _Recorder(Rule):
    """One token per step (LLaDA low-confidence); records features and x0 at the candidates."""

    def __init__(self, gen_length: int):
        super().__init__(0, gen_length)
        self.rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.canvas = None

    def select(self, step: Step) -> torch.Tensor:
        cand = torch.isfinite(step.conf)
        self.rows.append((features(step)[cand], step.x0[cand], cand.nonzero()))
        self.canvas = step.canvas
        return top1(step.conf)


def collect(lm, prompts: list[list[int]], gen_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, 5], label [N]: the argmax at that step equals the final token) from LLaDA runs."""
    from ..engine import Context
    from ..processors import Sampler
    from ..stats import Stats
    from .sampling import decode

    params = {"temperature": 0.0}
    ctx = Context(lm, prompts, params, Sampler(params, max(map(len, prompts))), None, gen_length, Stats())
    rec = _Recorder(gen_length)
    for _ in decode(ctx, rec):
        pass
    final = rec.canvas.canvas
    xs, ys = [], []
    for feats, x0, where in rec.rows:
        xs.append(feats)
        ys.append((x0 == final[where[:, 0], where[:, 1]]).double())
    return torch.cat(xs), torch.cat(ys)


def fit(x: torch.Tensor, y: torch.Tensor, steps: int = 500) -> list[float]:
    """Logistic regression by full-batch L-BFGS on the binary cross-entropy."""
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().tolist()


def main(argv: list[str] | None = None) -> None:
    from .. import load
    from ..tasks import make, names

    parser = argparse.ArgumentParser(description="Fit the Learn2PD filter on a diffusion model's trajectories")
    parser.add_argument("--model", default="builtin:tasks-diffusion")
    parser.add_argument("--n", type=int, default=20, help="items per task (training seed 2000) or code files")
    parser.add_argument("--prompts", choices=("tasks", "code"), default="tasks")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    lm = load(args.model)
    if args.prompts == "code":
        from ..training.corpus import load_split

        prompts = [lm.encode(f.text)[:48] for f in load_split("valid")[: args.n]]
    else:
        prompts = [lm.encode(it.prompt) for t in names() for it in make(t, args.n, seed=2000)]
    x, y = collect(lm, prompts, args.max_new_tokens)
    weights = fit(x, y)
    predicted = (x @ torch.tensor(weights, dtype=x.dtype) > 0).double()
    accuracy = float((predicted == y).double().mean())
    spec = {"features": list(FEATURES), "weights": weights, "positions": len(y),
            "positive_share": round(float(y.mean()), 4), "train_accuracy": round(accuracy, 4),
            "command": f"python -m decodelab.diffusion.learn2pd --model {args.model} --prompts {args.prompts} "
                       f"--n {args.n} --max-new-tokens {args.max_new_tokens} --out FILE"}
    args.out.write_text(json.dumps(spec, indent=2) + "\n")
    print(json.dumps(spec))


if __name__ == "__main__":
    main()
