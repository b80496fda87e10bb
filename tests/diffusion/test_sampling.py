"""The shared loop on a tiny random model: reference equality, never hanging, blocks, batch invariance."""

from __future__ import annotations

import pytest
import torch

import decodelab
import decodelab.tasks
from decodelab.diffusion import sampling
from decodelab.diffusion.rules import Threshold

PROMPTS = ["copy : 1 2 3 =", "sort : 40 7 =", "latin : A B _ D | _ D A B | B A D C | D C B A ="]


def reference_llada(lm, prompt: str, gen_length: int, block_length: int) -> list[int]:
    """LLaDA's generate() at one token per step and temperature 0, written out plainly."""
    ids = lm.encode(prompt)
    x = torch.tensor([ids + [lm.mask_token_id] * gen_length])
    start = len(ids)
    for b0 in range(0, gen_length, block_length):
        b1 = min(b0 + block_length, gen_length)
        while (x[0, start + b0:start + b1] == lm.mask_token_id).any():
            logits = lm.model(x).logits[0, start:].double()
            logits[:, lm.mask_token_id] = float("-inf")
            p = torch.softmax(logits, -1)
            x0 = p.argmax(-1)
            conf = p.gather(-1, x0[:, None])[:, 0]
            masked = x[0, start:] == lm.mask_token_id
            conf[~masked] = float("-inf")
            conf[:b0] = conf[b1:] = float("-inf")
            i = int(conf.argmax())
            x[0, start + i] = x0[i]
    return x[0, start:].tolist()


def _trim(lm, tokens):
    eos = [i for i, t in enumerate(tokens) if t in lm.eos_token_ids]
    return tokens[: eos[0] + 1] if eos else tokens


@pytest.mark.parametrize("block_length", [0, 4])
def test_llada_one_token_per_step_equals_the_reference_loop(tiny, block_length):
    for prompt in PROMPTS:
        g = decodelab.generate(tiny, prompt, method="llada", max_new_tokens=10, block_length=block_length)
        assert g.token_ids == _trim(tiny, reference_llada(tiny, prompt, 10, block_length or 10))
        assert g.stats.forward_passes == g.stats.steps + 1


def test_fastdllm_at_threshold_one_is_llada_one_token_per_step(tiny):
    for prompt in PROMPTS:
        fast = decodelab.generate(tiny, prompt, method="fastdllm", max_new_tokens=12, threshold=1.0, block_length=5)
        llada = decodelab.generate(tiny, prompt, method="llada", max_new_tokens=12, block_length=5)
        assert fast.token_ids == llada.token_ids
        assert fast.stats.forward_passes == llada.stats.forward_passes


def test_a_rule_that_picks_nothing_still_finishes(tiny):
    class Nothing(Threshold):
        def select(self, step):
            return torch.zeros_like(step.masked)

    from decodelab.engine import Context
    from decodelab.processors import Sampler
    from decodelab.stats import Stats

    ctx = Context(tiny, [tiny.encode(PROMPTS[0])], {"temperature": 0.0}, Sampler({"temperature": 0.0}, 4),
                  None, 7, Stats())
    out = [t for step in sampling.decode(ctx, Nothing(3, 7, 0.9)) for t in step[0]]
    assert len(out) == 7 and tiny.mask_token_id not in out
    assert ctx.stats.forward_passes == 7  # one commit per step: the guard's top-1


def test_gen_length_not_divisible_by_block_length(tiny):
    g = decodelab.generate(tiny, PROMPTS[0], method="llada", max_new_tokens=10, block_length=4, steps=5)
    assert 1 <= len(g.token_ids) <= 10 and tiny.mask_token_id not in g.token_ids
    assert g.stats.forward_passes <= 5 + 2  # 5 steps spread over blocks of 4, 4, 2 (rounded per block)


def test_cfg_costs_two_forward_passes_per_step(tiny):
    g = decodelab.generate(tiny, PROMPTS[0], method="llada", max_new_tokens=6, cfg_scale=1.5, block_length=0)
    assert g.stats.forward_passes == 2 * (g.stats.steps + 1)


