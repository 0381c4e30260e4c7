"""What the defenses' table costs: `subliminal-mnist defend SETTING` end to end, against its target.

Runs the command in a fresh process with an empty compile cache and an empty output folder,
then prints each row's wall time (from its JSON line), the time end to end and its ratio to
the issue's target. The first row of a run trains what every row shares (MNIST: the teachers;
owl: the bases, teachers and number lists), so it is the longest.

Targets on a 2-core CPU: `defend mnist` 5 seeds under 15 minutes, `defend owl` 5 seeds under
30 minutes, and one seed of either under 3 minutes (for a class).

    python benchmarks/defend_speed.py mnist --seeds 1     # full MNIST: set SUBLIMINAL_MNIST_DIR
    python benchmarks/defend_speed.py owl --seeds 1
    python benchmarks/defend_speed.py owl                 # 5 seeds, every defense
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

import jax
from demo_speed import time_command

from subliminal_mnist import data, defenses

# (setting, seeds) -> target seconds; one seed is the class's quick look.
TARGETS = {"mnist": {5: 15 * 60, 1: 3 * 60}, "owl": {5: 30 * 60, 1: 3 * 60}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("setting", choices=defenses.SETTINGS)
    parser.add_argument("--seeds", type=int, default=defenses.SEEDS, choices=(1, defenses.SEEDS))
    args = parser.parse_args()
    if args.setting == "mnist" and data.load().is_sample:
        sys.exit("benchmark needs full MNIST: set SUBLIMINAL_MNIST_DIR")

    with tempfile.TemporaryDirectory() as tmp:
        wall = time_command(tmp, "defend", args.setting, "--seeds", str(args.seeds), outputs=("--out", tmp))
        path = pathlib.Path(tmp, f"defend_{args.setting}.jsonl")
        lines = [json.loads(line) for line in path.read_text().splitlines()]
    target = TARGETS[args.setting][args.seeds]
    print(f"defend {args.setting}: {len(lines)} rows x {args.seeds} seeds, {jax.devices()[0].device_kind}")
    for line in lines:
        print(f"  {line['defense']:<26} {line['wall_seconds']:7.1f} s")
    print(f"  {'end to end':<26} {wall:7.1f} s (empty compile cache, loading included)")
    print(f"  {'ratio to the target':<26} {wall / target:7.2f}  (target: {target:.0f} s; below 1 meets it)")


if __name__ == "__main__":
    main()
