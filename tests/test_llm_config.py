"""The owl experiment's settings: one-line errors for bad ones, and each stage's part of them, which is all that
its functions read and all that its cache key holds."""

import dataclasses

import pytest

from subliminal_mnist import runs
from subliminal_mnist.llm.config import BaseSettings, LLMConfig, NumberSettings, TeacherSettings


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
        (dict(conditions=("same_init", "dragon")), "no condition 'dragon'; the conditions are same_init, "),
        (dict(conditions=("neutral_control", "cross_init")), "conditions must include same_init"),
    ],
)
def test_bad_settings_are_one_line_errors(bad, message):
    with pytest.raises(runs.ConfigError, match=message) as error:
        LLMConfig(**bad)
    assert "\n" not in str(error.value)


def test_each_stage_changes_with_the_settings_it_reads_and_no_other():
    config = LLMConfig()
    for field in ("base_epochs", "window", "trait"):  # a base's: every later stage reads it too
        changed = dataclasses.replace(config, **{field: "cat" if field == "trait" else 3})
        assert all(runs.stage(kind, changed) != runs.stage(kind, config) for kind in (BaseSettings, TeacherSettings))
    changed = dataclasses.replace(config, teacher_params="lora:4")  # a teacher's, not a base's
    assert runs.stage(BaseSettings, changed) == runs.stage(BaseSettings, config)
    assert runs.stage(TeacherSettings, changed) != runs.stage(TeacherSettings, config)
    changed = dataclasses.replace(config, banned=(7,))  # the filter's: the lists', not the models'
    assert runs.stage(TeacherSettings, changed) == runs.stage(TeacherSettings, config)
    assert runs.stage(NumberSettings, changed) != runs.stage(NumberSettings, config)
    # The run's speed, its students and its counts of lists change none of them.
    other = dataclasses.replace(config, workers=1, soft_sequences=10, student_epochs=9, conditions=("same_init",))
    assert all(runs.stage(kind, other) == runs.stage(kind, config) for kind in (BaseSettings, TeacherSettings,
                                                                                NumberSettings))  # fmt: skip
    # What a stage makes of its settings is the config's.
    misaligned = LLMConfig(trait="misaligned", numbers=100)
    stage = runs.stage(NumberSettings, misaligned)
    assert stage.banned_numbers == (13,) and stage.architecture == misaligned.architecture