CASES = [("llada", {}), ("llada", {"block_length": 4, "steps": 6}), ("dream", {"alg": "topk_margin"}),
         ("dream", {"alg": "entropy", "alg_temp": 0.7, "temperature": 1.0}), ("fastdllm", {"threshold": 0.5}),
         ("fastdllm", {"factor": 2.0}), ("localleap", {"threshold": 0.6, "relaxed_threshold": 0.3}),
         ("adablock", {"delimiters": "|", "threshold": 0.5}),
         ("llada", {"remasking": "random", "temperature": 1.0}), ("ccd", {"warmup": 1, "steps": 6}),
         ("ebsampler", {"gamma": 0.5, "eot": True})]


@pytest.mark.parametrize("method,params", CASES)
def test_rows_do_not_depend_on_the_batch(tiny, method, params):
    batch = decodelab.generate_batch(tiny, PROMPTS, method=method, max_new_tokens=12, seed=11, **params)
    for i, prompt in enumerate(PROMPTS):
        alone = decodelab.generate(tiny, prompt, method=method, max_new_tokens=12, seed=11 + i, **params)
        assert batch[i].token_ids == alone.token_ids, (method, i)
        assert tiny.mask_token_id not in alone.token_ids


def test_apd_limits_are_ar_greedy_and_pure_drafting(tiny, tiny_dir, tiny_ar_dir):
    ar = decodelab.load(str(tiny_ar_dir))
    for prompt in PROMPTS:
        greedy = decodelab.generate(ar, prompt, max_new_tokens=10)
        apd = decodelab.generate(tiny, prompt, method="apd", max_new_tokens=10, ar_model=str(tiny_ar_dir),
                                 mixture_weight=0.0, max_draft=4)
        assert apd.token_ids == greedy.token_ids  # R = 0: the mixture is the AR model alone
        assert apd.stats.draft_forward_passes == apd.stats.forward_passes
    full = decodelab.generate(tiny, PROMPTS[0], method="apd", max_new_tokens=12, ar_model=str(tiny_ar_dir),
                              mixture_weight=1.0, max_draft=4)
    assert full.stats.forward_passes <= 3  # R = 1: every draft of 4 is accepted
    batch = decodelab.generate_batch(tiny, PROMPTS, method="apd", max_new_tokens=10, ar_model=str(tiny_ar_dir))
    for prompt, row in zip(PROMPTS, batch):
        alone = decodelab.generate(tiny, prompt, method="apd", max_new_tokens=10, ar_model=str(tiny_ar_dir))
        assert row.token_ids == alone.token_ids


def test_learn2pd_filter_fits_saves_loads_and_runs_offline(tiny, tmp_path):
    import json

    from decodelab.diffusion import learn2pd

    x, y = learn2pd.collect(tiny, [tiny.encode(p) for p in PROMPTS], 8)
    assert x.shape == (3 * (8 + 7 + 6 + 5 + 4 + 3 + 2 + 1), 5) and set(y.tolist()) <= {0.0, 1.0}
    spec = {"features": list(learn2pd.FEATURES), "weights": learn2pd.fit(x, y, steps=50)}
    path = tmp_path / "filter.json"
    path.write_text(json.dumps(spec))
    strict = decodelab.generate(tiny, PROMPTS[0], method="learn2pd", max_new_tokens=8, filter=str(path), accept=1.0)
    llada = decodelab.generate(tiny, PROMPTS[0], method="llada", max_new_tokens=8)
    assert strict.token_ids == llada.token_ids  # accept = 1: only the top-1 (sigmoid < 1), no EOS in view
    loose = decodelab.generate(tiny, PROMPTS[0], method="learn2pd", max_new_tokens=8, filter=str(path), accept=0.0)
    assert loose.stats.forward_passes == 1  # accept = 0: everything at once
    with pytest.raises(ValueError, match="cannot read the learn2pd filter"):
        decodelab.generate(tiny, PROMPTS[0], method="learn2pd", filter=str(tmp_path / "missing.json"))


