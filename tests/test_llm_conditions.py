"""The owl experiment's students and comparisons: which students a config's mode trains, which models write
their lists, and that every pair names students there are."""

import pytest

from subliminal_mnist.llm.conditions import (
    CONDITIONS,
    GAP_DIFFERENCES,
    HARD_ONLY,
    MODES,
    PAIRS,
    conditions_of,
    sampled_models,
    with_own_corpus_base,
)
from subliminal_mnist.llm.config import LLMConfig


def test_a_soft_run_leaves_out_the_hard_only_students_and_keeps_the_order_of_conditions():
    every = LLMConfig()
    assert conditions_of(every, "hard") == tuple(CONDITIONS)
    assert conditions_of(every, "soft") == tuple(c for c in CONDITIONS if c not in HARD_ONLY)
    # The students asked for, in any order, come in the order of CONDITIONS.
    asked = LLMConfig(conditions=("base_control", "cross_init", "same_init"))
    assert conditions_of(asked, "hard") == ("same_init", "cross_init", "base_control")
    assert conditions_of(asked, "soft") == ("same_init", "cross_init")


@pytest.mark.parametrize(
    "conditions, mode, expected",
    [
        (tuple(CONDITIONS), "both", True),
        (("same_init", "cross_neutral_own_corpus"), "soft", True),
        (("same_init", "neutral_control", "cross_init", "cross_neutral"), "both", False),
        (("same_init", "shuffled_within", "base_control"), "hard", False),
    ],
)
def test_the_ablation_base_trains_only_when_a_student_starts_from_it(conditions, mode, expected):
    assert with_own_corpus_base(LLMConfig(conditions=conditions, mode=mode)) is expected


def test_every_students_data_is_written_by_a_model_its_mode_samples():
    assert sampled_models("soft") == ("teacher", "neutral")
    assert sampled_models("hard") == ("teacher", "neutral", "base")  # the base's own lists: the paper's control
    for mode in MODES:
        for condition in conditions_of(LLMConfig(), mode):
            assert CONDITIONS[condition][1].removesuffix("_shuffled") in sampled_models(mode)


def test_every_pair_names_two_students_and_every_gap_two_pairs():
    assert set(HARD_ONLY) <= set(CONDITIONS)
    assert {start for start, _ in CONDITIONS.values()} == {"base", "cross_base", "own_corpus_base"}
    for treated, control in PAIRS.values():
        assert treated in CONDITIONS and control in CONDITIONS and treated != control
    for gap, other_gap in GAP_DIFFERENCES.values():
        assert gap in PAIRS and other_gap in PAIRS and gap != other_gap
