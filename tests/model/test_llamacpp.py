"""The llamacpp backend (model/llamacpp.py): llama.cpp's forward behind the Session protocol.

Logits: llama.cpp's f32 kernels differ from PyTorch's in summation order, so logits are compared with
the native backend within a relative tolerance RTOL = 1e-5 (max |a − b| / max |b| per forward; the
largest measured over these tests and models is 1.1e-6 — docs/BACKENDS.md) over prefill, decode, chains, trees, accept /
truncate / accept_rows, left-padded ragged batches, per-row trees and fork. Methods: every lossless
method's greedy output on llamacpp equals greedy on llamacpp (the same backend), token for token, and
a sampled run draws the same tokens as on the native backend seed for seed (a logit difference of
~1e-5 moves a sampled token only when a uniform draw lands that close to a CDF boundary).
Skipped when llama-cpp-python is not installed (`pip install 'decodelab[llamacpp]'`).
"""

import shutil

import pytest
import torch

pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install 'decodelab[llamacpp]')")
pytest.importorskip("gguf", reason="gguf not installed (pip install 'decodelab[llamacpp]')")

import decodelab  # noqa: E402
from decodelab.errors import ModelError  # noqa: E402
from decodelab.model import builtin_path  # noqa: E402

RTOL = 1e-5


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL) -> None:
    err = float((a - b).abs().max() / b.abs().max())
    assert err <= rtol, f"relative difference {err:.2e} > {rtol:.0e}"


def _tiny_dir(tmp_path_factory, arch: str, max_positions: int = 128):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=8192, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                  eos_token_id=1, bos_token_id=0, pad_token_id=2)
    config = {"llama": lambda: LlamaConfig(**common, rope_parameters={
                  "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
              "qwen2": lambda: Qwen2Config(**{**common, "num_key_value_heads": 1}),
              "qwen3": lambda: Qwen3Config(**common, head_dim=32)}[arch]()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # non-trivial norms and biases, so a dropped or misplaced one shows
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.3 * torch.randn_like(p))
    path = tmp_path_factory.mktemp(arch)
    model.save_pretrained(path)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(builtin_path("builtin:pyco") / f, path / f)
    return str(path)


@pytest.fixture(scope="module", params=["builtin:pyco", "llama", "qwen2", "qwen3"])
def pair(request, tmp_path_factory):
    """(llamacpp LM, native LM), float32, over the same weights."""
    name = request.param if request.param.startswith("builtin:") else _tiny_dir(tmp_path_factory, request.param)
    cpp = decodelab.load(name, backend="llamacpp", dtype="float32")
    assert cpp.backend == "llamacpp"
    return cpp, decodelab.load(name, backend="native")


def _both(pair, fn, batch_size: int = 1):
    return [fn(lm.session(batch_size)) for lm in pair]


def test_prefill_decode_chain(pair):
    def run(s):
        return [s.forward(list(range(100, 120))), s.forward([7]), s.forward([8, 9, 10, 11]),
                s.forward([12], last_only=True)]

    for a, b in zip(*_both(pair, run)):
        assert a.shape == b.shape
        _close(a, b)


def test_tree_then_accepted_path_and_truncate(pair):
    prefix, tokens, parents = [5, 9, 80, 81], [40, 41, 42, 43, 44, 45], [-1, 0, 0, 1, 2, 4]

    def run(s):
        s.forward(prefix)
        tree = s.forward(tokens, parents=parents)
        s.accept([0, 2, 4])  # a root path: 40 → 42 → 44
        after = s.forward([50, 51])
        s.truncate(len(prefix) + 1)
        again = s.forward([60])
        return tree, after, again

    for a, b in zip(*_both(pair, run)):
        _close(a, b)


def test_each_tree_node_equals_its_chain(pair):
    cpp, _ = pair
    prefix, tokens, parents = [5, 9, 80], [40, 41, 42, 43, 44], [-1, 0, 0, 1, 1]
    s = cpp.session()
    s.forward(prefix)
    tree = s.forward(tokens, parents=parents)[0]
    for node, path in enumerate([[0], [0, 1], [0, 2], [0, 1, 3], [0, 1, 4]]):
        chain = cpp.session()
        chain.forward(prefix)
        _close(tree[node], chain.forward([tokens[i] for i in path])[0, -1])


def test_ragged_left_padded_batch(pair):
    rows = [[3, 4, 5, 6, 7, 8], [30, 31, 32], [70, 71, 72, 73]]
    width = max(len(r) for r in rows)
    pad = pair[0].pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])

    def run(s):
        out = [s.forward(ids, pad_mask=mask)]
        out.append(s.forward(torch.tensor([[11], [12], [13]])))
        out.append(s.forward(torch.tensor([[20, 21, 22, 23]] * 3)))
        s.accept_rows([[0, 1, 2], [0], []])  # rows accept different amounts: holes
        out.append(s.forward(torch.tensor([[24], [25], [26]])))
        s.defragment()
        out.append(s.forward(torch.tensor([[27, 28], [29, 30], [31, 32]])))
        return out

    for a, b in zip(*_both(pair, run, 3)):
        real = mask.bool() if a.shape[1] == width else torch.ones(a.shape[:2], dtype=torch.bool)
        _close(a[real], b[real])


