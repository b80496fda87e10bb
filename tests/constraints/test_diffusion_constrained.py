"""Diffusion samplers under a grammar (constraints/diffusion.py, issue 13).

- every output of the stepwise `llada` sampler and of parallel samplers (`fastdllm`, `localleap`, `dream`)
  satisfies its constraint and is complete, over many prompts, seeds and both temperatures, on a tiny
  random diffusion model (junk proposals everywhere: out-of-order commits and refusals both happen)
  and on builtin:pyco-diffusion;
- a grammar that allows every token the sampler proposes changes nothing (token for token);
- rows of a constrained batch equal the rows alone; a canvas too short ends "length" + incomplete
  with a valid prefix;
- what stays unsupported is a one-line error.
"""

import pytest
import torch
from constraint_cases import CONSTRAINTS, satisfied

import decodelab
from decodelab.constraints import compile_constraint
from decodelab.constraints import diffusion as cdiff
from decodelab.errors import UserError

PROMPTS = ["x = ", "def area(r):\n    return ", "# config\nDEBUG = ", "import json\ncfg = json.loads('"]
# Longer than every constraint's longest document (bytes = tokens on the byte model) except CONSTRAINTS[0],
# whose 8-character string may hold escapes: every output must be complete (constraints/diffusion.py).
CANVAS = 40
SAMPLERS = {"llada": {}, "fastdllm": {"threshold": 0.5, "block_length": 16}, "localleap": {"threshold": 0.7},
            "dream": {"steps": 24}}


