"""The native backend's oneDNN-packed matmul weights (model/native.py, NativeModel.pack).

Every other native test runs the model as `load` gives it by default (`pack="auto"`: packed only where that
timed faster on the machine running the tests); these check the packing itself: which models pack, that
packed and unpacked logits agree to float32 rounding over prefill, decode, chains and trees, that torch's
own matmul still serves what cannot pack, that greedy tokens do not change, and that "auto" packs exactly
the weight kinds that timed faster.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import decodelab
from decodelab.model.lm import LM
from decodelab.model.native import can_pack, from_transformers, linear

ATOL = 1e-4


@pytest.fixture(scope="module")
def pyco_pair():
    """builtin:pyco natively, packed and unpacked, over the same weights."""
    hf = decodelab.load(backend="transformers")
    packed = LM(from_transformers(hf.model), hf.tokenizer, name=hf.name, backend="native")
    dense = LM(from_transformers(hf.model, pack=False), hf.tokenizer, name=hf.name, backend="native")
    return packed, dense


def test_which_models_pack(pyco_pair):
    packed, dense = pyco_pair
    assert packed.model.packed and not dense.model.packed
    assert decodelab.load(backend="native", pack=True).model.packed
    assert not decodelab.load(backend="native", pack=False).model.packed
    assert decodelab.load(backend="native", dtype="bfloat16", pack=True).model.packed == can_pack(torch.bfloat16, "cpu")
    assert not can_pack(torch.float16, "cpu")  # torch's matmul serves float16
    assert not can_pack(torch.float32, "cuda")
    # the embedding stays a dense tensor for the lookup; the head is packed with the rest
    assert not packed.model.embed.is_mkldnn and packed.model.head.is_mkldnn
    assert packed.model.head.shape == dense.model.head.shape
    assert all(getattr(b, n).is_mkldnn for b in packed.model.layers for n in ("wqkv", "wo", "w_gate_up", "w_down"))


def test_small_matrices_keep_torchs_matmul():
    """Below PACK_MIN_ELEMENTS oneDNN's per-call cost outweighs it: the draft's 128-wide layers stay dense,
    its 8,192 × 128 head packs, and its logits still equal the unpacked draft's."""
    from decodelab.model.native import PACK_MIN_ELEMENTS

    draft = decodelab.load("builtin:pyco-draft", backend="native", pack=True)
    weights = [getattr(b, n) for b in draft.model.layers for n in ("wqkv", "wo", "w_gate_up", "w_down")]
    assert all(w.numel() < PACK_MIN_ELEMENTS and not w.is_mkldnn for w in weights)
    assert draft.model.packed and draft.model.head.is_mkldnn
    hf = decodelab.load("builtin:pyco-draft", backend="transformers")
    dense = LM(from_transformers(hf.model, pack=False), hf.tokenizer, name=hf.name, backend="native")
    ids = draft.encode("import os\n\n\ndef main():")
    torch.testing.assert_close(draft.session().forward(ids), dense.session().forward(ids), atol=ATOL, rtol=0)


def test_packed_logits_equal_unpacked_over_prefill_decode_chain_tree(pyco_pair):
    ids = pyco_pair[0].encode("def fibonacci(n):\n    if n < 2:\n")

    def run(lm):
        s = lm.session()
        return torch.cat([s.forward(ids), s.forward([300]), s.forward([301, 302, 303]),
                          s.forward([40, 41, 42, 43], parents=[-1, -1, 0, 1])], dim=1)

    a, b = (run(lm) for lm in pyco_pair)
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    assert a.abs().max() > 1  # real logits, not zeros


def test_linear_dispatch_with_bias():
    torch.manual_seed(0)
    w, b, x = torch.randn(24, 16), torch.randn(24), torch.randn(2, 3, 16)
    packed = torch.ops.mkldnn._reorder_linear_weight(w, 8)
    torch.testing.assert_close(linear(x, packed, b), F.linear(x, w, b), atol=1e-5, rtol=1e-5)
    assert torch.equal(linear(x, w, b), F.linear(x, w, b))  # a dense weight takes torch's own route


def test_greedy_tokens_unchanged_by_packing(pyco_pair):
    packed, dense = pyco_pair
    for prompt in ["import os\n\n\ndef main():", "class Stack:\n    def push(self, x):"]:
        a = decodelab.generate(packed, prompt, max_new_tokens=32)
        b = decodelab.generate(dense, prompt, max_new_tokens=32)
        assert a.token_ids == b.token_ids


def test_compile_loads_unpacked_weights():
    """torch.compile cannot trace oneDNN's opaque packed tensors, so compile=True keeps dense ones
    (the compiled step itself is traced lazily, on first use: not run here)."""
    lm = decodelab.load(backend="native", compile=True)
    assert not lm.model.packed and lm.state["compiled"] is not None


