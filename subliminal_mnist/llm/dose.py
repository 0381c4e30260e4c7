"""Series of owl runs: the dose-response (the paired effects against the number of lists, per mode),
and the LoRA sweep (against how the teachers and the students are fine-tuned).

Hard transfer (plain next-token training on sampled lists) is weak, here as in small real
models; soft transfer is strong, and its dose-response says how few lists still show it
(the defaults of `LLMConfig` are sized from both curves). A point is one one-mode
`experiment.run` with that mode's `soft_sequences` or `hard_sequences` set to a count;
each finished point is one JSON line (`runs.point`), so a killed series resumes at the
point it was training, and that point at its first unfinished seed (its checkpoint).
Points share their bases and teachers, which do not depend on the count (the LoRA sweep's
points share them where the teachers' parameterization agrees).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

from subliminal_mnist import lora, runs
from subliminal_mnist.llm import experiment
from subliminal_mnist.llm.config import LLMConfig

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


class Point(NamedTuple):
    """One point of a series: its config, the tag of its checkpoint's name, what its line keeps beside the
    run's results, and its label in the log."""

    config: LLMConfig
    tag: str
    kept: dict
    label: str


def dose_points(base: LLMConfig, counts: Sequence[int]) -> list[Point]:
    """The dose-response's points: `base` in one mode with each count of lists (`point_config`)."""
    points = []
    for count in counts:
        config = point_config(base, count)
        what = f"{config.trait}, {config.mode}" + (f", {config.hard_loss} tokens" if config.mode == "hard" else "")
        kept = {f"{config.mode}_sequences": count, "hard_loss": config.hard_loss}
        points.append(Point(config, f"{config.trait}.{config.mode}.{count}", kept, f"dose: {count} lists ({what})"))
    return points


def run(
    series: str, points: Sequence[Point], path: str | pathlib.Path, progress: bool = True,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> list[dict]:  # fmt: skip
    """Every point's line of a series ("dose", `dose_points`; "lora", `lora_points`), trained or read back
    from `path` (JSON lines), in their order. Points share the bases and teachers they agree on."""
    lines, cache = runs.Lines(path), {}
    with runs.showing(progress):
        return [_point(*point, series, lines, cache, log) for point in points]


def _point(
    config: LLMConfig, tag: str, kept: dict, label: str, series: str, lines: runs.Lines, cache: dict, log
) -> dict:
    """One point of a series: its line in `lines` (`runs.point`), or the run of `config` written as one,
    with `kept` and the run's one mode. The run resumes by seed from a checkpoint beside the file,
    `STEM.TAG.seeds.jsonl`."""
    checkpoint = lines.path.with_name(f"{lines.path.stem}.{tag}.seeds.jsonl")

    def train_point() -> dict:
        results = experiment.run(config, checkpoint=checkpoint, log=log, cache=cache)
        return {
            **kept,
            "measure": results["measure"],
            **{key: results[key] for key in ("teacher", "neutral_teacher", "cross_partners", "wall_seconds")},
            config.mode: results["modes"][config.mode],
        }

    line = runs.point(lines, {"series": series, "config": dataclasses.asdict(config)}, train_point, label, log)
    checkpoint.unlink(missing_ok=True)
    paired = line[config.mode]["paired"]["same_init_minus_neutral_control"]
    log(f"{label}: same init minus neutral control {paired['mean']:+.4f} ± {paired['ci95'] or 0:.4f}, "
        f"{line['wall_seconds']:.0f} s")  # fmt: skip
    return line


# The LoRA sweep's points ("TEACHER/STUDENT[/shared|/own]", `lora.pair_setting`), and what it trains:
# the treated student and its neutral control, each under the point's parameterization.
LORA_VALUES = ("full/full", "full/lora:1", "full/lora:4", "full/lora:16", "lora:4/full",
               "lora:4/lora:1/shared", "lora:4/lora:4/shared", "lora:4/lora:16/shared",
               "lora:4/lora:1/own", "lora:4/lora:4/own", "lora:4/lora:16/own")  # fmt: skip
LORA_CONDITIONS = ("same_init", "neutral_control")


def lora_config(base: LLMConfig, value: str) -> LLMConfig:
    """A LoRA point's config: `base` in one mode (soft when it asks for both), the pair of students
    (`LORA_CONDITIONS`), no audit (the question is transfer), and the parameterizations `value` names."""
    mode = "soft" if base.mode == "both" else base.mode
    return dataclasses.replace(
        base, mode=mode, conditions=LORA_CONDITIONS, no_audit=True, **lora.pair_setting(value)
    )


def lora_points(base: LLMConfig, values: Sequence[str]) -> list[Point]:
    """The LoRA sweep's points (`lora_config`), each value checked before anything trains."""
    points = []
    for value in values:
        config = lora_config(base, value)
        tag = f"{config.trait}.{config.mode}.{value.replace('/', '-').replace(':', '')}"
        points.append(Point(config, tag, {"value": value}, f"lora: {value} ({config.trait}, {config.mode})"))
    return points


def drawn_lines(path: str | pathlib.Path) -> list[dict]:
    """What `--plot-only` draws: every point of the file (the latest line per config)."""
    latest = {str(line["config"]): line for line in runs.read_lines(path)}
    if not latest:
        raise runs.ResultsFileError(f"{path} holds no point of the dose-response to draw")
    return list(latest.values())


def drawn_lora_lines(configs: Sequence[LLMConfig], path: str | pathlib.Path) -> list[dict]:
    """What `llm-lora --plot-only` draws: the file's latest line for each point's config, in their order."""
    latest = {str(line["config"]): line for line in runs.read_lines(path) if line.get("series") == "lora"}
    wanted = [str(runs.as_json(dataclasses.asdict(config))) for config in configs]
    lines = [latest[key] for key in wanted if key in latest]
    if not lines:
        raise runs.ResultsFileError(f"{path} holds no point of the LoRA sweep to draw")
    return lines

