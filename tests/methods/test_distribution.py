"""Every stochastic lossless method samples from the target's exact distribution — tested with power.

The setting is built so that a biased sampler has something to get wrong (each property is asserted
in `test_the_setting_is_spread_and_powerful` or in the test itself, not assumed):
- target: a tiny Llama whose head is scaled by 0.07 (`fakes.soft_lm`). Under temperature 1, top-k 4
  the exact joint of the first 3 new tokens (`stat_utils.exact_joint`) has entropy ≥ 2.8 nats (the
  maximum is 3·ln 4 = 4.16) and ≥ 20 outcomes of probability ≥ 1 %;
- drafts: the target plus 20 % Gaussian noise (`fakes.noisy_copy`; ~45 % of its tokens accepted), and
  for a second speculative run an over-confident one (10 % noise, head ×2: q > 1.2·p on likely tokens,
  which an over-generous acceptance rule rewards); selfspec drafts with the target's first layer;
  pld / jacobi / recycling / lookahead propose deterministic drafts;
- the prompt is the target's own sample repeated, so prompt lookup finds continuations, and each
  test asserts that drafts were accepted *and* rejected many times;
- N = 2,000 samples per method (seeds 0 … N − 1), first 3 of 4 new tokens, chi-square at
  α = stat_utils.ALPHA = 1e-3.

Power (`stat_utils.min_detectable_tv`, math in its docstring): with these cells every bias of total
variation ≥ 0.10 is detected with probability ≥ 0.99 whatever its shape (asserted below). The three
known-dangerous bugs of issue 16 — a draft q recorded as the raw softmax instead of the processed
distribution it was sampled from, the acceptance rule r < 1.2·p/q, and resampling from p instead of
the residual after a rejection — are each applied to the source by the mutant gallery
(tests/mutants/gallery.py) and killed by these tests; `python tests/mutants/run.py --power` estimates
each one's power at N.
"""

import pytest
import torch

import decodelab
from decodelab.methods.loop import speculative_loop
from decodelab.proposers.lookahead import Lookahead

from fakes import context, noisy_copy, soft_lm
from stat_utils import ALPHA, cells, chi2_pvalue, entropy, exact_joint, min_detectable_tv

N = 2000
DEPTH = 3  # tokens compared: the first comes from prefill, the next ones from verification steps
PARAMS = dict(temperature=1.0, top_k=4)
TARGET = soft_lm("llama", seed=0, scale=0.07)
TARGET.state["drafts"] = {"noisy": noisy_copy(TARGET, 0.2, seed=1), "sharp": noisy_copy(TARGET, 0.1, seed=1)}
with torch.no_grad():
    TARGET.state["drafts"]["sharp"].model.get_output_embeddings().weight.mul_(2.0)
_OWN = decodelab.generate(TARGET, "ab", method="sample", seed=0, max_new_tokens=24, **PARAMS).token_ids
PROMPT = TARGET.encode("ab") + _OWN * 2

# "method" or "method:variant" → (its parameters, the least accepted / rejected draft tokens over N samples)
CONFIG = {
    "speculative": (dict(draft="noisy", num_draft_tokens=2, stop_threshold=1.0), 1000, 1400),
    "speculative:sharp": (dict(draft="sharp", num_draft_tokens=2, stop_threshold=1.0), 1400, 800),
    "tree": (dict(draft="noisy", branching=2, depth=2), 800, 1500),
    "selfspec": (dict(exit_layer=1, num_draft_tokens=2), 1000, 1200),
    "pld": ({}, 240, 900),
    "jacobi": ({}, 60, 2500),
    "recycling": (dict(widths="4,6,4,2", k=4), 1700, 250),
    "lookahead": (dict(N=4, W=3, G=4), 1300, 600),
}
STOCHASTIC_LOSSLESS = sorted(n for n, m in decodelab.methods().items()
                             if m.lossless and m.kind == "causal" and n not in ("greedy", "sample"))


@pytest.fixture(scope="module")
def exact():
    return exact_joint(TARGET, PROMPT, DEPTH, **PARAMS)


def test_every_lossless_method_has_a_distribution_test():
    missing = sorted(set(STOCHASTIC_LOSSLESS) - {key.split(":")[0] for key in CONFIG})
    assert not missing, f"add {missing} to CONFIG in {__file__}: every lossless method needs a powered test"


def test_the_setting_is_spread_and_powerful(exact):
    assert abs(sum(exact.values()) - 1) < 1e-4
    assert entropy(exact) >= 2.8
    assert sum(p >= 0.01 for p in exact.values()) >= 20
    assert len(cells(exact, N)) >= 30
    assert min_detectable_tv(exact, N) <= 0.10


def _lookahead_grams(exact):
    """Pool n-grams for every first token: likely, unlikely and wrongly ordered continuations,
    so that the first verify step checks a real tree (not the empty pool of a fresh generation)."""
    grams = []
    for x in {t[0] for t in exact}:
        conts = sorted((t for t in exact if t[0] == x), key=exact.get, reverse=True)
        grams += [conts[-1] + (x,), conts[1] + (x,), conts[0] + (x,), (x, conts[0][2], conts[0][1], x)]
    return grams


def _lookahead_run(seed, grams, **kw):
    """The lookahead loop with a primed pool: (tokens, stats)."""
    ctx = context(TARGET, PROMPT, "lookahead", seed, DEPTH + 1, **PARAMS, **kw)
    proposer = Lookahead(PROMPT, ctx.params["N"], ctx.params["W"], ctx.params["G"])
    for gram in grams:
        proposer.pool.add(gram[0], gram[1:])
    for step in speculative_loop(ctx, proposer):
        ctx.out[0].extend(step[0])
        if len(ctx.out[0]) >= DEPTH:
            return ctx.out[0], ctx.stats
    raise AssertionError("the loop ended early")  # pragma: no cover


def draw(key: str, n: int, first_seed: int = 0, exact_probs: dict | None = None):
    """n samples of the first DEPTH tokens of CONFIG[key] (or "sample"), and the accepted / drafted
    draft-token counts."""
    kw = CONFIG[key][0] if key in CONFIG else {}
    method = key.split(":")[0]
    grams = _lookahead_grams(exact_probs or exact_joint(TARGET, PROMPT, DEPTH, **PARAMS)) \
        if method == "lookahead" else None
    samples, accepted, drafted = [], 0, 0
    for seed in range(first_seed, first_seed + n):
        if grams is not None:
            tokens, stats = _lookahead_run(seed, grams, **kw)
        else:
            g = decodelab.generate(TARGET, PROMPT, method=method, max_new_tokens=DEPTH + 1, seed=seed,
                                   **PARAMS, **kw)
            tokens, stats = g.token_ids, g.stats
        samples.append(tuple(tokens[:DEPTH]))
        accepted += sum(stats.accepted)
        drafted += sum(stats.drafted)
    return samples, accepted, drafted


@pytest.mark.parametrize("key", ["sample", *sorted(CONFIG)])
def test_sampled_distribution_matches_target(key, exact):
    samples, accepted, drafted = draw(key, N, exact_probs=exact)
    if key != "sample":
        least_accepted, least_rejected = CONFIG[key][1:]
        assert accepted >= least_accepted, (accepted, drafted)  # the acceptance path runs
        assert drafted - accepted >= least_rejected, (accepted, drafted)  # … and the rejection path
    assert chi2_pvalue(samples, exact) > ALPHA
