"""The engine's bookkeeping through the public API: seeds, lengths, EOS, stop strings, streaming, stats."""

import pytest
import torch

import decodelab

from fakes import ARCHS, EOS, tiny_lm

PROMPTS = ["def f(x):", "hello world", "import os\n"]


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("llama", seed=1)


def _scripted(text: bytes, after: int, seed: int = 0):
    """A tiny llama whose logits are a bigram table: token `after` → text[0] → text[1] → …

    The bytes of `after + text` must be distinct so the chain is a function of the last token.
    """
    chain = [after, *text]
    assert len(set(chain)) == len(chain)
    lm = tiny_lm("llama", seed=seed)
    table = torch.full((lm.vocab_size, lm.vocab_size), -10.0)
    table[:, EOS] = 5.0  # off the script: end
    for a, b in zip(chain, chain[1:]):
        table[a, b] = 10.0
    seen = {}

    def keep_ids(module, args, kwargs):
        seen["ids"] = kwargs["input_ids"]

    def bigram(module, args, out):
        return table[seen["ids"][:, -out.shape[1]:]].to(out.dtype)

    lm.model.register_forward_pre_hook(keep_ids, with_kwargs=True)
    lm.model.get_output_embeddings().register_forward_hook(bigram)
    return lm


def _stream_text(lm, prompt, **kw):
    events = list(decodelab.stream(lm, prompt, **kw))
    assert events[-1].generation is not None
    assert all(e.generation is None for e in events[:-1])
    return "".join(e.text for e in events), events[-1].generation


# ---- seeds and temperature -----------------------------------------------------------------------

def test_sample_same_seed_same_output(lm):
    for p in PROMPTS[:2]:
        a = decodelab.generate(lm, p, method="sample", max_new_tokens=12, seed=123, temperature=1.0)
        b = decodelab.generate(lm, p, method="sample", max_new_tokens=12, seed=123, temperature=1.0)
        assert a.token_ids == b.token_ids
        assert a.text == b.text


def test_sample_different_seeds_differ(lm):
    # a flat distribution (temperature 3) makes equal runs across 4 seeds × 2 prompts vanishingly unlikely
    for p in PROMPTS[:2]:
        runs = {tuple(decodelab.generate(lm, p, method="sample", max_new_tokens=8, seed=s, temperature=3.0).token_ids)
                for s in range(4)}
        assert len(runs) > 1, p


def test_sample_batch_same_seed_same_output(lm):
    a = decodelab.generate_batch(lm, PROMPTS, method="sample", max_new_tokens=6, seed=7, temperature=2.0)
    b = decodelab.generate_batch(lm, PROMPTS, method="sample", max_new_tokens=6, seed=7, temperature=2.0)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]


def test_temperature_zero_ignores_seed_and_equals_greedy(lm):
    greedy = decodelab.generate(lm, PROMPTS[0], max_new_tokens=10)
    for seed in (1, 2, None):
        g = decodelab.generate(lm, PROMPTS[0], method="sample", temperature=0, seed=seed, max_new_tokens=10)
        assert g.token_ids == greedy.token_ids
    assert decodelab.generate(lm, PROMPTS[0], seed=5, max_new_tokens=10).token_ids == greedy.token_ids


# ---- length and stats ----------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 13])
def test_max_new_tokens_exact_and_greedy_stats(lm, n):
    g = decodelab.generate(lm, PROMPTS[0], max_new_tokens=n)
    assert EOS not in g.token_ids  # this model/prompt does not emit EOS: the run is cut by length
    assert len(g.token_ids) == n
    assert g.finish_reason == "length"
    assert g.text == lm.decode(g.token_ids)
    s = g.stats
    assert s.new_tokens == n == len(g.token_ids)
    assert s.steps == n - 1
    assert s.forward_passes == 1 + s.steps
    assert s.draft_forward_passes == 0
    assert s.mean_accepted == (1.0 if n > 1 else 0.0)
    assert s.wall_time_s > 0
    assert s.tokens_per_s == pytest.approx(n / s.wall_time_s)
    d = s.to_dict()
    for key in ("new_tokens", "forward_passes", "draft_forward_passes", "steps", "mean_accepted",
                "wall_time_s", "tokens_per_s"):
        assert key in d
    assert d["new_tokens"] == n and d["forward_passes"] == n


