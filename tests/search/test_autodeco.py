"""AutoDeco (search/autodeco.py; Wang et al., arXiv:2510.26697): each token is drawn from top-P̂ of
softmax(l / T̂), with T̂ and P̂ the heads' outputs on that position's hidden state — checked against a
reference loop written here (transformers' full forward, transformers' temperature and top-p warpers,
the same random draws), per row of a batch; the shipped pyco heads; training lowers the losses."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

import decodelab
from decodelab import UserError
from decodelab.search.autodeco import DEFAULT_HEADS, AutoDecoHeads, load_heads, train
from tests.fakes import soft_lm, tiny_lm

PROMPTS = ["def f(x):", "hello world", "abc"]


def random_heads(d: int, path, seed: int = 0) -> AutoDecoHeads:
    """Heads with spread-out outputs (T̂ over most of (0, 2), P̂ over most of (0, 1)), saved to path."""
    torch.manual_seed(seed)
    heads = AutoDecoHeads(d)
    with torch.no_grad():
        for mlp in (heads.temperature, heads.top_p):
            mlp[2].weight.mul_(20.0)
    save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, str(path))
    return heads.eval()


def reference(lm, heads, prompt: str, seed: int, n: int) -> tuple[list[int], list[float], list[float]]:
    """tokens, T̂ per step, log Z_t per step: full forward each step, transformers' warpers."""
    ids, gen, temps, log_z = lm.encode(prompt), torch.Generator().manual_seed(seed), [], []
    with torch.no_grad():
        for _ in range(n):
            out = lm.model(torch.tensor([ids]), output_hidden_states=True)
            logits, h = out.logits[:, -1].float(), out.hidden_states[-1][:, -1].float()
            t_hat, p_hat = heads(h, logits)
            t = max(float(t_hat), 0.01)
            warped = TopPLogitsWarper(float(p_hat))(None, TemperatureLogitsWarper(t)(None, logits.clone()))
            kept = torch.isfinite(warped[0])
            log_z.append(float((logits[0].double().softmax(-1)[kept] ** (1 / t)).sum().log()))
            ids.append(int(torch.multinomial(warped.softmax(-1), 1, generator=gen)))
            temps.append(t)
    return ids[len(lm.encode(prompt)):], temps, log_z


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tokens_are_drawn_from_top_p_hat_at_t_hat(arch, tmp_path):
    lm = soft_lm(arch)
    heads = random_heads(lm.model.config.hidden_size, tmp_path / "heads.safetensors")
    gens = decodelab.generate_batch(lm, PROMPTS, method="autodeco", heads=str(tmp_path / "heads.safetensors"),
                                    max_new_tokens=8, seed=5)
    temps = []
    for b, (prompt, g) in enumerate(zip(PROMPTS, gens)):
        tokens, t, log_z = reference(lm, heads, prompt, 5 + b, len(g.token_ids))
        assert g.token_ids == tokens
        assert g.stats.log_z == pytest.approx(log_z, abs=2e-4)
        temps += t
    assert max(temps) - min(temps) > 0.3  # the heads' temperature does vary from token to token


def test_shipped_pyco_heads():
    assert DEFAULT_HEADS.is_file() and DEFAULT_HEADS.stat().st_size < 2_000_000
    lm = decodelab.load()
    heads = load_heads(lm)
    ids = lm.encode("def add(a, b):\n    return a + b\n\n\nclass Stack:\n    def push(self, x):\n")
    with torch.inference_mode():
        logits, hidden = lm.session().forward(ids, hidden=True)
        t_hat, p_hat = heads(hidden[-1][0].float(), logits[0])
    assert ((0 < t_hat) & (t_hat < 2)).all() and ((0 < p_hat) & (p_hat < 1)).all()
    assert t_hat.std() > 0.01  # trained heads are not a constant
    a = decodelab.generate(lm, "def add(a, b):\n", method="autodeco", max_new_tokens=12, seed=1)
    b = decodelab.generate(lm, "def add(a, b):\n", method="autodeco", max_new_tokens=12, seed=1)
    assert a.token_ids == b.token_ids and len(a.stats.log_z) == len(a.token_ids)


def test_bad_input(tmp_path):
    lm = tiny_lm("llama")
    with pytest.raises(UserError, match="hidden size"):  # the shipped heads are pyco's
        decodelab.generate(lm, "a", method="autodeco", max_new_tokens=2)
    with pytest.raises(UserError, match="not found"):
        decodelab.generate(lm, "a", method="autodeco", max_new_tokens=2, heads=str(tmp_path / "none"))
    (tmp_path / "junk").write_text("not weights")
    with pytest.raises(UserError, match="not an autodeco heads file"):
        decodelab.generate(lm, "a", method="autodeco", max_new_tokens=2, heads=str(tmp_path / "junk"))
    with pytest.raises(UserError, match="predicts its own temperature"):
        decodelab.generate(lm, "a", method="autodeco", max_new_tokens=2, temperature=0.5)
    assert decodelab.methods()["autodeco"].run.supports(lm) is not None


def test_training_lowers_both_losses(tmp_path):
    lm = tiny_lm("llama")
    texts = ["def f(x):\n    return x + 1\n" * 8, "hello world, hello there\n" * 8]
    log = tmp_path / "log.jsonl"
    train(lm, texts, texts, steps=100, batch=64, seq_len=32, windows=6, lr=3e-3, log=log)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert lines[-1]["loss_t"] < lines[0]["loss_t"] and lines[-1]["loss_p"] < lines[0]["loss_p"]
    assert lines[-1]["valid_nll_that"] < lines[0]["valid_nll_that"]
