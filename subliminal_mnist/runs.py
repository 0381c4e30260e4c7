"""What every run shares: config fields and their errors, seeds and their partners, summaries
with Student's t intervals, the run's threads, bars and stop signal, and finished work kept on disk
so that a run resumes.

The MNIST demo, the alignment probe, the sweeps and the owl experiment import these from
here; `experiment.py` is the paper's MNIST experiment and nothing else.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import pathlib
import platform
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from subliminal_mnist import files

T, Item, Result = TypeVar("T"), TypeVar("Item"), TypeVar("Result")


class ConfigError(ValueError):
    """An invalid experiment setting; the message is one line for the user."""


class ResultsFileError(ValueError):
    """A results or checkpoint file that cannot be read; one line for the user."""


def config_field(
    default,
    help: str,
    *,
    flag: str | None = None,
    choices: tuple[str, ...] | None = None,
    element_type: type | None = None,
    **kwargs,
):
    """A config field with what the CLI needs: help, flag name, choices, and the element type
    of a tuple (taken from the default's first element when not given)."""
    metadata = {"help": help, "flag": flag, "choices": choices, "element_type": element_type}
    if isinstance(default, tuple):
        return dataclasses.field(default_factory=lambda: default, metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def stage(kind: type[T], config) -> T:
    """The part of `config` that one stage of an experiment reads (its base, its teacher), as a `kind`
    value: a frozen dataclass whose fields are named as the config's. The stage's functions take only this
    value, so every setting they read is in it, and a cache keyed by it cannot hand back a model trained
    under other settings (a list of field names kept beside the code could miss one)."""
    return kind(**{f.name: getattr(config, f.name) for f in dataclasses.fields(kind)})


def option_name(config, name: str) -> str:
    """A field's name as the user knows it: the field, and its command-line flag where that differs."""
    flag = {f.name: f.metadata.get("flag") for f in dataclasses.fields(config)}[name]
    return f"{name} (--{flag})" if flag else name


def check_fields(
    config, *, at_least_one: Sequence[str] = (), not_negative: Sequence[str] = (), positive: Sequence[str] = ()
) -> None:
    """The checks every config makes: counts, non-negative counts, positive finite numbers, and the
    `choices` of each field. The first failure is a one-line `ConfigError` naming the option."""
    for name in at_least_one:
        if getattr(config, name) < 1:
            raise ConfigError(f"{option_name(config, name)} must be at least 1, got {getattr(config, name)}")
    for name in not_negative:
        if getattr(config, name) < 0:
            raise ConfigError(f"{option_name(config, name)} must not be negative, got {getattr(config, name)}")
    for name in positive:
        value = getattr(config, name)
        if not (value > 0 and np.isfinite(value)):
            raise ConfigError(f"{option_name(config, name)} must be a positive number, got {value}")
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        if choices and getattr(config, f.name) not in choices:
            raise ConfigError(
                f"{option_name(config, f.name)} must be one of {', '.join(choices)}, got {getattr(config, f.name)!r}"
            )


# ----------------------------------------------------------------------------------------------
# Seeds.


def cross_partners(num_seeds: int, seed: int) -> np.ndarray:
    """partners[s]: the seed whose init the cross-model students of teacher s start from.

    A uniformly random derangement (a permutation without fixed points), drawn
    by rejection, so no seed is paired with itself. With one seed there is no
    derangement; its partner is seed 1, whose init is drawn but never trained.
    """
    if num_seeds == 1:
        return np.array([1])
    rng = np.random.default_rng([seed, num_seeds])
    while True:
        partners = rng.permutation(num_seeds)
        if np.all(partners != np.arange(num_seeds)):
            return partners


def unrelated_seeds(num_seeds: int) -> np.ndarray:
    """unrelated[s]: a seed id that is neither s nor its cross partner, for any run of `num_seeds`
    seeds: the ids past every seed and partner a run uses, whose inits are drawn only where
    something must be unrelated to both (a defense's third model)."""
    return np.arange(num_seeds) + max(num_seeds, 2)


def chunks(seed_ids: Sequence[int], size: int) -> Iterator[np.ndarray]:
    """`seed_ids` in consecutive groups of at most `size`."""
    seed_ids = np.asarray(seed_ids)
    for start in range(0, len(seed_ids), size):
        yield seed_ids[start : start + size]


# ----------------------------------------------------------------------------------------------
# Summaries.


def t_interval(values) -> float | None:
    """Half-width of the 95% interval of the mean: t(0.975, n - 1) · sd / √n, sd with n - 1.

    With n = 5, t(0.975, 4) = 2.776, wider than the large-sample quantile by a factor of 1.42. None for
    one value, where there is no interval.
    """
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        return None
    return float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / np.sqrt(n))


def summarize(values, bounds: tuple[float | None, float | None] | None = None) -> dict:
    """Mean, 95% t interval half-width, per-seed values and n. For a paired design, pass the
    paired differences: their interval is the one that answers the comparison.

    `bounds` (low, high; None for no bound on that side): what the measure cannot leave (a share in
    [0, 1], a loss at or above 0). The summary then adds `interval`, the t interval cut at those bounds
    (mean ± ci95 where it stays inside them), and the `bounds`: a cost near its bound does not get an
    interval that claims values it cannot take."""
    values = np.asarray(values, dtype=float)
    out = {
        "mean": float(np.mean(values)),
        "ci95": t_interval(values),
        "per_seed": [float(v) for v in values],
        "n": len(values),
    }
    if bounds is not None:
        low, high = bounds
        half = out["ci95"] or 0.0
        out["interval"] = [
            max(out["mean"] - half, -np.inf if low is None else low),
            min(out["mean"] + half, np.inf if high is None else high),
        ]
        out["bounds"] = list(bounds)
    return out


def versions() -> dict[str, str]:
    names = ("subliminal-mnist", "jax", "jaxlib", "flax", "optax", "numpy")
    return {"python": platform.python_version(), **{n: importlib.metadata.version(n) for n in names}}


# The package's own directory: its Python source is what `source_fingerprint` hashes.
PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


def source_fingerprint(root: str | pathlib.Path | None = None) -> str:
    """A short hash of the code that computes the numbers: the first 16 hex digits of the SHA-256 of
    every `*.py` file under `root` (default: this package's directory), in the order of their paths
    relative to it, each path and its bytes hashed (not the package's data, not its `__pycache__`).

    The package's version string does not change when its code does, so a results line or a kept seed
    is matched on this too (`code`): a line that other code computed is not reused. For the package
    itself it is computed once per process (the files on disk, read when a run first asks).
    """
    if root is None:
        return _package_fingerprint()
    root = pathlib.Path(root)
    digest = hashlib.sha256()
    sources = sorted((path.relative_to(root).as_posix(), path) for path in root.rglob("*.py")
                     if "__pycache__" not in path.relative_to(root).parts)  # fmt: skip
    for name, path in sources:
        content = path.read_bytes()
        # Each file's name and length before its bytes: no two different trees hash the same text.
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()[:16]


@functools.cache
def _package_fingerprint() -> str:
    return source_fingerprint(PACKAGE_DIR)


def code() -> dict:
    """What a line or a kept seed records of the code that computed it, and must match to be reused:
    the package versions (`versions`) and the fingerprint of the package's source (`source_fingerprint`)."""
    return {"versions": versions(), "source": source_fingerprint()}


def code_difference(old: dict, new: dict) -> str:
    """How the code that wrote `old` differs from `new` (both hold `code()`'s fields), for a log line:
    e.g. "source 1a2b3c4d5e6f7a8b ≠ 9c8d7e6f5a4b3c2d, jax 0.4.30 ≠ 0.4.31"."""
    old_source, new_source = old.get("source") or "unrecorded", new.get("source")
    differences = [f"source {old_source} ≠ {new_source}"] if old_source != new_source else []
    old_versions, new_versions = old.get("versions") or {}, new.get("versions") or {}
    differences += [
        f"{name} {old_versions.get(name, 'unrecorded')} ≠ {new_versions.get(name, 'unrecorded')}"
        for name in sorted(set(old_versions) | set(new_versions))
        if old_versions.get(name) != new_versions.get(name)
    ]
    return ", ".join(differences) or "the same code"


# ----------------------------------------------------------------------------------------------
# Threads, bars and the stop signal: the one place a run's scheduling lives.
#
# Two things every training of a run must know, without passing them through every function between the
# run and the loop: whether bars show, and whether the map it runs in has stopped (an item failed, or Ctrl-C).
# They are context variables: a run sets the first for its own body (`showing`), `parallel_map` the second in
# each of its items, and `train.fit` reads them at every epoch (`shown`, `check_stop`); `parallel_map` reads
# them too, for its own bar and to refuse a map inside an item of another. Nothing else reads them.

_SHOWN = contextvars.ContextVar("shown", default=True)
_STOP: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("stop", default=None)


class Stopped(Exception):
    """The run this work is part of stopped (another item failed, or Ctrl-C): the loop stops at its next epoch."""


@contextlib.contextmanager
def showing(enabled: bool) -> Iterator[None]:
    """Within this block, bars show if `enabled`: a run's `--no-progress` is one switch for all its loops."""
    token = _SHOWN.set(bool(enabled) and _SHOWN.get())
    try:
        yield
    finally:
        _SHOWN.reset(token)


def shown() -> bool:
    """Whether this run shows its bars (`showing`)."""
    return _SHOWN.get()


def check_stop() -> None:
    """Raises `Stopped` if the `parallel_map` this work runs in has stopped; the loop calls it at every epoch."""
    stop = _STOP.get()
    if stop is not None and stop.is_set():
        raise Stopped


def parallel_map(
    work: Callable[[Item], Result], items: Sequence[Item], workers: int, description: str, unit: str = "item"
) -> list[Result]:
    """[work(item) for item in items], in `workers` threads, with a bar over the items.

    A run's one pool of training threads (`meanwhile` only compiles beside it): a command's `run` maps its
    independent items (chunks of seeds, seeds, bases, teachers, groups of students, grid rates) with it, one
    stage after another, and a map inside an item of another is an error: one level of threads. JAX releases
    the GIL while XLA computes, so the threads really overlap. If one item fails (or Ctrl-C arrives), the
    map stops: the items not started never start, and the trainings of the others raise `Stopped` at their
    next epoch (`check_stop`) instead of running to the end; the first failure is raised.
    """
    if _STOP.get() is not None:
        raise RuntimeError(f"{description}: a map inside an item of another map (a run has one level of threads)")
    stop = threading.Event()

    def in_this_run(item: Item) -> Result:
        _STOP.set(stop)  # in this item's own copy of the caller's context
        return work(item)

    with (
        concurrent.futures.ThreadPoolExecutor(workers) as pool,
        tqdm(total=len(items), desc=description, unit=unit, leave=False, disable=not shown()) as bar,
    ):
        futures = [pool.submit(contextvars.copy_context().run, in_this_run, item) for item in items]
        try:
            for future in concurrent.futures.as_completed(futures):
                future.result()  # the first failure, whichever item it is, raises here
                bar.update(1)
            return [future.result() for future in futures]
        except BaseException:
            stop.set()
            for future in futures:
                future.cancel()
            raise


@contextlib.contextmanager
def meanwhile(work: Callable[[], None]) -> Iterator[None]:
    """Runs `work()` in a background thread while the block runs, and waits for it at the block's end:
    for work off the critical path, such as compiling a later stage while an earlier one trains."""
    with concurrent.futures.ThreadPoolExecutor(1) as background:
        done = background.submit(contextvars.copy_context().run, work)
        yield
        done.result()


# ----------------------------------------------------------------------------------------------
# Finished work on disk.


def as_json(value):
    """`value` as JSON holds it (tuples become lists, NumPy scalars numbers), for comparisons."""
    return json.loads(json.dumps(value, default=lambda a: np.asarray(a).tolist()))


class Lines:
    """Finished units of work as a JSON-lines file: a sweep's points, a run's seeds.

    Every `add` (new lines appended) or `put` (a line in place of the old ones of its fields)
    rewrites the whole file atomically, so a run killed at any moment has lost at most the unit
    it was working on, and the file is never half-written. Threads may add concurrently. `find` returns the latest line
    whose fields equal the given ones (compared as JSON), so a line is reused only for
    the very settings and code that wrote it.
    """

    def __init__(self, path: str | pathlib.Path | None, lines: list[dict] | None = None):
        self.path = None if path is None else pathlib.Path(path)  # None: kept in memory only
        self.lines = read_lines(self.path) if lines is None else lines
        self._lock = threading.Lock()

    def find(self, **fields) -> dict | None:
        wanted = as_json(fields)
        found = [line for line in self.lines if all(line.get(k) == v for k, v in wanted.items())]
        return found[-1] if found else None

    def add(self, *lines: dict) -> list[dict]:
        """Append `lines` and rewrite the file; returns them as JSON holds them."""
        lines = [as_json(line) for line in lines]
        with self._lock:
            self.lines.extend(lines)
            self.write()
        return lines

    def put(self, match: dict, line: dict) -> dict:
        """`line` in place of every line whose fields equal `match` (where the first of them was), or
        appended if there is none; the file rewritten atomically. Returns it as JSON holds it."""
        line, wanted = as_json(line), as_json(match)
        with self._lock:
            same = [i for i, old in enumerate(self.lines) if all(old.get(k) == v for k, v in wanted.items())]
            if same:
                kept = [old for i, old in enumerate(self.lines) if i not in same[1:]]
                kept[same[0]] = line
                self.lines[:] = kept
            else:
                self.lines.append(line)
            self.write()
        return line

    def write(self) -> None:
        if self.path is None:
            return
        with files.atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(item) + "\n" for item in self.lines))


