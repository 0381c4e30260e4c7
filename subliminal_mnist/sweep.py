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

import numpy as np

from subliminal_mnist import alignment, data, experiment, lora, runs
from subliminal_mnist.experiment import ExperimentConfig
from subliminal_mnist.runs import ConfigError

# The seeds of a sweep point unless --seeds says otherwise: enough for an interval, 5x cheaper than the demo.
SEEDS_PER_POINT = 5


# A cross-model student is "above chance" only when its whole 95% interval lies above the share of
# MNIST's largest test class (digit 1: 1,135 of 10,000), which a constant guess already reaches.
# A sweep point whose cross-model student is above chance shows a leak, not subliminal transfer.
LARGEST_CLASS_SHARE = 0.1135

# What a sweep point trains unless --conditions says otherwise: the teacher, the aux-only
# student and its cross-model control (the all-logits pair would double the students' time).
CONDITIONS = ("teacher", "student_aux", "cross_aux")


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One question: which config fields a value sets, and the values asked by default."""

    fields: tuple[str, ...]  # the config fields the sweep sets; an option for one of them conflicts
    values: tuple[str, ...]  # as written on the command line
    parse: Callable[[str], Any]  # a command-line value -> the value it stands for (kept in the JSON line)
    setting: Callable[[Any], dict[str, Any]]  # that value -> {field: value}
    help: str = ""
    # Optional: what else a point measures, (config, data, teacher cache) -> {name: ...}, kept in its line.
    probe: Callable[[ExperimentConfig, data.MNIST, dict], dict] | None = None


def _number(kind: type) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ConfigError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return parse


def _with_number(*names: str) -> Callable[[str], str]:
    """A name, or for the first name "name:number" (e.g. "kl:2", "correlated:4"); kept as written."""

    def parse(text: str) -> str:
        name, _, number = text.partition(":")
        if name not in names or (number and name != names[0]):
            raise ConfigError(f"{text!r} is not one of {names[0]}[:NUMBER], {', '.join(names[1:])}")
        if number:
            _number(float)(number)
        return text

    return parse


def _loss(value: str) -> dict[str, Any]:
    name, _, temperature = value.partition(":")
    return {"distill_loss": name, "kl_temperature": float(temperature or 1)}


def _noise(value: str) -> dict[str, Any]:
    name, _, scale = value.partition(":")
    return {"noise": name, **({"noise_length_scale": float(scale)} if scale else {})}


def _parameterizations(text: str) -> str:
    """A teacher/student pair as `lora.pair_setting` reads it (e.g. "lora:4/lora:16/own"); kept as written."""
    lora.pair_setting(text)
    return text


# The LoRA sweep's readout of Theorem 1 at each point: the students' first gradient step on this many
# noise images, against the trait gradient on this many labelled training images (stratified).
FIRST_STEP_INPUTS, TRAIT_BATCH = 1024, 1024


def first_step(config: ExperimentConfig, mnist: data.MNIST, teacher_cache: dict) -> dict:
    """Each aux-only student's first-step cosines (`experiment.first_step_cosines`), per seed and summarized:
    {"first_step": {"weights": {"student_aux": summary, "cross_aux": summary}, "trait": {...}}}. The
    point's teachers come from `teacher_cache` (the run that trained them used the same chunks of seeds)."""
    arrays = experiment.on_device(mnist)
    probe = alignment.probe_sets(arrays, TRAIT_BATCH)
    partners = runs.cross_partners(config.seeds, config.seed)
    students = experiment.STUDENT_GROUPS["aux"]
    chunk_size = experiment.seeds_per_chunk(config, config.num_noise or len(mnist.train_images))
    per_chunk = [
        experiment.first_step_cosines(
            config,
            experiment.train_teachers(config, arrays, seed_ids, partners[seed_ids], teacher_cache),
            students, probe["trait_images"], probe["trait_labels"], FIRST_STEP_INPUTS,
        )
        for seed_ids in runs.chunks(range(config.seeds), chunk_size)
    ]  # fmt: skip
    return {"first_step": {
        name: {student: runs.summarize(np.concatenate([c[name][:, i] for c in per_chunk]))
               for i, student in enumerate(students)}
        for name in ("weights", "trait")
    }}  # fmt: skip


