"""Run the mutant gallery (tests/mutants/gallery.py): every mutant must be killed by each test it names.

    python tests/mutants/run.py                  # all mutants, 2 at a time
    python tests/mutants/run.py --only pld-continuation-shifted --jobs 1
    python tests/mutants/run.py --baseline       # first check the named tests pass on unmutated src
    python tests/mutants/run.py --power          # estimate the distribution tests' power per mutant

Each mutant runs in its own copy of `src/` (the embedded model weights are linked, not copied), with
PYTHONPATH pointing at the copy, so the installed or working-tree package is never touched. Exit
status 1 when a mutant survives (some named test passed) or is stale (its snippet is not found exactly
once), 0 when every mutant is killed by every test it names.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gallery import MUTANTS, Mutant  # noqa: E402


class StaleMutant(Exception):
    pass


def make_copy(workdir: Path, mutant: Mutant | None) -> Path:
    """A copy of src/ under workdir with the mutant applied; returns the copy's src directory."""
    src = workdir / "src"
    builtin = ROOT / "src" / "decodelab" / "builtin"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "builtin"))
    os.symlink(builtin, src / "decodelab" / "builtin")
    if mutant is not None:
        apply(src.parent, mutant)
    return src


def apply(root: Path, mutant: Mutant) -> None:
    for rel, old, new in mutant.edits():
        path = root / rel
        if not path.exists():
            raise StaleMutant(f"{mutant.name}: {rel} does not exist")
        text = path.read_text()
        count = text.count(old)
        if count != 1:
            raise StaleMutant(f"{mutant.name}: snippet found {count} times in {rel} (need exactly 1): "
                              f"{old.strip()!r}")
        path.write_text(text.replace(old, new))


def _env(src: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
            "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def run_tests(src: Path, tests: tuple[str, ...], timeout: int) -> tuple[set[str], str]:
    """Run the tests against the copy at src; return the node ids reported failed (or errored).
    A named test without parameters counts as failed when any of its parametrisations failed."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:xdist", "-p", "no:cacheprovider",
           "--tb=no", *tests]
    out = subprocess.run(cmd, cwd=ROOT, env=_env(src), capture_output=True, text=True, timeout=timeout)
    log = out.stdout + out.stderr
    failed = set(re.findall(r"^(?:FAILED|ERROR) (\S+)", log, flags=re.M))
    return failed, log


def check_import(src: Path) -> None:
    """The copy, not the installed package, is what the tests import."""
    code = "import decodelab; print(decodelab.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(src), capture_output=True, text=True)
    where = out.stdout.strip()
    if not where.startswith(str(src)):
        raise SystemExit(f"the tests would import decodelab from {where or out.stderr}, not from the copy {src}")


def run_mutant(mutant: Mutant, timeout: int) -> dict:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        try:
            src = make_copy(Path(tmp), mutant)
        except StaleMutant as exc:
            return {"name": mutant.name, "status": "stale", "detail": str(exc), "seconds": 0.0}
        failed, log = run_tests(src, mutant.tests, timeout)
    killers = [t for t in mutant.tests if any(f == t or f.startswith(t + "[") for f in failed)]
    survivors = [t for t in mutant.tests if t not in killers]
    status = "killed" if not survivors else "survived"
    return {"name": mutant.name, "status": status, "killed_by": killers,
            "survived": survivors, "seconds": round(time.perf_counter() - t0, 1),
            "detail": "" if status == "killed" else log[-3000:]}


def baseline(mutants: list[Mutant], timeout: int) -> None:
    tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
    with tempfile.TemporaryDirectory(prefix="mutant-baseline-") as tmp:
        src = make_copy(Path(tmp), None)
        check_import(src)
        failed, log = run_tests(src, tests, timeout)
    if failed:
        raise SystemExit(f"named tests fail without any mutant: {sorted(failed)}\n{log[-3000:]}")
    print(f"baseline: {len(tests)} named tests pass on unmutated src", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="mutant names (default: all)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per mutant's test run")
    ap.add_argument("--baseline", action="store_true", help="first check the named tests pass unmutated")
    ap.add_argument("--power", action="store_true", help="estimate the distribution tests' power instead")
    ap.add_argument("--power-samples", type=int, default=2000, help="fresh samples per estimate (--power)")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    unknown = set(args.only or []) - {m.name for m in MUTANTS}
    if unknown:
        raise SystemExit(f"unknown mutants: {sorted(unknown)}")
    if args.power:
        from power import report_power

        return report_power(chosen, make_copy, _env, ROOT, args.power_samples)
    if args.baseline:
        baseline(chosen, args.timeout)
    else:
        with tempfile.TemporaryDirectory(prefix="mutant-import-") as tmp:
            check_import(make_copy(Path(tmp), None))
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda m: run_mutant(m, args.timeout), chosen))
    bad = 0
    for r in results:
        line = f"{r['status']:>8}  {r['name']:<34} {r['seconds']:>6}s  "
        line += ", ".join(r.get("killed_by", [])) if r["status"] == "killed" else r["detail"].splitlines()[0]
        print(line)
        if r["status"] != "killed":
            bad += 1
            print(f"    not killed by: {r.get('survived')}\n{r['detail']}")
    print(json.dumps({"mutants": len(results), "killed": len(results) - bad}))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
