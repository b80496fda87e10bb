"""`dola`: with the premature layer fixed it equals a reference computed from the intermediate logits
of a full forward; the JSD layer choice and the APC on hand-made logits; candidate buckets; errors."""

import math

import pytest
import torch

import decodelab
from decodelab.search.dola import apc_contrast, candidate_layers, dola_logits, early_exit, jsd

from fakes import ARCHS, tiny_lm

PROMPTS = ["def f(x):", "hello world hello", "a"]


def _reference(lm, prompt, n, layer, relative_top=0.1):
    """Greedy over F = log q_N − log q_layer on V_head, from scratch at every step."""
    ids = lm.encode(prompt)
    for _ in range(n):
        with torch.no_grad():
            out = lm.model(torch.tensor([ids]), output_hidden_states=True)
        log_final = out.logits[0, -1].float().log_softmax(-1)
        with torch.no_grad():
            early = early_exit(lm, out.hidden_states[layer][0, -1]).float().log_softmax(-1)
        head = log_final >= log_final.max() + math.log(relative_top)
        ids.append(int(torch.where(head, log_final - early, float("-inf")).argmax()))
    return ids[len(lm.encode(prompt)):]


@pytest.mark.parametrize("arch", ARCHS)
def test_fixed_premature_layer_equals_reference(arch):
    lm = tiny_lm(arch, seed=6, **({"n_layer": 4} if arch == "gpt2" else {"num_hidden_layers": 4}))
    for prompt, layer, rt in zip(PROMPTS, (2, 1, 0), (0.1, 0.3, 0.05)):
        ours = decodelab.generate(lm, prompt, method="dola", dola_layers=str(layer), relative_top=rt,
                                  max_new_tokens=12)
        assert ours.token_ids == _reference(lm, prompt, 12, layer, rt)


def test_dynamic_choice_is_the_largest_jsd_layer_per_row():
    lm = tiny_lm("llama", seed=1, num_hidden_layers=6)
    with torch.no_grad():  # soften the sharpened head: the JSDs must not all sit at log 2
        lm.model.get_output_embeddings().weight.mul_(0.1)
    ids = torch.tensor([lm.encode("hello world"), lm.encode("def g(y): r")])
    with torch.no_grad():
        out = lm.model(ids, output_hidden_states=True)
    layers = [3, 1, 5]  # the largest JSD is not first or last in the list
    _, chosen = dola_logits(lm, out.logits[:, -1], out.hidden_states, layers, 0.1)
    for b in range(2):
        log_final = out.logits[b, -1].float().log_softmax(-1)
        divs = [jsd(log_final, early_exit(lm, out.hidden_states[j][b, -1]).float().log_softmax(-1)[None]).item()
                for j in layers]
        assert max(divs) - sorted(divs)[-2] > 1e-4  # a clear winner
        assert chosen[b].item() == max(range(3), key=divs.__getitem__) == 1
    gens = decodelab.generate_batch(lm, PROMPTS, method="dola", dola_layers="1,3,5", max_new_tokens=10)
    for p, g in zip(PROMPTS, gens):  # per-row choice: a row never depends on the batch
        assert g.token_ids == decodelab.generate(lm, p, method="dola", dola_layers="1,3,5", max_new_tokens=10).token_ids


def test_jsd_on_hand_made_distributions():
    p = torch.tensor([0.5, 0.5, 0.0]).log()
    layers = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.25, 0.25, 0.5]]).log()
    d = jsd(p, layers)
    assert d[0].item() == pytest.approx(0.0, abs=1e-7)
    assert d[1].item() == pytest.approx(math.log(2))  # disjoint supports: the maximum, log 2
    # m = (0.375, 0.375, 0.25)
    expected = 0.5 * (2 * 0.5 * math.log(0.5 / 0.375)) + 0.5 * (2 * 0.25 * math.log(0.25 / 0.375) + 0.5 * math.log(2))
    assert d[2].item() == pytest.approx(expected, rel=1e-5)
    assert int(d.argmax()) == 1


def test_apc_keeps_only_plausible_tokens_and_contrasts_them():
    final = torch.tensor([[0.6, 0.3, 0.07, 0.03]]).log()
    premature = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).log()
    f = apc_contrast(final, premature, relative_top=0.1)  # V_head: q ≥ 0.06 → tokens 0, 1, 2
    assert torch.isinf(f[0, 3]) and f[0, 3] < 0
    assert f[0, :3].tolist() == pytest.approx([math.log(0.6 / 0.7), math.log(3.0), math.log(0.7)], rel=1e-5)
    assert int(f.argmax()) == 1  # the token the late layers promoted wins over the final argmax


def test_candidate_buckets_and_errors():
    assert candidate_layers("high", 32, tied=False) == list(range(16, 32, 2))
    assert candidate_layers("low", 32, tied=False) == list(range(0, 16, 2))
    assert candidate_layers("low", 32, tied=True) == list(range(2, 16, 2))
    assert candidate_layers("high", 48, tied=False) == list(range(28, 48, 2))
    assert candidate_layers("low", 4, tied=True) == [2]
    assert candidate_layers("0,3", 4, tied=False) == [0, 3]
    lm = tiny_lm("llama")
    for bad in ("7", "mid", ""):
        with pytest.raises(ValueError, match="dola_layers"):
            decodelab.generate(lm, "a", method="dola", dola_layers=bad, max_new_tokens=2)


def test_native_backend_equals_transformers_backend_on_pyco():
    native, hf = decodelab.load("builtin:pyco"), decodelab.load("builtin:pyco", backend="transformers")
    assert native.backend == "native"
    prompts = ["def add(a, b):\n", "for i in range("]
    for layers in ("high", "low"):
        kw = dict(method="dola", max_new_tokens=12, dola_layers=layers)
        assert ([g.token_ids for g in decodelab.generate_batch(native, prompts, **kw)]
                == [g.token_ids for g in decodelab.generate_batch(hf, prompts, **kw)])
