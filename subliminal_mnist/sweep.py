"""Sweeps: the paper's experiment with one setting changed, point by point, and resumable.

A point is one `experiment.run` of an `ExperimentConfig` that differs from the sweep's
base config in one field. Each finished point is one line of a JSON-lines file
(config, per-seed accuracies, means, intervals, wall time, versions), and the file is
rewritten atomically after each point: a sweep killed at any moment has lost at most
the point it was training, and running it again skips every point already in the file.
A line is reused only for the very config and package versions that wrote it.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from subliminal_mnist import data, experiment, files
from subliminal_mnist.experiment import ConfigError, ExperimentConfig

# The seeds of a sweep point unless --seeds says otherwise: enough for an interval, 5x cheaper than the demo.
SEEDS_PER_POINT = 5


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One question: which config field a value sets, and the values asked by default."""

    field: str
    values: tuple[str, ...]  # as written on the command line
    parse: Callable[[str], Any]  # a command-line value -> the value it stands for
    setting: Callable[[Any], Any] = lambda value: value  # that value -> the field's value
    help: str = ""


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not an integer") from None


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ConfigError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return parse


SWEEPS = {
    "width": Sweep(
        "hidden_sizes", ("16", "64", "128", "256", "1024", "2048"), _integer, lambda w: (w, w), "both hidden layers"
    ),
    "depth": Sweep("hidden_sizes", ("1", "2", "3", "4"), _integer, lambda d: (256,) * d, "hidden layers of 256"),
    "aux": Sweep("num_aux", ("1", "3", "10", "30", "100"), _integer, help="auxiliary logits"),
    "student_epochs": Sweep("student_epochs", ("1", "2", "5", "10", "20", "40"), _integer, help="distillation epochs"),
    "teacher_epochs": Sweep("teacher_epochs", ("1", "2", "5", "10", "20"), _integer, help="teacher epochs"),
    "loss": Sweep("distill_loss", ("kl", "mse"), _choice("kl", "mse"), help="distillation loss"),
    "noise": Sweep("noise", ("uniform", "gaussian"), _choice("uniform", "gaussian"), help="student inputs"),
}


def points(name: str, values: Sequence[str] | None, base: ExperimentConfig) -> list[tuple[Any, ExperimentConfig]]:
    """(value, config) of each point, in order; a bad name or value is a one-line `ConfigError`."""
    if name not in SWEEPS:
        raise ConfigError(f"no sweep named {name!r}; the sweeps are {', '.join(SWEEPS)}")
    sweep = SWEEPS[name]
    out = []
    for text in values or sweep.values:
        try:
            value = sweep.parse(text)
            config = dataclasses.replace(base, **{sweep.field: sweep.setting(value)})
        except ConfigError as e:
            raise ConfigError(f"sweep {name}, value {text}: {e}") from None
        out.append((value, config))
    return out


def _jsonable(config: ExperimentConfig) -> dict:
    """The config as its JSON line holds it (tuples become lists), for comparison with a line."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def read_lines(path: pathlib.Path) -> list[dict]:
    """The finished points of a JSON-lines file; a line that is not JSON is a one-line `DataError`."""
    if not path.exists():
        return []
    lines = []
    for number, text in enumerate(path.read_text().splitlines(), 1):
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            raise data.DataError(f"{path}, line {number}: not a JSON line of a sweep") from None
    return lines


def drawn_lines(name: str, values: Sequence[Any], path: str | pathlib.Path) -> list[dict]:
    """What `--plot-only` draws: the file's latest line for each value, in the order of `values`."""
    path = pathlib.Path(path)
    latest = {json.dumps(line["value"]): line for line in read_lines(path) if line["sweep"] == name}
    lines = [latest[key] for key in (json.dumps(value) for value in values) if key in latest]
    if not lines:
        raise data.DataError(f"{path} holds no point of sweep {name} to draw")
    return lines


def run(
    name: str,
    values: Sequence[str] | None,
    base: ExperimentConfig,
    mnist: data.MNIST,
    path: str | pathlib.Path,
    progress: bool = True,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> list[dict]:
    """Every point of the sweep, trained or read back from `path`: its lines, in the order of the values.

    After each newly trained point the whole file is rewritten atomically with the new line
    appended, so an interruption leaves the file as it was after the last finished point.
    """
    path = pathlib.Path(path)
    todo = points(name, values, base)
    versions = experiment.versions()
    lines = read_lines(path)
    wanted_configs = [_jsonable(config) for _, config in todo]
    others = sum(line["config"] not in wanted_configs for line in lines)
    if others:
        log(f"sweep {name}: {others} lines of {path} are for other settings; kept, not used")
    results = []
    for index, (value, config) in enumerate(todo, 1):
        wanted = _jsonable(config)
        found = [line for line in lines if line["sweep"] == name and line["config"] == wanted]
        reusable = [line for line in found if line["versions"] == versions]
        if reusable:
            results.append(reusable[-1])
            log(f"sweep {name}: point {index}/{len(todo)} ({value}) is in {path}, not trained again")
            continue
        if found:
            log(f"sweep {name}: {path} holds point {value} from other package versions; training it again")
        outcome = experiment.run(config, mnist, progress=progress)
        line = {"sweep": name, "value": value, "field": SWEEPS[name].field, "data_source": mnist.source,
                **{k: outcome[k] for k in ("conditions", "config", "cross_partners", "versions", "wall_seconds")}}  # fmt: skip
        lines.append(line)
        with files.atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(item) + "\n" for item in lines))
        results.append(line)
        aux, cross = (line["conditions"][c]["mean"] for c in ("student_aux", "cross_aux"))
        log(f"sweep {name}: point {index}/{len(todo)} ({value}): aux-only {aux:.3f}, cross-model {cross:.3f}, "
            f"{line['wall_seconds']:.0f} s")  # fmt: skip
    return results
