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

Variants: `--kind mlp` (MLP_FEATURES, the paper's MLP) and `--kind stable` (STABLE_FEATURES: adds Beyond
Confidence's / KLASS's step-stability signals and neighbour-repeat flags), the latter fitted on the filter's own
trajectories with `--rounds` (DAgger; `dagger`). Commit options for any filter: `budget` (a cap on a step's
summed predicted error), `distinct` (no two same-token commits close together in one step), `gate` (CCD: only
an unchanged argmax or a very confident one). The shipped stable filter:

    python -m decodelab.diffusion.learn2pd --model builtin:tasks-diffusion --n 150 --kind stable --rounds 3 \
        --policy-accept 0.93 --distinct 1 --init src/decodelab/builtin/tasks-diffusion/learn2pd-mlp.json --out FILE
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..errors import UserError
from .sampling import Rule, Step, top1, top_k_mask

FEATURES = ("confidence", "margin", "entropy", "offset", "bias")
# The MLP variant also sees the position's neighbourhood and the canvas state (the paper's filter reads the
# block's whole confidence vector): p(x0) left and right (1 where committed or outside the canvas), the
# canvas's masked share, and whether x0 is EOS.
MLP_FEATURES = ("confidence", "margin", "entropy", "offset", "left", "right", "masked_share", "is_eos")
# The stable variant adds what Beyond Confidence (CCD) and KLASS read across steps: whether the position's argmax
# equals its argmax one step earlier, log(1 + KL(p_now ‖ p_prev)) of its distribution, and whether a previous
# step exists for it (0 at a row's first step); and whether x0 repeats the token left / right of it (committed,
# or that neighbour's own proposal) — the "39 39" failure of committing dependent neighbours. It is fitted on the
# sampler's own (on-policy) trajectories.
STABLE_FEATURES = (*MLP_FEATURES, "stable", "kl", "has_prev", "same_left", "same_right")
MLP_HIDDEN = 64
KINDS = {"mlp": MLP_FEATURES, "stable": STABLE_FEATURES}


def features(step: Step, eos_id: int | None = None, context: bool = False, stable: bool = False,
             prev: torch.Tensor | None = None) -> torch.Tensor:
    """[B, G, 5] (FEATURES), with context [B, G, 8] (MLP_FEATURES), with context and stable [B, G, 11]
    (STABLE_FEATURES; `prev` = the previous step's logits [B, G, V], None at the first step) per position."""
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
    out = torch.stack([*own, left, right, share, is_eos], -1)
    if not stable:
        return out
    token = torch.where(step.masked, step.x0, step.canvas.canvas) if step.canvas is not None else step.x0
    none = torch.full((b, 1), -1, dtype=token.dtype, device=token.device)
    same_left = (step.x0 == torch.cat([none, token[:, :-1]], 1)).double()
    same_right = (step.x0 == torch.cat([token[:, 1:], none], 1)).double()
    return torch.cat([out, stability(step.logits, prev), torch.stack([same_left, same_right], -1).cpu()], -1)


