"""ZipAR-aware training of the raster model (image/train.py --zipar-windows): the training forward
must see each token exactly as the cached fixed-window sampler does."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_image_lm

import decodelab
from decodelab.image.diagnose import zipar_teacher_ce
from decodelab.image.model import image_spec
from decodelab.image.train import _grid_tensors, _zipar_layout, batch_loss, train, zipar_logits
from decodelab.image.zipar import zipar_schedule


def _layout_ce(lm, x, y, window, rule):
    spec = image_spec(lm)
    with torch.no_grad():
        logits, targets = zipar_logits(lm.model, spec, x, y + spec.levels, [window] * len(y), rule)
    full = F.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
    ce = full[:, : spec.n].clone()
    extras = _zipar_layout(spec.height, spec.width, window, rule)[1]
    for k, (p, _) in enumerate(extras):
        ce[:, p] = full[:, spec.n + k]
    return ce, extras


@pytest.mark.parametrize("window,rule", [(2, "above"), (3, "above"), (2, "latest"), (5, "above")])
def test_training_layout_equals_the_cached_sampler_per_token(window, rule):
    """Teacher-forced through zipar.zipar itself (KV cache, frozen states, placeholders) vs one
    training forward under zipar_training_layout: the same CE for every token of every image, on
    a 2-layer random model (where frozen states differ from recomputation)."""
    lm = tiny_image_lm(layers=2, sharpen=4.0, seed=1)
    x, y = _grid_tensors("val", 8)
    x, y = x[:6], y[:6]
    sampler, _ = zipar_teacher_ce(lm, x, y, window, rule)
    layout, extras = _layout_ce(lm, x, y, window, rule)
    assert len(extras) == 6  # every row i >= 2 starts before the row above is complete (s < W)
    assert torch.allclose(sampler, layout, atol=1e-4)
    recomputed, _ = zipar_teacher_ce(lm, x, y, window, rule, kv_cache=False)
    gap, error = (recomputed - layout).abs().max(), (sampler - layout).abs().max()
    assert gap > 20 * error  # the test can tell the two semantics apart


def test_full_window_is_plain_raster_training():
    lm = tiny_image_lm(layers=2, seed=2)
    spec = image_spec(lm)
    x, y = _grid_tensors("val", 8)
    x, y = x[:4], y[:4]
    import random

    with torch.no_grad():
        plain = batch_loss(lm.model, spec, x, y, random.Random(0))
        zipped = batch_loss(lm.model, spec, x, y, random.Random(0), ([3], 0.0))  # share 0: every sample raster
        full = batch_loss(lm.model, spec, x, y, random.Random(0), ([8], 1.0))  # s = W
    assert torch.allclose(plain, zipped) and torch.allclose(plain, full)
    attend, extras = _zipar_layout(8, 8, 8)
    assert extras == [] and torch.equal(attend[:64, :64], torch.tril(torch.ones(64, 64, dtype=torch.bool)))


@pytest.mark.parametrize("h,w,s", [(16, 16, 4), (16, 16, 6), (8, 8, 2), (8, 8, 8)])
def test_schedule_takes_the_fixed_window_pass_count(h, w, s):
    t = zipar_schedule(h, w, s)
    assert max(t) + 1 == (2 * w + (h - 2) * s if s < w else h * w)
    assert all(t[i * w + c] < t[i * w + c + 1] for i in range(h) for c in range(w - 1))


def test_train_logs_the_zipar_validation_and_refuses_other_variants(tmp_path):
    summary = train(4, "raster", tmp_path, steps=2, batch_size=4, eval_every=1, zipar_windows=[2], zipar_share=0.5)
    log = [json.loads(line) for line in (tmp_path / "training_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all("val_loss_zipar6" in row for row in log)
    assert summary["zipar_windows"] == [2] and "--zipar-windows 2 --zipar-share 0.5" in summary["command"]
    with pytest.raises(ValueError, match="raster variant only"):
        train(4, "nar", tmp_path, steps=1, zipar_windows=[2])


def test_zipar_weights_need_the_trained_model_beside_it(digits):
    from decodelab import ModelError, generate_image

    with pytest.raises(ModelError, match="no 'zipar' model beside it"):
        generate_image(digits, 3, method="zipar", seed=0, weights="zipar")
    with pytest.raises(decodelab.UserError):
        generate_image(digits, 3, method="zipar", seed=0, weights="other")