@pytest.fixture(scope="module")
def pyco_diffusion():
    return decodelab.load("builtin:pyco-diffusion")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random 2-layer diffusion model on the tests' byte tokenizer plus a mask token (vocabulary 259):
    every byte is a token, so junk proposals include partial UTF-8 and every JSON character."""
    import copy

    from decodelab.diffusion import DiffusionConfig, DiffusionForMaskedLM

    from fakes import EOS, PAD, byte_tokenizer

    tok = copy.deepcopy(byte_tokenizer())
    tok.add_special_tokens({"mask_token": "<mask>"})
    torch.manual_seed(0)
    conf = DiffusionConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=128, mask_token_id=tok.mask_token_id,
                           eos_token_id=EOS, pad_token_id=PAD)
    model = DiffusionForMaskedLM(conf)
    with torch.no_grad():  # peaked random logits: confident junk, so parallel rules commit many at once
        model.get_output_embeddings().weight.mul_(60)
    path = tmp_path_factory.mktemp("tiny-byte-diffusion")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return decodelab.load(str(path))


@pytest.fixture
def counted(monkeypatch):
    """Counts, over the canvases made while the test runs, commits ahead of a mask and refused picks."""
    seen = {"ahead": 0, "refused": 0}
    real_filter = cdiff.CanvasGrammar.filter

    def filter_(self, canvas, x0, commit):
        out = real_filter(self, canvas, x0, commit)
        for b in range(out.shape[0]):
            masked = canvas.masked[b].tolist()
            if True in masked:
                f = masked.index(True)
                seen["ahead"] += int(out[b, f + 1:].sum()) if not out[b, f] else 0
                seen["refused"] += int((commit[b] & canvas.masked[b] & ~out[b]).sum())
        return out

    monkeypatch.setattr(cdiff.CanvasGrammar, "filter", filter_)
    return seen


def _assert_valid(gens, constraint, label, lm=None):
    """Complete and satisfied — or, only for CONSTRAINTS[0] (unbounded in tokens, `lm` given), cut at the
    canvas end with a prefix the grammar accepts."""
    from decodelab.constraints import RowConstraint

    for g in gens:
        if g.finish_reason == "length" and lm is not None and constraint is CONSTRAINTS[0]:
            assert g.incomplete is True, (label, g.text)
            assert RowConstraint(compile_constraint(lm, constraint)).validate(g.token_ids) == len(g.token_ids)
            continue
        assert g.finish_reason == "stop" and g.incomplete is False, (label, constraint, g.text, g.finish_reason)
        assert satisfied(constraint, g.text), (label, constraint, g.text)


@pytest.mark.parametrize("method", list(SAMPLERS))
def test_every_output_is_valid_and_complete_on_a_random_model(tiny, method, counted):
    """9 constraints × 4 prompts, greedy and 2 samples each at T = 0.9: 108 canvases per sampler."""
    for k, constraint in enumerate(CONSTRAINTS):
        greedy = decodelab.generate_batch(tiny, PROMPTS, method=method, max_new_tokens=CANVAS,
                                          constraint=constraint, **SAMPLERS[method])
        sampled = decodelab.generate_batch(tiny, PROMPTS, method=method, max_new_tokens=CANVAS, n=2, seed=10 * k,
                                           temperature=0.9, constraint=constraint, **SAMPLERS[method])
        _assert_valid(greedy + sampled, constraint, method, tiny)
    assert counted["refused"] > 0  # the grammar did refuse picks
    if method != "llada":  # stepwise llada on junk rarely commits ahead; the parallel rules must
        assert counted["ahead"] > 0


def test_every_output_is_valid_and_complete_on_pyco_diffusion(pyco_diffusion):
    """Stepwise llada and parallel fastdllm, two prompts each (greedy or sampled, alternating)."""
    for k, constraint in enumerate(CONSTRAINTS[1::2]):
        method = ("llada", "fastdllm")[k % 2]
        gens = decodelab.generate_batch(pyco_diffusion, PROMPTS[k % 4:k % 4 + 2], method=method, seed=k,
                                        temperature=0.8 if k >= 2 else 0.0, max_new_tokens=32,
                                        constraint=constraint, block_length=16)
        _assert_valid(gens, constraint, method)


def test_every_diffusion_method_takes_a_constraint():
    """A diffusion sampler added later is noticed here: it must be made to take a grammar (or refuse it)."""
    assert {n for n, i in decodelab.methods().items() if i.kind == "diffusion"} == set(cdiff.SUPPORTED)


SSPD = [{"block_length": 0, "draft_length": 4, "tree": "tree"}, {"block_length": 8, "draft_length": 6, "tree": "chain"},
        {"block_length": 5, "draft_length": 8, "tree": "tree", "tree_width": 2}]


def test_sspd_under_a_grammar_is_constrained_stepwise_llada(tiny):
    """sspd verifies against constrained stepwise decoding (constraints/diffusion.py StepwiseGrammar): token
    for token constrained `llada` (one token per step), so valid and complete, in fewer forward calls."""
    calls = {"llada": 0, "sspd": 0}
    for k, constraint in enumerate(CONSTRAINTS):
        params = SSPD[k % len(SSPD)]
        prompts = PROMPTS[k % 2::2]
        stepwise = decodelab.generate_batch(tiny, prompts, method="llada", max_new_tokens=CANVAS,
                                            block_length=params["block_length"], constraint=constraint)
        ssd = decodelab.generate_batch(tiny, prompts, method="sspd", max_new_tokens=CANVAS, constraint=constraint,
                                       **params)
        assert [g.token_ids for g in ssd] == [g.token_ids for g in stepwise], (constraint, params)
        _assert_valid(ssd, constraint, "sspd", tiny)
        alone = decodelab.generate(tiny, prompts[1], method="sspd", max_new_tokens=CANVAS, constraint=constraint,
                                   **params)
        assert alone.token_ids == ssd[1].token_ids  # a batch row equals the row alone
        calls["llada"] += stepwise[0].stats.forward_passes
        calls["sspd"] += ssd[0].stats.forward_passes
    assert calls["sspd"] < 0.7 * calls["llada"], calls  # the grammar-steered drafts are accepted


def test_sspd_under_a_grammar_on_pyco_diffusion(pyco_diffusion):
    from decodelab.constraints.json_suite import CASES

    _, prompt, schema = CASES[0][:3]
    constraint = {"json_schema": schema}
    stepwise = decodelab.generate(pyco_diffusion, prompt, method="llada", max_new_tokens=48, block_length=16,
                                  constraint=constraint)
    ssd = decodelab.generate(pyco_diffusion, prompt, method="sspd", max_new_tokens=48, block_length=16,
                             draft_length=8, constraint=constraint)
    assert ssd.token_ids == stepwise.token_ids
    assert ssd.finish_reason == "stop" and satisfied(constraint, ssd.text), ssd.text
    assert ssd.stats.forward_passes < stepwise.stats.forward_passes


def test_every_supported_sampler_runs_constrained(pyco_diffusion):
    extra = {"apd": {"ar_model": "builtin:pyco"}, "sspd": {"draft_length": 4}}
    constraint = CONSTRAINTS[1]
    for method in cdiff.SUPPORTED:
        g = decodelab.generate(pyco_diffusion, PROMPTS[3], method=method, max_new_tokens=24,
                               constraint=constraint, **extra.get(method, {}))
        _assert_valid([g], constraint, method)


@pytest.mark.parametrize("method,params", [("llada", {}), ("fastdllm", {"threshold": 0.6, "temperature": 0.7})])
def test_a_grammar_that_allows_everything_changes_nothing(pyco_diffusion, method, params):
    from decodelab.constraints import RowConstraint

    constraint = {"regex": "(?s:.*)"}
    grammar = compile_constraint(pyco_diffusion, constraint)
    prompts = PROMPTS[:2]
    free = decodelab.generate_batch(pyco_diffusion, prompts, method=method, max_new_tokens=24, seed=3, **params)
    for g in free:  # precondition: the grammar allows every token the unconstrained run emitted
        body = [t for t in g.token_ids if t not in pyco_diffusion.eos_token_ids]
        assert RowConstraint(grammar).validate(body) == len(body)
    bound = decodelab.generate_batch(pyco_diffusion, prompts, method=method, max_new_tokens=24, seed=3,
                                     constraint=constraint, **params)
    assert [g.token_ids for g in bound] == [g.token_ids for g in free]
    assert [g.text for g in bound] == [g.text for g in free]


def test_batch_rows_equal_rows_alone(tiny):
    constraint = CONSTRAINTS[3]
    for params in ({"method": "fastdllm", "threshold": 0.5}, {"method": "llada", "temperature": 0.9}):
        batch = decodelab.generate_batch(tiny, PROMPTS, max_new_tokens=CANVAS, seed=5, constraint=constraint, **params)
        alone = [decodelab.generate(tiny, p, max_new_tokens=CANVAS, seed=5 + i, constraint=constraint, **params)
                 for i, p in enumerate(PROMPTS)]
        assert [g.token_ids for g in batch] == [g.token_ids for g in alone]


def test_a_short_canvas_ends_length_with_a_valid_prefix(tiny):
    from decodelab.constraints import RowConstraint

    constraint = CONSTRAINTS[0]  # {"name": …, "age": …} needs more than 6 tokens
    grammar = compile_constraint(tiny, constraint)
    for g in decodelab.generate_batch(tiny, PROMPTS, method="fastdllm", max_new_tokens=6, constraint=constraint):
        assert g.finish_reason == "length" and g.incomplete is True
        assert RowConstraint(grammar).validate(g.token_ids) == len(g.token_ids) == 6


def test_unsupported_is_one_line(pyco_diffusion):
    cases = [({"method": "sspd", "token_healing": True}, "token_healing is not supported"),
             ({"method": "llada", "token_healing": True}, "token_healing is not supported"),
             ({"method": "llada", "constraint": {"regex": "[0-9"}}, "invalid regex")]
    for kwargs, message in cases:
        with pytest.raises(UserError, match=message) as err:
            decodelab.generate(pyco_diffusion, "x = ", max_new_tokens=8, **kwargs)
        assert "\n" not in str(err.value)
    tasks = decodelab.load("builtin:tasks-diffusion")  # a word-level tokenizer llguidance cannot convert
    with pytest.raises(UserError, match="llguidance") as err:
        decodelab.generate(tasks, "copy : 1 2 =", method="llada", constraint={"regex": "[0-9]"})
    assert "\n" not in str(err.value)


def test_the_diffusion_json_bench_runs_and_counts(tmp_path):
    """python -m decodelab.constraints.diffusion_bench on one prompt, a short canvas: counts only."""
    from decodelab.constraints import diffusion_bench

    result = diffusion_bench.main(["--limit", "1", "--max-new-tokens", "16", "--out", str(tmp_path)])
    assert [(r["method"], r["constrained"]) for r in result["rows"]] == [
        ("llada", False), ("llada", True), ("fastdllm", False), ("fastdllm", True), ("sspd", False), ("sspd", True)]
    rows = {(r["method"], r["constrained"]): r for r in result["rows"]}
    assert rows["sspd", True]["valid"] == rows["llada", True]["valid"]  # sspd's output is llada's
    assert rows["sspd", True]["passes_per_item"] <= rows["llada", True]["passes_per_item"]
    for r in result["rows"]:
        assert r["items"] == 1 and 1 <= r["passes_per_item"] <= 16
        assert (r["grammar_ms_per_item"] > 0) == r["constrained"]
        if r["constrained"]:
            assert r["valid"] == r["complete"]  # a constrained output that completes always validates
    assert "| sampler | grammar | valid |" in (tmp_path / "diffusion.md").read_text()
    assert "machine_load" in (tmp_path / "diffusion.json").read_text()
    with pytest.raises(SystemExit):
        diffusion_bench.main(["--methods", "llada,nope"])