def test_per_row_trees_accept_rows_and_fork(pair):
    trees = [[-1, 0, 0, 1], [-1, -1, 1, 2]]

    def run(s):
        s.forward(torch.tensor([[3, 4, 5], [6, 7, 8]]))
        out = [s.forward(torch.tensor([[40, 41, 42, 43], [50, 51, 52, 53]]), parents=trees)]
        s.accept_rows([[0, 1, 3], [1, 2]])
        out.append(s.forward(torch.tensor([[60], [61]])))
        s.reorder([1, 0])  # in place: sequences swap through temporary ids
        out.append(s.forward(torch.tensor([[70], [71]])))
        s.reorder([0, 0])
        out.append(s.forward(torch.tensor([[72], [73]])))
        s.fork(1, 5)  # past the context's room: the rows are fed again into a larger one
        out.append(s.forward(torch.tensor([[80 + i] for i in range(5)])))
        return out

    for a, b in zip(*_both(pair, run, 2)):
        _close(a, b)


def test_merge_rows_of_another_session(pair):
    """Continuous batching: prefilled rows join a running batch (fed into this session's context)."""
    def run(lm):
        s, t = lm.session(2), lm.session(1)
        s.forward(torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10]]))
        s.forward(torch.tensor([[11, 12], [13, 14]]))
        t.forward([20, 21, 22])
        s.merge(t)
        return [s.forward(torch.tensor([[30], [31], [32]])), s.forward(torch.tensor([[33, 34]] * 3))]

    for a, b in zip(run(pair[0]), run(pair[1])):
        _close(a, b)


def test_context_grows_with_the_sequence(tmp_path_factory):
    """A long-context model starts with a small KV cache and grows it (the cache copied, not recomputed)."""
    path = _tiny_dir(tmp_path_factory, "qwen3", max_positions=8192)
    cpp, native = decodelab.load(path, backend="llamacpp"), decodelab.load(path, backend="native")
    sessions = [cpp.session(2), native.session(2)]
    first = sessions[0]._cells
    outs = [[s.forward(torch.arange(600).view(2, -1) + 5),  # 300 columns: fits the first context
             s.forward(torch.arange(400).view(2, -1) + 9),  # 500: grows, copying the 300 cached
             s.forward(torch.tensor([[1], [2]]))] for s in sessions]
    assert sessions[0]._cells > first
    for a, b in zip(*outs):
        _close(a, b)


def test_rows_fed_again_when_the_state_copy_fails(pair, monkeypatch):
    """Moving rows between contexts copies llama.cpp's per-sequence state; where that fails the rows'
    tokens are fed again — both exact (fault injected: every state copy refused)."""
    import llama_cpp

    monkeypatch.setattr(llama_cpp, "llama_state_seq_set_data", lambda *args: 0)
    test_merge_rows_of_another_session(pair)
    test_per_row_trees_accept_rows_and_fork(pair)
    test_tree_then_accepted_path_and_truncate(pair)


def test_wide_trees_over_the_sequence_limit_fall_back_exactly(pair):
    """Rows whose trees need more than llama.cpp's 256 sequence ids together run in groups; the kept
    path is fed again as a chain (the same tokens at the same positions)."""
    cpp, native = pair
    star = [-1] + [0] * 100  # 100 leaves per row, 3 rows: more than 256 sequences together

    def run(s):
        s.forward(torch.tensor([[3, 4], [5, 6], [7, 8]]))
        out = [s.forward(torch.tensor([[9 + i for i in range(101)]] * 3), parents=star)]
        s.accept_rows([[0, 5], [0], [0, 100]])
        out.append(s.forward(torch.tensor([[1], [2], [3]])))
        return out

    for a, b in zip(*_both((cpp, native), run, 3)):
        _close(a, b)