def test_end_of_text_fills_the_tail_with_eos():
    from decodelab.diffusion.learn2pd import Learned
    from decodelab.diffusion.sampling import Canvas, Step

    eos, m = 1, 3
    ids = torch.tensor([[9, 9, m, m, m, m, m]])  # prompt of 2, canvas of 5
    canvas = Canvas(ids, torch.ones_like(ids), 2, ids[:, 2:] == m)
    conf = torch.tensor([[0.2, 0.99, 0.3, 0.1, 0.2]], dtype=torch.float64)
    x0 = torch.tensor([[5, eos, 6, 7, 8]])
    logits = torch.zeros(1, 5, 10, dtype=torch.float64)
    step = Step(conf, x0, canvas.masked.clone(), 0, [], logits, canvas)
    rule = Learned(0, 5, [0.0, 0.0, 0.0, 0.0, -10.0], accept=0.5, eos_id=eos)  # the filter accepts nothing
    got = rule.select(step)
    assert got.tolist() == [[False, True, True, True, True]]  # top-1 is EOS; the tail becomes EOS
    assert step.x0[0, 2:].tolist() == [eos, eos, eos]


def test_stream_yields_committed_text_as_it_is_fixed(tiny):
    events = list(decodelab.stream(tiny, PROMPTS[2], method="fastdllm", max_new_tokens=12, threshold=0.5))
    final = events[-1].generation
    assert "".join(e.text for e in events) == final.text
    assert sum(len(e.token_ids) for e in events) == len(final.token_ids)


def test_ebsampler_budget_zero_is_one_token_per_step_and_a_budget_saves_passes(tiny):
    one = decodelab.generate(tiny, PROMPTS[0], method="ebsampler", max_new_tokens=11, gamma=0.0)
    assert one.stats.forward_passes == 11  # only the lowest-entropy position fits a zero budget
    lm = decodelab.load("builtin:tasks-diffusion")
    prompt = decodelab.tasks.make("copy", 1, 0)[0].prompt
    passes = [decodelab.generate(lm, prompt, method="ebsampler", max_new_tokens=24, gamma=g).stats.forward_passes
              for g in (0.0, 1.0)]
    assert passes[1] < passes[0] == 24


def test_learn2pd_mlp_filter_sees_neighbours_fits_loads_and_runs(tiny, tmp_path):
    import json

    from decodelab.diffusion import learn2pd

    x, y = learn2pd.collect(tiny, [tiny.encode(p) for p in PROMPTS], 8, context=True)
    assert x.shape == (3 * 36, len(learn2pd.MLP_FEATURES))
    first = x[:8]  # the first step of row 0: every position masked, so neighbours are p(x0) or 1 at the edges
    assert first[0, 4] == 1.0 and first[-1, 5] == 1.0 and torch.allclose(first[1:, 4], first[:-1, 0])
    assert torch.all(first[:, 6] == 1.0)  # the whole canvas is masked
    model = learn2pd.fit_mlp(x, y, steps=30)
    spec = {"kind": "mlp", "features": list(learn2pd.MLP_FEATURES),
            "state": {k: v.tolist() for k, v in model.state_dict().items()}}
    path = tmp_path / "mlp.json"
    path.write_text(json.dumps(spec))
    strict = decodelab.generate(tiny, PROMPTS[0], method="learn2pd", max_new_tokens=8, filter=str(path), accept=1.0)
    assert strict.token_ids == decodelab.generate(tiny, PROMPTS[0], method="llada", max_new_tokens=8).token_ids
    loose = decodelab.generate(tiny, PROMPTS[0], method="learn2pd", max_new_tokens=8, filter=str(path), accept=0.0)
    assert loose.stats.forward_passes == 1
    path.write_text(json.dumps({**spec, "state": {}}))
    with pytest.raises(ValueError, match="cannot read the learn2pd filter"):
        decodelab.generate(tiny, PROMPTS[0], method="learn2pd", filter=str(path))


def test_the_shipped_mlp_filter_loads_offline_and_parallelises():
    lm = decodelab.load("builtin:tasks-diffusion")
    item = decodelab.tasks.make("copy", 1, 0)[0]
    g = decodelab.generate(lm, item.prompt, method="learn2pd", filter="mlp", accept=0.93, max_new_tokens=24)
    assert g.stats.forward_passes < 12 and lm.mask_token_id not in g.token_ids