def point(lines: Lines, fields: dict, compute: Callable[[], dict], label: str, log: Callable[[str], None]) -> dict:
    """One point of a resumable series (a sweep's value, a dose, a defense's row): the line of
    `lines` with these `fields` and this code (`code`: the package versions and the fingerprint
    of its source), or `compute()`'s results written as its line, with the code's fields.

    A line of these `fields` from other code is not reused (and `log` says so): it is computed
    again, and the new line takes the old one's place, so that the numbers of a series come
    from one version of the code and the file holds one line per point.
    """
    current = code()
    found = lines.find(**fields, **current)
    if found:
        log(f"{label} is in {lines.path}, not trained again")
        return found
    stale = lines.find(**fields)
    if stale:
        log(f"{label} in {lines.path} was computed by other code ({code_difference(stale, current)}): "
            "computing it again")  # fmt: skip
    return lines.put(fields, {**fields, **compute(), **current})


def read_lines(path: str | pathlib.Path | None) -> list[dict]:
    """The lines of a JSON-lines file ([] if there is none); a line that is not JSON is one error."""
    if path is None or not pathlib.Path(path).exists():
        return []
    path = pathlib.Path(path)
    lines = []
    for number, text in enumerate(path.read_text().splitlines(), 1):
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            raise ResultsFileError(f"{path}, line {number}: not a JSON line") from None
    return lines


