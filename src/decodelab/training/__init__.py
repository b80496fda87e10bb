"""Reproducible pipeline for decodelab's embedded models: corpus, tokenizer, training.

The corpus is the running interpreter's standard library (PSF licence), split by a hash of each
file's relative path so the split never depends on file order or on the Python build.
"""
