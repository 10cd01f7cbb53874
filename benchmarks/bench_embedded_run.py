"""The README's main job, timed: `snakemake --cores 2` on the embedded dataset in a fresh clone.

    python benchmarks/bench_embedded_run.py [--cores 2] [--keep DIR]

Clones the committed HEAD into a temporary directory (nothing of this work tree leaks in), runs the whole
chain, and prints the wall time against the 10-minute budget plus each rule's duration from Snakemake's log.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 600


def rule_durations(log: str) -> list[tuple[str, float]]:
    """(rule, seconds) from Snakemake's '[timestamp]' / 'rule x:' / 'Finished jobid' lines."""
    stamp = re.compile(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]")
    started: dict[str, tuple[str, datetime]] = {}
    now, rule, out = None, None, []
    for line in log.splitlines():
        if m := stamp.match(line):
            now = datetime.strptime(re.sub(" +", " ", m.group(1)), "%a %b %d %H:%M:%S %Y")
        elif m := re.match(r"^(?:local)?rule (\w+):", line):
            rule = m.group(1)
        elif (m := re.match(r"^\s+jobid: (\d+)", line)) and rule and now:
            started[m.group(1)] = (rule, now)
        elif (m := re.search(r"Finished jobid: (\d+)", line)) and m.group(1) in started and now:
            r, t0 = started.pop(m.group(1))
            out.append((r, (now - t0).total_seconds()))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="run in this directory and keep it")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="larp-embedded-"))
    subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    t0 = time.perf_counter()
    p = subprocess.run(["snakemake", "--cores", str(args.cores)], cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        print(p.stderr[-4000:], file=sys.stderr)
        return p.returncode
    print(f"{'rule':<18}{'seconds':>9}")
    for r, s in rule_durations(p.stderr + p.stdout):
        print(f"{r:<18}{s:>9.0f}")
    print(f"\nembedded end-to-end: {wall:.0f} s = {wall / BUDGET_S:.2f} x the {BUDGET_S} s budget ({args.cores} cores)")
    for f in ("results/fvd_embedded.json", "results/rfvd_embedded.json"):
        assert (work / f).is_file(), f
    return 0


if __name__ == "__main__":
    sys.exit(main())
