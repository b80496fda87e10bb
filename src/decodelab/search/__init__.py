"""Search, layer-contrast and meta-generation decoding (registered in methods/search.py).

- beam.py — beam search with the patience factor, every processor composed (transformers parity).
"""
