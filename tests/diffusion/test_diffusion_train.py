"""The pyco-diffusion trainer's pieces (diffusion/train.py) on tiny models: AR weights carried over, prompt rows."""

from __future__ import annotations

import torch

from decodelab.diffusion import train


def test_ar_to_diffusion_carries_every_weight(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    ar = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=True, rope_theta=500.0)).eval()
    ar.save_pretrained(tmp_path)
    model = train.ar_to_diffusion(tmp_path, mask_token_id=3, max_len=64).eval()
    assert model.config.logit_shift and model.config.num_key_value_heads == 2 and model.config.rope_theta == 500.0
    one = torch.tensor([[7]])  # one token: bidirectional and causal attention coincide
    torch.testing.assert_close(model(input_ids=one).logits, ar(input_ids=one).logits, atol=1e-5, rtol=1e-5)
    two = torch.tensor([[7, 9]])  # a second token changes position 0 only in the bidirectional model
    assert not torch.allclose(model(input_ids=two).logits[0, 1], ar(input_ids=two).logits[0, 1])


def test_maskable_rows_keep_a_prefix_in_about_half_the_rows():
    gen = torch.Generator().manual_seed(0)
    rows = train.maskable_rows(torch.zeros(400, 20, dtype=torch.long), gen)
    prefix = (~rows).sum(-1)
    assert (rows[:, 10:]).all()  # the kept prefix is at most half the window
    assert 0.3 < (prefix > 0).float().mean() < 0.55  # half the rows may keep a prefix (minus those drawing 0)
    assert all(not rows[i, : prefix[i]].any() for i in range(400))  # the unmaskable part is a prefix


def test_validate_reports_a_perfect_oracle(monkeypatch):
    class Oracle(torch.nn.Module):
        """Predicts every token right: it reads the answer from a stream it was given."""

        def __init__(self, truth):
            super().__init__()
            self.truth = truth

        def forward(self, input_ids):
            rows = self.truth[: input_ids.shape[0]]
            self.truth = self.truth[input_ids.shape[0]:]
            return type("O", (), {"logits": torch.nn.functional.one_hot(rows, 11).float() * 50})()

    stream = torch.randint(4, 11, (16 * 8,))
    windows = stream.view(-1, 8)
    oracle = Oracle(torch.cat([windows[:8]] * len(train.EVAL_RATIOS)))  # validate reads the first 2 × 4 windows
    out = train.validate(oracle, stream, 8, mask_id=3, batches=2, batch=4)
    assert all(out[f"valid_acc@{r}"] == 1.0 and out[f"valid_ce@{r}"] < 1e-6 for r in train.EVAL_RATIOS)
