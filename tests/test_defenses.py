"""Defenses: each row changes what it says and nothing else, `none` is the demo, a killed run resumes,
user mistakes are one line."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from conftest import lines_without_times

from subliminal_mnist import cli, data, defense_table, defenses, experiment, train
from subliminal_mnist.defense_table import Row
from subliminal_mnist.defenses import MnistDefenses

TINY = experiment.ExperimentConfig(
    seeds=2, hidden_sizes=(32,), teacher_epochs=2, student_epochs=2, batch_size=256, num_noise=512, workers=1
)
SETTINGS = MnistDefenses(heldout_noise=256, trait_batch=128)


@pytest.fixture(scope="module")
def sample():
    return experiment.on_device(data.load_sample())


@pytest.fixture(scope="module")
def teacher_cache():
    return {}


@pytest.fixture(scope="module")
def undefended(sample, teacher_cache):
    return _row(Row("none"), sample, teacher_cache)


def _row(row, sample, cache, settings=SETTINGS, **options):
    seeds = defenses.Seeds.of(TINY)
    return defenses.train_row(row, TINY, [defenses.Chunk(settings, sample, np.arange(2), seeds, cache, **options)])


def _same(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in a)


def _equal_trees(a, b) -> bool:
    """Equal pytrees to the last digit (random keys by their data)."""
    data = lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    leaves = [jax.tree.leaves(jax.tree.map(data, t)) for t in (a, b)]
    return len(leaves[0]) == len(leaves[1]) and all(np.array_equal(x, y) for x, y in zip(*leaves))


def test_every_defense_of_mnist_has_its_function_in_the_table():
    assert list(defenses.DEFENSES) == list(defense_table.APPLIES["mnist"])


def test_none_is_the_demo_for_the_same_seeds(sample, teacher_cache, undefended):
    demo = experiment.run(experiment.ExperimentConfig(**{**vars(TINY), "conditions": ("student_aux",)}), sample,
                          progress=False, teacher_cache=teacher_cache)  # fmt: skip
    assert demo["conditions"]["student_aux"]["per_seed"] == undefended["treated"].tolist()
    assert demo["conditions"]["cross_aux"]["per_seed"] == undefended["control"].tolist()
    assert demo["conditions"]["teacher"]["per_seed"] == undefended["teacher"].tolist()


@pytest.mark.parametrize("row", [Row("mix", 0.0), Row("temperature", 1.0)])  # no target replaced; the paper's T
def test_a_defense_that_changes_nothing_is_none_to_the_last_digit(row, sample, teacher_cache, undefended):
    assert _same(_row(row, sample, teacher_cache), undefended)


@pytest.mark.parametrize("name", ["kl_to_start", "l2_to_start"])
def test_a_penalty_of_weight_zero_is_none_up_to_float_rounding(name, sample, teacher_cache, undefended):
    # The penalty's code runs, weighted 0. Its terms join the loss's in one compiled step, where XLA may
    # sum a gradient in another order: the same students up to the last float bit, not always to it. How far
    # the rounding carries depends on the CPU's instructions: on 2026-12-03 one machine kept 1e-5 and the next
    # moved 1.3e-5 (relative), where a KL weight of 1e-3 moves it 2.6e-5 and the rows' default weights (KL 1.0,
    # L2 1e-3) 1.0e-2 and 5.4e-4: 1e-4 admits the rounding and neither default.
    settings = MnistDefenses(**{"kl_weight" if name == "kl_to_start" else "l2_weight": 0.0, "heldout_noise": 256})
    zero = _row(Row(name), sample, teacher_cache, settings)
    for key in ("treated", "control", "useful", "teacher"):
        np.testing.assert_array_equal(zero[key], undefended[key])
    np.testing.assert_allclose(zero["heldout_distill_loss"], undefended["heldout_distill_loss"], rtol=1e-4)


@pytest.mark.parametrize(
    "row, settings",
    [
        (Row("mix", 0.5), SETTINGS),
        (Row("temperature", 4.0), SETTINGS),
        (Row("kl_to_start"), SETTINGS),
        (Row("l2_to_start"), MnistDefenses(l2_weight=1.0, heldout_noise=256)),
        (Row("projection", "two_sided"), SETTINGS),
    ],
)
def test_a_defense_changes_the_students_not_the_teacher(row, settings, sample, teacher_cache, undefended):
    defended = _row(row, sample, teacher_cache, settings)
    assert np.array_equal(defended["teacher"], undefended["teacher"])
    assert not np.array_equal(defended["heldout_distill_loss"], undefended["heldout_distill_loss"])


@pytest.fixture(scope="module")
def other_init(sample, teacher_cache, undefended):
    """The other_init row, and every `train.fit` it called: {recipe's name: (start, keys, inputs, targets)}.
    The teachers are in the cache already (`undefended`): the fits are its neutral teachers' and students'."""
    calls, real_fit = {}, train.fit

    def recorded(params, keys, inputs, targets, recipe, **options):
        calls[recipe.name] = (params, keys, inputs, targets)
        return real_fit(params, keys, inputs, targets, recipe, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "fit", recorded)
        return _row(Row("other_init"), sample, teacher_cache), calls


def _teachers(sample, teacher_cache):
    seeds = defenses.Seeds.of(TINY)
    return experiment.train_teachers(TINY, sample, np.arange(2), seeds.partners[:2], teacher_cache)


def test_other_init_moves_the_treated_student_to_the_controls_start(undefended, other_init):
    moved, _ = other_init
    # The treated student now starts where the undefended control started, on the same data.
    np.testing.assert_allclose(moved["treated"], undefended["control"], atol=2e-3)
    assert not np.allclose(moved["useful"], undefended["useful"])  # the useful student moved too


def test_the_neutral_teachers_labels_are_a_fixed_permutation_of_the_training_labels(sample):
    labels = np.asarray(sample.train_labels)
    neutral = np.asarray(defenses.neutral_labels(TINY, sample.train_labels))
    assert np.array_equal(np.sort(neutral), np.sort(labels))  # the same labels (multiset) ...
    assert np.mean(neutral != labels) > 0.8  # ... in other places: ~90% move (10 classes)
    assert np.array_equal(neutral, defenses.neutral_labels(TINY, sample.train_labels))  # reproducible
    other_seed = experiment.ExperimentConfig(**{**vars(TINY), "seed": 1})
    assert not np.array_equal(neutral, defenses.neutral_labels(other_seed, sample.train_labels))


def test_the_neutral_teacher_is_the_teachers_recipe_on_permuted_labels(sample, teacher_cache, other_init):
    moved, calls = other_init
    teachers = _teachers(sample, teacher_cache)
    start, keys, images, labels = calls[f"teacher ({len(moved['teacher'])} seeds)"]
    # From the teacher's init, with the teacher's data order, on the training images and permuted labels.
    assert _equal_trees(start, teachers.shared_init)
    assert _equal_trees(keys, experiment.seed_keys(TINY, np.arange(2))["teacher"])
    assert np.array_equal(images, sample.train_images)
    assert np.array_equal(labels, defenses.neutral_labels(TINY, sample.train_labels))
    # Cached like the teachers: asked again, it is the one the row trained, never the teacher.
    neutral = defenses.neutral_teachers(TINY, sample, np.arange(2), teacher_cache)
    for leaf, init, teacher in zip(*(jax.tree.leaves(p) for p in (neutral, teachers.shared_init, teachers.teacher))):
        assert not np.allclose(leaf, init) and not np.allclose(leaf, teacher)
    # It learnt no digits: chance (0.108, 0.103), where the tiny teacher learnt some (0.41, 0.56).
    assert np.all(moved["neutral_teacher"] < 0.2) and np.all(moved["teacher"] > 0.3)


def test_other_init_measures_how_far_each_teacher_moved_from_the_shared_init(sample, teacher_cache, other_init):
    moved, _ = other_init
    teachers = _teachers(sample, teacher_cache)
    neutral = defenses.neutral_teachers(TINY, sample, np.arange(2), teacher_cache)
    for key, params in (("teacher_distance", teachers.teacher), ("neutral_teacher_distance", neutral)):
        by_hand = [np.sqrt(sum(np.sum((np.asarray(a)[s] - np.asarray(b)[s]) ** 2)
                               for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(teachers.shared_init))))
                   for s in range(2)]  # fmt: skip
        np.testing.assert_allclose(moved[key], by_hand, rtol=1e-5)
        assert np.all(moved[key] > 0)


def test_the_cross_entropy_readout_is_each_students_drop_from_its_own_start(sample, teacher_cache, undefended):
    teachers = _teachers(sample, teacher_cache)
    arch = TINY.architecture
    start = np.asarray(experiment.test_cross_entropy(teachers.student_init, sample.test_images, sample.test_labels, arch))
    # An untrained start guesses about uniformly over the digits: near ln 10 = 2.30 (measured 2.45, 2.47).
    np.testing.assert_allclose(start, np.log(10), atol=0.3)
    # By hand, from the logits: the same students' mean -log p(label) over the class logits.
    logits = jax.vmap(lambda p: arch.apply(p, sample.test_images))(teachers.student_init)[..., : arch.num_classes]
    by_hand = -np.take_along_axis(jax.nn.log_softmax(logits), np.asarray(sample.test_labels)[None, :, None], -1).mean((1, 2))
    np.testing.assert_allclose(start, by_hand, rtol=1e-5)
    # The tiny run's same-init students stay at chance accuracy (0.102, 0.092), yet their cross-entropy fell
    # (by 0.022, 0.015 nats) where their controls' rose (0.002): the readout sees what accuracy cannot.
    assert np.all(undefended["treated"] < 0.11)
    assert np.all(undefended["treated_xent_drop"] > 0.01) and np.all(undefended["control_xent_drop"] < 0)


def test_other_init_control_differs_from_its_treated_student_only_in_its_teacher(
    sample, teacher_cache, undefended, other_init
):
    moved, calls = other_init
    teachers = _teachers(sample, teacher_cache)
    treated, control = (calls[f"{name} (2 seeds)"] for name in ("student_aux", "cross_aux"))
    # The same start (the partner's init: the members' axis holds one student), data order and noise ...
    for start in (treated[0], control[0]):
        assert _equal_trees(start, jax.tree.map(lambda a: a[:, None], teachers.other_init))
    assert _equal_trees(treated[1:3], control[1:3])
    # ... and other targets: the teacher's outputs on the noise, and the neutral teacher's.
    assert np.array_equal(treated[3], teachers.teacher_targets)
    neutral = defenses.neutral_teachers(TINY, sample, np.arange(2), teacher_cache)
    np.testing.assert_array_equal(control[3], experiment.outputs_on(neutral, teachers.noise, TINY.architecture, TINY.batch_size))
    assert not np.allclose(control[3], treated[3])
    # Its control is not `none`'s (nor was it before: a third init's).
    assert not np.array_equal(moved["control"], undefended["control"])


def test_sgd_rows_train_with_sgd_at_the_rate_given(sample, teacher_cache, undefended, monkeypatch):
    seen, real_fit = [], train.fit
    monkeypatch.setattr(train, "fit", lambda *a, **k: seen.append((a[4].optimizer, a[4].learning_rate))
                        or real_fit(*a, **k))  # fmt: skip
    sgd = _row(Row("sgd"), sample, teacher_cache, learning_rate=0.5)
    control = _row(Row("sgd", defense_table.SGD_ADAM_CONTROL), sample, teacher_cache, learning_rate=TINY.learning_rate)
    students = [s for s in seen if s[0] is not None]
    assert students == [("sgd", 0.5)] * 2 + [("adam", TINY.learning_rate)] * 2  # the two groups of each row
    assert _same(control, undefended), "Adam at the paper's rate is the undefended student"
    assert not np.array_equal(sgd["heldout_distill_loss"], undefended["heldout_distill_loss"])


def test_matched_rate_tries_every_rate_and_a_diverging_one_is_infinitely_far(sample, teacher_cache):
    grid = (0.01, 1.0, 1e6)
    args = (TINY, SETTINGS, sample, np.arange(1), defenses.Seeds.of(TINY))
    loss_at = defenses.heldout_loss(*args, teacher_cache)
    rate, record = defense_table.tuned_rate(lambda rate: loss_at(rate, "sgd"), grid, 1e-9, 1)
    losses = {float(rate): loss for rate, loss in record["tried"].items()}
    assert set(losses) == set(grid) and losses[1e6] == float("inf") and np.isfinite(losses[1.0])
    assert losses[rate] == min(losses.values())  # a target below every loss: the lowest
    # A larger rate than the best already diverged: no extension can bracket the target, the row is unmatched.
    assert record["extended"] == [] and record["bracketed"] is False


def test_optimizer_rows_carry_their_match_in_the_summary_and_the_table_marks_an_unmatched_one(
    tmp_path, sample, teacher_cache
):
    settings = MnistDefenses(defenses=("sgd",), sgd_grid=(0.3, 3.0), adam_grid=(1e-3, 1e-2), heldout_noise=256)
    lines = defenses.run(TINY, settings, sample, tmp_path / "d.jsonl", False, lambda m: None, teacher_cache)
    summary = json.loads(json.dumps(defense_table.summarize(lines)))
    rows = summary["defenses"]
    assert list(rows) == ["none", "sgd", "sgd:adam_control"] and "matched" not in rows["none"]
    for key, target in (("sgd", "none"), ("sgd:adam_control", "sgd")):
        row = rows[key]
        assert isinstance(row["matched"], bool)
        assert row["heldout_loss"] == row["cost"]["heldout_distill_loss"]
        assert row["target_heldout_loss"] == rows[target]["cost"]["heldout_distill_loss"]
        tuning = row["config"]["tuning"]
        assert set(tuning) >= {"target_loss", "grid", "tried", "bracketed", "extended", "seeds"}
        assert len(tuning["tried"]) == len(tuning["grid"]) + len(tuning["extended"])
        near = defense_table.within_tolerance(row["heldout_loss"]["mean"], row["target_heldout_loss"]["mean"])
        assert row["matched"] == (tuning["bracketed"] and near)
    rows["sgd"]["matched"], rows["sgd:adam_control"]["matched"] = False, True
    text = defense_table.table(summary).splitlines()
    assert [line.endswith("unmatched") for line in text[1:4]] == [False, True, False]
    assert any(line.startswith("unmatched:") for line in text)


def test_rows_and_summary(tmp_path, sample):
    settings = MnistDefenses(defenses=("mix",), mix_shares=(0.0, 0.5), heldout_noise=256)
    assert [r.key for r in defense_table.rows(settings)] == ["none", "mix:0", "mix:0.5"]
    every = [r.key for r in defense_table.rows(MnistDefenses())]
    assert every[:4] == ["none", "other_init", "sgd", "sgd:adam_control"] and "projection:two_sided" in every
    lines = defenses.run(TINY, settings, sample, tmp_path / "d.jsonl", progress=False, log=lambda m: None)
    summary = defense_table.summarize(lines)
    none, unmixed = summary["defenses"]["none"], summary["defenses"]["mix:0"]
    assert none["remaining"]["per_seed"] == [1.0, 1.0] and none["remaining"]["n"] == 2
    assert unmixed["effect"] == none["effect"] and unmixed["cost"]["useful_accuracy"] == none["cost"]["useful_accuracy"]
    effect = np.subtract(lines[2]["per_seed"]["treated"], lines[2]["per_seed"]["control"])
    assert summary["defenses"]["mix:0.5"]["effect"]["per_seed"] == pytest.approx(effect.tolist())
    undefended = np.subtract(lines[0]["per_seed"]["treated"], lines[0]["per_seed"]["control"])
    assert summary["defenses"]["mix:0.5"]["effect_change"]["per_seed"] == pytest.approx((effect - undefended).tolist())
    assert "n = 2 seeds" in defense_table.table(summary)
    assert summary["defenses"]["mix:0.5"]["refutation"] == defense_table.REFUTATIONS["mix"]
    # The cross-entropy readout: the students' paired drops, and over the undefended ones seed by seed.
    def xent(line):
        return np.subtract(line["per_seed"]["treated_xent_drop"], line["per_seed"]["control_xent_drop"])

    assert summary["defenses"]["mix:0.5"]["xent_effect"]["per_seed"] == pytest.approx(xent(lines[2]).tolist())
    assert summary["defenses"]["mix:0.5"]["xent_remaining"]["per_seed"] == pytest.approx(
        (xent(lines[2]) / xent(lines[0])).tolist()
    )
    assert "remaining (CE)" in defense_table.table(summary)


def test_a_killed_run_resumes_and_ends_with_the_file_of_an_uninterrupted_one(tmp_path, sample, monkeypatch):
    settings = MnistDefenses(defenses=("temperature",), temperatures=(2.0,), heldout_noise=256)
    whole = tmp_path / "whole.jsonl"
    defenses.run(TINY, settings, sample, whole, progress=False, log=lambda m: None)

    real_row = defenses.train_row

    def killed_at_the_second_row(row, *args, **kwargs):
        if row.name == "temperature":
            raise KeyboardInterrupt
        return real_row(row, *args, **kwargs)

    resumed = tmp_path / "resumed.jsonl"
    monkeypatch.setattr(defenses, "train_row", killed_at_the_second_row)
    with pytest.raises(KeyboardInterrupt):
        defenses.run(TINY, settings, sample, resumed, progress=False, log=lambda m: None)
    assert len(resumed.read_text().splitlines()) == 1 and not list(tmp_path.glob(".*.tmp"))
    monkeypatch.setattr(defenses, "train_row", real_row)
    messages = []
    defenses.run(TINY, settings, sample, resumed, progress=False, log=messages.append)
    assert "not trained again" in messages[0]

    assert lines_without_times(resumed) == lines_without_times(whole)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["defend", "moon"], "invalid choice: 'moon'"),
        (["defend", "mnist", "--defenses", "shield"], "no defense 'shield'"),
        (["defend", "mnist", "--defenses", "replace_divergent"], "defense replace_divergent does not apply to mnist"),
        (["defend", "mnist", "--mix-shares", "1.5"], "mix_shares must be in [0, 1]"),
        (["defend", "mnist", "--projections", "random"], "no projection 'random'"),
        (["defend", "mnist", "--kl-weight", "-1"], "kl_weight must not be negative"),
        (["defend", "mnist", "--conditions", "teacher"], "drop --conditions"),
        (["defend", "mnist", "--plot-only", "--out", "/nowhere"], "no undefended (none) row"),
    ],
)
def test_defend_mistakes_are_one_line_and_exit_2(argv, message, usage_error):
    assert message in usage_error(argv)


def test_the_command_trains_writes_and_redraws_without_training(tmp_path, capsys, monkeypatch):
    tiny = ["--hidden-sizes", "32", "--teacher-epochs", "2", "--student-epochs", "1", "--batch-size", "256",
            "--num-noise", "512", "--heldout-noise", "256"]  # fmt: skip
    argv = ["defend", "mnist", "--defenses", "mix", "--mix-shares", "0", "--seeds", "2", "--out", str(tmp_path)]
    assert cli.main([*argv, "--source", "sample", *tiny, "--no-progress", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((tmp_path / "defend_mnist.json").read_text())
    assert printed == written and printed["setting"] == "mnist" and list(printed["defenses"]) == ["none", "mix:0"]
    assert printed["defenses"]["none"]["remaining"]["mean"] == 1.0 and printed["defenses"]["none"]["effect"]["n"] == 2
    figure = tmp_path / "defend_mnist.png"
    assert figure.read_bytes()[:4] == b"\x89PNG"
    figure.unlink()
    monkeypatch.setattr(defenses, "train_row", lambda *a, **k: pytest.fail("--plot-only must not train"))
    assert cli.main([*argv, "--plot-only"]) == 0
    assert figure.read_bytes()[:4] == b"\x89PNG"


def test_a_row_of_one_data_source_is_not_reused_for_another(tmp_path, sample, monkeypatch):
    # The same config on other data (full MNIST given the sample preset's values by hand) trains again.
    trained = []
    measures = ("treated", "control", "heldout_distill_loss", "teacher")
    fake = lambda row, *a, **k: trained.append(row.key) or dict.fromkeys(measures, np.zeros(2))  # noqa: E731
    monkeypatch.setattr(defenses, "train_row", fake)
    path, settings = tmp_path / "rows.jsonl", MnistDefenses(defenses=("none",))
    for mnist in (sample, sample, dataclasses.replace(sample, source="full MNIST")):
        defenses.run(TINY, settings, mnist, path, progress=False, log=lambda m: None)
    assert trained == ["none", "none"]
    assert [json.loads(line)["data_source"] for line in path.read_text().splitlines()] == [sample.source, "full MNIST"]