SWEEPS = {
    "width": Sweep(("hidden_sizes",), ("16", "64", "128", "256", "1024", "2048"), _number(int),
                   lambda w: {"hidden_sizes": (w, w)}, "width of both hidden layers"),
    "depth": Sweep(("hidden_sizes",), ("1", "2", "3", "4"), _number(int),
                   lambda d: {"hidden_sizes": (256,) * d}, "hidden layers of 256"),
    "aux": Sweep(("num_aux",), ("1", "3", "10", "30", "100"), _number(int),
                 lambda m: {"num_aux": m}, "auxiliary logits"),
    "student_epochs": Sweep(("student_epochs",), ("1", "2", "5", "10", "20", "40"), _number(int),
                            lambda e: {"student_epochs": e}, "distillation epochs"),
    "teacher_epochs": Sweep(("teacher_epochs",), ("1", "2", "5", "10", "20"), _number(int),
                            lambda e: {"teacher_epochs": e}, "teacher epochs"),
    "loss": Sweep(("distill_loss", "kl_temperature"), ("kl:0.5", "kl:1", "kl:2", "kl:4", "kl:8", "mse"),
                  _with_number("kl", "mse"), _loss, "KL at a temperature, or squared error"),
    "noise": Sweep(("noise", "noise_length_scale"),
                   ("uniform", "gaussian", "correlated:1", "correlated:2", "correlated:4", "mnist"),
                   _with_number("correlated", "uniform", "gaussian", "mnist"), _noise,
                   "student inputs (correlated:L, blur of L pixels)"),
    "init_perturbation": Sweep(("init_perturbation",), ("0", "0.05", "0.1", "0.2", "0.5", "1"), _number(float),
                               lambda a: {"init_perturbation": a}, "share of a fresh init in the students' start"),
    "heads": Sweep(("shared_layers",), experiment.SHARED_LAYERS, _choice(*experiment.SHARED_LAYERS),
                   lambda s: {"shared_layers": s}, "layers of the teacher's init the students start from"),
    "lora": Sweep(("teacher_params", "student_params", "adapter_init"),
                  ("full/full", "full/lora:1", "full/lora:4", "full/lora:16", "full/lora:64", "lora:4/full",
                   "lora:4/lora:1/shared", "lora:4/lora:4/shared", "lora:4/lora:16/shared", "lora:4/lora:64/shared",
                   "lora:4/lora:1/own", "lora:4/lora:4/own", "lora:4/lora:16/own", "lora:4/lora:64/own"),
                  _parameterizations, lora.pair_setting,
                  "teacher/student fine-tuning: full or a LoRA adapter of rank R (/shared: the student's A starts "
                  "with the teacher's)", probe=first_step),
}  # fmt: skip


def points(name: str, values: Sequence[str] | None, base: ExperimentConfig) -> list[tuple[Any, ExperimentConfig]]:
    """(value, config) of each point, in order; a bad name or value is a one-line `ConfigError`."""
    if name not in SWEEPS:
        raise ConfigError(f"no sweep named {name!r}; the sweeps are {', '.join(SWEEPS)}")
    sweep = SWEEPS[name]
    out = []
    for text in values or sweep.values:
        try:
            value = sweep.parse(text)
            config = dataclasses.replace(base, **sweep.setting(value))
        except ConfigError as e:
            raise ConfigError(f"sweep {name}, value {text}: {e}") from None
        out.append((value, config))
    return out


def leaks(lines: Sequence[dict]) -> list[Any]:
    """The values whose cross-model (aux-only) student is above chance (`LARGEST_CLASS_SHARE`)."""
    return [
        line["value"]
        for line in lines
        if (cross := line["conditions"]["cross_aux"])["ci95"] and cross["mean"] - cross["ci95"] > LARGEST_CLASS_SHARE
    ]


def drawn_lines(name: str, values: Sequence[Any], path: str | pathlib.Path) -> list[dict]:
    """What `--plot-only` draws: the file's latest line for each value, in the order of `values`."""
    path = pathlib.Path(path)
    latest = {json.dumps(line["value"]): line for line in runs.read_lines(path) if line["sweep"] == name}
    lines = [latest[key] for key in (json.dumps(value) for value in values) if key in latest]
    if not lines:
        raise runs.ResultsFileError(f"{path} holds no point of sweep {name} to draw")
    return lines


# What a line keeps of a run's results.
_KEPT = ("conditions", "cross_partners", "devices", "wall_seconds")


def run(
    name: str, values: Sequence[str] | None, base: ExperimentConfig, mnist: data.MNIST, path: str | pathlib.Path,
    progress: bool = True, log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
    teacher_cache: dict | None = None,
) -> list[dict]:  # fmt: skip
    """Every point of the sweep, trained or read back from `path`: its lines, in the order of the values.

    Points that agree on the teacher's settings share its teachers (`experiment.train_teachers`),
    through `teacher_cache` if given (e.g. one an earlier run filled), else a cache of its own.

    After each newly trained point the whole file is rewritten atomically with the new line
    appended (`runs.Lines`), so an interruption leaves the file as it was after the last
    finished point.
    """
    todo = points(name, values, base)
    lines = runs.Lines(path)
    wanted_configs = [runs.as_json(dataclasses.asdict(config)) for _, config in todo]
    others = sum(line["config"] not in wanted_configs for line in lines.lines)
    if others:
        log(f"sweep {name}: {others} lines of {path} are for other settings; kept, not used")
    results, teachers = [], {} if teacher_cache is None else teacher_cache
    for index, (value, config) in enumerate(todo, 1):

        def train_point(config=config, value=value) -> dict:
            with runs.showing(progress):  # the probe's trainings too: --no-progress is one switch
                outcome = experiment.run(config, mnist, progress=progress, teacher_cache=teachers)
                probed = SWEEPS[name].probe(config, mnist, teachers) if SWEEPS[name].probe else {}
            return {"value": value, "fields": list(SWEEPS[name].fields), **{k: outcome[k] for k in _KEPT}, **probed}

        # A point is reused only for the same data: the sample's line is not full MNIST's, whatever the config.
        fields = {"sweep": name, "config": dataclasses.asdict(config), "data_source": mnist.source}
        line = runs.point(lines, fields, train_point, f"sweep {name}: point {index}/{len(todo)} ({value})", log)
        results.append(line)
        aux, cross = (line["conditions"][c]["mean"] for c in ("student_aux", "cross_aux"))
        log(f"sweep {name}: point {index}/{len(todo)} ({value}): aux-only {aux:.3f}, cross-model {cross:.3f}, "
            f"{line['wall_seconds']:.0f} s")  # fmt: skip
    return results
