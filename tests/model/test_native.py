"""The native backend equals the transformers model, and its Session keeps the protocol's promises.

Random-weight Llama (GQA), Mistral, Qwen2 (QKV bias) and Qwen3 (q/k norm) configs are built here, saved
as Hugging Face directories and loaded both ways; logits must agree within 1e-4 (float32) over prefill,
single-token decode, chains and trees, after accept / truncate / reorder.
"""

import shutil

import pytest
import torch

import decodelab
from decodelab.errors import ModelError
from decodelab.model import builtin_path
from decodelab.model.native import unsupported

ATOL = 1e-4


def _config(arch: str):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=8192, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  eos_token_id=0, bos_token_id=0, pad_token_id=0)
    if arch == "llama":
        return LlamaConfig(**common, rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                      "original_max_position_embeddings": 32})
    if arch == "llama-tied":
        return LlamaConfig(**{**common, "num_key_value_heads": 4}, tie_word_embeddings=True)
    if arch == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if arch == "qwen2":
        return Qwen2Config(**{**common, "num_key_value_heads": 1})
    if arch == "qwen3":
        return Qwen3Config(**common, head_dim=32)
    raise ValueError(arch)


ARCHS = ("llama", "llama-tied", "mistral", "qwen2", "qwen3")


@pytest.fixture(scope="module", params=ARCHS)
def pair(request, tmp_path_factory):
    """(native LM, transformers LM) over the same random weights, saved as an HF directory."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(request.param)
    model = AutoModelForCausalLM.from_config(_config(request.param))
    with torch.no_grad():  # non-trivial norms and biases, so a dropped one shows
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(path)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(builtin_path("builtin:pyco") / f, path / f)
    native = decodelab.load(str(path), backend="native")
    hf = decodelab.load(str(path), backend="transformers")
    assert (native.backend, hf.backend) == ("native", "transformers")
    return native, hf


def _both(pair, fn):
    return [fn(lm.session()) for lm in pair]


def test_prefill_decode_chain_equal(pair):
    def run(s):
        return torch.cat([s.forward(list(range(100, 120))), s.forward([7]), s.forward([8, 9, 10, 11])], dim=1)

    a, b = _both(pair, run)
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_tree_equal_and_each_node_equals_its_chain(pair):
    native, hf = pair
    prefix, tokens, parents = [5, 9, 80, 81], [40, 41, 42, 43, 44, 45], [-1, 0, 0, 1, 2, 4]

    def run(s):
        s.forward(prefix)
        return s.forward(tokens, parents=parents)[0]

    a, b = _both(pair, run)
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    for i in range(len(tokens)):
        path, j = [], i
        while j >= 0:
            path.append(tokens[j])
            j = parents[j]
        chain = native.session().forward(prefix + path[::-1])[0, -1]
        torch.testing.assert_close(a[i], chain, atol=ATOL, rtol=0)


def test_accept_tree_path_then_decode_equals_fresh_chain(pair):
    native, hf = pair
    prefix, tokens, parents = [3, 4, 5], [40, 41, 42, 43], [-1, -1, 1, 2]

    def run(s):
        s.forward(prefix)
        s.forward(tokens, parents=parents)
        s.accept([1, 2])  # keep nodes 41 → 42
        assert s.tokens[0] == prefix + [41, 42] and s.length == 5
        return s.forward([50])[0, -1]

    a, b = _both(pair, run)
    fresh = native.session().forward(prefix + [41, 42, 50])[0, -1]
    torch.testing.assert_close(a, fresh, atol=ATOL, rtol=0)
    torch.testing.assert_close(b, fresh, atol=ATOL, rtol=0)


def test_truncate_drops_stale_columns(pair):
    native, _ = pair
    s = native.session()
    s.forward([1, 2, 3, 4, 5, 6])
    s.truncate(3)
    after = s.forward([9])[0, -1]
    torch.testing.assert_close(after, native.session().forward([1, 2, 3, 9])[0, -1], atol=ATOL, rtol=0)


def test_reorder_and_fork_rows(pair):
    native, _ = pair
    s = native.session(batch_size=2)
    s.forward(torch.tensor([[1, 2, 3], [7, 8, 9]]))
    s.reorder([1, 0, 1])
    out = s.forward(torch.tensor([[4], [4], [5]]))[:, -1]
    assert s.tokens == [[7, 8, 9, 4], [1, 2, 3, 4], [7, 8, 9, 5]]
    torch.testing.assert_close(out[0], native.session().forward([7, 8, 9, 4])[0, -1], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[1], native.session().forward([1, 2, 3, 4])[0, -1], atol=ATOL, rtol=0)
    s.fork(2, 2)
    assert s.batch_size == 2 and s.tokens[0] == s.tokens[1] == [7, 8, 9, 5]


def test_left_padded_batch_equals_rows_alone(pair):
    """Every step of a left-padded batch, not only the first, equals the row decoded alone."""
    native, hf = pair
    prompts = [[11, 12, 13, 14, 15], [21, 22]]
    for lm in (native, hf):
        s = lm.session(batch_size=2)
        ids = torch.tensor([[11, 12, 13, 14, 15], [0, 0, 0, 21, 22]])
        mask = torch.tensor([[1] * 5, [0, 0, 0, 1, 1]])
        first = s.forward(ids, pad_mask=mask)[:, -1]
        second = s.forward(torch.tensor([[30, 31], [40, 41]]))[:, -1]
        for b, (prompt, new) in enumerate(zip(prompts, ([30, 31], [40, 41]))):
            alone = native.session().forward(prompt + new)[0]
            torch.testing.assert_close(first[b], alone[len(prompt) - 1], atol=ATOL, rtol=0)
            torch.testing.assert_close(second[b], alone[-1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("lengths", [[5, 1, 3], [5, 1, 1, 1], [1, 1, 1, 5, 1, 1, 1]])
@pytest.mark.parametrize("tree", [False, True])
def test_ragged_rows_packed_equal_padded_and_transformers(pair, tree, lengths):
    """A ragged verify batch (row b's first lengths[b] tokens real, the rest pads): the native backend
    packs the pads out of every matmul (`lengths=`) and runs attention over contiguous runs of rows, each
    padded to its own width; each row's real logits still equal the padded forward's and the
    transformers model's — left-padded rows, chains and trees alike."""
    from decodelab.model.native import Rows

    native, hf = pair
    B, n = len(lengths), max(lengths)
    rows = Rows(lengths, n, "cpu")
    assert Rows.worth(lengths, n) and len(rows.segments) == {3: 1, 4: 2, 7: 3}[B]  # every route is taken
    gen = torch.Generator().manual_seed(B)
    ids = torch.randint(3, 200, (B, n), generator=gen)
    tree_rows = [[-1, 0, 0, 1, 1], [-1, -1, 0, -1, -1]]
    parents = [tree_rows[b % 2][:n] + [-1] * (n - 5) for b in range(B)] if tree else None
    prompts = torch.randint(3, 200, (B, 4), generator=gen)
    pads = torch.tensor([[int(j >= b % 3) for j in range(4)] for b in range(B)])  # row b: b % 3 left pads
    out = {}
    for name, lm, kw in (("packed", native, {"lengths": lengths}), ("padded", native, {}), ("hf", hf, {})):
        s = lm.session(batch_size=B)
        s.forward(prompts, pad_mask=pads)
        out[name] = s.forward(ids, parents=parents, **kw)
    for b, m in enumerate(lengths):
        torch.testing.assert_close(out["packed"][b, :m], out["padded"][b, :m], atol=ATOL, rtol=0)
        torch.testing.assert_close(out["packed"][b, :m], out["hf"][b, :m], atol=ATOL, rtol=0)
    short = lengths.index(1)
    assert out["packed"][short, 1:].abs().max() == 0  # the pads were not computed at all


@pytest.mark.parametrize("running_longer", [True, False])
def test_merge_rows_join_a_running_batch(pair, running_longer):
    """Rows prefilled apart and merged into a running batch (continuous batching) — with holes in the
    running rows from a ragged accept — decode exactly as each row alone, on both backends."""
    native, _ = pair
    first = [[11, 12, 13, 14, 15, 16, 17], [21, 22, 23]]
    joining = [[31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42][: 12 if not running_longer else 4], [51, 52]]
    for lm in pair:
        s = lm.session(batch_size=2)
        s.forward(torch.tensor([first[0], [0] * 4 + first[1]]), pad_mask=torch.tensor([[1] * 7, [0] * 4 + [1] * 3]))
        s.forward(torch.tensor([[60, 61, 62], [70, 71, 72]]))
        s.accept_rows([[0, 1, 2], [0]])  # row 1 keeps one of three: two holes
        late = lm.session(batch_size=2)
        w = max(map(len, joining))
        late.forward(torch.tensor([[0] * (w - len(p)) + p for p in joining]),
                     pad_mask=torch.tensor([[0] * (w - len(p)) + [1] * len(p) for p in joining]))
        s.merge(late)
        assert s.batch_size == 4 and len(s.tokens) == 4
        out = s.forward(torch.tensor([[80], [81], [82], [83]]))[:, -1]
        histories = [first[0] + [60, 61, 62, 80], first[1] + [70, 81], joining[0] + [82], joining[1] + [83]]
        for b, h in enumerate(histories):
            alone = native.session().forward(h)[0, -1]
            torch.testing.assert_close(out[b], alone, atol=ATOL, rtol=0)
        s.defragment()
        out = s.forward(torch.tensor([[90], [91], [92], [93]]))[:, -1]
        for b, h in enumerate(histories):
            alone = native.session().forward(h + [90 + b])[0, -1]
            torch.testing.assert_close(out[b], alone, atol=ATOL, rtol=0)


def test_hidden_states_match(pair):
    a, b = _both(pair, lambda s: s.forward([1, 2, 3, 4], hidden=True)[1])
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x.float(), y.float(), atol=ATOL, rtol=0)


