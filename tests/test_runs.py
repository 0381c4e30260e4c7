"""What every run shares: errors, seeds and partners, Student's t summaries, threads, resuming."""

import dataclasses
import json
import pathlib
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from subliminal_mnist import runs, train


@given(st.integers(2, 200), st.integers(0, 2**31 - 1))
@settings(max_examples=100, deadline=None)
def test_cross_partners_are_a_derangement(num_seeds, seed):
    partners = runs.cross_partners(num_seeds, seed)
    assert sorted(partners.tolist()) == list(range(num_seeds))
    assert np.all(partners != np.arange(num_seeds))


def test_one_seed_is_paired_with_an_untrained_seed():
    assert runs.cross_partners(1, 0).tolist() == [1]


def test_cross_partners_are_deterministic_and_depend_on_the_seed():
    a, b = runs.cross_partners(20, 0), runs.cross_partners(20, 0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, runs.cross_partners(20, 1))


def test_the_interval_is_students_t_with_n_minus_1_degrees_of_freedom():
    # Textbook: x = 0.5, 0.6, 0.7, 0.8, 0.9; mean 0.7, sd 0.158114 (n - 1), t(0.975, 4) = 2.776445.
    summary = runs.summarize([0.5, 0.6, 0.7, 0.8, 0.9])
    assert summary["mean"] == pytest.approx(0.7)
    assert summary["ci95"] == pytest.approx(2.776445 * 0.1581139 / np.sqrt(5), rel=1e-6)
    assert summary["n"] == 5 and summary["per_seed"] == [0.5, 0.6, 0.7, 0.8, 0.9]
    # The same interval as scipy's own t interval of the mean, for another n.
    values = np.array([0.11, 0.52, 0.37, 0.94, 0.23, 0.48, 0.05, 0.61, 0.33, 0.77, 0.29, 0.58, 0.46])
    low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert runs.summarize(values)["ci95"] == pytest.approx((high - low) / 2)
    # 1.96 would be too narrow for 5 seeds by the factor 2.776 / 1.96.
    assert summary["ci95"] / (1.96 * 0.1581139 / np.sqrt(5)) == pytest.approx(1.4166, rel=1e-3)
    assert runs.summarize([0.5]) == {"mean": 0.5, "ci95": None, "per_seed": [0.5], "n": 1}


def test_a_bounded_measure_gets_an_interval_inside_its_bounds():
    # A share near 1 with a wide spread: the symmetric interval would cross 1, the bounded one stops there.
    shares = [0.99, 0.95, 0.999, 0.90, 0.998]
    free, bounded = runs.summarize(shares), runs.summarize(shares, bounds=(0.0, 1.0))
    assert free["mean"] + free["ci95"] > 1
    assert bounded["interval"] == [pytest.approx(free["mean"] - free["ci95"]), 1.0]
    assert {k: bounded[k] for k in free} == free and bounded["bounds"] == [0.0, 1.0]
    # A loss near 0: cut at 0 below, open above; inside its bounds the interval is the symmetric one.
    losses = [1e-4, 5e-3, 2e-4, 1e-4, 3e-4]
    low, high = runs.summarize(losses, bounds=(0.0, None))["interval"]
    assert low == 0.0 and high == pytest.approx(np.mean(losses) + runs.t_interval(losses))
    inside = runs.summarize([0.5, 0.6, 0.7], bounds=(0.0, 1.0))
    assert inside["interval"] == [pytest.approx(0.6 - inside["ci95"]), pytest.approx(0.6 + inside["ci95"])]


def _training(item, stopped: list, epochs: int = 200) -> None:
    """A long training (10 s at 200 epochs) that checks the stop signal between epochs, as the loop does;
    records `item` in `stopped` when it stops."""
    for _ in range(epochs):
        try:
            runs.check_stop()
        except runs.Stopped:
            stopped.append(item)
            raise
        time.sleep(0.05)


def test_a_failing_item_stops_the_others_and_its_error_reaches_the_caller():
    stopped = []

    def work(item):
        if item == "bad":
            time.sleep(0.2)  # let the other one start its "training"
            raise train.TrainingDiverged("bad: the loss became nan")
        _training(item, stopped)

    with pytest.raises(train.TrainingDiverged, match="bad"):
        runs.parallel_map(work, ["slow", "bad"], 2, "toy")
    assert stopped == ["slow"]


def test_items_not_started_never_start_once_the_map_stopped():
    started = []

    def work(item):
        started.append(item)
        if item == 0:
            raise ValueError("first item fails")
        time.sleep(0.3)

    with pytest.raises(ValueError, match="first item fails"):
        runs.parallel_map(work, range(10), 1, "toy")
    assert started == [0]


def test_a_map_inside_an_item_of_another_is_an_error():
    # One level of threads: a stage's items train; they never open a pool of their own.
    def item(name):
        return runs.parallel_map(lambda inner: inner, [name], 1, "inner")

    with pytest.raises(RuntimeError, match="inner: a map inside an item of another map"):
        runs.parallel_map(item, ["a", "b"], 2, "rows")
    assert runs.parallel_map(str, [1, 2], 2, "again") == ["1", "2"], "a map after a map is fine"