def test_generation_records_method_and_params(lm):
    g = decodelab.generate(lm, "x", method="sample", seed=0, max_new_tokens=2, temperature=0.5, top_k=3)
    assert g.method == "sample"
    assert g.params["temperature"] == 0.5 and g.params["top_k"] == 3
    d = g.to_dict()
    assert set(d) == {"method", "params", "text", "token_ids", "finish_reason", "stats"}


def test_prompt_as_ids_equals_prompt_as_text(lm):
    a = decodelab.generate(lm, PROMPTS[1], max_new_tokens=6)
    b = decodelab.generate(lm, lm.encode(PROMPTS[1]), max_new_tokens=6)
    assert a.token_ids == b.token_ids and a.text == b.text


# ---- EOS -----------------------------------------------------------------------------------------

def _eos_biased(lm, prompt, n=16):
    """Bias the EOS logit so that it first wins at a step k ≥ 1 of the unbiased greedy run.

    Returns (k, unbiased greedy tokens). Deterministic: the bias sits halfway between the smallest
    and the second smallest (max logit − EOS logit) margin along the greedy run.
    """
    run = decodelab.generate(lm, prompt, max_new_tokens=n).token_ids
    ids = lm.encode(prompt)
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids + run])).logits[0, len(ids) - 1: len(ids) - 1 + n]
    margins = logits.max(dim=-1).values - logits[:, EOS]
    order = margins.argsort().tolist()
    k, gap = order[0], (margins[order[1]] - margins[order[0]]).item()
    if k == 0 or gap < 1e-2:
        return None, run
    bias = torch.zeros(lm.vocab_size)
    bias[EOS] = margins[k].item() + gap / 2
    lm.model.get_output_embeddings().register_forward_hook(lambda m, a, out: out + bias.to(out.dtype))
    return k, run


def test_eos_stops_generation():
    for seed in range(4):
        lm = tiny_lm("llama", seed=seed)
        for prompt in PROMPTS:
            if EOS in decodelab.generate(lm, prompt, max_new_tokens=16).token_ids:
                continue
            k, run = _eos_biased(lm, prompt)
            if k is not None:
                break
        if k is not None:
            break
    assert k is not None, "no prompt gave an EOS case"
    g = decodelab.generate(lm, prompt, max_new_tokens=16)
    assert g.finish_reason == "eos"
    assert g.token_ids == run[:k] + [EOS]
    assert g.token_ids[-1] == EOS and EOS not in g.token_ids[:-1]
    assert g.text == lm.decode(run[:k])
    assert "<eos>" not in g.text
    assert g.stats.new_tokens == len(g.token_ids)
    streamed, final = _stream_text(lm, prompt, max_new_tokens=16)
    assert streamed == final.text == g.text
    # sampling stops at EOS too: at temperature 0 it is the same run
    s = decodelab.generate(lm, prompt, method="sample", temperature=0, max_new_tokens=16)
    assert s.token_ids == g.token_ids and s.finish_reason == "eos"


