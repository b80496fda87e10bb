"""`beam` equals transformers' beam search (sequences, scores, num_return_sequences, length penalty,
early stopping), batched over ragged prompts, on tiny random models of three architectures and on
builtin:pyco; patience=1 is classic beam; bad input is a one-line ValueError."""

import pytest
import torch

import decodelab
from decodelab.search.beam import BeamConfig, BeamState

from fakes import ARCHS, PAD, tiny_lm

PROMPTS = ["def f(x):", "hello world hello", "ab", "import os\nimport"]


def _frequent_eos(lm, extra: int):
    """Make a token the model emits often a second EOS, so beams do end early (random models rarely
    emit <eos>): exercises the finished set, the keep = (1 + #EOS)·K rule and early stopping."""
    lm.__dict__["eos_token_ids"] = frozenset({256, extra})
    return lm


def _hf_beam(lm, prompts, n, **kw):
    """transformers' beam search over left-padded prompts → per prompt [(new tokens, score), ...]."""
    ids = [lm.encode(p) for p in prompts]
    width = max(len(i) for i in ids)
    x = torch.tensor([[PAD] * (width - len(i)) + i for i in ids])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    out = lm.model.generate(x, attention_mask=mask, do_sample=False, max_new_tokens=n, pad_token_id=PAD,
                            eos_token_id=sorted(lm.eos_token_ids), output_scores=True,
                            return_dict_in_generate=True, **kw)
    lengths = ((out.beam_indices + 1).bool()).sum(dim=1).tolist()
    rows = [(out.sequences[r, width: width + lengths[r]].tolist(), float(out.sequences_scores[r]))
            for r in range(len(lengths))]
    k = kw.get("num_return_sequences", 1)
    return [rows[b * k: (b + 1) * k] for b in range(len(prompts))]


def _ours(lm, prompts, n, **kw):
    gens = decodelab.generate_batch(lm, prompts, method="beam", max_new_tokens=n, **kw)
    for g in gens:
        assert g.token_ids == g.candidates[0].token_ids
    return [[(c.token_ids, c.score) for c in g.candidates] for g in gens]


def _assert_same(ours, theirs):
    for mine, ref in zip(ours, theirs, strict=True):
        assert [t for t, _ in mine] == [t for t, _ in ref]
        assert [s for _, s in mine] == pytest.approx([s for _, s in ref], abs=1e-4)


CASES = [dict(num_beams=2), dict(num_beams=3, num_return_sequences=3),
         dict(num_beams=4, length_penalty=0.0, early_stopping=True, num_return_sequences=2),
         dict(num_beams=5, length_penalty=2.0, early_stopping="never"),
         dict(num_beams=3, length_penalty=-1.0, early_stopping=False, num_return_sequences=2)]


# a token each seed-3 model emits often inside its beams (found by counting their 4-beam outputs)
FREQUENT = {"llama": 85, "qwen2": 114, "gpt2": 146}


@pytest.mark.parametrize("arch", ARCHS)
def test_beam_equals_transformers_batched(arch):
    lm = _frequent_eos(tiny_lm(arch, seed=3), extra=FREQUENT[arch])
    ended_early = 0
    for kw in CASES:
        ref = _hf_beam(lm, PROMPTS, 12, **kw)
        _assert_same(_ours(lm, PROMPTS, 12, **kw), ref)
        ended_early += sum(len(t) < 12 for row in ref for t, _ in row)
    assert ended_early > 0  # the EOS paths were exercised


def test_beam_equals_transformers_with_repetition_penalty():
    lm = tiny_lm("llama", seed=5)
    kw = dict(num_beams=3, num_return_sequences=2)
    ours = _ours(lm, PROMPTS[:2], 10, repetition_penalty=1.3, no_repeat_ngram_size=2, **kw)
    _assert_same(ours, _hf_beam(lm, PROMPTS[:2], 10, repetition_penalty=1.3, no_repeat_ngram_size=2, **kw))


def test_beam_equals_transformers_on_pyco():
    lm = decodelab.load("builtin:pyco", backend="transformers")
    prompts = ["def add(a, b):\n", "for i in range(", "class Stack:\n    def"]
    for kw in (dict(num_beams=2), dict(num_beams=4, num_return_sequences=2, early_stopping=True)):
        _assert_same(_ours(lm, prompts, 16, **kw), _hf_beam(lm, prompts, 16, **kw))


