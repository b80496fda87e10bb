"""One llguidance call per verify step (constraints/batched.py): its masks equal the one-node masks.

- random draft trees (valid, rejected and EOS nodes mixed) under JSON-schema, regex, Lark and choice
  grammars, several rows in one call: every mask the call leaves equals the mask a fresh matcher computes
  at that node's history, every reachable node before an EOS is covered, and nothing else is;
- masks already known (a draft model computed them) are not computed again;
- end to end, every speculative method gives the same tokens with the batched route on and off, greedy
  and sampled, in batches; with it on, the verify reads its masks (hits) and makes at most one batched
  call per step.
"""

import random

import pytest
import torch
from constraint_cases import CONSTRAINTS, SCHEMAS, flat_lm

import decodelab
from decodelab.constraints import RowConstraint, batched, compile_constraint, timing
from decodelab.constraints.matcher import GrammarMask, unpack
from decodelab.engine import run_method
from decodelab.verify import Draft

from fakes import EOS, tiny_lm

LM = tiny_lm("llama", seed=0)
V = LM.vocab_size
PREFIXES = {0: '{"name": "', 2: "[", 5: "", 6: "", 7: "(", 8: ""}  # CONSTRAINTS index → generated so far


def one_node_mask(grammar, tokens: list[int]) -> torch.Tensor | None:
    """The mask a fresh matcher computes after `tokens` (None when they are not a valid prefix)."""
    row = RowConstraint(grammar)
    if not row.seek(tokens) or row.error:
        return None
    return row.allowed(V)


def random_tree(grammar, generated: list[int], rng: random.Random, n: int) -> Draft:
    """n nodes, each under a random earlier node; its token mostly one the grammar allows there, sometimes
    EOS, sometimes any byte (so rejected nodes and subtrees of rejected nodes occur)."""
    tokens, parents, paths = [], [], {-1: []}
    for i in range(n):
        p = rng.choice([-1] + list(range(i)))
        allowed = one_node_mask(grammar, generated + paths[p]) if p in paths else None
        choices = allowed.nonzero().flatten().tolist() if allowed is not None else []
        r = rng.random()
        t = EOS if r < 0.08 else rng.randrange(256) if r < 0.25 or not choices else rng.choice(choices)
        tokens.append(t)
        parents.append(p)
        if p in paths and t != EOS:
            paths[i] = paths[p] + [t]
    return Draft(tokens, parents)


def node_paths(draft: Draft, generated: list[int]) -> dict[int, list[int]]:
    paths = {-1: list(generated)}
    for i, (t, p) in enumerate(zip(draft.tokens, draft.parents)):
        paths[i] = paths[p] + [t]
    return paths


@pytest.mark.parametrize("seed", range(4))
def test_one_call_gives_every_node_the_mask_a_fresh_matcher_computes(seed):
    rng = random.Random(seed)
    cases = []
    for k, prefix in PREFIXES.items():
        grammar = compile_constraint(LM, CONSTRAINTS[k])
        generated = list(prefix.encode())
        cases.append((RowConstraint(grammar), generated, random_tree(grammar, generated, rng, 14), grammar))
    with timing.grammar_timing() as timer:
        computed = batched.premask([(row, gen, draft, [EOS]) for row, gen, draft, _ in cases])
    assert timer.summary()["batch_calls"] == 1 and computed == timer.batch_masks
    covered = rejected = eos_paths = 0
    for row, generated, draft, grammar in cases:
        for node, path in node_paths(draft, generated).items():
            expected = one_node_mask(grammar, path)
            known = row.masks.get(tuple(path))
            if EOS in path[len(generated):]:  # past an EOS: left to the one-node route
                eos_paths += 1
                assert known is None
            elif expected is None:
                rejected += 1
                assert known is None
            else:
                covered += 1
                assert known is not None, (node, bytes(path))
                assert torch.equal(unpack(known[None], V)[0], expected), (node, bytes(path))
    assert computed == covered  # nothing computed twice, nothing left out
    assert covered > 30 and rejected > 3 and eos_paths > 0  # the trees exercised every kind of node