def stability(logits: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
    """[B, G, 3]: (argmax unchanged since the previous step, log(1 + KL(p_now ‖ p_prev)), previous step exists).

    `prev` is None at the first step; a position whose previous logits are all zero (outside a cached
    forward's fed slice, diffusion/cache.py) counts as having no previous step."""
    b, g = logits.shape[:2]
    if prev is None:
        return torch.zeros(b, g, 3, dtype=torch.float64)
    has = (prev.nan_to_num(neginf=0.0).abs().amax(-1) > 0).double()
    log_p, log_q = torch.log_softmax(logits, -1), torch.log_softmax(prev, -1)
    finite = torch.isfinite(log_p) & torch.isfinite(log_q)
    kl = (log_p.exp() * torch.where(finite, log_p - log_q, torch.zeros_like(log_p))).sum(-1).clamp_min(0)
    same = (logits.argmax(-1) == prev.argmax(-1)).double()
    return torch.stack([same * has, torch.log1p(kl) * has, has], -1)


class MLP(torch.nn.Module):
    """The ~0.6K-parameter filter: MLP_FEATURES → MLP_HIDDEN (tanh) → 1 logit."""

    def __init__(self, n_features: int = len(MLP_FEATURES)):
        super().__init__()
        self.n_features = n_features
        self.net = torch.nn.Sequential(torch.nn.Linear(n_features, MLP_HIDDEN, dtype=torch.float64),
                                       torch.nn.Tanh(), torch.nn.Linear(MLP_HIDDEN, 1, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[..., 0]


def mlp_from(spec: dict) -> MLP:
    model = MLP(len(KINDS[spec["kind"]]))
    model.load_state_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in spec["state"].items()})
    return model.eval()


class Learned(Rule):
    def __init__(self, block_length: int, gen_length: int, weights: list[float] | MLP, accept: float,
                 eos_id: int | None, budget: float = 0.0, distinct: int = 0, gate: float = 0.0):
        super().__init__(block_length, gen_length)
        self.mlp = weights if isinstance(weights, MLP) else None
        self.weights = None if self.mlp is not None else torch.tensor(weights, dtype=torch.float64)
        self.accept, self.eos_id, self.budget, self.distinct = accept, eos_id, budget, distinct
        self.stable = self.mlp is not None and self.mlp.n_features == len(STABLE_FEATURES)
        self.prev: torch.Tensor | None = None  # the previous step's logits (the stable variant)
        self.gate, self.argmax, self.unchanged = gate, None, None

    def features(self, step: Step) -> torch.Tensor:
        argmax = step.logits.argmax(-1)
        self.unchanged = argmax == self.argmax if self.argmax is not None else torch.zeros_like(step.masked)
        self.argmax = argmax
        if self.mlp is None:
            return features(step)
        if not self.stable:
            return features(step, self.eos_id, context=True)
        x = features(step, self.eos_id, context=True, stable=True, prev=self.prev)
        self.prev = step.logits.clone()
        return x

    def select(self, step: Step) -> torch.Tensor:
        return self.decide(step, self.features(step))

    def decide(self, step: Step, x: torch.Tensor) -> torch.Tensor:
        """The commits given the step's features `x` [B, G, F] (from `features`, called once per step)."""
        if self.mlp is None:
            prob = torch.sigmoid(x @ self.weights)
        else:
            with torch.no_grad():
                prob = torch.sigmoid(self.mlp(x))
        prob = prob.masked_fill(~torch.isfinite(step.conf), float("-inf"))
        out = prob >= self.accept
        if self.gate > 0:  # CCD / KLASS: only an argmax unchanged since the previous step, or p(x0) ≥ gate
            out &= self.unchanged | (step.conf >= self.gate)
        out |= top1(step.conf)
        if self.budget > 0:  # and at most a summed predicted error of `budget` per step
            out &= within_budget(prob, self.budget) | top1(step.conf)
        if self.distinct > 0:
            out = distinct_commits(out, step.x0, prob, self.distinct)
        if self.eos_id is not None:
            out |= end_of_text(step, out, self.eos_id)
        return out


def distinct_commits(out: torch.Tensor, x0: torch.Tensor, score: torch.Tensor, radius: int) -> torch.Tensor:
    """Drop a commit when a higher-scored commit of the same step, at most `radius` positions away, proposes the
    same token: two masked neighbours whose marginals both put the token there are the classic failure of
    committing conditionally dependent positions at once ("78 39 39" for "78 39 13"); the dropped one is decided
    at a later step, conditioned on the kept one. The highest-scored commit of a row is always kept."""
    out = out.clone()
    for b in range(out.shape[0]):
        picked = out[b].nonzero().flatten().tolist()
        if len(picked) < 2:
            continue
        kept: list[int] = []
        for i in sorted(picked, key=lambda i: (-float(score[b, i]), i)):
            if any(abs(i - j) <= radius and int(x0[b, i]) == int(x0[b, j]) for j in kept):
                out[b, i] = False
            else:
                kept.append(i)
    return out


def within_budget(prob: torch.Tensor, budget: float) -> torch.Tensor:
    """[B, G] bool: per row, the candidates (prob > -inf) of the largest prefix by descending prob whose summed
    predicted error Σ (1 − prob) is ≤ budget (EB-sampler's bound, arXiv:2505.24857, on the filter's errors)."""
    ranked = prob.sort(dim=-1, descending=True).values
    ok = (torch.cumsum((1 - ranked).clamp_min(0).nan_to_num(posinf=1e9), -1) <= budget + 1e-12) & torch.isfinite(ranked)
    return top_k_mask(prob, ok.long().cumprod(-1).sum(-1))


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
        if spec.get("kind") in KINDS:
            if spec.get("features") != list(KINDS[spec["kind"]]):
                raise ValueError("unexpected features")
            spec["mlp"] = mlp_from(spec)
        elif spec.get("features") != list(FEATURES) or len(spec.get("weights", [])) != len(FEATURES):
            raise ValueError("unexpected features")
        return spec
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"cannot read the learn2pd filter {path}: {exc}") from None


