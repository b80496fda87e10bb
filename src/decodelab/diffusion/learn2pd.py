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
# The MLP variant also sees the position's neighbourhood and the canvas state (the paper's filter reads the
# block's whole confidence vector): p(x0) left and right (1 where committed or outside the canvas), the
# canvas's masked share, and whether x0 is EOS.
MLP_FEATURES = ("confidence", "margin", "entropy", "offset", "left", "right", "masked_share", "is_eos")
MLP_HIDDEN = 64


def features(step: Step, eos_id: int | None = None, context: bool = False) -> torch.Tensor:
    """[B, G, 5] (FEATURES) or, with context, [B, G, 8] (MLP_FEATURES) per position (used at candidates)."""
    p = torch.softmax(step.logits, dim=-1)
    top2 = p.topk(2, dim=-1).values
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(-1) / torch.log(torch.tensor(float(p.shape[-1])))
    b, g = step.logits.shape[:2]
    offset = (torch.arange(g, dtype=torch.float64) / g).expand(b, g)
    own = [top2[..., 0], top2[..., 0] - top2[..., 1], entropy, offset]
    if not context:
        return torch.stack([*own, torch.ones_like(offset)], -1)
    known = torch.where(step.masked, top2[..., 0], torch.ones_like(offset))
    pad = torch.ones(b, 1, dtype=torch.float64)
    left, right = torch.cat([pad, known[:, :-1]], 1), torch.cat([known[:, 1:], pad], 1)
    share = step.masked.double().mean(-1, keepdim=True).expand(b, g)
    is_eos = (step.x0 == eos_id).double() if eos_id is not None else torch.zeros_like(offset)
    return torch.stack([*own, left, right, share, is_eos], -1)


class MLP(torch.nn.Module):
    """The ~0.6K-parameter filter: MLP_FEATURES → MLP_HIDDEN (tanh) → 1 logit."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(len(MLP_FEATURES), MLP_HIDDEN, dtype=torch.float64),
                                       torch.nn.Tanh(), torch.nn.Linear(MLP_HIDDEN, 1, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[..., 0]


def mlp_from(spec: dict) -> MLP:
    model = MLP()
    model.load_state_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in spec["state"].items()})
    return model.eval()


class Learned(Rule):
    def __init__(self, block_length: int, gen_length: int, weights: list[float] | MLP, accept: float,
                 eos_id: int | None):
        super().__init__(block_length, gen_length)
        self.mlp = weights if isinstance(weights, MLP) else None
        self.weights = None if self.mlp is not None else torch.tensor(weights, dtype=torch.float64)
        self.accept, self.eos_id = accept, eos_id

    def select(self, step: Step) -> torch.Tensor:
        if self.mlp is not None:
            with torch.no_grad():
                prob = torch.sigmoid(self.mlp(features(step, self.eos_id, context=True)))
        else:
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
        if spec.get("kind") == "mlp":
            if spec.get("features") != list(MLP_FEATURES):
                raise ValueError("unexpected features")
            spec["mlp"] = mlp_from(spec)
        elif spec.get("features") != list(FEATURES) or len(spec.get("weights", [])) != len(FEATURES):
            raise ValueError("unexpected features")
        return spec
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"cannot read the learn2pd filter {path}: {exc}") from None


class _Recorder(Rule):
    """One token per step (LLaDA low-confidence); records features and x0 at the candidates."""

    def __init__(self, gen_length: int, eos_id: int | None = None, context: bool = False):
        super().__init__(0, gen_length)
        self.rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.canvas = None
        self.eos_id, self.context = eos_id, context

    def select(self, step: Step) -> torch.Tensor:
        cand = torch.isfinite(step.conf)
        self.rows.append((features(step, self.eos_id, self.context)[cand], step.x0[cand], cand.nonzero()))
        self.canvas = step.canvas
        return top1(step.conf)


def collect(lm, prompts: list[list[int]], gen_length: int, context: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, F], label [N]: the argmax at that step equals the final token) from LLaDA runs."""
    from ..engine import Context
    from ..processors import Sampler
    from ..stats import Stats
    from .sampling import decode

    params = {"temperature": 0.0}
    ctx = Context(lm, prompts, params, Sampler(params, max(map(len, prompts))), None, gen_length, Stats())
    rec = _Recorder(gen_length, min(lm.eos_token_ids) if lm.eos_token_ids else None, context)
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


def fit_mlp(x: torch.Tensor, y: torch.Tensor, steps: int = 1500, seed: int = 0) -> MLP:
    """The MLP filter by full-batch Adam on the binary cross-entropy (seeded init)."""
    torch.manual_seed(seed)
    model = MLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        opt.step()
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    from .. import load
    from ..tasks import make, names

    parser = argparse.ArgumentParser(description="Fit the Learn2PD filter on a diffusion model's trajectories")
    parser.add_argument("--model", default="builtin:tasks-diffusion")
    parser.add_argument("--n", type=int, default=20, help="items per task (training seed 2000) or code files")
    parser.add_argument("--prompts", choices=("tasks", "code"), default="tasks")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--kind", choices=("logistic", "mlp"), default="logistic")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    lm = load(args.model)
    if args.prompts == "code":
        from ..training.corpus import load_split

        prompts = [lm.encode(f.text)[:48] for f in load_split("valid")[: args.n]]
    else:
        prompts = [lm.encode(it.prompt) for t in names() for it in make(t, args.n, seed=2000)]
    x, y = collect(lm, prompts, args.max_new_tokens, context=args.kind == "mlp")
    if args.kind == "mlp":
        model = fit_mlp(x, y)
        with torch.no_grad():
            predicted = (model(x) > 0).double()
        fitted = {"kind": "mlp", "features": list(MLP_FEATURES),
                  "state": {k: v.tolist() for k, v in model.state_dict().items()}}
    else:
        weights = fit(x, y)
        predicted = (x @ torch.tensor(weights, dtype=x.dtype) > 0).double()
        fitted = {"features": list(FEATURES), "weights": weights}
    accuracy = float((predicted == y).double().mean())
    spec = {**fitted, "positions": len(y),
            "positive_share": round(float(y.mean()), 4), "train_accuracy": round(accuracy, 4),
            "command": f"python -m decodelab.diffusion.learn2pd --model {args.model} --prompts {args.prompts} "
                       f"--n {args.n} --max-new-tokens {args.max_new_tokens} --kind {args.kind} --out FILE"}
    args.out.write_text(json.dumps(spec, indent=None if args.kind == "mlp" else 2) + "\n")
    print(json.dumps({k: v for k, v in spec.items() if k != "state"}))


if __name__ == "__main__":
    main()
