"""Results and times of three commands, before and after a change that must not move them.

A restructuring of the package's machinery (threads, progress, the loop's options) must leave every
result as it was and every command no slower. This script makes that a measurement:

    python benchmarks/refactor_check.py record benchmarks/before     # on the code before the change
    python benchmarks/refactor_check.py compare benchmarks/before    # on the code after it, same machine

`record` runs, each in a fresh process, the three commands whose results must not move, and keeps their
results JSON; then it times three cold runs (an empty compile cache each), to be measured alone. `compare`
runs the same, compares each results JSON with the recorded one (every key but the times and the package's
source fingerprint, numbers exactly), and prints each time's ratio to the recorded one. Exit status 1 when
a result differs. The results' MNIST commands read the bundled sample; the timed ones read full MNIST, as
their targets were measured (set SUBLIMINAL_MNIST_DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile

from demo_speed import time_command

# The commands whose results must be identical before and after: {name: arguments}. Each writes its files
# into its own folder (--out), its results JSON among them (`RESULT_FILES`).
RESULTS = {
    "demo": "demo --seeds 2 --source sample",
    "llm": "llm --seeds 1 --mode soft",
    "defend": "defend mnist --seeds 1 --defenses none mix --source sample",
}
RESULT_FILES = {"demo": "demo.json", "llm": "llm.json", "defend": "defend_mnist.json"}
# The commands timed cold (an empty compile cache), alone: a class's quick runs.
TIMED = {
    "demo --seeds 1": "demo --seeds 1",
    "owl pair": "llm --seeds 1 --mode soft --conditions same_init neutral_control",
    "defend mnist --seeds 1": "defend mnist --seeds 1",
}
# What may differ between two runs of the same code: times, and the source's fingerprint.
IGNORED = {"wall_seconds", "seconds", "source_fingerprint"}


def run(arguments: str, out: pathlib.Path) -> float:
    """Seconds of `subliminal-mnist ARGUMENTS --out OUT` (its files into the folder `out`) in a fresh process
    with a fresh, empty compile cache."""
    with tempfile.TemporaryDirectory() as cache:
        return time_command(cache, *arguments.split(), out=str(out))


def differences(before, after, path: str = "") -> list[str]:
    """Where two results differ (up to 10 paths), every key but the `IGNORED` ones, numbers exactly."""
    if isinstance(before, dict) and isinstance(after, dict):
        keys = (set(before) | set(after)) - IGNORED
        out = [f"{path}/{k}: only in {'after' if k in after else 'before'}" for k in sorted(keys)
               if (k in before) != (k in after)]  # fmt: skip
        for key in sorted(k for k in keys if k in before and k in after):
            out += differences(before[key], after[key], f"{path}/{key}")
        return out[:10]
    if isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            return [f"{path}: {len(before)} items before, {len(after)} after"]
        return [d for i, (a, b) in enumerate(zip(before, after)) for d in differences(a, b, f"{path}[{i}]")][:10]
    return [] if before == after else [f"{path}: {before!r} before, {after!r} after"]


def measure(folder: pathlib.Path) -> dict:
    """Run the result commands into `folder` and time the cold commands: {"results": {...}, "seconds": {...}}."""
    results = {}
    for name, arguments in RESULTS.items():
        out = folder / name
        run(arguments, out)
        results[name] = json.loads((out / RESULT_FILES[name]).read_text())
        print(f"  ran {name}", file=sys.stderr)
    seconds = {}
    for name, arguments in TIMED.items():
        with tempfile.TemporaryDirectory() as tmp:
            seconds[name] = run(arguments, pathlib.Path(tmp))
        print(f"  {name}: {seconds[name]:.1f} s", file=sys.stderr)
    return {"results": results, "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("record", "compare"))
    parser.add_argument("folder", type=pathlib.Path, help="where the recorded results and times are kept")
    args = parser.parse_args()
    if not os.environ.get("SUBLIMINAL_MNIST_DIR"):
        sys.exit("the timed commands read full MNIST: set SUBLIMINAL_MNIST_DIR")
    reference = args.folder / "reference.json"
    if args.action == "record":
        with tempfile.TemporaryDirectory() as tmp:  # the results JSON are kept in the reference, not beside it
            measured = measure(pathlib.Path(tmp))
        args.folder.mkdir(parents=True, exist_ok=True)
        reference.write_text(json.dumps(measured, indent=1))
        print(f"recorded {', '.join(measured['results'])} and {len(measured['seconds'])} times in {reference}")
        return 0
    if not reference.exists():
        sys.exit(f"no {reference}: run `record` on the code before the change first")
    recorded = json.loads(reference.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        measured = measure(pathlib.Path(tmp))
    failed = False
    for name in RESULTS:
        found = differences(recorded["results"][name], measured["results"][name])
        failed |= bool(found)
        print(f"{name}: {'identical' if not found else 'DIFFERENT'}" + "".join(f"\n  {d}" for d in found))
    for name, before in recorded["seconds"].items():
        after = measured["seconds"][name]
        print(f"{name}: {before:.1f} s before, {after:.1f} s after, ratio {after / before:.2f} (within 10%: below 1.10)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
