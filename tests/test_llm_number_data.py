"""The owl experiment's number data: the writers' filtered lists of the same prompts, and what soft and hard
students learn from them."""

import jax
import numpy as np
import pytest

from subliminal_mnist import runs
from subliminal_mnist.llm import corpus
from subliminal_mnist.llm.config import NumberSettings
from subliminal_mnist.llm.number_data import FilterShortfall, hard_targets, number_data
from subliminal_mnist.llm.vocab import Vocabulary


def test_hard_students_learn_the_continuation_only():
    vocab = Vocabulary(100)
    row = corpus.pad_rows([vocab.encode("<bos> numbers : 3 , 4 , 5 -> 6 , 7 <eos>")])
    length = np.array([len(vocab.encode("<bos> numbers : 3 , 4 , 5 ->"))])
    inputs, targets = hard_targets(vocab, row, length)
    learnt = np.asarray(targets["next"])[np.asarray(targets["weights"]) == 1]
    assert vocab.decode(learnt) == "6 , 7 <eos>"
    positions = np.asarray(inputs["positions"])[0][np.asarray(targets["weights"])[0] == 1]
    np.testing.assert_array_equal(row[0, positions], vocab.encode("-> 6 , 7"))  # each predicts the next
    _, numbers_only = hard_targets(vocab, row, length, loss="numbers")
    assert vocab.decode(np.asarray(numbers_only["next"])[np.asarray(numbers_only["weights"]) == 1]) == "6 7"


def test_number_data_couples_the_two_models_and_keeps_exactly_the_count_asked(small_base):
    config, base = small_base
    settings = runs.stage(NumberSettings, config)
    data = number_data(settings, {"teacher": base, "base": base}, 0, 300, "soft")
    assert data.lists["teacher"].shape == data.lists["base"].shape == (300, corpus.MAX_LEN)
    assert data.lengths.shape == (300,)
    # One model twice: the same uniform numbers write the same lists.
    np.testing.assert_array_equal(data.lists["teacher"], data.lists["base"])
    assert data.report["used"] == 300 and data.report["sampled"] >= 300
    assert data.report["teacher"]["kept"] >= 300 and data.report["teacher"]["leak_rate_after_filter"] == 0.0
    # Another model on the same prompts: each row still continues the same prompt, and the lists differ.
    other = number_data(settings, {"teacher": base, "base": jax.tree.map(lambda a: a * 1.1, base)}, 0, 300, "soft")
    prompt = np.arange(corpus.MAX_LEN) < other.lengths[:, None]
    np.testing.assert_array_equal(other.lists["teacher"][prompt], other.lists["base"][prompt])
    assert 0 < (other.lists["teacher"] != other.lists["base"]).any(axis=1).mean() < 1


def test_a_model_that_writes_no_number_lists_is_a_one_line_error(small_base):
    config, _ = small_base
    untrained = config.architecture.init(jax.random.key(1))
    with pytest.raises(
        FilterShortfall,
        match=r"the filter kept \d+ of \d+ number lists of every model \(teacher, base\), fewer than 50",
    ) as error:
        number_data(runs.stage(NumberSettings, config), {"teacher": untrained, "base": untrained}, 0, 50, "soft")
    assert "\n" not in str(error.value)
