"""Hard mode's dose-response: the owl experiment's paired effects against the number of lists.

Hard transfer (plain next-token training on sampled lists) is weak, here as in small real
models. A point is one hard-mode `experiment.run` with `hard_sequences` set to a count;
each finished point is one JSON line (`runs.point`), so a killed series resumes at the
point it was training, and that point at its first unfinished seed (its checkpoint).
Points share their bases and teachers, which do not depend on the count.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from collections.abc import Callable, Sequence

from subliminal_mnist import runs
from subliminal_mnist.llm import experiment
from subliminal_mnist.llm.experiment import LLMConfig

# A decade of list counts below the default hard setting (30,000 lists, which `subliminal-mnist llm`
# measures): on a 2-core CPU a 5-seed point of 30,000 lists takes most of an hour (docs/speed.md).
COUNTS = (1_000, 3_000, 10_000)
# The options a point sets itself: giving them too is a conflict.
FIELDS = ("mode", "hard_sequences")


def point_config(base: LLMConfig, count: int) -> LLMConfig:
    return dataclasses.replace(base, mode="hard", hard_sequences=count)


def run(
    base: LLMConfig,
    counts: Sequence[int],
    path: str | pathlib.Path,
    progress: bool = True,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> list[dict]:
    """Every count's line, trained or read back from `path` (JSON lines), in the order of `counts`."""
    path = pathlib.Path(path)
    lines, cache = runs.Lines(path), {}
    out = []
    for count in counts:
        config = point_config(base, count)
        checkpoint = path.with_name(f"{path.stem}.{count}.seeds.jsonl")

        def train_point(config=config, checkpoint=checkpoint) -> dict:
            results = experiment.run(config, progress=progress, checkpoint=checkpoint, log=log, cache=cache)
            return {
                "hard_sequences": config.hard_sequences,
                "hard_loss": config.hard_loss,
                **{key: results[key] for key in ("teacher", "neutral_teacher", "cross_partners", "wall_seconds")},
                "hard": results["modes"]["hard"],
            }

        fields = {"series": "dose", "config": dataclasses.asdict(config)}
        line = runs.point(lines, fields, train_point, f"dose: {count} lists ({config.hard_loss} tokens)", log)
        checkpoint.unlink(missing_ok=True)
        paired = line["hard"]["paired"]["same_init_minus_neutral_control"]
        log(f"dose: {count} lists: same init minus neutral control {paired['mean']:+.4f} ± {paired['ci95'] or 0:.4f}, "
            f"{line['wall_seconds']:.0f} s")  # fmt: skip
        out.append(line)
    return out


def drawn_lines(path: str | pathlib.Path) -> list[dict]:
    """What `--plot-only` draws: every point of the file (the latest line per config)."""
    latest = {}
    for line in runs.read_lines(path):
        latest[str(line["config"])] = line
    if not latest:
        raise runs.ResultsFileError(f"{path} holds no point of the dose-response to draw")
    return list(latest.values())
