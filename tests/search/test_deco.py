"""`deco` (DeCo, arXiv:2410.11779): equals a from-scratch reference loop written here from the
transformers model's own hidden states, final norm and lm_head (tiny random Llama / Qwen2 / GPT-2, and
builtin:pyco on both backends); batch rows equal the prompt alone; α = 0 is greedy; sampled tokens stay
among the candidates; a wrong anchor-layer rule is caught by the reference test; bad parameters error."""

import pytest
import torch

import decodelab
from decodelab.search import deco as deco_module
from decodelab.search.deco import deco_layers

from fakes import ARCHS, soft_lm

PROMPTS = ["def f(x):", "hello world hello", "a"]
# (deco_layers, layers it means on a 4-layer model, alpha, threshold_top_k, threshold_top_p)
CASES = [("auto", [2, 3], 0.6, 20, 0.9), ("0-3", [0, 1, 2, 3], 2.0, 8, 0.95), ("3,1", [3, 1], 1.0, 5, 0.7)]


def _exit(model, h):
    """The model's own final norm + lm_head on a hidden state."""
    base = model.base_model
    norm = base.norm if hasattr(base, "norm") else base.ln_f
    return model.get_output_embeddings()(norm(h)).float()


def _step(model, ids, layers, alpha, top_k, top_p):
    """One DeCo step from scratch: the candidate list and the corrected logit of each candidate."""
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
        z = out.logits[0, -1].float()
        probs = z.softmax(-1)
        cand, mass = [], 0.0
        for v in probs.argsort(descending=True)[:top_k].tolist():
            cand.append(v)
            mass += probs[v].item()
            if mass >= top_p:
                break
        conf, anchor = -1.0, None
        for j in layers:  # the first (layer, candidate) with the largest early probability wins
            zj = _exit(model, out.hidden_states[j][0, -1])
            pj = zj.softmax(-1)
            for v in cand:
                if pj[v].item() > conf:
                    conf, anchor = pj[v].item(), zj
    return {v: (z[v] + alpha * conf * anchor[v]).item() for v in cand}


def _reference(model, ids, n, layers, alpha=0.6, top_k=20, top_p=0.9):
    ids = list(ids)
    for _ in range(n):
        scores = _step(model, ids, layers, alpha, top_k, top_p)
        ids.append(max(scores, key=scores.get))
    return ids[-n:]


def _lm(arch):
    """4 layers, a softened head (GPT-2's tied head needs more) so that there are several candidates."""
    if arch == "gpt2":
        return soft_lm(arch, seed=3, scale=0.01, n_layer=4)
    return soft_lm(arch, seed=3, num_hidden_layers=4)


def _run_cases(lm, n=10):
    """(ours, reference, greedy) token lists for every prompt × case."""
    rows = []
    for prompt, (spec, layers, alpha, k, p) in zip(PROMPTS * 2, CASES * 2):
        ours = decodelab.generate(lm, prompt, method="deco", deco_layers=spec, alpha=alpha, threshold_top_k=k,
                                  threshold_top_p=p, max_new_tokens=n).token_ids
        ref = _reference(lm.model, lm.encode(prompt), n, layers, alpha, k, p)
        rows.append((ours, ref, decodelab.generate(lm, prompt, method="greedy", max_new_tokens=n).token_ids))
    return rows


@pytest.mark.parametrize("arch", ARCHS)
def test_equals_reference_loop(arch):
    rows = _run_cases(_lm(arch))
    assert all(ours == ref for ours, ref, _ in rows)
    # tiny random GPT-2 (tied head) repeats its input token from every layer, so no correction can move the
    # argmax there; on Llama and Qwen2 it must
    if arch != "gpt2":
        assert any(ours != greedy for ours, _, greedy in rows)  # the correction changed some tokens


