"""logprobs=k: each generated token's log-probability under the model (raw log-softmax, vLLM's default),
and its k most likely alternatives — the same for every causal method, batch and engine path.

The reference is computed here directly from the transformers model's logits over prompt + output.
"""

import pytest
import torch
from test_batched import PROMPTS, SHARP, _needs

import decodelab
from decodelab import UserError

LOSSLESS = sorted(n for n, m in decodelab.methods().items() if m.lossless and m.kind == "causal")


def _reference(lm, prompt: str, tokens: list[int]) -> list[float]:
    ids = lm.encode(prompt)
    model = SHARP["transformers"].model  # the native LM runs the same weights (from_transformers)
    with torch.no_grad():
        logits = model(torch.tensor([ids + tokens])).logits[0, len(ids) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(tokens)[:, None])[:, 0].tolist()


@pytest.mark.parametrize("backend", ["transformers", "native"])
def test_greedy_logprobs_equal_the_models_own(backend):
    lm = SHARP[backend]
    for prompt in PROMPTS[:3]:
        g = decodelab.generate(lm, prompt, max_new_tokens=12, logprobs=3)
        assert g.logprobs == pytest.approx(_reference(lm, prompt, g.token_ids), abs=1e-4)
        assert [alts[0][0] for alts in g.top_logprobs] == g.token_ids  # greedy picks the most likely
        assert all(a[1] >= b[1] for alts in g.top_logprobs for a, b in zip(alts, alts[1:]))


@pytest.mark.parametrize("method", LOSSLESS)
def test_every_lossless_method_reports_greedys_logprobs(method):
    lm = SHARP["native"]
    want = decodelab.generate(lm, PROMPTS[0], max_new_tokens=10, logprobs=1)
    got = decodelab.generate(lm, PROMPTS[0], method=method, max_new_tokens=10, logprobs=1, temperature=0,
                             **_needs(method))
    assert got.token_ids == want.token_ids and got.logprobs == pytest.approx(want.logprobs, abs=1e-5)


def test_batch_engine_and_stop_cut_rows_equal_rows_alone():
    lm = SHARP["native"]
    batch = decodelab.generate_batch(lm, PROMPTS, method="sample", seed=3, temperature=1.5, max_new_tokens=9,
                                     stop=["\n"], logprobs=0)
    engine = decodelab.Engine(lm, "sample", temperature=1.5)
    rows = {engine.add(p, max_new_tokens=9, seed=3 + i, stop=["\n"], logprobs=0): i for i, p in enumerate(PROMPTS)}
    done = {}
    while engine.busy:
        done.update({rows[e.row]: e.generation for e in engine.step() if e.generation})
    for i, (prompt, got) in enumerate(zip(PROMPTS, batch)):
        alone = decodelab.generate(lm, prompt, method="sample", seed=3 + i, temperature=1.5, max_new_tokens=9,
                                   stop=["\n"], logprobs=0)
        assert len(got.logprobs) == len(got.token_ids) and got.top_logprobs == [[] for _ in got.token_ids]
        assert got.logprobs == pytest.approx(alone.logprobs, abs=1e-5)
        assert done[i].logprobs == pytest.approx(alone.logprobs, abs=1e-4)  # the engine scores incrementally
        assert len(done[i].top_logprobs) == len(done[i].token_ids)
    assert decodelab.generate(lm, "ab", max_new_tokens=3).to_dict().get("logprobs") is None  # off by default


@pytest.mark.parametrize("bad", [-1, 21, 1.5, "2"])
def test_bad_logprobs_is_a_user_error(bad):
    with pytest.raises(UserError, match="logprobs"):
        decodelab.generate(SHARP["native"], "ab", max_new_tokens=2, logprobs=bad)
    with pytest.raises(UserError, match="logprobs"):
        decodelab.Engine(SHARP["native"]).add("ab", logprobs=bad)
