"""What the defenses' table costs: `subliminal-mnist defend SETTING` end to end, against its target.

Runs the command in a fresh process with an empty compile cache and an empty output folder,
then prints each row's wall time (from its JSON line), the time end to end and its ratio to
the issue's target. The first row of a run trains what every row shares (MNIST: the teachers;
owl: the bases, teachers and number lists), so it is the longest.

For MNIST it also counts the run's matmul FLOPs analytically (as `demo_speed.py` does) and
compares the wall time with a large float32 matmul measured before and after the run: the
*floor ratio*, how far the run is from what this machine could do with that much arithmetic.

Targets on a 2-core CPU: `defend mnist` 5 seeds under 15 minutes, `defend owl` 5 seeds under
30 minutes, and one seed of either under 3 minutes (for a class).

    python benchmarks/defend_speed.py mnist --seeds 1     # full MNIST: set SUBLIMINAL_MNIST_DIR
    python benchmarks/defend_speed.py owl --seeds 1
    python benchmarks/defend_speed.py owl                 # 5 seeds, every defense, soft
    python benchmarks/defend_speed.py owl --mode hard --defenses other_init mix ...
    python benchmarks/defend_speed.py mnist --out figures # the committed table: its run is the timed one

`--out` runs in that folder instead of a temporary one (the run must find no lines of its own there,
or its time is not end to end: the benchmark refuses); the compile cache is still a fresh one.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

import jax
import numpy as np
from demo_speed import matmul_gflops, sample_flops, time_command

from subliminal_mnist import data, defense_table, defenses, experiment

# (setting, seeds) -> target seconds; one seed is the class's quick look.
TARGETS = {"mnist": {5: 15 * 60, 1: 3 * 60}, "owl": {5: 30 * 60, 1: 3 * 60}}


def mnist_flops(lines: list[dict], seeds: int, num_train: int, num_test: int) -> float:
    """Matmul FLOPs of a `defend mnist` run of `seeds` seeds, from its rows' lines (`sample_flops`; a floor).

    Every seed's teacher trains on the training set and reads the seed's noise (a cross partner
    lends its init only); a row trains three students per seed on the noise
    and evaluates them on the test set and the held-out noise; `mix` adds an unrelated teacher a
    seed (once for every share), `kl_to_start` the start's forward pass at every student step,
    `projection` the trait gradient on `trait_batch` digits at every step, and an `sgd` row's
    grid one student per rate and tuning seed.
    """
    config, settings = experiment.ExperimentConfig(seeds=seeds), defenses.MnistDefenses()
    forward, backward = sample_flops(config)
    num_noise = config.num_noise or num_train
    student = config.student_epochs * num_noise * (forward + backward)
    steps = config.student_epochs * -(-num_noise // config.batch_size)
    teacher = config.teacher_epochs * num_train * (forward + backward)
    total = seeds * (teacher + num_noise * forward)
    for line in lines:
        name = line["defense"].split(":")[0]
        per_seed = 3 * student + 4 * num_test * forward + 2 * settings.heldout_noise * forward
        if name == "kl_to_start":
            per_seed += 3 * config.student_epochs * num_noise * forward
        elif name == "projection":
            per_seed += 3 * steps * settings.trait_batch * (forward + backward)
        total += seeds * per_seed
        tuning = line.get("tuning")
        if tuning:
            total += len(tuning["tried"]) * len(tuning["seeds"]) * (student + settings.heldout_noise * forward)
    if any(line["defense"].startswith("mix") for line in lines):
        total += seeds * (teacher + num_noise * forward)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("setting", choices=defense_table.SETTINGS)
    parser.add_argument("--seeds", type=int, default=defense_table.SEEDS, choices=(1, defense_table.SEEDS))
    parser.add_argument("--mode", choices=("soft", "hard"), default="soft", help="owl: the run's mode")
    parser.add_argument("--defenses", nargs="+", default=(), help="the rows to run (default: every one)")
    parser.add_argument("--out", help="the folder to run in and keep (default: a temporary one)")
    args = parser.parse_args()
    mnist = data.load() if args.setting == "mnist" else None
    if mnist is not None and mnist.is_sample:
        sys.exit("benchmark needs full MNIST: set SUBLIMINAL_MNIST_DIR")

    command = ["defend", args.setting, "--seeds", str(args.seeds)]
    command += ["--mode", args.mode] if args.setting == "owl" else []
    command += ["--defenses", *args.defenses] if args.defenses else []
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(args.out or tmp)
        path = out / (f"defend_owl_{args.mode}.jsonl" if args.setting == "owl" else "defend_mnist.jsonl")
        if path.exists() and path.stat().st_size:
            sys.exit(f"{path} holds lines already: the run would resume, not run end to end; move it away")
        matmul_before = matmul_gflops() if mnist else None
        # The compile cache is always a fresh, temporary one: `tmp/xla`.
        wall = time_command(tmp, *command, out=str(out))
        matmul_after = matmul_gflops() if mnist else None
        lines = [json.loads(line) for line in path.read_text().splitlines()]
    target = TARGETS[args.setting][args.seeds]
    mode = f" --mode {args.mode}" if args.setting == "owl" else ""
    print(f"defend {args.setting}{mode}: {len(lines)} rows x {args.seeds} seeds, {jax.devices()[0].device_kind}")
    for line in lines:
        print(f"  {line['defense']:<26} {line['wall_seconds']:7.1f} s")
    print(f"  {'end to end':<26} {wall:7.1f} s (empty compile cache, loading included)")
    print(f"  {'ratio to the target':<26} {wall / target:7.2f}  (target: {target:.0f} s; below 1 meets it)")
    if mnist:
        flops = mnist_flops(lines, args.seeds, len(mnist.train_images), len(mnist.test_images))
        # The machine's matmul rate drifts, so it is measured on both sides of the run (as in demo_speed.py).
        sustained = np.mean([matmul_before[0], matmul_after[0]])
        print(f"  {'matmul FLOPs':<26} {flops / 1e12:7.1f} TFLOP, {flops / wall / 1e9:.1f} GFLOP/s achieved")
        print(f"  {'large matmul':<26} {sustained:7.1f} GFLOP/s sustained ({matmul_before[0]:.1f} before, "
              f"{matmul_after[0]:.1f} after)")  # fmt: skip
        floor = flops / (sustained * 1e9)
        print(f"  {'floor ratio':<26} {wall / floor:7.2f} x  (floor {floor:.0f} s; the target asks for "
              f"{target / floor:.2f} x)")  # fmt: skip


if __name__ == "__main__":
    main()