def test_builtin_pyco_native_equals_transformers():
    native, hf = decodelab.load(backend="native"), decodelab.load(backend="transformers")
    ids = native.encode("def fibonacci(n):\n    if n < 2:\n")

    def run(s):
        return torch.cat([s.forward(ids), s.forward([300]), s.forward([301, 302], parents=[-1, -1])], dim=1)

    torch.testing.assert_close(run(native.session()), run(hf.session()), atol=ATOL, rtol=0)
    assert decodelab.load().backend == "native"  # auto picks native for a Llama


def test_native_refuses_what_it_cannot_run(tmp_path):
    from transformers import GPT2Config

    assert "gpt2" in unsupported(GPT2Config())
    from transformers import MistralConfig

    assert "sliding" in unsupported(MistralConfig(sliding_window=64, max_position_embeddings=128))
    with pytest.raises(ModelError, match="backend"):
        decodelab.load(backend="bogus")


def test_bfloat16_close_to_float32():
    lm32, lm16 = decodelab.load(backend="native"), decodelab.load(backend="native", dtype="bfloat16")
    ids = lm32.encode("import os\nimport sys\n")
    a, b = lm32.session().forward(ids)[0], lm16.session().forward(ids)[0]
    assert lm16.dtype == torch.bfloat16
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.8


