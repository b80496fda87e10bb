"""One word-level tokenizer for every task, shared by the AR and the diffusion task models.

Every word of a prompt or answer (a number 0–99, a name, a Latin-square symbol, a keyword, a
punctuation mark) is one token, and decoding joins tokens with single spaces, so the decoded
completion is exactly the answer string. The special tokens include `<|mask|>` for the
masked-diffusion model; the AR model simply never sees it.
"""

from __future__ import annotations

from pathlib import Path

from .generators import NAMES, SYMBOLS, TASKS

BOS, EOS, PAD, MASK, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|mask|>", "<|unk|>"
SPECIALS = (BOS, EOS, PAD, MASK, UNK)
KEYWORDS = (*(t for t in TASKS if t != "latin4"), "latin", "at", "with", ":", "=", "|", "_")


def vocabulary() -> list[str]:
    return [*SPECIALS, *KEYWORDS, *(str(i) for i in range(100)), *NAMES, *SYMBOLS]


def build(max_length: int = 128):
    """The tokenizer as a transformers `PreTrainedTokenizerFast` (saved next to each task model)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   mask_token=MASK, unk_token=UNK, model_max_length=max_length,
                                   clean_up_tokenization_spaces=False)


def save(out_dir: Path, max_length: int = 128) -> None:
    build(max_length).save_pretrained(out_dir)