def test_hidden_states_are_a_clear_error():
    cpp = decodelab.load("builtin:pyco-draft", backend="llamacpp")
    with pytest.raises(ModelError, match="hidden states"):
        cpp.session().forward([5, 6], hidden=True)


def test_unsupported_architecture_and_dtype_are_one_line_errors(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=8192)).save_pretrained(tmp_path)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(builtin_path("builtin:pyco") / f, tmp_path / f)
    with pytest.raises(ModelError, match="llamacpp backend cannot run architecture 'gpt2'"):
        decodelab.load(str(tmp_path), backend="llamacpp")
    with pytest.raises(ModelError, match="unknown llamacpp dtype"):
        decodelab.load("builtin:pyco-draft", backend="llamacpp", dtype="int3")


# ---- methods ----------------------------------------------------------------------------------
PROMPTS = ["def f(x):\n    return x + 1\n\ndef g(x):\n    return", "import os\n\n\ndef main():",
           "class Stack:\n    def __init__(self):\n        self."]
LOSSLESS = sorted(n for n, m in decodelab.methods().items() if m.lossless and m.kind == "causal" and n not in ("greedy", "sample"))


@pytest.fixture(scope="module")
def pyco():
    return decodelab.load("builtin:pyco", backend="llamacpp")


def _params(method: str) -> dict:
    return {"exit_layer": 4} if method == "selfspec" else {}  # DEL's exit_layer=0 needs hidden states


@pytest.mark.parametrize("method", LOSSLESS)
def test_lossless_methods_equal_greedy_on_llamacpp(pyco, method):
    for prompt in PROMPTS:
        want = decodelab.generate(pyco, prompt, max_new_tokens=40).token_ids
        got = decodelab.generate(pyco, prompt, method=method, max_new_tokens=40, **_params(method))
        assert got.token_ids == want, (method, prompt)
        assert got.stats.forward_passes >= 1


def test_greedy_equals_native_greedy(pyco):
    """float32 logits within ~1e-6 relative: no argmax near-tie flips on these prompts."""
    native = decodelab.load("builtin:pyco", backend="native")
    for prompt in PROMPTS:
        assert decodelab.generate(pyco, prompt, max_new_tokens=40).token_ids == \
            decodelab.generate(native, prompt, max_new_tokens=40).token_ids


@pytest.mark.parametrize("method", ["greedy", "speculative", "pld", "recycling"])
def test_batched_rows_equal_single_rows(pyco, method):
    single = [decodelab.generate(pyco, p, method=method, max_new_tokens=24).token_ids for p in PROMPTS]
    batch = decodelab.generate_batch(pyco, PROMPTS, method=method, max_new_tokens=24)
    assert [g.token_ids for g in batch] == single


@pytest.mark.parametrize("method", ["greedy", "speculative", "recycling"])
def test_rows_joining_a_running_batch_equal_rows_alone(pyco, method):
    """Continuous batching (decodelab.Engine, Session.merge): rows join mid-generation in two waves."""
    engine, rows, done = decodelab.Engine(pyco, method), {}, {}
    for step in range(40):
        for i in {0: [0], 3: [1, 2]}.get(step, []):
            rows[engine.add(PROMPTS[i], max_new_tokens=16)] = i
        for event in engine.step():
            if event.generation is not None:
                done[rows[event.row]] = event.generation.token_ids
        if step > 3 and not engine.busy:
            break
    assert done == {i: decodelab.generate(pyco, PROMPTS[i], method=method, max_new_tokens=16).token_ids
                    for i in range(3)}


def test_sampling_matches_native_seed_for_seed(pyco):
    native = decodelab.load("builtin:pyco", backend="native")
    for method in ("sample", "speculative"):
        for seed in range(3):
            kw = dict(method=method, max_new_tokens=24, seed=seed, temperature=0.8)
            assert decodelab.generate(pyco, PROMPTS[0], **kw).token_ids == \
                decodelab.generate(native, PROMPTS[0], **kw).token_ids, (method, seed)