def test_eos_in_a_batch_ends_each_row_on_its_own():
    lm = _scripted(b"abc", ord(">"))
    g = decodelab.generate(lm, "x>", max_new_tokens=20)
    assert g.token_ids == [ord("a"), ord("b"), ord("c"), EOS]
    assert g.finish_reason == "eos" and g.text == "abc"
    # the second row reaches EOS two steps earlier and keeps its result while the first runs on
    rows = decodelab.generate_batch(lm, ["x>", "zzb"], max_new_tokens=20)
    assert [r.finish_reason for r in rows] == ["eos", "eos"]
    assert [r.token_ids for r in rows] == [g.token_ids, [ord("c"), EOS]]
    assert [r.text for r in rows] == ["abc", "c"]
    # each row counts its own tokens; the forward passes were shared by the batch of two
    assert [r.stats.new_tokens for r in rows] == [4, 2]
    assert [r.stats.batch_size for r in rows] == [2, 2] and g.stats.batch_size == 1
    assert rows[0].stats.forward_passes == rows[1].stats.forward_passes == g.stats.forward_passes


# ---- stop strings --------------------------------------------------------------------------------

def _first_clean_substring(text: str, length: int, start: int = 1) -> str | None:
    for i in range(start, len(text) - length):
        s = text[i:i + length]
        if "\ufffd" not in s and text.find(s) == i:
            return s
    return None


def _check_stopped(lm, g, stop, run):
    full = lm.decode(run)
    stops = [stop] if isinstance(stop, str) else stop
    cut = min(full.find(s) for s in stops if s in full)
    assert g.finish_reason == "stop"
    assert g.text == full[:cut]
    assert all(s not in g.text for s in stops)
    assert g.token_ids == run[: len(g.token_ids)]
    decoded = lm.decode(g.token_ids)
    assert any(s in decoded for s in stops)
    assert not any(s in lm.decode(g.token_ids[:-1]) for s in stops)  # stopped at the first chance


@pytest.mark.parametrize("arch", ARCHS)
def test_stop_strings_cut_text(arch):
    lm = tiny_lm(arch, seed=1)
    kw = {"max_new_tokens": 24, "no_repeat_ngram_size": 2}  # tiny gpt2 otherwise repeats one byte
    checked = 0
    for prompt in PROMPTS:
        run = decodelab.generate(lm, prompt, **kw).token_ids
        text = lm.decode(run)
        for length in (1, 3):  # one token, and one spanning three byte tokens
            stop = _first_clean_substring(text, length)
            if stop is None:
                continue
            g = decodelab.generate(lm, prompt, stop=stop, **kw)
            _check_stopped(lm, g, stop, run)
            streamed, final = _stream_text(lm, prompt, stop=stop, **kw)
            assert streamed == final.text == g.text
            checked += 1
    assert checked >= 2


def test_several_stop_strings_earliest_wins(lm):
    run = decodelab.generate(lm, PROMPTS[0], max_new_tokens=24).token_ids
    text = lm.decode(run)
    early = _first_clean_substring(text, 2, start=2)
    late = _first_clean_substring(text, 2, start=text.find(early) + 3)
    assert early and late
    g = decodelab.generate(lm, PROMPTS[0], max_new_tokens=24, stop=[late, early, "never-there"])
    _check_stopped(lm, g, [late, early, "never-there"], run)
    assert g.text == text[: text.find(early)]


def test_stop_string_absent_runs_to_length(lm):
    g = decodelab.generate(lm, PROMPTS[0], max_new_tokens=8, stop="this is not generated")
    assert g.finish_reason == "length" and len(g.token_ids) == 8


def test_stop_string_with_multibyte_character_streams_consistently():
    """A stop string ending in a 3-byte character: the streamed text must never run past the cut."""
    lm = _scripted("Xa€Yz".encode(), ord("!"))
    full = decodelab.generate(lm, "hi!", max_new_tokens=8)
    assert full.text == "Xa€Yz" and full.finish_reason == "eos"
    for stop in ("a€", "€", "€Y", "Yz"):
        streamed, g = _stream_text(lm, "hi!", max_new_tokens=8, stop=stop)
        assert g.finish_reason == "stop"
        assert g.text == "Xa€Yz"[: "Xa€Yz".find(stop)]
        assert streamed == g.text, stop


