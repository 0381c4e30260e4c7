"""The dose-response: the owl experiment's paired effects against the number of lists, per mode.

Hard transfer (plain next-token training on sampled lists) is weak, here as in small real
models; soft transfer is strong, and its dose-response says how few lists still show it
(the defaults of `LLMConfig` are sized from both curves). A point is one one-mode
`experiment.run` with that mode's `soft_sequences` or `hard_sequences` set to a count;
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

# The hard grid (the soft one, `figures/make.sh`: 2,500, 5,000 and 10,000 lists).
COUNTS = (1_000, 3_000, 10_000)
# The options a point sets itself: giving them too is a conflict.
FIELDS = ("soft_sequences", "hard_sequences")


def point_config(base: LLMConfig, count: int) -> LLMConfig:
    """The point's config: `base` in its one mode (hard when `base` asks for both), with `count` lists."""
    mode = "hard" if base.mode == "both" else base.mode
    return dataclasses.replace(base, mode=mode, **{f"{mode}_sequences": count})


def sequences(line: dict) -> int:
    """A point's number of lists (a line written before soft points existed is hard)."""
    return line[f"{line_mode(line)}_sequences"]


def line_mode(line: dict) -> str:
    return line["config"]["mode"]


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
        mode = config.mode
        checkpoint = path.with_name(f"{path.stem}.{config.trait}.{mode}.{count}.seeds.jsonl")

        def train_point(config=config, checkpoint=checkpoint) -> dict:
            results = experiment.run(config, progress=progress, checkpoint=checkpoint, log=log, cache=cache)
            return {
                f"{config.mode}_sequences": count,
                "hard_loss": config.hard_loss,
                "measure": results["measure"],
                **{key: results[key] for key in ("teacher", "neutral_teacher", "cross_partners", "wall_seconds")},
                config.mode: results["modes"][config.mode],
            }

        fields = {"series": "dose", "config": dataclasses.asdict(config)}
        what = f"{config.trait}, {mode}" + (f", {config.hard_loss} tokens" if mode == "hard" else "")
        line = runs.point(lines, fields, train_point, f"dose: {count} lists ({what})", log)
        checkpoint.unlink(missing_ok=True)
        paired = line[mode]["paired"]["same_init_minus_neutral_control"]
        log(f"dose: {count} lists ({what}): same init minus neutral control {paired['mean']:+.4f} ± "
            f"{paired['ci95'] or 0:.4f}, {line['wall_seconds']:.0f} s")  # fmt: skip
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
