"""What a sweep costs: a default sweep (6 points x 5 seeds) end to end, against its target.

Runs `subliminal-mnist sweep NAME` in a fresh process with an empty compile cache and
an empty output folder, then prints each point's wall time (from its JSON line), the
time end to end and its ratio to the target. The first point trains the teachers; a
sweep that changes only the students (init_perturbation, heads, loss, noise,
student_epochs) reuses them at every later point, which the per-point times show.

Target on a 2-core CPU: a default 6-point x 5-seed sweep (teacher, aux-only student,
cross-model control) in under 10 minutes.

    python benchmarks/sweep_speed.py                        # sweep init_perturbation
    python benchmarks/sweep_speed.py --sweep teacher_epochs
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

import jax
from demo_speed import time_command

from subliminal_mnist import data, sweep

TARGET_SECONDS = 600.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default="init_perturbation", choices=tuple(sweep.SWEEPS))
    args = parser.parse_args()
    if data.load().is_sample:
        sys.exit("benchmark needs full MNIST: set SUBLIMINAL_MNIST_DIR")

    with tempfile.TemporaryDirectory() as tmp:
        wall = time_command(tmp, "sweep", args.sweep)
        lines = [json.loads(line) for line in pathlib.Path(tmp, f"sweep_{args.sweep}.jsonl").read_text().splitlines()]
    seeds = lines[0]["config"]["seeds"]
    print(f"sweep {args.sweep}: {len(lines)} points x {seeds} seeds, {jax.devices()[0].device_kind}")
    for line in lines:
        aux = line["conditions"]["student_aux"]["mean"]
        print(f"  point {str(line['value']):>14}   {line['wall_seconds']:7.1f} s   aux-only {aux:.3f}")
    print(f"  end to end               {wall:7.1f} s (empty compile cache, MNIST loading included)")
    print(f"  ratio to the target      {wall / TARGET_SECONDS:7.2f}  (target: {TARGET_SECONDS:.0f} s; below 1 meets it)")


if __name__ == "__main__":
    main()