def test_rows_do_not_depend_on_the_batch():
    lm = _frequent_eos(tiny_lm("qwen2", seed=1), extra=160)
    together = _ours(lm, PROMPTS, 10, num_beams=3, num_return_sequences=2)
    alone = [_ours(lm, [p], 10, num_beams=3, num_return_sequences=2)[0] for p in PROMPTS]
    for a, b in zip(together, alone):
        assert [t for t, _ in a] == [t for t, _ in b]


def test_one_beam_is_greedy():
    lm = tiny_lm("gpt2", seed=2)
    for p in PROMPTS:
        beam = decodelab.generate(lm, p, method="beam", num_beams=1, max_new_tokens=12)
        assert beam.token_ids == decodelab.generate(lm, p, method="greedy", max_new_tokens=12).token_ids


def test_patience_one_is_classic_and_larger_patience_keeps_searching():
    lm = _frequent_eos(tiny_lm("llama", seed=3), extra=FREQUENT["llama"])
    classic = _ours(lm, PROMPTS, 12, num_beams=3, early_stopping=True)
    assert _ours(lm, PROMPTS, 12, num_beams=3, early_stopping=True, patience=1.0) == classic
    patient = decodelab.generate_batch(lm, PROMPTS, method="beam", max_new_tokens=12, num_beams=3,
                                       early_stopping=True, patience=2.0)
    hasty = decodelab.generate_batch(lm, PROMPTS, method="beam", max_new_tokens=12, num_beams=3,
                                     early_stopping=True)
    assert patient[0].stats.forward_passes >= hasty[0].stats.forward_passes
    for p, h in zip(patient, hasty):  # a larger finished set can only find a better (or equal) best score
        assert p.candidates[0].score >= h.candidates[0].score - 1e-6


def test_patience_stops_when_the_finished_set_reaches_patience_times_k():
    """Kasai et al.: FCFS stops at |F| = p·k. Two beams, every candidate ends with EOS except one token."""
    cfg = BeamConfig(num_beams=2, early_stopping=True, patience=0.5)  # |F| = 1: stop at the first finish
    state = BeamState(1, cfg, max_new=5, pad=0, eos=[3])
    logp = torch.log(torch.tensor([[0.1, 0.1, 0.1, 0.7]] * 2)).unsqueeze(0)  # EOS (3) best everywhere
    _, go_on = state.step(logp, 0)
    assert not go_on and state.ranked(0, 1)[0][0] == [3]
    state = BeamState(1, BeamConfig(num_beams=2, early_stopping=True, patience=1.5), max_new=5, pad=0, eos=[3])
    _, go_on = state.step(logp, 0)  # one finished of three slots: continue
    assert go_on and int(state.fin_done.sum()) == 1


@pytest.mark.parametrize("params, message", [
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
    (dict(num_beams=0), "num_beams"),
    (dict(early_stopping="sometimes"), "early_stopping"),
    (dict(patience=0), "patience"),
])
def test_bad_input_is_a_clear_error(params, message):
    lm = tiny_lm("llama")
    with pytest.raises(ValueError, match=message):
        decodelab.generate(lm, "a", method="beam", max_new_tokens=4, **params)


def _logprob(lm, prompt, completion):
    ids = lm.encode(prompt)
    with torch.no_grad():
        logp = lm.model(torch.tensor([ids + completion])).logits[0].float().log_softmax(-1)
    return sum(logp[len(ids) + i - 1, t].item() for i, t in enumerate(completion))


def test_beam_under_a_choice_constraint_ranks_every_choice_by_its_likelihood():
    """K ≥ the number of choices and no length penalty: beam search enumerates the choices; each
    hypothesis is a choice + EOS scored by the raw model's log-likelihood (the mask renormalises nothing)."""
    lm = tiny_lm("llama", seed=2)
    choices = ["abc", "hello", "xy"]
    for prompt in ("a", "def f(x):"):
        g = decodelab.generate(lm, prompt, method="beam", num_beams=3, num_return_sequences=3, length_penalty=0.0,
                               early_stopping="never", max_new_tokens=8, constraint={"choice": choices})
        expected = sorted(((_logprob(lm, prompt, lm.encode(c) + [256]), c) for c in choices), reverse=True)
        assert [c.token_ids for c in g.candidates] == [lm.encode(c) + [256] for _, c in expected]
        assert [c.score for c in g.candidates] == pytest.approx([s for s, _ in expected], rel=1e-6)
        assert g.text == expected[0][1] and g.incomplete is False