class _Recorder(Rule):
    """Records the features (of `kind`) and x0 at the candidates of every step. Without a `policy` it decodes one
    token per step (LLaDA low-confidence); with one (a `Learned` rule, any kind) it decodes as that rule does, so
    the records come from the filter's own trajectories (on-policy, as DAgger)."""

    def __init__(self, gen_length: int, eos_id: int | None = None, kind: str = "logistic",
                 policy: Learned | None = None):
        super().__init__(0, gen_length)
        self.rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.canvas, self.prev = None, None
        self.eos_id, self.kind, self.policy = eos_id, kind, policy

    def select(self, step: Step) -> torch.Tensor:
        cand = torch.isfinite(step.conf)
        x = features(step, self.eos_id, self.kind != "logistic", self.kind == "stable", self.prev)
        self.prev = step.logits.clone()
        self.rows.append((x[cand], step.x0[cand].clone(), cand.nonzero()))
        self.canvas = step.canvas
        return top1(step.conf) if self.policy is None else self.policy.select(step)


def _run(lm, prompts: list[list[int]], gen_length: int, rule: Rule):
    from ..engine import Context
    from ..processors import Sampler
    from ..stats import Stats
    from .sampling import decode

    params = {"temperature": 0.0}
    ctx = Context(lm, prompts, params, Sampler(params, max(map(len, prompts))), None, gen_length, Stats())
    for _ in decode(ctx, rule):
        pass
    return rule


def collect(lm, prompts: list[list[int]], gen_length: int, context: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, F], label [N]: the argmax at that step equals the final token) from LLaDA runs."""
    return trajectories(lm, prompts, gen_length, "mlp" if context else "logistic")[:2]


def trajectories(lm, prompts: list[list[int]], gen_length: int, kind: str = "logistic", policy: Learned | None = None,
                 target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features [N, F], label [N], the run's final canvas [B, G]) from LLaDA one-token-per-step runs, or from
    the `policy`'s runs. Label: the argmax at that step equals `target` at that position (default: the run's own
    final canvas, Learn2PD's oracle; for on-policy runs, pass the one-token-per-step final canvas)."""
    eos = min(lm.eos_token_ids) if lm.eos_token_ids else None
    rec = _run(lm, prompts, gen_length, _Recorder(gen_length, eos, kind, policy))
    final = rec.canvas.canvas.clone()
    label = final if target is None else target
    xs, ys = [], []
    for feats, x0, where in rec.rows:
        xs.append(feats)
        ys.append((x0 == label[where[:, 0], where[:, 1]]).double())
    return torch.cat(xs), torch.cat(ys), final


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
    """The MLP filter by full-batch Adam on the binary cross-entropy (seeded init; trained in float32 for
    speed, stored in float64)."""
    torch.manual_seed(seed)
    model = MLP(x.shape[1]).float()
    xf, yf = x.float(), y.float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xf), yf)
        loss.backward()
        opt.step()
    return model.double().eval()


