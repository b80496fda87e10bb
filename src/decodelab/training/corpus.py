"""The Python standard library as a corpus, split deterministically into train / valid / test.

A file's split is fixed by a SHA-256 of its path relative to the stdlib root (≈ 90 / 5 / 5), so the
test files that benchmark suites draw prompts from are never trained on.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class SourceFile:
    relpath: str
    text: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def split_of(relpath: str) -> str:
    """The split a file belongs to: a hash bucket in [0, 100) → train < 90 ≤ valid < 95 ≤ test."""
    bucket = int(hashlib.sha256(relpath.encode()).hexdigest(), 16) % 100
    return "train" if bucket < 90 else "valid" if bucket < 95 else "test"


def iter_paths(root: Path | None = None) -> list[Path]:
    """All stdlib `.py` files (site-packages excluded), sorted by relative path."""
    root = root or stdlib_root()
    paths = [p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts]
    return sorted(paths, key=lambda p: p.relative_to(root).as_posix())


def load_split(split: str, root: Path | None = None) -> list[SourceFile]:
    """Files of one split that decode as UTF-8 (a handful of test fixtures do not)."""
    if split not in SPLITS:
        raise UserError(f"split must be one of {SPLITS}, got {split!r}")
    root = root or stdlib_root()
    out = []
    for path in iter_paths(root):
        rel = path.relative_to(root).as_posix()
        if split_of(rel) != split:
            continue
        try:
            out.append(SourceFile(rel, path.read_bytes().decode("utf-8")))
        except UnicodeDecodeError:
            continue
    return out


def describe(root: Path | None = None) -> dict[str, dict[str, int]]:
    """File and character counts per split."""
    stats = {}
    for split in SPLITS:
        files = load_split(split, root)
        stats[split] = {"files": len(files), "chars": sum(len(f.text) for f in files)}
    return stats