@pytest.fixture(scope="module")
def pyco():
    return decodelab.load("builtin:pyco")


HEAL_PROMPTS = ["x = ", "def f(x):\n    ", "import os\n", "print(", "for i in ra"]


def test_one_beam_with_token_healing_is_healed_greedy(pyco):
    """Token healing under beam search: the first step's beams continue the backed-up prompt under the
    healing mask (repeated for each prompt's beams), so one beam is healed greedy, token for token, in a
    ragged batch; the mask bites — on some prompt healed greedy's first token is not the model's argmax
    after the backed-up prompt."""
    from decodelab.constraints import heal

    beams = decodelab.generate_batch(pyco, HEAL_PROMPTS, method="beam", num_beams=1, max_new_tokens=8,
                                     token_healing=True)
    bites = 0
    for prompt, beam in zip(HEAL_PROMPTS, beams):
        greedy = decodelab.generate(pyco, prompt, max_new_tokens=8, token_healing=True)
        assert (beam.token_ids, beam.text) == (greedy.token_ids, greedy.text), prompt
        kept, _ = heal(pyco, pyco.encode(prompt))
        bites += decodelab.generate(pyco, kept, max_new_tokens=1).token_ids[0] != greedy.token_ids[0]
    assert bites > 0


def test_every_beam_re_covers_the_removed_prompt_token(pyco):
    """With several beams (and under a grammar) every returned hypothesis starts with the removed token's
    text, and its text leaves that part out; the beams differ, so more than one hypothesis was checked."""
    from decodelab.constraints import heal

    for prompt, constraint in (("x = ", None), ("print(", None), ("n = ", {"regex": r"[0-9]{1,3}"})):
        _, removed = heal(pyco, pyco.encode(prompt))
        g = decodelab.generate(pyco, prompt, method="beam", num_beams=3, num_return_sequences=3, max_new_tokens=6,
                               token_healing=True, constraint=constraint)
        assert len({tuple(c.token_ids) for c in g.candidates}) == 3
        for c in g.candidates:
            full = pyco.decode([t for t in c.token_ids if t not in pyco.eos_token_ids])
            assert full.startswith(removed) and c.text == full[len(removed):], (prompt, full)
        if constraint:
            assert g.finish_reason == "stop" and all(c.text.isdigit() for c in g.candidates), g.candidates


def test_native_backend_equals_transformers_backend_on_pyco():
    native, hf = decodelab.load("builtin:pyco"), decodelab.load("builtin:pyco", backend="transformers")
    prompts = ["def add(a, b):\n", "for i in range("]
    ours = _ours(native, prompts, 16, num_beams=3, num_return_sequences=2)
    _assert_same(ours, _ours(hf, prompts, 16, num_beams=3, num_return_sequences=2))


def test_candidates_reach_stream_and_json():
    lm = tiny_lm("llama")
    events = list(decodelab.stream(lm, "ab", method="beam", num_beams=2, num_return_sequences=2, max_new_tokens=5))
    final = events[-1].generation
    assert "".join(e.text for e in events) == final.text
    out = final.to_dict()["candidates"]
    assert [c["token_ids"] for c in out] == [c.token_ids for c in final.candidates] and len(out) == 2
    assert out[0]["score"] >= out[1]["score"] and out[0]["text"] == lm.decode(out[0]["token_ids"])
    assert "candidates" not in decodelab.generate(lm, "ab", max_new_tokens=3).to_dict()  # only search/meta


def test_cli_params_reach_every_early_stopping_value():
    """`-p early_stopping=never` from the command line (the CLI types -p values by the default, a bool)."""
    from decodelab.cli import parse_params
    from decodelab.methods import methods

    info = methods()["beam"]
    for text, value in (("never", "never"), ("true", True), ("False", False)):
        assert info.check_params(parse_params([f"early_stopping={text}"], info.params))["early_stopping"] == value
    with pytest.raises(ValueError, match="early_stopping must be one of"):
        info.check_params(parse_params(["early_stopping=maybe"], info.params))