def test_showing_false_hides_every_bar_inside_it_and_cannot_be_turned_back_on_inside(capsys):
    with runs.showing(False):
        assert not runs.shown()
        with runs.showing(True):
            assert not runs.shown()  # an inner run's default does not undo the user's --no-progress
        assert runs.parallel_map(lambda item: runs.shown(), [1, 2], 2, "toy") == [False, False]
    assert runs.shown()
    runs.parallel_map(lambda item: item, [1], 1, "shown bar")
    with runs.showing(False):
        runs.parallel_map(lambda item: item, [1], 1, "hidden bar")
    err = capsys.readouterr().err
    assert "shown bar" in err and "hidden bar" not in err


@dataclasses.dataclass(frozen=True)
class _Config:
    count: int = runs.config_field(1, "a count", flag="how-many")
    rate: float = runs.config_field(0.1, "a rate")
    kind: str = runs.config_field("a", "a kind", choices=("a", "b"))


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(count=0), r"count \(--how-many\) must be at least 1, got 0"),
        (dict(rate=float("inf")), "rate must be a positive number, got inf"),
        (dict(kind="c"), "kind must be one of a, b, got 'c'"),
    ],
)
def test_field_checks_are_one_line_errors_naming_the_option(bad, message):
    with pytest.raises(runs.ConfigError, match=message):
        runs.check_fields(_Config(**bad), at_least_one=("count",), positive=("rate",))


def test_a_checkpoint_keeps_seeds_reads_them_back_and_drops_stale_ones(tmp_path):
    path, messages = tmp_path / "run.seeds.jsonl", []
    first = runs.Checkpoint(path, {"config": {"seeds": 3}}, messages.append)
    assert first.missing(range(3)) == [0, 1, 2] and messages == []
    kept = first.keep({1: {"accuracy": np.float32(0.25), "values": np.arange(2)}})
    assert kept == {1: {"accuracy": 0.25, "values": [0, 1]}}  # as JSON holds it, what a resumed run reads
    again = runs.Checkpoint(path, {"config": {"seeds": 3}}, messages.append)
    assert again.missing(range(3)) == [0, 2] and again.result(1) == kept[1]
    assert "resuming; seeds 1 are finished" in messages[-1]
    other = runs.Checkpoint(path, {"config": {"seeds": 4}}, messages.append)
    assert other.missing(range(3)) == [0, 1, 2]
    assert "1 finished seeds from another config or version; not reused" in messages[-1]
    assert runs.read_lines(path) == [], "stale lines are dropped at once"
    memory = runs.Checkpoint(None, {}, messages.append)  # no file: kept in memory only
    memory.keep({0: {"a": 1.0}})
    assert memory.result(0) == {"a": 1.0} and list(tmp_path.iterdir()) == [path]


def test_a_checkpoint_that_is_not_json_lines_is_one_error(tmp_path):
    path = tmp_path / "bad.seeds.jsonl"
    path.write_text('{"seed": 0}\nnot json\n')
    with pytest.raises(runs.ResultsFileError, match=r"bad.seeds.jsonl, line 2: not a JSON line"):
        runs.Checkpoint(path, {})


def test_lines_are_rewritten_whole_and_found_by_their_fields(tmp_path, monkeypatch):
    lines = runs.Lines(tmp_path / "points.jsonl")
    lines.add({"value": 1, "config": (1, 2)}, {"value": 2, "config": (3,)})
    assert lines.find(config=[1, 2])["value"] == 1 and lines.find(value=3) is None
    assert runs.read_lines(tmp_path / "points.jsonl") == lines.lines

    def broken_write(self, text):
        raise KeyboardInterrupt  # killed while writing: the file keeps its last whole state

    monkeypatch.setattr(type(tmp_path), "write_text", broken_write)
    with pytest.raises(KeyboardInterrupt):
        lines.add({"value": 3})
    monkeypatch.undo()
    assert [json.loads(t)["value"] for t in (tmp_path / "points.jsonl").read_text().splitlines()] == [1, 2]


def test_the_checkpoint_lies_beside_the_results():
    assert runs.checkpoint_path("out/results.json") == pathlib.Path("out/results.seeds.jsonl")


def _tiny_package(root: pathlib.Path) -> pathlib.Path:
    (root / "pkg" / "sub" / "__pycache__").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "a.py").write_text("x = 1\n")
    (root / "pkg" / "sub" / "b.py").write_text("y = 2\n")
    (root / "pkg" / "sub" / "__pycache__" / "b.cpython-312.pyc").write_bytes(b"\0compiled")
    (root / "pkg" / "data.npz").write_bytes(b"not source")
    return root / "pkg"


