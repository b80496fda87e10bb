"""decodelab bench: side-by-side benchmark of decoding methods (suites, protocol, reports)."""