def test_compile_auto_keeps_whichever_decode_step_measured_faster(tmp_path):
    """compile="auto" times the compiled decode step against eager (packed where that applies) at load
    time and keeps the faster one: the record holds both times and the choice is their minimum; the
    kept eager model packs the weight kinds `pack="auto"` timed faster, and greedy tokens equal an eager load's."""
    from fakes import byte_tokenizer, tiny_lm

    tiny_lm("llama", seed=3).model.save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    auto = decodelab.load(str(tmp_path), backend="native", compile="auto")
    record = auto.state["compile_choice"]
    assert record["eager"] > 0 and record["compiled"] > 0
    assert record["chosen"] == min(("eager", "compiled"), key=record.get)
    assert (auto.state["compiled"] is not None) == (record["chosen"] == "compiled")
    assert _packed_kinds(auto.model) == set(auto.state["pack_choice"]["chosen"])  # the eager copy, packed as timed
    eager = decodelab.load(str(tmp_path), backend="native", pack=False)
    for prompt in ("def f(x):", "abcabcabc"):
        assert decodelab.generate(auto, prompt, max_new_tokens=12).token_ids == \
            decodelab.generate(eager, prompt, max_new_tokens=12).token_ids


def test_compile_auto_runs_eager_where_nothing_compiles_and_a_bad_value_is_an_error(tmp_path):
    from fakes import byte_tokenizer, tiny_lm

    tiny_lm("gpt2", seed=3).model.save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    lm = decodelab.load(str(tmp_path), compile="auto")  # GPT-2: the transformers adapter, eager
    assert lm.backend == "transformers" and "compile_choice" not in lm.state
    with pytest.raises(decodelab.ModelError, match="compile must be True, False or 'auto'"):
        decodelab.load(str(tmp_path), compile="yes")


KINDS = ("wqkv", "wo", "w_gate_up", "w_down")


def _packed_kinds(model) -> set[str]:
    kinds = {n for n in KINDS if all(getattr(b, n).is_mkldnn for b in model.layers)}
    assert all(not getattr(b, n).is_mkldnn for b in model.layers for n in set(KINDS) - kinds)  # a kind is all or none
    return kinds | ({"head"} if model.head.is_mkldnn else set())


def test_pack_auto_packs_exactly_the_kinds_that_timed_faster():
    """The default load times dense against packed for every weight kind at 1 and 5 rows and packs a kind
    only where packed was faster over both; greedy tokens equal the unpacked model's."""
    lm = decodelab.load(backend="native")
    record = lm.state["pack_choice"]
    assert set(record) == set(KINDS) | {"head", "chosen"}
    faster = {k for k in (*KINDS, "head") if sum(record[k]["packed_us"]) < sum(record[k]["dense_us"])}
    assert all(min(record[k]["dense_us"] + record[k]["packed_us"]) > 0 for k in (*KINDS, "head"))
    assert set(record["chosen"]) == faster == _packed_kinds(lm.model)
    dense = decodelab.load(backend="native", pack=False)
    assert "pack_choice" not in dense.state and not dense.model.packed
    for prompt in ("import os\n\n\ndef main():", "class Stack:\n    def push(self, x):"):
        assert decodelab.generate(lm, prompt, max_new_tokens=24).token_ids == \
            decodelab.generate(dense, prompt, max_new_tokens=24).token_ids


@pytest.mark.parametrize("slow", ["packed", "dense"])
def test_pack_auto_follows_the_timings(monkeypatch, slow):
    """With oneDNN made slower than torch's matmul, "auto" packs nothing; with torch's made slower, every
    kind — the choice is the timing's, not a rule about shapes."""
    import time

    from decodelab.model import native

    real = native.linear

    def timed(x, weight, bias=None):
        if weight.is_mkldnn == (slow == "packed"):
            end = time.perf_counter() + 1e-3  # well above a real call (≤ 0.3 ms)
            while time.perf_counter() < end:
                pass
        return real(x, weight, bias)

    monkeypatch.setattr(native, "linear", timed)
    lm = decodelab.load(backend="native")
    monkeypatch.setattr(native, "linear", real)
    assert _packed_kinds(lm.model) == (set() if slow == "packed" else {*KINDS, "head"})
    assert lm.state["pack_choice"]["chosen"] == sorted(_packed_kinds(lm.model))


def test_pack_bad_value_is_a_model_error():
    with pytest.raises(decodelab.ModelError, match="pack must be True, False or 'auto'"):
        decodelab.load(backend="native", pack="yes")
