"""Fuzz every NightSeg reader with many seeded mutated inputs and print the counts per reader.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/bench_fuzz.py [--examples 200] [--seed 1]

Uses the cases of ``tests/fuzz_cases.py`` (the fast test lane runs 25 per reader with seed 0). Prints, per
reader: inputs tried, accepted, refused with a one-line UserError, documented skips (``KNOWN_OPEN``) and
failures (any other exception), then the first failures in full. Exit code 1 when any input failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fuzz_cases import READERS, Seeds, fuzz


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200, help="inputs per reader (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="mutation seed (default 1; the tests use 0)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    import torch

    torch.set_num_threads(1)
    failures = []
    print("| reader | inputs | accepted | refused (one line, exit 2) | documented skip | tracebacks | seconds |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="nightseg-fuzz-") as folder:
        seeds = Seeds(Path(folder) / "seeds")
        for reader in READERS:
            start = time.perf_counter()
            r = fuzz(reader, args.examples, args.seed, seeds, Path(folder) / "work")
            print(f"| {reader} | {r.tried} | {r.accepted} | {r.refused} | {r.known} | {len(r.failures)} "
                  f"| {time.perf_counter() - start:.0f} |", flush=True)
            failures += [f"{reader} {f}" for f in r.failures]
    for failure in failures[:5]:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
