"""Test doubles: a byte tokenizer and tiny randomly initialised models of several architectures."""

from __future__ import annotations

from functools import cache, lru_cache

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from decodelab.model import LM

SPECIALS = ["<eos>", "<pad>"]
VOCAB = 256 + len(SPECIALS)
EOS, PAD = 256, 257


@cache
def byte_tokenizer():
    """Byte-level tokenizer with no merges: token id = byte value, then <eos>, <pad>."""
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda c: _byte_of(c))
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({s: 256 + i for i, s in enumerate(SPECIALS)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>",
                                   clean_up_tokenization_spaces=False)


def _byte_of(ch: str) -> int:
    table = {c: b for b, c in enumerate(_bytes_to_unicode())}
    return table[ch]


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def tiny_config(arch: str, **overrides):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    common = dict(vocab_size=VOCAB, eos_token_id=EOS, pad_token_id=PAD, bos_token_id=EOS)
    if arch == "llama":
        cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=256, **common)
    elif arch == "qwen2":
        cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=1, max_position_embeddings=256, **common)
    elif arch == "gpt2":
        cfg = GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, **common)
    else:
        raise ValueError(arch)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    types = getattr(cfg, "layer_types", None)  # derived from num_hidden_layers at construction
    if types is not None and "layer_types" not in overrides and len(types) != cfg.num_hidden_layers:
        cfg.layer_types = [types[0]] * cfg.num_hidden_layers
    return cfg


ARCHS = ("llama", "qwen2", "gpt2")


def tiny_lm(arch: str = "llama", seed: int = 0, attn: str = "sdpa", **overrides) -> LM:
    """A tiny random model. Logits are sharpened (scaled init) so sampling tests see peaked p."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(arch, **overrides)
    cfg._attn_implementation = attn
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head.mul_(8.0 / head.std())
    return LM(model, byte_tokenizer(), name=f"tiny-{arch}")


def soft_lm(arch: str = "llama", seed: int = 0, scale: float = 0.15, **overrides) -> LM:
    """A tiny model whose head is scaled down by `scale`: spread-out next-token distributions."""
    lm = tiny_lm(arch, seed=seed, **overrides)
    with torch.no_grad():
        lm.model.get_output_embeddings().weight.mul_(scale)
    return lm


def noisy_copy(lm: LM, noise: float, seed: int = 0) -> LM:
    """lm's architecture and weights plus Gaussian noise (`noise` × each tensor's std): a draft that
    agrees with lm often but not always."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(lm.model.config).eval()
    model.load_state_dict(lm.model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * p.std() * torch.randn(p.shape, generator=gen))
    return LM(model, lm.tokenizer, name=f"{lm.name}-noisy")


# Varied short prompts (code, prose, repetition) shared by the per-method exactness tests.
MANY_PROMPTS = ["def f(x):", "hello world", "a", "import os\nimport sys\n", "class Foo(object):\n    pass",
                "abcabcabcabcabcabc", "the cat sat on the mat. the cat sat on the", "for i in range(10):\n",
                "1, 2, 3, 4, 5, 6,", "x = [0] * 8\n", "if a == b:\n    return", "Once upon a time",
                "SELECT * FROM t WHERE", "<html><body>", "zzzzzzzz", "The quick brown fox", "# comment\n",
                "while True:\n    pass\n", "foo(bar(baz(", "lorem ipsum dolor sit amet", "{'a': 1, 'b': 2}",
                "return x + y"]


def context(lm: LM, ids: list[int], method: str, seed: int | None = None, max_new_tokens: int = 16, **params):
    """The engine's Context for one row of `method` (parameters checked as generate checks them), so a
    test can drive a proposer or `speculative_loop` directly."""
    from decodelab.engine import Context
    from decodelab.methods import get
    from decodelab.processors import Sampler
    from decodelab.stats import Stats

    params = get(method).check_params(params)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return Context(lm, [list(ids)], params, Sampler(params, prompt_len=len(ids)), gen, max_new_tokens, Stats())



def rule_lm(next_token, seed: int = 0) -> LM:
    """A tiny llama whose greedy next token is `next_token(ids, positions)` ([B, n] → [B, n] ids):
    logits are +10 there and −10 elsewhere, whatever the weights say."""
    lm = tiny_lm("llama", seed=seed)
    seen = {}

    def keep_inputs(module, args, kwargs):
        seen["ids"], seen["positions"] = kwargs["input_ids"], kwargs["position_ids"]

    def scripted(module, args, out):
        n = out.shape[1]
        best = next_token(seen["ids"][:, -n:], seen["positions"][:, -n:])
        logits = torch.full(out.shape, -10.0, dtype=out.dtype)
        return logits.scatter_(-1, best[..., None], 10.0)

    lm.model.register_forward_pre_hook(keep_inputs, with_kwargs=True)
    lm.model.get_output_embeddings().register_forward_hook(scripted)
    return lm
