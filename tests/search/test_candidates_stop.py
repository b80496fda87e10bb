"""`Generation.candidates` of search and meta methods are cut by stop strings and EOS exactly as the
returned text is (engine.py `_candidate`): tokens up to the one that completes the stop string or is
EOS, text without the stop string or EOS; the best candidate equals the Generation."""

from __future__ import annotations

import decodelab
from tests.fakes import rule_lm, soft_lm, tiny_lm


def cut(lm, tokens: list[int], stop: list[str]) -> tuple[str, list[int]]:
    """Reference: the first prefix that ends in EOS or whose text holds a stop string."""
    for i in range(1, len(tokens) + 1):
        if tokens[i - 1] in lm.eos_token_ids:
            return lm.decode(tokens[: i - 1]), tokens[:i]
        text = lm.decode(tokens[:i])
        hits = [text.find(s) for s in stop if s in text]
        if hits:
            return text[: min(hits)], tokens[:i]
    return lm.decode(tokens), tokens


def check(lm, method: str, stop: list[str], **kw) -> None:
    free = decodelab.generate(lm, "def f(x):", method=method, **kw)
    stopped = decodelab.generate(lm, "def f(x):", method=method, stop=stop, **kw)
    assert len(stopped.candidates) == len(free.candidates) > 1
    assert any(any(s in c.text for s in stop) for c in free.candidates)  # the stop string does occur
    for c, whole in zip(stopped.candidates, free.candidates):
        assert (c.text, c.token_ids) == cut(lm, whole.token_ids, stop)
        assert c.score == whole.score
    best = stopped.candidates[0]
    assert (best.text, best.token_ids) == (stopped.text, stopped.token_ids)


def test_beam_candidates_cut_at_stop_strings():
    check(tiny_lm("llama"), "beam", ["z"], num_beams=4, num_return_sequences=3, max_new_tokens=12)


def test_meta_candidates_are_the_inner_generations():
    """best_of_n's candidates are the inner samples, cut by the request's stop strings as each sample's
    own Generation is (the inner run stops them; scores are of the cut samples)."""
    lm, stop = soft_lm("llama"), ["z", "\t2"]
    kw = dict(max_new_tokens=24, seed=0, temperature=1.5, stop=stop)
    g = decodelab.generate(lm, "def f(x):", method="best_of_n", num_samples=4, **kw)
    samples = decodelab.generate_batch(lm, ["def f(x):"], method="sample", n=4, **kw)
    assert sum(s.finish_reason == "stop" for s in samples) >= 2
    assert sorted((c.text, c.token_ids) for c in g.candidates) == sorted((s.text, s.token_ids) for s in samples)
    assert not any(x in c.text for c in g.candidates for x in stop)
    assert (g.candidates[0].text, g.candidates[0].token_ids) == (g.text, g.token_ids)


def test_candidates_cut_at_eos():
    eos = 256

    def script(ids, positions):  # "a" until position 12, then EOS
        return (positions >= 12).long() * (eos - 97) + 97

    lm = rule_lm(script)
    assert eos in lm.eos_token_ids
    g = decodelab.generate(lm, "def f(x):", method="beam", num_beams=2, num_return_sequences=2, max_new_tokens=8)
    assert g.token_ids[-1] == eos and g.text == "a" * (len(g.token_ids) - 1)
    for c in g.candidates:
        assert "<eos>" not in c.text and c.token_ids.count(eos) <= 1
        assert (c.text, c.token_ids) == cut(lm, c.token_ids, [])
    assert (g.candidates[0].text, g.candidates[0].token_ids) == (g.text, g.token_ids)


def test_candidates_in_json_are_cut():
    g = decodelab.generate(tiny_lm("llama"), "def f(x):", method="beam", num_beams=3, num_return_sequences=2,
                           max_new_tokens=10, stop="z")
    assert all("z" not in c["text"] for c in g.to_dict()["candidates"])
