"""The mutant gallery: small, realistic bugs that the test suite must catch (issue 16).

Each mutant replaces one exact snippet of one source file. `tests/mutants/run.py` copies `src/` to a
temporary directory, applies the mutant there (a snippet that is not found exactly once is an error:
a stale mutant is reported, never skipped), runs the named tests against the copy with PYTHONPATH
pointing at it, and fails unless *every* named test fails. Naming several killers per mutant keeps
each of them honest: a test that loses its power shows up as a surviving mutant.

Add a mutant with every feature that has a known-dangerous small bug (a grammar mask skipped on
drafts, one seed shared by all rows, a diffusion step committing one extra position, …).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

DIST = "tests/methods/test_distribution.py::test_sampled_distribution_matches_target"
VERIFY = "tests/test_verify.py::test_verifier_preserves_target_distribution"


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids; each one must fail on the mutant
    why: str = ""
    more: tuple[tuple[str, str, str], ...] = ()  # further (path, old, new) edits of the same bug

    def edits(self) -> list[tuple[str, str, str]]:
        return [(self.path, self.old, self.new), *self.more]


MUTANTS = [
    Mutant(
        "draft-q-raw-softmax",
        "src/decodelab/proposers/draft_model.py",
        "            qs.append(q)\n",
        "            qs.append(torch.softmax(logits[0, : self.vocab], -1))\n",
        ("tests/proposers/test_proposers.py::test_draft_model_q_is_the_processed_distribution_it_sampled_from",
         f"{DIST}[speculative]", f"{DIST}[selfspec]"),
        "the draft token is drawn from the processed q, but the raw temperature-1 softmax is recorded as q",
    ),
    Mutant(
        "accept-1.2-p-over-q",
        "src/decodelab/verify.py",
        "    return torch.rand((), generator=gen).item() < ratio\n",
        "    return torch.rand((), generator=gen).item() < 1.2 * ratio\n",
        (f"{VERIFY}[_stochastic_chain]", f"{DIST}[speculative:sharp]", f"{DIST}[tree]", f"{DIST}[pld]",
         f"{DIST}[recycling]", f"{DIST}[lookahead]"),
        "an over-generous acceptance rule r < 1.2·p/q (the sharp draft's q exceeds 1.2·p on likely tokens)",
    ),
    Mutant(
        "resample-from-p-not-residual",
        "src/decodelab/verify.py",
        "    return r / total if total > 0 else p\n",
        "    return p\n",
        (f"{VERIFY}[_stochastic_chain]", f"{DIST}[speculative]", f"{DIST}[tree]", f"{DIST}[selfspec]",
         f"{DIST}[pld]", f"{DIST}[jacobi]", f"{DIST}[recycling]", f"{DIST}[lookahead]"),
        "after a rejection the recovered token is sampled from p instead of norm(max(0, p − q))",
    ),
    Mutant(
        "pld-continuation-shifted",
        "src/decodelab/proposers/lookup.py",
        "                return ids[start + n : start + n + num_tokens]\n",
        "                return ids[start + n + 1 : start + n + 1 + num_tokens]\n",
        ("tests/proposers/test_proposers.py::test_lookup_returns_the_continuation_of_the_match",
         "tests/methods/test_tau_floors.py::test_tau_stays_above_its_floor[pld]"),
        "prompt lookup copies the continuation one position late: still lossless, no longer fast",
    ),
    Mutant(
        "ngram-index-keeps-cut-ngrams",
        "src/decodelab/proposers/lookup.py",
        "                    del self.first[key]\n",
        "                    pass\n",
        ("tests/proposers/test_proposers.py::test_ngram_index_follows_a_list_that_grows_is_cut_back_and_regrows",),
        "the prompt-lookup index keeps n-grams of tokens cut from the context: drafts copied from text "
        "that is no longer there",
    ),
    Mutant(
        "top-p-drops-the-boundary-token",
        "src/decodelab/processors/warpers.py",
        "        sorted_remove = cumulative <= (1 - self.p)  # the tail holding at most 1 - p of the mass\n",
        "        sorted_remove = cumulative - sorted_logits.softmax(dim=-1) <= (1 - self.p)\n",
        ("tests/processors/test_processors.py::test_top_p[0.5]",
         "tests/processors/test_processors.py::test_top_p[0.9]"),
        "top-p off by one: the token that crosses the mass p is removed, so less than p is kept",
    ),
    Mutant(
        "top-p-strict-at-exact-mass",
        "src/decodelab/processors/warpers.py",
        "        sorted_remove = cumulative <= (1 - self.p)  # the tail holding at most 1 - p of the mass\n",
        "        sorted_remove = cumulative < (1 - self.p)\n",
        ("tests/processors/test_processors.py::test_top_p_at_an_exact_mass_boundary[0.5]",),
        "top-p keeps a token whose tail mass equals 1 − p exactly",
    ),
    Mutant(
        "kv-rollback-keeps-a-stale-column",
        "src/decodelab/model/hf.py",
        "            n = len(columns)\n",
        "            n = len(columns) + 1\n",
        ("tests/model/test_session.py::test_truncate_rolls_back[llama]",
         "tests/methods/test_lossless.py::test_greedy_exactness_many_prompts[llama-speculative]",
         "tests/methods/test_lossless.py::test_greedy_exactness_many_prompts[llama-pld]"),
        "the transformers adapter's rollback keeps one rejected position in the KV cache",
    ),
    Mutant(
        "one-seed-shared-by-all-rows",
        "src/decodelab/engine.py",
        "    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed + i for i in range(n)]\n",
        "    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed for i in range(n)]\n",
        ("tests/methods/test_batched.py::test_batch_row_samples_equal_row_alone_with_its_seed[speculative-native]",
         "tests/methods/test_batched.py::test_batch_row_samples_equal_row_alone_with_its_seed[sample-transformers]",
         "tests/methods/test_batched.py::test_n_samples_per_prompt_are_prompt_major_with_row_seeds"),
        "every row of a batch draws from the same seed: rows repeat each other and depend on the batch",
    ),
    Mutant(
        "native-accept-path-off-by-one",
        "src/decodelab/model/native.py",
        "            self.cache.move(torch.tensor(columns[prefix:], device=self.lm.device), prefix)\n",
        "            self.cache.move(torch.tensor(columns[prefix:], device=self.lm.device), prefix + 1)\n",
        ("tests/model/test_native.py::test_accept_tree_path_then_decode_equals_fresh_chain[llama]",
         "tests/model/test_native.py::test_accept_tree_path_then_decode_equals_fresh_chain[qwen3]",
         "tests/model/test_native.py::test_grown_cache_accepts_a_tree_path_outside_inference_mode"),
        "the native cache copies an accepted tree path one column too far: a stale key/value stays in place",
    ),
    Mutant(
        "batch-rejected-drafts-stay-visible",
        "src/decodelab/model/session.py",
        "        self.pad_mask = torch.cat([self.pad_mask[:, :start], self.pad_mask[:, start:] * keep], dim=1)\n",
        "        self.pad_mask = torch.cat([self.pad_mask[:, :start], self.pad_mask[:, start:]], dim=1)\n",
        ("tests/methods/test_batched.py::test_builtin_batch_rows_equal_greedy_alone[speculative]",
         "tests/methods/test_batched.py::test_builtin_batch_rows_equal_greedy_alone[pld]",
         "tests/methods/test_batched.py::test_ragged_accept_and_defragment_keep_rows_exact[native]",
         "tests/methods/test_batched.py::test_ragged_accept_and_defragment_keep_rows_exact[transformers]"),
        "ragged acceptance leaves a row's rejected draft columns unmasked: later tokens attend to them",
    ),
    Mutant(
        "penalty-counts-padded-prompt",
        "src/decodelab/processors/history.py",
        "        view.row_view, view.history, view.prompt_len = True, None, prompt_len\n",
        "        view.row_view, view.history = True, None\n",
        ("tests/methods/test_penalties.py::test_ragged_batch_rows_with_penalties_equal_rows_alone[sample-native]",
         "tests/methods/test_penalties.py::test_ragged_batch_rows_with_penalties_equal_rows_alone[pld-transformers]"),
        "a row of a left-padded batch counts presence/frequency penalties from the padded width, not its own prompt",
    ),
    Mutant(
        "diffusion-grammar-commits-unchecked-picks",
        "src/decodelab/constraints/diffusion.py",
        "            if self._valid(b, cand):\n",
        "            if True:\n",
        ("tests/constraints/test_diffusion_constrained.py::test_every_output_is_valid_and_complete_on_a_random_model[fastdllm]",
         "tests/constraints/test_diffusion_constrained.py::test_a_short_canvas_ends_length_with_a_valid_prefix"),
        "a diffusion sampler under a grammar commits its parallel picks without checking that the prefix stays valid",
    ),
    Mutant(
        "batched-grammar-mask-shifted",
        "src/decodelab/constraints/batched.py",
        "            row.masks[node] = bitmask[at + j]\n            row.bias[node] = bias[at + j]\n",
        "            row.masks[node] = bitmask[at + j - 1]\n            row.bias[node] = bias[at + j - 1]\n",
        ("tests/constraints/test_batched_masks.py::test_one_call_gives_every_node_the_mask_a_fresh_matcher_computes[0]",
         "tests/constraints/test_batched_masks.py::test_every_speculative_method_gives_the_same_tokens_with_batched_masks[tree]"),
        "the one llguidance call per verify step hands each draft node its parent's mask",
    ),
    Mutant(
        "single-chain-masks-only-its-head",
        "src/decodelab/constraints/batched.py",
        "        matcher.unsafe_compute_mask_ptr_with_draft_token(bitmask[at].data_ptr(), one_mask, draft)\n",
        "        matcher.unsafe_compute_mask_ptr_with_draft_token(bitmask[at].data_ptr(), one_mask, draft[:1])\n",
        ("tests/constraints/test_batched_masks.py::test_a_single_chain_is_computed_on_its_own_matcher_with_the_same_masks[0]",),
        "a step's single chain, computed on its own matcher, leaves its draft nodes all-allowed masks",
    ),
    Mutant(
        "grouped-attention-ignores-the-mask",
        "src/decodelab/model/native.py",
        "        scores = scores.view(B, kv, H // kv, n, -1).add_(mask[:, None]).view(B, kv, -1, k.shape[2])\n",
        "        scores = scores.view(B, kv, H // kv, n, -1).view(B, kv, -1, k.shape[2])\n",
        ("tests/model/test_native.py::test_additive_mask_gives_the_boolean_masks_attention",
         "tests/model/test_native.py::test_ragged_rows_packed_equal_padded_and_transformers[llama-True-lengths0]"),
        "a batched verify step's folded attention drops the tree / padding mask",
    ),
    Mutant(
        "beam-drops-the-healing-mask",
        "src/decodelab/search/beam.py",
        "        swap[id(healer)] = healer.repeated(k)\n",
        "        swap[id(healer)] = healer.repeated(k)\n        sampler.logits_processors.remove(healer)\n",
        ("tests/search/test_beam.py::test_one_beam_with_token_healing_is_healed_greedy",),
        "beam search backs the prompt up for token healing but lets the first token ignore the removed text",
    ),
    Mutant(
        "meta-inner-method-unhealed",
        "src/decodelab/search/meta.py",
        "max_new_tokens=ctx.max_new_tokens, token_healing=ctx.token_healing, **params)",
        "max_new_tokens=ctx.max_new_tokens, token_healing=False, **params)",
        ("tests/search/test_meta.py::test_token_healing_runs_the_inner_method_healed_and_scores_against_the_backed_up_prompt[best_of_n]",),
        "a meta method's inner samples are drawn without the request's token healing",
    ),
    Mutant(
        "awrs-ignores-token-healing",
        "src/decodelab/methods/awrs.py",
        "    free = ctx.sampler.without_constraint()  # p without the grammar mask (token healing's kept)\n",
        "    free = Sampler(ctx.params, prompt_len=len(ctx.prompts[0]))\n",
        ("tests/constraints/test_healing.py::test_every_causal_method_heals_or_refuses",),
        "awrs draws its first token without token healing's mask (the request's token_healing silently ignored)",
    ),
    Mutant(
        "deal-ignores-token-healing",
        "src/decodelab/methods/deal.py",
        "    return Sampler(ctx.params, prompt_len=len(ctx.prompts[0]), constraint=mask, healing=healer)  # temperature 0:\n",
        "    return Sampler(ctx.params, prompt_len=len(ctx.prompts[0]), constraint=mask)  # temperature 0:\n",
        ("tests/constraints/test_healing.py::test_every_causal_method_heals_or_refuses",),
        "DeAL expands and rolls out its states without token healing's first-token mask",
    ),
    Mutant(
        "packed-attention-misses-own-column",
        "src/decodelab/model/native.py",
        "            end = start + width  # a real token",
        "            end = start + width - 1  # a real token",
        ("tests/model/test_native.py::test_ragged_rows_packed_equal_padded_and_transformers[llama-False-lengths1]",),
        "a packed ragged verify batch's attention run must reach its widest row's last column",
    ),
    Mutant(
        "pack-auto-keeps-the-slower",
        "src/decodelab/model/native.py",
        '            if sum(times["packed"]) < sum(times["dense"]):\n',
        '            if sum(times["packed"]) > sum(times["dense"]):\n',
        ("tests/model/test_native_pack.py::test_pack_auto_follows_the_timings[packed]",
         "tests/model/test_native_pack.py::test_pack_auto_follows_the_timings[dense]",
         "tests/model/test_native_pack.py::test_pack_auto_packs_exactly_the_kinds_that_timed_faster"),
        'load(pack="auto") must pack the weight kinds where oneDNN timed faster, not the others',
    ),
    Mutant(
        "llamacpp-kernel-crash-ignored",
        "src/decodelab/model/llamacpp.py",
        "        _checked[key] = None if done.returncode >= 0 else _signal_name(-done.returncode)\n",
        "        _checked[key] = None\n",
        ("tests/model/test_llamacpp.py::test_a_kernel_crash_in_the_test_forward_is_a_model_error",),
        "a q8_0 model whose test forward died must be a ModelError, not a crash at the first real forward",
    ),
    Mutant(
        "sspd-grammar-step-unchecked",
        "src/decodelab/constraints/diffusion.py",
        "        commit = view.filter(canvas, x0, top1(conf.masked_fill(~candidates[None], NEG_INF)))\n",
        "        commit = top1(conf.masked_fill(~candidates[None], NEG_INF))\n",
        ("tests/constraints/test_diffusion_constrained.py::test_sspd_under_a_grammar_is_constrained_stepwise_llada",),
        "sspd under a grammar verifies against stepwise commits whose witness check was skipped",
    ),
    Mutant(
        "penalty-state-not-rolled-back",
        "src/decodelab/processors/history.py",
        "            self._update(k, mine[k:], -1)\n",
        "            pass\n",
        ("tests/processors/test_history_state.py::test_row_view_equals_recomputing_from_the_history[0-1]",
         "tests/methods/test_penalties.py::test_lossless_methods_with_penalties_equal_penalised_greedy[speculative-native]"),
        "a row's penalty state keeps counting the draft tokens a verifier rejected",
    ),
    Mutant(
        "merge-ignores-joining-shift",
        "src/decodelab/model/native.py",
        "            new[:, B:, :, other_shift : other_shift + other_length] = o[:, :, :, :other_length]\n",
        "            new[:, B:, :, :other_length] = o[:, :, :, :other_length]\n",
        ("tests/methods/test_engine_continuous.py::test_builtin_pyco_rows_joining_equal_each_row_alone[greedy-params0]",
         "tests/model/test_native.py::test_merge_rows_join_a_running_batch[llama-True]"),
        "continuous batching: a shorter joining row's cache is not moved right, so its keys sit under pad columns",
    ),
    *([] if importlib.util.find_spec("llama_cpp") is None else [  # the llamacpp extra (tests skip without it)
        Mutant(
            "llamacpp-tree-nodes-share-one-sequence",
            "src/decodelab/model/llamacpp.py",
            "        if not tree:\n",
            "        if True:\n",
            ("tests/model/test_llamacpp.py::test_tree_then_accepted_path_and_truncate[builtin:pyco]",
             "tests/model/test_llamacpp.py::test_each_tree_node_equals_its_chain[qwen3]"),
            "llamacpp: every tree node tagged with the row's own sequence only, so a node sees its siblings "
            "(llama.cpp masks by sequence id and position) instead of its ancestors alone",
        ),
        Mutant(
            "llamacpp-accepted-path-not-copied",
            "src/decodelab/model/llamacpp.py",
            "        if holder != b:\n",
            "        if False:\n",
            ("tests/model/test_llamacpp.py::test_tree_then_accepted_path_and_truncate[llama]",
             "tests/model/test_llamacpp.py::test_per_row_trees_accept_rows_and_fork[builtin:pyco]"),
            "llamacpp: an accepted tree path below another leaf stays in that leaf's temporary sequence, so "
            "the row keeps the first leaf's branch",
        ),
    ]),
    Mutant(
        "engine-row-ignores-its-grammar",
        "src/decodelab/engine.py",
        "prompt_len=len(healed_ids), constraint=mask,",
        "prompt_len=len(healed_ids), constraint=None,",
        ("tests/methods/test_engine_constrained.py::test_constrained_and_healed_rows_in_a_running_batch_equal_each_row_alone[greedy-True-False-native]",
         "tests/methods/test_engine_constrained.py::test_constrained_and_healed_rows_in_a_running_batch_equal_each_row_alone[speculative-False-True-transformers]",
         "tests/methods/test_engine_constrained.py::test_a_mixed_engine_takes_constrained_rows_of_every_method"),
        "a constrained row joins the continuous Engine, which checks and compiles its grammar but never masks it",
    ),
    Mutant(
        "engine-row-unhealed",
        "src/decodelab/engine.py",
        "                          healing=healer) if own_sampler else self.ctx.sampler",
        "                          healing=None) if own_sampler else self.ctx.sampler",
        ("tests/methods/test_engine_constrained.py::test_constrained_and_healed_rows_in_a_running_batch_equal_each_row_alone[pld-False-False-native]", "tests/methods/test_engine_constrained.py::test_constrained_and_healed_rows_in_a_running_batch_equal_each_row_alone[sample-True-True-transformers]"),
        "an Engine row backs its prompt up for token healing but its first token ignores the removed text",
    ),
]