def test_grown_cache_accepts_a_tree_path_outside_inference_mode():
    """Past the first 256 columns the cache is regrown inside the forward; rolling it back (copying an
    accepted tree path) happens outside inference mode and must still work and stay exact."""
    lm = decodelab.load(backend="native")
    prefix = [(7 * i) % 500 + 10 for i in range(300)]
    s = lm.session()
    s.forward(prefix)
    s.forward([40, 41, 42, 43], parents=[-1, -1, 1, 2])
    s.accept([1, 2])
    after = s.forward([50])[0, -1]
    torch.testing.assert_close(after, lm.session().forward(prefix + [41, 42, 50])[0, -1], atol=ATOL, rtol=0)


def test_additive_mask_gives_the_boolean_masks_attention():
    """The boolean mask becomes an additive one once per forward (native.additive): SDPA and the
    grouped attention over it equal SDPA over the boolean mask, in float32 and bfloat16; None and an
    additive mask pass through unchanged."""
    import torch.nn.functional as F

    from decodelab.model.native import _grouped_attention, additive

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, h, n, 16, generator=gen) for h, n in ((4, 5), (2, 9), (2, 9)))
    mask = torch.rand(3, 1, 5, 9, generator=gen) > 0.4
    mask[:, :, torch.arange(5), 4 + torch.arange(5)] = True  # every query sees itself, as Session.allowed
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    for dtype in (torch.float32, torch.bfloat16):
        bias = additive(mask, dtype)
        assert bias.dtype == dtype and torch.equal(bias == 0, mask) and bool((bias[~mask] == -float("inf")).all())
        assert additive(bias, dtype) is bias and additive(None, dtype) is None
    bias = additive(mask, torch.float32)
    assert torch.equal(F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True), want)
    torch.testing.assert_close(_grouped_attention(q, k, v, bias), want, atol=1e-5, rtol=0)