@pytest.mark.parametrize("seed", range(2))
def test_a_single_chain_is_computed_on_its_own_matcher_with_the_same_masks(seed, monkeypatch):
    """A step with one chain (batch size 1, a chain draft or none) skips the executor's pool: the chain's
    matcher computes its masks on the calling thread. They equal a fresh matcher's at every node (a
    rejected token cuts the chain), the matcher is left where it was, and two chains still go to the pool."""
    rng = random.Random(seed)

    class NoPool:
        def unsafe_compute_mask_ptr_with_draft_token(self, *args):
            raise AssertionError("the executor was used for a single chain")

    real = batched.executor()
    for k, prefix in PREFIXES.items():
        grammar = compile_constraint(LM, CONSTRAINTS[k])
        generated, tokens = list(prefix.encode()), []
        for _ in range(6):  # a chain of mostly allowed tokens, sometimes any byte
            allowed = one_node_mask(grammar, generated + tokens)
            choices = allowed.nonzero().flatten().tolist() if allowed is not None else []
            tokens.append(rng.choice(choices) if choices and rng.random() < 0.85 else rng.randrange(3, 256))
        for draft in (Draft(), Draft.chain(tokens)):
            row = RowConstraint(grammar)
            monkeypatch.setattr(batched, "executor", lambda threads=None: NoPool())
            computed = batched.premask([(row, generated, draft, [EOS])])
            valid = [t for t in range(len(draft.tokens) + 1)
                     if one_node_mask(grammar, generated + draft.tokens[:t]) is not None]
            assert computed == len(valid) and valid == list(range(len(valid)))  # cut at the first rejection
            if valid:  # the row's matcher is left after `generated`, the draft not consumed
                fresh = RowConstraint(grammar)
                assert fresh.seek(generated) and row.tokens == generated
                assert row.validate(draft.tokens) == fresh.validate(draft.tokens) >= len(valid) - 1
            for t in valid:
                path = tuple(generated + draft.tokens[:t])
                assert torch.equal(unpack(row.masks[path][None], V)[0], one_node_mask(grammar, list(path)))
                assert torch.equal(row.bias[path][:V] == 0, one_node_mask(grammar, list(path)))
        if one_node_mask(grammar, generated) is None:
            continue  # a rejected root (PREFIXES): no chain at all
        monkeypatch.setattr(batched, "executor", lambda threads=None: NoPool())
        two = [(RowConstraint(grammar), generated, Draft(), [EOS]) for _ in range(2)]
        with pytest.raises(AssertionError, match="executor was used"):
            batched.premask(two)
        monkeypatch.setattr(batched, "executor", lambda threads=None: real)
        assert batched.premask(two) == 2
    with pytest.raises(ValueError, match="do not fit"):
        row = RowConstraint(grammar)
        batched.fill([(row.matcher, 0, [1, 2])], torch.zeros(2, (V + 31) // 32, dtype=torch.int32))


def test_known_masks_are_not_computed_again_and_a_lone_head_costs_one_mask():
    grammar = compile_constraint(LM, {"json_schema": SCHEMAS[1]})
    row = RowConstraint(grammar)
    generated = list(b'{"ok": ')
    chain = Draft.chain(list(b"true"))
    assert batched.premask([(row, generated, chain, [EOS])]) == 5  # the head + 4 nodes
    assert batched.premask([(row, generated, chain, [EOS])]) == 0  # all known: no call at all
    longer = Draft.chain(list(b"true,"))
    assert batched.premask([(row, generated, longer, [EOS])]) == 1  # only the new node
    assert batched.premask([(RowConstraint(grammar), generated, Draft(), [EOS])]) == 1
    assert batched.premask([(row, generated, Draft.chain(list(b"fals")), [EOS])]) == 4  # the root is known
    assert set(row.masks) == {tuple(generated) + tuple(b"fals"[:j]) for j in range(5)}  # the old step's are gone


@pytest.mark.parametrize("seed", range(3))
def test_a_steps_nodes_masked_at_once_equal_the_processor_node_by_node(seed):
    """`GrammarMask.mask_nodes` (what verification uses when the grammar is the only history-reading
    processor) gives every node of a premasked tree the same scores as the processor called on that
    node's own history; with any node's mask unknown it declines (None)."""
    rng = random.Random(seed)
    grammar = compile_constraint(LM, CONSTRAINTS[0])
    prompt, generated = [5, 6, 7], list(PREFIXES[0].encode())
    draft = random_tree(grammar, generated, rng, 10)
    paths = node_paths(draft, generated)
    valid = [i for i in range(-1, len(draft.tokens)) if one_node_mask(grammar, paths[i]) is not None]
    draft = Draft([draft.tokens[i] for i in valid[1:]], [valid.index(draft.parents[i]) - 1 for i in valid[1:]])
    keys = [tuple(p) for _, p in sorted(node_paths(draft, generated).items())]
    scores = torch.randn(len(keys), V, generator=torch.Generator().manual_seed(seed))
    mask = GrammarMask([grammar], len(prompt))
    assert mask.mask_nodes(keys, scores) is None  # nothing premasked yet
    batched.premask([(mask.rows[0], generated, draft, [EOS])])
    together = mask.mask_nodes(keys, scores)
    fresh = GrammarMask([grammar], len(prompt))
    for i, key in enumerate(keys):
        alone = fresh(torch.tensor([prompt + list(key)]), scores[i : i + 1])[0]
        assert torch.equal(together[i], alone), i
    assert mask.mask_nodes(keys + [keys[-1] + (EOS, EOS)], torch.randn(len(keys) + 1, V)) is None


SPECULATIVE = ["speculative", "pld", "lookahead", "recycling", "tree", "selfspec", "jacobi"]
SIZES = {"recycling": {"widths": "4,6,4,2"}, "lookahead": {"W": 3, "G": 3}}


@pytest.fixture(scope="module")
def lm():
    target = flat_lm(0, 0.3)  # flat enough that sampled rows differ from greedy ones
    target.state["drafts"] = {"tiny-draft": flat_lm(1, 0.3)}
    return target


def _run(lm, method: str, temperature: float, on: bool):
    info = decodelab.methods()[method]
    params = {"temperature": temperature, **SIZES.get(method, {})}
    if "draft" in info.params:
        params["draft"] = "tiny-draft"
    grammars = [compile_constraint(lm, {"json_schema": s}) for s in SCHEMAS[:4]]
    prompts = [lm.encode("{")] * len(grammars)
    lm.state.pop("recycling", None)  # recycling's adjacency persists across calls: start each run afresh
    batched.ENABLED = on
    try:
        with timing.grammar_timing() as timer:
            events = list(run_method(info, lm, prompts, info.check_params(params), 60, 3, [], grammars))
    finally:
        batched.ENABLED = True
    gens = {e.row: e.generation for e in events if e.generation is not None}
    return [gens[b].token_ids for b in range(len(grammars))], timer, gens[0].stats


@pytest.mark.parametrize("method", SPECULATIVE)
def test_every_speculative_method_gives_the_same_tokens_with_batched_masks(lm, method):
    for temperature in (0.0, 1.5):
        on, timer, stats = _run(lm, method, temperature, True)
        off, timer_off, _ = _run(lm, method, temperature, False)
        assert on == off, (method, temperature)
        summary = timer.summary()
        assert timer_off.summary()["batch_calls"] == 0
        assert summary["batch_calls"] <= stats.forward_passes  # one call per verify step, all rows together
        # the verify reads its masks; a draft model's own positions are computed one at a time while it drafts
        assert timer.mask_hits >= (0.3 if method in ("speculative", "selfspec") else 0.9) * timer.mask_rows
    greedy_tokens = _run(lm, method, 0.0, True)[0]
    assert on != greedy_tokens  # the sampled run really sampled


def test_mask_cost_bench_runs_every_route_with_the_same_tokens(tmp_path):
    """python -m decodelab.constraints.mask_cost on one json-suite prompt: counts only (no timing here)."""
    from decodelab.constraints import mask_cost

    result = mask_cost.main(["--limit", "1", "--methods", "greedy,pld", "--repeats", "2", "--out", str(tmp_path)])
    rows = {(r["method"], r["route"]): r for r in result["rows"]}
    assert set(rows) == {(m, r) for m in ("greedy", "pld") for r in ("overlap", "batched", "one node")}
    for r in rows.values():
        # the reference, both replays and every route emitted the same tokens
        assert r["same_tokens"] == "1/1" and r["tokens"] > 0 and r["mask_us_per_token"] > 0
        assert r["masks_per_token"] >= 1 - 1e-9  # every emitted token had its mask computed
        assert isinstance(r["exposed_us_per_token"], float) and r["draft_grammar_us_per_token"] > 0
        # the shares are of one plain decode step timed in the run, not of the mean pass (prefill, several tokens)
        assert r["exposed_share_of_step"] == pytest.approx(r["exposed_us_per_token"] / result["decode_step_us"], abs=1e-3)
        assert result["decode_step_us"] > 0
    for method in ("greedy", "pld"):  # the batched route asks llguidance less often
        assert rows[method, "batched"]["llguidance_calls_per_token"] < rows[method, "one node"]["llguidance_calls_per_token"]
        assert rows[method, "overlap"]["masks_per_token"] == rows[method, "batched"]["masks_per_token"]
    assert "| greedy | overlap |" in (tmp_path / "mask_cost.md").read_text()
    assert batched.OVERLAP is None and batched.ENABLED  # the default route restored
    with pytest.raises(SystemExit):
        mask_cost.main(["--methods", "llada"])
    with pytest.raises(SystemExit):
        mask_cost.main(["--routes", "overlap,sideways"])
