"""Registry entries for the search, layer-contrast and meta-generation methods of `decodelab.search`.

Each method runs its search to the end, leaves the ranked alternatives in `ctx.candidates` (the
engine turns them into `Generation.candidates`) and yields the best sequence of every row at once.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import UserError
from ..search.adaptive import adaptive_best_of_k
from ..search.beam import BeamConfig, beam_search
from ..search.best_first import best_first_beam
from ..search.cntp import cntp as cntp_search
from ..search.contrastive import contrastive_search
from ..search.dba import dba_search
from ..search.deco import deco as deco_search
from ..search.dola import dola as dola_search
from ..search.infill import fim_reason
from ..search.infill import self_infill as self_infill_search
from ..search.lookback import lookback as lookback_search
from ..search.meta import best_of_n, mbr, self_consistency
from ..search.phi import phi_decoding
from ..search.superposed import superposed as superposed_search
from .registry import PENALTY_PARAMS, WARPER_PARAMS, Param, register


def _emit_best(ctx, ranked: list[list[tuple[list[int], float]]]) -> Iterator[list[list[int]]]:
    ctx.candidates = ranked
    yield [rows[0][0] if rows else [] for rows in ranked]


@register("beam", description="Beam search (transformers' rule) with the patience factor; composes with "
          "every processor (temperature > 0 searches the processed distribution).", lossless=False,
          paper="A Call for Clarity in Beam Search: How It Works and When It Stops (arXiv:2204.05424)",
          batched=True, temperature=0.0, family="search", params={
              "num_beams": Param(4, 1, 64, help="beams per prompt (K)"),
              "length_penalty": Param(1.0, -10.0, 10.0, help="finished score = logp / length^length_penalty"),
              "early_stopping": Param(False, choices=(False, True, "never"),
                                      help="True: stop when the finished set is full; False: heuristic; "
                                      "'never': canonical"),
              "num_return_sequences": Param(1, 1, 64, help="ranked hypotheses kept in .candidates"),
              "patience": Param(1.0, 0.01, 16.0, help="finished-set size = patience × num_beams (Kasai et al.)"),
          })
def beam(ctx) -> Iterator[list[list[int]]]:
    cfg = BeamConfig(**{name: ctx.params[name] for name in
                        ("num_beams", "length_penalty", "early_stopping", "num_return_sequences", "patience")})
    return _emit_best(ctx, beam_search(ctx, cfg))


@register("contrastive", description="Contrastive search: argmax over the top-k of (1−α)·p(v) − α·max cos(h_v, "
          "h_context) (top_k: the sampling parameter, 0 → 5).", lossless=False,
          paper="A Contrastive Framework for Neural Text Generation (arXiv:2202.06417)",
          batched=True, temperature=0.0, family="search", params={
              "penalty_alpha": Param(0.6, 0.0, 1.0, help="α: weight of the degeneration penalty"),
          })
def contrastive(ctx) -> Iterator[list[list[int]]]:
    return contrastive_search(ctx, ctx.params["penalty_alpha"], ctx.params["top_k"] or 5)


@register("dola", description="DoLa: contrast the final layer with the premature layer of largest JSD, on "
          "the tokens the final layer finds plausible (APC).", lossless=False,
          paper="DoLa: Decoding by Contrasting Layers Improves Factuality in Large Language Models (arXiv:2309.03883)",
          batched=True, temperature=0.0, family="layer-contrast", params={
              "dola_layers": Param("high", help="'low', 'high', or comma-separated premature layer indices"),
              "relative_top": Param(0.1, 1e-6, 1.0, help="APC α: keep tokens with q_N ≥ α·max q_N"),
          })
def dola(ctx) -> Iterator[list[list[int]]]:
    return dola_search(ctx, ctx.params["dola_layers"], ctx.params["relative_top"])


@register("deco", description="DeCo: add α·c × the logits of the preceding layer most confident (c) in one "
          "of the final layer's top-k/top-p candidates; decode among the candidates.", lossless=False,
          paper="MLLM can see? Dynamic Correction Decoding for Hallucination Mitigation (arXiv:2410.11779)",
          batched=True, temperature=0.0, family="layer-contrast", params={
              "alpha": Param(0.6, 0.0, 100.0, help="α: weight of the anchor layer's logits (times its confidence)"),
              "deco_layers": Param("auto", help="preceding-layer window: 'auto' (5N/8..7N/8), 'a-b' or indices"),
              "threshold_top_k": Param(20, 1, 100_000, help="candidates: top-k of the final layer"),
              "threshold_top_p": Param(0.9, 1e-6, 1.0, help="candidates: then the top-p prefix of those"),
          })
def deco(ctx) -> Iterator[list[list[int]]]:
    p = ctx.params
    return deco_search(ctx, p["deco_layers"], p["alpha"], p["threshold_top_k"], p["threshold_top_p"])


class _NameOrCallable(Param):
    """A parameter that takes one of `choices` or a Python callable (API only)."""

    def check(self, name, value):
        return value if callable(value) else super().check(name, value)


_META = {
    "num_samples": Param(4, 1, 256, help="candidates per prompt (N)"),
    "inner": Param("sample", help="the decoding method that draws the candidates"),
}


@register("best_of_n", description="Best-of-N: N candidates from an inner method, the best by mean "
          "log-likelihood (or sum, or a callable scorer(text, ids)); all N ranked in .candidates.",
          lossless=False, batched=True, temperature=1.0, family="meta",
          paper="From Decoding to Meta-Generation: Inference-time Algorithms for Large Language Models "
          "(arXiv:2406.16838)", params={
              **_META, "scorer": _NameOrCallable("mean_logprob", choices=("mean_logprob", "sum_logprob"),
                                                 help="candidate score"),
          })
def best_of_n_method(ctx) -> Iterator[list[list[int]]]:
    p = ctx.params
    return _emit_best(ctx, best_of_n(ctx, p["inner"], p["num_samples"], p["scorer"]))


@register("self_consistency", description="Self-consistency: majority vote over the answers of N "
          "candidates (extract: stripped text or a callable); the most likely majority sample is returned.",
          lossless=False, batched=True, temperature=1.0, family="meta",
          paper="Self-Consistency Improves Chain of Thought Reasoning in Language Models (arXiv:2203.11171)",
          params={**_META, "extract": _NameOrCallable("strip", choices=("strip",), help="answer extractor")})
def self_consistency_method(ctx) -> Iterator[list[list[int]]]:
    p = ctx.params
    return _emit_best(ctx, self_consistency(ctx, p["inner"], p["num_samples"], p["extract"]))


@register("best_first_beam", description="Best-first beam search: a priority queue by log-probability, at "
          "most num_beams pops per length; the first complete pop is the answer (max_queue caps the queue).",
          lossless=False, paper="Best-First Beam Search (arXiv:2007.03909)", temperature=0.0, family="search", params={
              "num_beams": Param(4, 1, 64, help="pops allowed per hypothesis length (k)"),
              "max_queue": Param(0, 0, 1_000_000, help="memory-reduced variant: queue size cap (0 = none)"),
          })
def best_first_beam_method(ctx) -> Iterator[list[list[int]]]:
    return _emit_best(ctx, [best_first_beam(ctx, ctx.params["num_beams"], ctx.params["max_queue"])])


@register("mbr", description="Minimum Bayes risk over N candidates of an inner method: the candidate with the "
          "highest mean utility against the others (edit similarity, chrF, or a callable u(text, text)).",
          lossless=False, batched=True, temperature=1.0, family="meta",
          paper="From Decoding to Meta-Generation: Inference-time Algorithms for Large Language Models "
          "(arXiv:2406.16838)", params={
              **_META, "utility": _NameOrCallable("edit", choices=("edit", "chrf"), help="utility u(y, y')"),
          })
def mbr_method(ctx) -> Iterator[list[list[int]]]:
    p = ctx.params
    return _emit_best(ctx, mbr(ctx, p["inner"], p["num_samples"], p["utility"]))


class _Phrases(Param):
    """`constraints` of dba: a list of phrases (API), or a string — a JSON list or one phrase (CLI).
    Required (default None): `bench --all` skips methods with a required parameter."""

    def check(self, name, value):
        if (isinstance(value, (list, tuple)) and value) or (isinstance(value, str) and value):
            return value
        raise UserError(f"{name} must be a non-empty list of phrases that must appear (CLI: "
                         f"-p {name}='[\"a\", \"b\"]'), got {value!r}")


@register("dba", description="Lexically constrained beam search with dynamic beam allocation: the phrases in "
          "constraints must appear; the beam is split into banks by constraint tokens met.", lossless=False,
          paper="Fast Lexically Constrained Decoding with Dynamic Beam Allocation for Neural Machine Translation "
          "(arXiv:1804.06609)", batched=True, temperature=0.0, family="search", params={
              "constraints": _Phrases(None, help="phrases that must appear: a list (API) or a JSON list (CLI)"),
              "num_beams": Param(4, 1, 64, help="beams per prompt (K), whatever the number of constraints"),
              "length_penalty": Param(1.0, -10.0, 10.0, help="final score = logp / length^length_penalty"),
              "num_return_sequences": Param(1, 1, 64, help="ranked hypotheses kept in .candidates"),
          })
def dba(ctx) -> Iterator[list[list[int]]]:
    p = ctx.params
    return _emit_best(ctx, dba_search(ctx, p["constraints"], p["num_beams"], p["length_penalty"],
                                      p["num_return_sequences"]))


@register("lookback", description="Look-back decoding: greedy unless the next-token distribution comes close "
          "(KL ≤ alpha) to an earlier one; then sample among the top-k by softmax(−min KL) of their continuations.",
          lossless=False, paper="Look-back Decoding for Open-Ended Text Generation (arXiv:2305.13477)",
          batched=True, temperature=1.0, family="search", params={
              "num_candidates": Param(5, 1, 64, help="k: candidates looked ahead on a repetition alarm"),
              "alpha": Param(0.6, 0.0, 100.0, help="α: alarm when min_j KL(p_t ‖ p_j) ≤ α"),
          })
def lookback(ctx) -> Iterator[list[list[int]]]:
    return lookback_search(ctx, ctx.params["num_candidates"], ctx.params["alpha"])


def _entropy_band(p: dict) -> None:
    if p["entropy_high"] <= p["entropy_low"]:
        raise UserError(f"cntp needs entropy_high > entropy_low, got {p['entropy_high']} ≤ {p['entropy_low']}")


@register("cntp", description="Cautious next token prediction: where the entropy of p is high, sample N trials "
          "up to the next punctuation and keep the one of lowest perplexity (N grows with the entropy).",
          lossless=False, paper="Cautious Next Token Prediction (arXiv:2507.03038)", temperature=1.0,
          family="search", params={
              "max_trials": Param(10, 1, 256, help="N_max: trials at the highest entropy"),
              "entropy_low": Param(0.01, 0.0, 100.0, help="H_lo: at or below it, one trial (plain sampling)"),
              "entropy_high": Param(1.5, 0.0, 100.0, help="H_hi: at or above it, N_max trials"),
          }, check=_entropy_band,
          refuses={"constraint": "each trial would need its own grammar matcher"})
def cntp(ctx) -> Iterator[list[list[int]]]:
    p = ctx.params
    return cntp_search(ctx, p["max_trials"], p["entropy_low"], p["entropy_high"])


@register("adaptive_best_of_k", description="Input-adaptive best-of-k: a total of budget × B samples split across "
          "the batch's prompts by predicted marginal reward p(1−p)^(k−1); each prompt's best by the scorer.",
          lossless=False, batched=True, temperature=1.0, family="meta",
          paper="Learning How Hard to Think: Input-Adaptive Allocation of LM Computation (arXiv:2410.04707)",
          params={
              "inner": Param("sample", help="the decoding method that draws the candidates"),
              "budget": Param(4.0, 1.0, 256.0, help="average samples per prompt (total = budget × prompts)"),
              "max_samples": Param(16, 1, 256, help="at most this many samples for one prompt"),
              "predictor": _NameOrCallable("confidence", choices=("confidence",),
                                           help="p̂(prompt): 'confidence' = exp(−entropy of the next token), "
                                           "or a callable(text) -> [0, 1]"),
              "scorer": _NameOrCallable("mean_logprob", choices=("mean_logprob", "sum_logprob"), help="candidate score"),
          })
def adaptive_best_of_k_method(ctx) -> Iterator[list[list[int]]]:
    p = ctx.params
    return _emit_best(ctx, adaptive_best_of_k(ctx, p["inner"], p["budget"], p["max_samples"], p["predictor"],
                                              p["scorer"]))


@register("self_infill", description="Self-infilling code generation (needs a fill-in-the-middle model): where the "
          "model is unsure, write the suffix from a forced 'return', then infill the middle; then loop.",
          lossless=False, paper="Self-Infilling Code Generation (arXiv:2311.17972)", temperature=0.0,
          family="search", params={
              "infill_threshold": Param(0.25, 0.0, 1.0, help="τ: interrupt when max p < τ (once, before a suffix)"),
              "suffix_prompt": Param("return", help="text forced at the start of the suffix's first line"),
              "max_iters": Param(1, 0, 8, help="looping rounds: suffix left to right, then re-infill the middle"),
          }, refuses={"constraint": "its output is not produced left to right",
                      "token_healing": "its output is not produced left to right"})
def self_infill(ctx) -> Iterator[list[list[int]]]:
    p = ctx.params
    return self_infill_search(ctx, p["infill_threshold"], p["suffix_prompt"], p["max_iters"])


self_infill.supports = fim_reason  # why a model cannot run it (bench --all skips such models' methods)


@register("phi", description="φ-Decoding: step-level beam search (steps end at a newline) choosing steps by "
          "foresight rollouts — advantage and cluster agreement — with in-width and in-depth pruning.",
          lossless=False, temperature=0.6, family="search",
          paper="φ-Decoding: Adaptive Foresight Sampling for Balanced Inference-Time Exploration and "
          "Exploitation (arXiv:2503.13288)", params={
              "num_beams": Param(4, 1, 64, help="M: step beams"),
              "num_rollouts": Param(4, 1, 64, help="N: next steps sampled per beam"),
              "max_steps": Param(8, 1, 64, help="at most this many steps before the final completion"),
          }, refuses={"constraint": "every rollout would need its own grammar matcher"})
def phi(ctx) -> Iterator[list[list[int]]]:
    p = ctx.params
    return _emit_best(ctx, [phi_decoding(ctx, p["num_beams"], p["num_rollouts"], p["max_steps"])])


_SUPERPOSED = {
    "num_drafts": Param(3, 1, 64, help="k: drafts kept"),
    "num_tokens": Param(9, 1, 1024, help="n: top tokens of the one distribution each draft may take"),
    "alpha": Param(0.54, 0.0, 1.0, help="α: weight of the n-gram log-probability"),
    "ngram_corpus": Param("train", choices=("train", "prompt"), help="where the n-gram counts come from"),
    "ngram_chars": Param(200_000, 1, 100_000_000, help="characters of the training split counted"),
}


@register("superposed", description="Superposed decoding: k drafts from one forward pass per token — the drafts' "
          "last-token embeddings superposed, extensions scored by the LM and n-gram tables; drafts in .candidates.",
          paper="Superposed Decoding: Multiple Generations from a Single Autoregressive Inference Pass "
          "(arXiv:2405.18400)", lossless=False, temperature=0.06, family="search", params=_SUPERPOSED,
          ignores=WARPER_PARAMS + PENALTY_PARAMS,
          ignores_why="it scores its drafts from the raw logits at its temperature, top num_tokens and n-gram tables",
          refuses={"constraint": "the drafts share one cache position",
                   "token_healing": "it reads the raw logits, not the processors"})
def superposed(ctx) -> Iterator[list[list[int]]]:
    p = ctx.params
    return _emit_best(ctx, [superposed_search(ctx, p["num_drafts"], p["num_tokens"], p["alpha"],
                                              p["ngram_corpus"], p["ngram_chars"])])


@register("autodeco", description="AutoDeco: heads on the frozen model predict each token's temperature and top-p; "
          "sample from top-P̂ of softmax(l/T̂) (shipped heads: builtin:pyco).", lossless=False,
          paper="The End of Manual Decoding: Towards Truly End-to-End Language Models (arXiv:2510.26697)",
          batched=True, temperature=1.0, family="decoding", ignores=("temperature",) + WARPER_PARAMS,
          ignores_why="it predicts its own temperature and top-p per token with its heads", params={
              "heads": Param("", help="safetensors file of the heads ('' = the shipped ones for builtin:pyco)"),
          })
def autodeco(ctx) -> Iterator[list[list[int]]]:
    from ..search.autodeco import autodeco as autodeco_loop
    from ..search.autodeco import load_heads

    p = ctx.params
    return autodeco_loop(ctx, load_heads(ctx.lm, p["heads"] or None))


def _autodeco_reason(lm) -> str | None:
    from ..search.autodeco import DEFAULT_HEADS, hidden_size

    return None if hidden_size(lm) == 384 and lm.vocab_size == 8192 and DEFAULT_HEADS.is_file() else \
        f"autodeco's shipped heads are for builtin:pyco; {lm.name} needs heads= trained for it"


autodeco.supports = _autodeco_reason