def test_llamacpp_peer_greedy_equals_session_greedy(pyco):
    from decodelab.bench.peers import hf_generate

    ids = pyco.encode(PROMPTS[1])
    peer = hf_generate(pyco, ids, 30, "llamacpp:greedy")
    assert peer == decodelab.generate(pyco, ids, max_new_tokens=30).token_ids


def test_decode_cost_times_llamacpp_next_to_native():
    from decodelab.bench.decode_cost import llamacpp_configs, measure

    result = measure("builtin:pyco-draft", llamacpp_configs(), "def f(x):", steps=3, repeats=1)
    labels = [r["config"] for r in result["rows"]]
    assert "llamacpp q8_0" in labels and "llama.cpp own greedy loop float32" in labels
    assert all(r["ms_per_token"] > 0 for r in result["rows"])


def test_bench_skips_the_llamacpp_peer_when_sampling_or_unsupported(pyco):
    from decodelab.bench.peers import drop_unavailable
    from decodelab.bench.runner import Entry

    skipped: dict = {}
    kept = drop_unavailable(pyco, [Entry("llamacpp:greedy", "llamacpp:greedy", {"temperature": 0.7})], skipped)
    assert kept == [] and "greedily" in skipped["llamacpp:greedy"]


def _measure() -> None:
    """`python tests/model/test_llamacpp.py`: the largest relative logit difference of every logit test
    above, per model (the figure RTOL is set from; docs/BACKENDS.md)."""
    import pathlib
    import tempfile

    global _close
    worst: dict = {}

    def record(a, b, rtol=RTOL):
        worst[key] = max(worst.get(key, 0.0), float((a - b).abs().max() / b.abs().max()))

    class Factory:
        def mktemp(self, name):
            return pathlib.Path(tempfile.mkdtemp(prefix=name))

    class Request:
        def __init__(self, param):
            self.param = param

    _close = record
    tests = [test_prefill_decode_chain, test_tree_then_accepted_path_and_truncate, test_each_tree_node_equals_its_chain,
             test_ragged_left_padded_batch, test_per_row_trees_accept_rows_and_fork, test_merge_rows_of_another_session,
             test_wide_trees_over_the_sequence_limit_fall_back_exactly]
    for model in ("builtin:pyco", "llama", "qwen2", "qwen3"):
        lms = pair.__wrapped__(Request(model), Factory())
        for test in tests:
            key = (model, test.__name__)
            test(lms)
    for (model, name), err in worst.items():
        print(f"{err:.1e}  {model:13s} {name}")
    print(f"largest: {max(worst.values()):.1e} (RTOL {RTOL:.0e})")


if __name__ == "__main__":
    torch.set_num_threads(1)
    _measure()


def test_a_kernel_crash_in_the_test_forward_is_a_model_error(tmp_path):
    """Where llama.cpp's AMX kernels would serve a q8_0 model, one forward runs in a child first: a child
    killed by a signal (here SIGILL, what an AMX build died with on an AMX-advertising VM) is a one-line
    ModelError naming the signal and the fix, and the process goes on; float types are never probed."""
    import sys

    from decodelab.model.llamacpp import check_kernels

    crash = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]
    check_kernels(tmp_path / "f32.gguf", "f32", command=crash)  # float32 does not take AMX: no child
    with pytest.raises(ModelError, match=r"AMX kernels crash on this machine \(SIGILL .*rebuild llama-cpp-python"):
        check_kernels(tmp_path / "q8.gguf", "q8_0", command=crash)
    with pytest.raises(ModelError, match="SIGILL"):  # remembered for the file: not probed again
        check_kernels(tmp_path / "q8.gguf", "q8_0", command=[sys.executable, "-c", "pass"])


def test_the_test_forward_runs_a_real_q8_0_model():
    """The probe child itself loads the converted GGUF and decodes; on a build whose kernels work it exits
    cleanly and the load goes on."""
    import sys

    from decodelab.model.llamacpp import check_kernels

    lm = decodelab.load("builtin:pyco-draft", backend="llamacpp", dtype="q8_0")
    probe = [sys.executable, "-c", f"from decodelab.model.llamacpp import _probe; _probe({str(lm.model.file)!r})"]
    import subprocess

    assert subprocess.run(probe, capture_output=True, timeout=300).returncode == 0
    check_kernels(lm.model.file, "q8_0", command=probe)
    assert decodelab.generate(lm, "def f(x):", max_new_tokens=4).token_ids