def test_wrong_anchor_layer_rule_is_caught(monkeypatch):
    """Mutant: pick the layer by its top probability over the whole vocabulary, not over the candidates."""
    real = deco_module.deco_logits

    def mutant(lm, logits, hidden, layers, alpha, top_k, top_p):
        early = torch.stack([deco_module.early_exit(lm, hidden[j][:, -1]).float() for j in layers])
        best = early.softmax(-1).amax(-1).argmax(0)  # [B]
        return real(lm, logits, hidden, [layers[int(best[0])]], alpha, top_k, top_p)

    monkeypatch.setattr(deco_module, "deco_logits", mutant)
    assert any(ours != ref for arch in ("llama", "qwen2") for ours, ref, _ in _run_cases(_lm(arch)))


def test_batch_rows_equal_alone_greedy_and_sampled():
    lm = _lm("llama")
    for kw in ({}, {"temperature": 1.0, "seed": 7}, {"temperature": 0.7, "top_k": 3, "seed": 2}):
        gens = decodelab.generate_batch(lm, PROMPTS, method="deco", max_new_tokens=8, **kw)
        for i, (prompt, g) in enumerate(zip(PROMPTS, gens)):  # row i uses seed + i
            alone = {**kw, **({"seed": kw["seed"] + i} if "seed" in kw else {})}
            assert g.token_ids == decodelab.generate(lm, prompt, method="deco", max_new_tokens=8, **alone).token_ids


def test_sampled_tokens_are_candidates():
    lm = _lm("qwen2")
    prompt, layers = "hello world hello", [2, 3]
    for seed in range(4):
        out = decodelab.generate(lm, prompt, method="deco", temperature=1.5, seed=seed, max_new_tokens=8).token_ids
        ids = lm.encode(prompt)
        for t in out:
            assert t in _step(lm.model, ids, layers, 0.6, 20, 0.9)
            ids.append(t)


@pytest.mark.parametrize("arch", ("llama", "qwen2"))
def test_alpha_zero_is_greedy(arch):
    lm = _lm(arch)
    for prompt in PROMPTS:
        kw = dict(max_new_tokens=10)
        assert (decodelab.generate(lm, prompt, method="deco", alpha=0.0, **kw).token_ids
                == decodelab.generate(lm, prompt, method="greedy", **kw).token_ids)


def test_pyco_both_backends_equal_reference():
    native, hf = decodelab.load("builtin:pyco"), decodelab.load("builtin:pyco", backend="transformers")
    assert native.backend == "native"
    prompts = ["def add(a, b):\n", "for i in range("]
    for prompt in prompts:
        ref = _reference(hf.model, hf.encode(prompt), 6, [5, 6, 7])  # auto window of 8 layers
        for lm in (native, hf):
            assert decodelab.generate(lm, prompt, method="deco", max_new_tokens=6).token_ids == ref
    gens = decodelab.generate_batch(native, prompts, method="deco", max_new_tokens=6)
    assert [g.token_ids for g in gens] == [_reference(hf.model, hf.encode(p), 6, [5, 6, 7]) for p in prompts]


def test_layer_windows():
    assert deco_layers("auto", 32) == list(range(20, 29))  # the authors' LLaMA-7B window
    assert deco_layers("auto", 8) == [5, 6, 7]
    assert deco_layers("auto", 2) == [1]
    assert deco_layers("1-3", 4) == [1, 2, 3]
    assert deco_layers("0,2", 4) == [0, 2]


@pytest.mark.parametrize("bad", [dict(alpha=-0.1), dict(threshold_top_k=0), dict(threshold_top_p=0.0),
                                 dict(threshold_top_p=1.5), dict(deco_layers="4"), dict(deco_layers="3-1"),
                                 dict(deco_layers="mid"), dict(deco_layers="1-x"), dict(deco_layers="")])
def test_bad_parameters_error(bad):
    lm = _lm("llama")
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name) as err:
        decodelab.generate(lm, "a", method="deco", max_new_tokens=2, **bad)
    assert "\n" not in str(err.value)