# Config fields that change how fast a run goes, never its numbers: a resumed run may change them.
SPEED_ONLY = ("workers",)


def identity(config, **more) -> dict:
    """What a kept seed must match to be reused: the config (less `SPEED_ONLY`), the code (`code`:
    the package versions and its source's fingerprint), and `more` (e.g. the data source)."""
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in SPEED_ONLY}
    return {"config": fields, **code(), **more}


def _settings(identity: dict) -> dict:
    """An identity less its code (`code`): the settings it was computed for."""
    return {k: v for k, v in identity.items() if k not in ("versions", "source")}


def checkpoint_path(out: str | pathlib.Path) -> pathlib.Path:
    """Where a run keeps its finished seeds while it runs: beside its results, `NAME.seeds.jsonl`."""
    out = pathlib.Path(out)
    return out.with_name(f"{out.stem}.seeds.jsonl")


class Checkpoint:
    """The finished seeds of one run, one line each, kept beside its results (`checkpoint_path`).

    A line is {"seed": id, "identity": {...}, "result": {...}}; `identity` is what must
    match for the result to be reused (`identity()`: the config, the data, the code). Lines
    of another identity are stale: they are dropped at once, and `log` says so (where only
    the code differs, how it differs). With `path` None the results are kept in memory only
    (a run that does not resume).

    A result goes through JSON both when it is kept and when it is read back, so a run
    resumed from the file and a run that never stopped summarize the very same numbers.
    """

    def __init__(self, path: str | pathlib.Path | None, identity: dict, log: Callable[[str], None] = print):
        self.identity = as_json(identity)
        lines = read_lines(path)
        current = [line for line in lines if line.get("identity") == self.identity]
        self._lines = Lines(path, current)
        if len(current) < len(lines):
            stale = [line.get("identity") for line in lines if line.get("identity") != self.identity]
            other_code = [i for i in stale if isinstance(i, dict) and _settings(i) == _settings(self.identity)]
            if other_code:
                log(f"{path}: {len(other_code)} finished seeds were computed by other code "
                    f"({code_difference(other_code[-1], self.identity)}); not reused")  # fmt: skip
            if len(other_code) < len(stale):
                log(f"{path}: {len(stale) - len(other_code)} finished seeds from another config or version; not reused")
            self._lines.write()
        if current:
            done = ", ".join(str(line["seed"]) for line in current)
            log(f"{path}: resuming; seeds {done} are finished and not trained again")

    def result(self, seed_id: int) -> dict | None:
        """The kept result of seed `seed_id`, or None."""
        found = [line for line in self._lines.lines if line["seed"] == int(seed_id)]
        return found[-1]["result"] if found else None

    def missing(self, seed_ids: Sequence[int]) -> list[int]:
        """The seeds of `seed_ids` without a kept result, in order."""
        return [int(s) for s in seed_ids if self.result(s) is None]

    def keep(self, results: dict[int, dict]) -> dict[int, dict]:
        """Keep finished seeds ({seed: result}, written at once); returns them as JSON holds them."""
        lines = [{"seed": int(s), "identity": self.identity, "result": r} for s, r in results.items()]
        kept = self._lines.add(*lines)
        return {line["seed"]: line["result"] for line in kept}