def test_the_source_fingerprint_is_stable_and_changes_with_the_code(tmp_path):
    package = _tiny_package(tmp_path)
    first = runs.source_fingerprint(package)
    assert first == runs.source_fingerprint(package) and len(first) == 16 and int(first, 16) >= 0
    # Data and compiled files are not the code.
    (package / "data.npz").write_bytes(b"other data")
    (package / "sub" / "__pycache__" / "b.cpython-312.pyc").write_bytes(b"recompiled")
    assert runs.source_fingerprint(package) == first
    # One byte of one source file is other code; so is a file moved to another path.
    (package / "sub" / "b.py").write_text("y = 3\n")
    changed = runs.source_fingerprint(package)
    assert changed != first
    (package / "sub" / "b.py").write_text("y = 2\n")
    assert runs.source_fingerprint(package) == first
    (package / "sub" / "b.py").rename(package / "b.py")
    assert runs.source_fingerprint(package) != first
    # The package's own: the same within a process, the one every line and kept seed records.
    assert runs.source_fingerprint() == runs.source_fingerprint(runs.PACKAGE_DIR) == runs.code()["source"]


def test_a_line_from_other_code_is_computed_again_and_replaced(tmp_path, monkeypatch):
    path, messages, computed = tmp_path / "series.jsonl", [], []

    def compute():
        computed.append(1)
        return {"accuracy": 0.5 + len(computed) / 10}

    def one(fields):
        return runs.point(runs.Lines(path), fields, compute, "series: point 2/3", messages.append)

    monkeypatch.setattr(runs, "source_fingerprint", lambda root=None: "aaaaaaaaaaaaaaaa")
    one({"value": 1})
    first = one({"value": 2})
    assert len(computed) == 2 and first["source"] == "aaaaaaaaaaaaaaaa" and first["accuracy"] == 0.7
    # The same code: read back, not computed.
    assert one({"value": 2}) == first and len(computed) == 2 and "not trained again" in messages[-1]
    # Other code, the same settings: computed again, said so, and the file keeps one line per point.
    monkeypatch.setattr(runs, "source_fingerprint", lambda root=None: "bbbbbbbbbbbbbbbb")
    messages.clear()
    again = one({"value": 2})
    assert len(computed) == 3 and again["source"] == "bbbbbbbbbbbbbbbb" and again["accuracy"] == 0.8
    assert messages == [
        f"series: point 2/3 in {path} was computed by other code (source aaaaaaaaaaaaaaaa ≠ bbbbbbbbbbbbbbbb): "
        "computing it again"
    ]
    written = runs.read_lines(path)
    assert [(line["value"], line["source"]) for line in written] == [(1, "aaaaaaaaaaaaaaaa"), (2, "bbbbbbbbbbbbbbbb")]
    assert one({"value": 2}) == again and len(computed) == 3
    # A line written before lines recorded their source (the committed figures/*.jsonl) is not reused either.
    line = written[1]
    del line["source"]
    path.write_text(json.dumps(written[0]) + "\n" + json.dumps(line) + "\n" + json.dumps(line) + "\n")
    messages.clear()
    one({"value": 2})
    assert len(computed) == 4 and "(source unrecorded ≠ bbbbbbbbbbbbbbbb)" in messages[0]
    assert [line["value"] for line in runs.read_lines(path)] == [1, 2], "both stale copies replaced by one line"
    # Killed while replacing a line: the file keeps its last whole state.
    monkeypatch.setattr(runs, "source_fingerprint", lambda root=None: "cccccccccccccccc")
    before = path.read_text()
    monkeypatch.setattr(type(tmp_path), "write_text", lambda self, text: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        one({"value": 2})
    monkeypatch.undo()
    assert path.read_text() == before and not list(tmp_path.glob(".*.tmp"))


def test_a_checkpoint_from_other_code_is_not_resumed_from(tmp_path, monkeypatch):
    path, messages = tmp_path / "run.seeds.jsonl", []
    monkeypatch.setattr(runs, "source_fingerprint", lambda root=None: "aaaaaaaaaaaaaaaa")
    runs.Checkpoint(path, runs.identity(_Config()), messages.append).keep({0: {"accuracy": 0.5}})
    assert runs.Checkpoint(path, runs.identity(_Config()), messages.append).result(0) == {"accuracy": 0.5}
    monkeypatch.setattr(runs, "source_fingerprint", lambda root=None: "bbbbbbbbbbbbbbbb")
    messages.clear()
    other = runs.Checkpoint(path, runs.identity(_Config()), messages.append)
    assert other.missing([0]) == [0] and runs.read_lines(path) == []
    assert messages == [
        f"{path}: 1 finished seeds were computed by other code (source aaaaaaaaaaaaaaaa ≠ bbbbbbbbbbbbbbbb); "
        "not reused"
    ]


def test_stage_reads_only_its_fields_and_is_its_own_cache_key():
    """A stage config takes the config's fields of its names, and two configs that differ only outside the
    stage give equal (hashable) stages, while a difference inside it gives different ones."""

    @dataclasses.dataclass(frozen=True)
    class Config:
        width: int = 4
        epochs: int = 2
        workers: int = 1

    @dataclasses.dataclass(frozen=True)
    class Base:
        width: int
        epochs: int

    assert runs.stage(Base, Config()) == Base(4, 2)
    assert runs.stage(Base, Config(workers=8)) == runs.stage(Base, Config())
    assert runs.stage(Base, Config(epochs=3)) != runs.stage(Base, Config())
    assert len({runs.stage(Base, Config()), runs.stage(Base, Config(workers=8))}) == 1
