"""Penalties (repetition, presence, frequency) are history-dependent, so they are where a batch, a draft or
a later step can silently change the distribution. Three checks:

- the sampled distribution of the first DEPTH tokens with all three penalties on equals the exact one
  (`decodelab.next_token_probs(..., generated=prefix)`: presence / frequency count generated tokens only),
  for `sample` and for `speculative` with a draft that is often rejected — chi-square at α = 1e-3 over
  N = 2000 samples drawn as batches (row i has seed i, so a batch draws what N single runs would);
- row b of a ragged batch with penalties equals the row alone with seed s + b (each row counts its own
  generated tokens after its own prompt, not the padded batch's);
- `next_token_probs(generated=...)` penalises generated tokens and never the prompt;
- at temperature 0 every lossless method with every history processor on gives greedy's tokens with the
  same processors, over outputs long enough that rejected drafts come before later tokens (each row's
  penalty state is rolled back over them: processors/history.py `TokenHistory`).
"""

import pytest
import torch
from test_batched import LOSSLESS, PROMPTS, SOFT, _needs
from test_distribution import DEPTH, PROMPT, TARGET

import decodelab

from stat_utils import ALPHA, chi2_pvalue, exact_joint, min_detectable_tv

N = 2000
PENALTIES = dict(temperature=1.0, top_k=6, repetition_penalty=3.0, presence_penalty=2.0, frequency_penalty=2.0)


@pytest.fixture(scope="module")
def exact():
    return exact_joint(TARGET, PROMPT, DEPTH, **PENALTIES)


def _draw(method: str, **kw):
    samples, accepted, drafted = [], 0, 0
    for start in range(0, N, 500):
        gens = decodelab.generate_batch(TARGET, [PROMPT] * 500, method=method, seed=list(range(start, start + 500)),
                                        max_new_tokens=DEPTH, **PENALTIES, **kw)
        samples += [tuple(g.token_ids[:DEPTH]) for g in gens]
        accepted += sum(sum(g.stats.accepted) for g in gens[:1])  # batch-level counts, on every row
        drafted += sum(sum(g.stats.drafted) for g in gens[:1])
    return samples, accepted, drafted


@pytest.mark.parametrize("method,kw", [("sample", {}),
                                       ("speculative", dict(draft="noisy", num_draft_tokens=2, stop_threshold=1.0))])
def test_penalised_distribution_matches_target(method, kw, exact):
    assert min_detectable_tv(exact, N) < 0.12  # the stated power: TV ≥ 0.12 is caught with probability ≥ 0.99
    samples, accepted, drafted = _draw(method, **kw)
    if kw:
        assert accepted > 200 and drafted - accepted > 200, (accepted, drafted)  # accept and reject paths run
    assert chi2_pvalue(samples, exact) > ALPHA


def test_penalties_change_the_distribution(exact):
    """The setting can see a penalty bug: the penalised joint differs from the plain one by far more than
    the test's detectable TV."""
    from stat_utils import total_variation

    plain = exact_joint(TARGET, PROMPT, DEPTH, temperature=1.0, top_k=6)
    assert total_variation(plain, exact) > 0.3


@pytest.mark.parametrize("backend", ["transformers", "native"])
@pytest.mark.parametrize("method", ["sample", "speculative", "pld"])
def test_ragged_batch_rows_with_penalties_equal_rows_alone(method, backend):
    lm = SOFT[backend]
    params = dict(temperature=1.0, presence_penalty=1.5, frequency_penalty=1.0, repetition_penalty=1.3,
                  **_needs(method))
    batch = decodelab.generate_batch(lm, PROMPTS, method=method, max_new_tokens=20, seed=40, **params)
    for b, (prompt, got) in enumerate(zip(PROMPTS, batch)):
        alone = decodelab.generate(lm, prompt, method=method, max_new_tokens=20, seed=40 + b, **params)
        assert got.token_ids == alone.token_ids, (method, b)


HISTORY = dict(temperature=0, repetition_penalty=1.4, presence_penalty=0.6, frequency_penalty=0.4,
               no_repeat_ngram_size=3)


@pytest.mark.parametrize("backend", ["transformers", "native"])
@pytest.mark.parametrize("method", [m for m in LOSSLESS if m not in ("greedy", "sample")])
def test_lossless_methods_with_penalties_equal_penalised_greedy(method, backend):
    lm = SOFT[backend]
    batch = decodelab.generate_batch(lm, PROMPTS, method=method, max_new_tokens=40, **HISTORY, **_needs(method))
    drafted = sum(batch[0].stats.drafted) - sum(batch[0].stats.accepted)
    assert drafted > 0, method  # some drafts were rejected: the state had to roll back
    for prompt, got in zip(PROMPTS, batch):
        want = decodelab.generate(lm, prompt, method="greedy", max_new_tokens=40, **HISTORY)
        assert got.token_ids == want.token_ids, (method, prompt)


def test_next_token_probs_penalises_generated_tokens_not_the_prompt():
    prompt = TARGET.encode("ab")
    base = decodelab.next_token_probs(TARGET, prompt, temperature=1.0)
    same = decodelab.next_token_probs(TARGET, prompt, temperature=1.0, presence_penalty=2.0)
    torch.testing.assert_close(base, same)  # nothing generated yet: nothing to penalise
    t = int(base.argmax())
    after = decodelab.next_token_probs(TARGET, prompt, generated=[t], temperature=1.0)
    penalised = decodelab.next_token_probs(TARGET, prompt, generated=[t], temperature=1.0, presence_penalty=2.0)
    assert penalised[t] < after[t] * 0.5
