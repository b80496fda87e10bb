import numpy as np

from decodelab.image.data import LEVELS, dequantise, pool_pixels, quantise, token_grids, upsample


def test_quantisation_round_trips():
    tokens = np.arange(LEVELS)
    assert (quantise(dequantise(tokens)) == tokens).all()
    assert quantise(np.arange(17)).min() == 0 and quantise(np.arange(17)).max() == LEVELS - 1
    # t = floor(v·K/17): the bins partition 0..16
    assert quantise(np.array([0, 2, 3, 16])).tolist() == [0, 0, 1, 7]


def test_grids_are_consistent():
    t8, y8 = token_grids("train", 8)
    t16, y16 = token_grids("train", 16)
    t4, _ = token_grids("train", 4)
    assert t8.shape[1:] == (8, 8) and t16.shape[1:] == (16, 16) and t4.shape[1:] == (4, 4)
    assert (y8 == y16).all() and (upsample(t8) == t16).all()
    # MuLo-SD's drafter for 16×16 is the 8×8 model: pooling the 16×16 grid gives the 8×8 grid back
    assert (quantise(pool_pixels(dequantise(t16))) == t8).all()
    assert len(token_grids("val", 8)[1]) == 297 and len(y8) == 1500