def test_multibyte_text_streams_without_replacement_characters():
    lm = _scripted("é€😀ok".encode(), ord("!"))
    streamed, g = _stream_text(lm, "!", max_new_tokens=20)
    assert g.text == "é€😀ok" == streamed
    for event in decodelab.stream(lm, "!", max_new_tokens=20):
        assert "\ufffd" not in event.text


def test_batch_rows_stop_independently(lm):
    single = [decodelab.generate(lm, p, max_new_tokens=12) for p in PROMPTS]
    stop = _first_clean_substring(single[0].text, 1)
    assert stop and all(stop not in g.text for g in single[1:]), "pick prompts whose runs differ"
    rows = decodelab.generate_batch(lm, PROMPTS, max_new_tokens=12, stop=stop)
    assert rows[0].finish_reason == "stop" and rows[0].text == single[0].text[: single[0].text.find(stop)]
    for r, s in zip(rows[1:], single[1:]):
        assert r.finish_reason == "length" and r.token_ids == s.token_ids and r.text == s.text


# ---- streaming -----------------------------------------------------------------------------------

@pytest.mark.parametrize("method,kw", [("greedy", {}), ("sample", {"seed": 3, "temperature": 1.5})])
def test_stream_concatenates_to_generation(lm, method, kw):
    for p in PROMPTS:
        streamed, final = _stream_text(lm, p, method=method, max_new_tokens=14, **kw)
        assert streamed == final.text
        if method == "greedy":
            assert final.token_ids == decodelab.generate(lm, p, max_new_tokens=14).token_ids


# ---- context length ------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_prompt_near_context_limit_ends_cleanly(arch):
    lm = tiny_lm(arch, seed=3)  # a seed whose three models do not emit EOS here
    assert lm.max_length == 256
    prompt = [ord("a") + i % 26 for i in range(250)]
    g = decodelab.generate(lm, prompt, max_new_tokens=64)
    assert EOS not in g.token_ids
    assert g.finish_reason == "length"
    assert len(prompt) + len(g.token_ids) == lm.max_length  # 6 tokens: every position used, none more
    one = decodelab.generate(lm, prompt + [ord("x")] * 5, method="sample", seed=0, max_new_tokens=64)
    assert len(one.token_ids) == 1 and one.finish_reason == "length"


def test_batch_near_context_limit_ends_cleanly(lm):
    prompts = [[ord("a")] * 250, [ord("b")] * 240]
    rows = decodelab.generate_batch(lm, prompts, max_new_tokens=64)
    for p, r in zip(prompts, rows):
        assert len(p) + len(r.token_ids) <= lm.max_length
        assert r.finish_reason == "length" and r.token_ids
    for p, r in zip(prompts, rows):  # each row is its lone run, cut no later
        alone = decodelab.generate(lm, p, max_new_tokens=64).token_ids
        assert r.token_ids == alone[: len(r.token_ids)]
    assert rows[0].token_ids == decodelab.generate(lm, prompts[0], max_new_tokens=64).token_ids


@pytest.mark.parametrize("n", [256, 300])
def test_prompt_at_or_over_context_limit_raises(lm, n):
    with pytest.raises(ValueError, match="256"):
        decodelab.generate(lm, [ord("a")] * n, max_new_tokens=4)
    with pytest.raises(ValueError, match="256"):
        decodelab.generate(lm, "a" * n, max_new_tokens=4)


def test_incremental_detokenizer_equals_full_decode():
    """The engine decodes only the tail of the text each step; it must equal a full decode."""
    import random

    from decodelab.engine import _IncrementalText

    lm = tiny_lm("llama")
    rng = random.Random(0)
    text = "héllo wörld — ünïcödé ✓ 漢字 " * 6
    ids = lm.encode(text)
    for _trial in range(3):
        inc, tokens = _IncrementalText(lm), []
        while len(tokens) < len(ids):
            tokens += ids[len(tokens): len(tokens) + rng.randint(1, 5)]
            assert inc.of(tokens) == lm.decode(tokens)
        assert inc.anchor > 0  # the fast path was exercised
