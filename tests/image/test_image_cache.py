"""The slot KV cache (image/cache.py): cached and recomputed decoding give the same tokens.

Two-layer random models, so that a stale or wrongly masked cached state changes the logits of
later layers. Raster, SJD, NAR and LPD are exact (a fed token never gains context later); ZipAR's
cached state is frozen when fed, which equals recomputation only for a one-layer model (its keys
and values depend on the token and position alone) — so on one layer it must match too, which
checks the cache's visibility rules, and with window s = W it must equal raster decoding.
"""

import pytest
from conftest import tiny_image_lm

import decodelab

LABELS = list(range(10))
SAMPLING = [dict(temperature=0), dict(temperature=1.0), dict(cfg_scale=2.0, temperature=0.8, top_k=4)]


def _both(lm, method, sampling, **params):
    runs = [decodelab.generate_images(lm, LABELS, method=method, seeds=3, kv_cache=flag, **sampling, **params)
            for flag in (False, True)]
    return [[g.token_ids for g in run] for run in runs], [[g.stats["forward_passes"] for g in run] for run in runs]


@pytest.mark.parametrize("sampling", SAMPLING)
@pytest.mark.parametrize("method,params,variant", [
    ("raster", {}, "raster"), ("sjd", {"window": 6}, "raster"), ("sjd", {"window": 16, "init": "sample_horizon"}, "raster"),
    ("sjd", {"window": 6, "init": "repeat_horizon", "update": "reinit"}, "raster"),
    ("nar", {}, "nar"), ("lpd", {"steps": 8}, "lpd"), ("lpd", {"steps": 8, "cfg_schedule": "linear"}, "lpd")])
def test_cached_equals_recomputed(method, params, variant, sampling):
    lm = tiny_image_lm(variant=variant, sharpen=4.0, layers=2)
    if variant != "raster":  # the variant models are found beside the raster model
        lm.state[f"image:{variant}"] = lm
    (plain, cached), (passes, cached_passes) = _both(lm, method, sampling, **params)
    assert plain == cached and passes == cached_passes


@pytest.mark.parametrize("sampling", SAMPLING)
@pytest.mark.parametrize("params", [{"tau": 0.3}, {"tau": 0.2, "radius": 0}])  # 0.2: a third rejected, many islands
def test_mulo_cached_equals_recomputed(params, sampling):
    # two-layer target and drafter: a stale drafter row, a verify pass that skipped the slots
    # after a rejected draft or an island pass letting accepted tokens see rejected drafts
    # would change later tokens
    lm = tiny_image_lm(sharpen=4.0, layers=2)
    lm.state["image:drafter"] = tiny_image_lm(4, 4, sharpen=4.0, layers=2, seed=1)
    runs = [decodelab.generate_images(lm, LABELS, method="mulo", seeds=3, kv_cache=flag, **sampling, **params)
            for flag in (False, True)]
    plain, cached = ([(g.token_ids, g.stats["forward_passes"], g.stats["resampled"]) for g in run] for run in runs)
    assert plain == cached
    if sampling.get("temperature") != 0:
        assert sum(r for _, _, r in cached) > 0  # islands were resampled


@pytest.mark.parametrize("params", [{"window": 2}, {"window": 5}, {"min_window": 1}, {"min_window": 3},
                                    {"window": 2, "placeholder": "above"}, {"min_window": 3, "placeholder": "above"}])
def test_zipar_cache_masks_match_recomputation_on_one_layer(params):
    lm = tiny_image_lm(sharpen=4.0)
    for sampling in SAMPLING[1:]:
        (plain, cached), (passes, cached_passes) = _both(lm, "zipar", sampling, **params)
        assert plain == cached and passes == cached_passes


def test_cached_zipar_full_window_is_raster():
    lm = tiny_image_lm(sharpen=4.0, layers=2)
    for sampling in SAMPLING:
        zipar = decodelab.generate_images(lm, LABELS, method="zipar", seeds=3, window=8, **sampling)
        raster = decodelab.generate_images(lm, LABELS, method="raster", seeds=3, kv_cache=False, **sampling)
        assert [g.token_ids for g in zipar] == [g.token_ids for g in raster]


def test_kv_cache_flag_is_checked():
    with pytest.raises(ValueError, match="kv_cache"):
        decodelab.generate_image(tiny_image_lm(), 3, kv_cache="yes")


def test_timing_rows_compare_cache_off_and_on():
    from decodelab.image.timing import measure

    row = measure(tiny_image_lm(sharpen=4.0, layers=2), "sjd", {"window": 4}, repeats=1, seed=0)
    assert row["same_tokens"] and row["s_per_image_cached"] > 0 and row["s_per_image_recompute"] > 0
