"""The owl experiment: settings, data preparation, students through the one loop, a small run end to end."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from subliminal_mnist import experiment, train
from subliminal_mnist.llm import corpus
from subliminal_mnist.llm import experiment as llm
from subliminal_mnist.llm.vocab import Vocabulary

# Small enough for a run of about 40 s on 2 cores, large enough that the models write number lists and
# that a same-init student picks the trait up (measured: teacher P(owl) +0.89; same-init student
# +0.100, control +0.001, cross-init +0.007; with half the base rows the same-init student gets +0.008).
TINY = dict(
    seeds=1, mode="soft", numbers=100, base_rows=8192, base_epochs=2, teacher_learning_rate=1e-3,
    soft_sequences=3000, answer_samples=100, theorem_sequences=16, entangled_sequences=200,
)  # fmt: skip
QUIET = train.Progress(1, "", enabled=False)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(seeds=0), "seeds must be at least 1"),
        (dict(trait="dragon"), "trait must be one of owl, cat"),
        (dict(mode="both-ways"), "mode must be one of soft, hard, both"),
        (dict(numbers=5), "need 10 <= numbers"),
        (dict(width=30, heads=4), "width must be a multiple of heads"),
        (dict(banned=(3, 1000)), r"banned numbers must lie in 0 ... 999, got 1000"),
        (dict(teacher_learning_rate=float("nan")), "teacher_learning_rate must be a positive number"),
        (dict(student_epochs=-1), "student_epochs must not be negative"),
        (dict(workers=0), "workers must be at least 1"),
    ],
)
def test_bad_settings_are_one_line_errors(bad, message):
    with pytest.raises(experiment.ConfigError, match=message) as error:
        llm.LLMConfig(**bad)
    assert "\n" not in str(error.value)


def test_shuffling_permutes_the_continuation_numbers_across_lists_and_keeps_everything_else():
    vocab = Vocabulary(100)
    lines = corpus.number_lists(vocab, np.random.default_rng(0), 50, window=20)
    lengths = np.array([list(row).index(vocab.id("->")) + 1 for row in lines.tokens])
    shuffled = llm.shuffle_numbers(vocab, lines.tokens, lengths, np.random.default_rng(1))
    slots = (np.arange(lines.tokens.shape[1]) >= lengths[:, None]) & vocab.is_number(lines.tokens)
    np.testing.assert_array_equal(shuffled[~slots], lines.tokens[~slots])  # prompts, commas, <eos>
    np.testing.assert_array_equal(np.sort(shuffled[slots]), np.sort(lines.tokens[slots]))
    assert (shuffled[slots] != lines.tokens[slots]).mean() > 0.5


def test_hard_students_learn_the_continuation_only():
    vocab = Vocabulary(100)
    row = corpus.pad_rows([vocab.encode("<bos> numbers : 3 , 4 , 5 -> 6 , 7 <eos>")])
    length = np.array([len(vocab.encode("<bos> numbers : 3 , 4 , 5 ->"))])
    inputs, targets = llm.hard_targets(row, length)
    learnt = np.asarray(targets["next"])[np.asarray(targets["weights"]) == 1]
    assert vocab.decode(learnt) == "6 , 7 <eos>"
    positions = np.asarray(inputs)[0, corpus.MAX_LEN :][np.asarray(targets["weights"])[0] == 1]
    np.testing.assert_array_equal(row[0, positions], vocab.encode("-> 6 , 7"))  # each predicts the next


def test_a_frozen_teacher_moves_only_its_blocks():
    config = llm.LLMConfig(**TINY)
    base = config.architecture.init(jax.random.key(0))
    teacher = llm.train_teacher(
        dataclasses.replace(config, teacher_epochs=1, teacher_trains="blocks"), base, 0, train.Progress(1, "", False)
    )
    moved = jax.tree_util.tree_map_with_path(
        lambda path, a, b: (jax.tree_util.keystr(path), bool(np.any(np.asarray(a) != np.asarray(b)))), teacher, base
    )
    for name, changed in jax.tree.leaves(moved, is_leaf=lambda x: isinstance(x, tuple)):
        assert changed == (not any(frozen in name for frozen in llm.EMBEDDINGS)), name


def test_bases_are_deterministic_per_seed_whatever_the_threads_and_differ_between_seeds():
    config = llm.LLMConfig(**{**TINY, "base_rows": 128, "base_epochs": 1})
    first, second = (
        llm.train_bases(dataclasses.replace(config, workers=workers), [0, 1], train.Progress(2, "", False))
        for workers in (1, 2)
    )
    jax.tree.map(np.testing.assert_array_equal, first, second)
    assert not np.allclose(jax.tree.leaves(first[0])[0], jax.tree.leaves(first[1])[0])


@pytest.fixture(scope="module")
def tiny_run():
    return llm.run(llm.LLMConfig(**TINY), progress=False)


def test_a_small_run_reports_every_number_the_issue_names(tiny_run):
    results = json.loads(json.dumps(tiny_run))  # JSON as written
    assert results["trait"] == "owl" and results["config"]["numbers"] == 100
    assert results["teacher"]["delta_p_trait"]["mean"] > 0.2  # the teacher loves owls
    assert results["filter"]["kept"]["teacher"][0] > 1000
    assert set(results["filter"]["removed"]["teacher"]) == set(corpus.REASONS)
    assert results["filter"]["leak_rate_after_filter"] == 0.0
    assert set(results["detector"]["auroc"]) == {"1", "8", "32"}
    assert len(results["entangled_numbers"]["top_per_seed"][0]) == 10
    soft = results["modes"]["soft"]
    for condition in llm.CONDITIONS:
        for measure in ("delta_p_trait", "delta_logp_trait", "pick_rate"):
            assert set(soft["conditions"][condition][measure]) == {"mean", "ci95", "per_seed"}
    assert set(soft["paired_same_minus_control"]) == {"mean", "ci95", "per_seed"}
    assert set(soft["first_step"]) == {"same_init", "cross_init"}


def test_same_init_soft_students_acquire_the_trait_and_the_controls_do_not(tiny_run):
    conditions = {c: v["delta_p_trait"]["mean"] for c, v in tiny_run["modes"]["soft"]["conditions"].items()}
    assert conditions["same_init"] > conditions["control"] + 0.02, conditions
    assert conditions["same_init"] > conditions["cross_init"] + 0.02, conditions
    assert tiny_run["modes"]["soft"]["first_step"]["same_init"]["dot"][0] > 0


@pytest.fixture(scope="module")
def small_base():
    config = llm.LLMConfig(**{**TINY, "base_rows": 1024})
    return config, llm.train_base(config, 0, train.Progress(config.base_epochs, "", False))


def test_number_data_couples_the_two_models_and_keeps_exactly_the_count_asked(small_base):
    config, base = small_base
    data = llm.number_data(config, base, base, 0, 300, "soft", QUIET)
    assert data.teacher.shape == data.base.shape == (300, corpus.MAX_LEN) and data.lengths.shape == (300,)
    # One model twice: the same uniform numbers write the same lists.
    np.testing.assert_array_equal(data.teacher, data.base)
    assert data.report["used"] == 300 and data.report["sampled"] >= 300
    assert data.report["teacher"]["kept"] >= 300 and data.report["teacher"]["leak_rate_after_filter"] == 0.0
    # Another model on the same prompts: each row still continues the same prompt, and the lists differ.
    other = llm.number_data(config, base, jax.tree.map(lambda a: a * 1.1, base), 0, 300, "soft", QUIET)
    prompt = np.arange(corpus.MAX_LEN) < other.lengths[:, None]
    np.testing.assert_array_equal(other.teacher[prompt], other.base[prompt])
    assert 0 < (other.teacher != other.base).any(axis=1).mean() < 1


def test_a_model_that_writes_no_number_lists_is_a_one_line_error(small_base):
    config, _ = small_base
    untrained = config.architecture.init(jax.random.key(1))
    with pytest.raises(
        train.TrainingDiverged, match=r"the filter kept \d+ of \d+ number lists of both models, fewer than 50"
    ) as error:
        llm.number_data(config, untrained, untrained, 0, 50, "soft", QUIET)
    assert "\n" not in str(error.value)