def dagger(lm, prompts: list[list[int]], gen_length: int, kind: str, target: torch.Tensor, model: MLP, rounds: int,
           accept: float, distinct: int) -> tuple[torch.Tensor, torch.Tensor, MLP]:
    """On-policy fitting (DAgger, Ross et al., arXiv:1011.0686): each round decodes the prompts with the current
    filter, labels every candidate state it reaches by `target` (the one-token-per-step output), and refits on
    all on-policy states so far — the filter is judged on the canvases it will meet, with several tokens committed
    per step, where one-token-per-step trajectories never show an argmax that changes. Returns (x, y, model)."""
    eos = min(lm.eos_token_ids) if lm.eos_token_ids else None
    xs, ys = [], []
    for r in range(rounds):
        policy = Learned(0, gen_length, model, accept, eos, distinct=distinct)
        xr, yr, _ = trajectories(lm, prompts, gen_length, kind, policy, target=target)
        xs.append(xr)
        ys.append(yr)
        model = fit_mlp(torch.cat(xs), torch.cat(ys))
        print(json.dumps({"round": r + 1, "positions": len(yr), "positive_share": round(float(yr.mean()), 4)}),
              flush=True)
    return torch.cat(xs), torch.cat(ys), model


def main(argv: list[str] | None = None) -> None:
    from .. import load
    from ..tasks import make, names

    parser = argparse.ArgumentParser(description="Fit the Learn2PD filter on a diffusion model's trajectories")
    parser.add_argument("--model", default="builtin:tasks-diffusion")
    parser.add_argument("--n", type=int, default=20, help="items per task (training seed 2000) or code files")
    parser.add_argument("--prompts", choices=("tasks", "code"), default="tasks")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--kind", choices=("logistic", "mlp", "stable"), default="logistic")
    parser.add_argument("--rounds", type=int, default=0,
                        help="mlp/stable: on-policy rounds (DAgger): decode the training prompts with the filter "
                             "so far at --policy-accept / --distinct, label the states it reaches by the "
                             "one-token-per-step output, and refit on all on-policy states collected so far")
    parser.add_argument("--policy-accept", type=float, default=0.9)
    parser.add_argument("--distinct", type=int, default=0, help="the policy's `distinct` during the rounds")
    parser.add_argument("--init", type=Path, default=None,
                        help="the round-1 policy (a filter JSON); default: the fit on one-token-per-step trajectories")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    lm = load(args.model)
    if args.prompts == "code":
        from ..training.corpus import load_split

        prompts = [lm.encode(f.text)[:48] for f in load_split("valid")[: args.n]]
    else:
        prompts = [lm.encode(it.prompt) for t in names() for it in make(t, args.n, seed=2000)]
    x, y, final = trajectories(lm, prompts, args.max_new_tokens, args.kind)
    if args.kind in KINDS:
        init = load_filter(args.init) if args.init else None
        model = (init.get("mlp") or init["weights"]) if init else fit_mlp(x, y)
        if args.rounds:
            x, y, model = dagger(lm, prompts, args.max_new_tokens, args.kind, final, model, args.rounds,
                                 args.policy_accept, args.distinct)
        with torch.no_grad():
            predicted = (model(x) > 0).double()
        fitted = {"kind": args.kind, "features": list(KINDS[args.kind]),
                  "state": {k: v.tolist() for k, v in model.state_dict().items()}}
    else:
        weights = fit(x, y)
        predicted = (x @ torch.tensor(weights, dtype=x.dtype) > 0).double()
        fitted = {"features": list(FEATURES), "weights": weights}
    accuracy = float((predicted == y).double().mean())
    spec = {**fitted, "positions": len(y),
            "positive_share": round(float(y.mean()), 4), "train_accuracy": round(accuracy, 4),
            "command": f"python -m decodelab.diffusion.learn2pd --model {args.model} --prompts {args.prompts} "
                       f"--n {args.n} --max-new-tokens {args.max_new_tokens} --kind {args.kind}"
                       + (f" --rounds {args.rounds} --policy-accept {args.policy_accept} --distinct {args.distinct}"
                          + (f" --init {args.init}" if args.init else "") if args.rounds else "")
                       + " --out FILE"}
    args.out.write_text(json.dumps(spec, indent=None if args.kind in KINDS else 2) + "\n")
    print(json.dumps({k: v for k, v in spec.items() if k != "state"}))


if __name__ == "__main__":
    main()
