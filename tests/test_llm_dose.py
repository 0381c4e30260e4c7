"""The dose-response: points by count and mode, resuming, shared models, the figure, user mistakes."""

import dataclasses
import json

import pytest

from subliminal_mnist import figures
from subliminal_mnist.llm import corpus, dose, traits
from subliminal_mnist.llm import experiment as llm
from subliminal_mnist.llm.vocab import ANIMALS

# The smallest owl experiment whose models still write number lists (as the CLI's test), with the
# students of the dose-response's two main pairs only.
TINY = llm.LLMConfig(
    seeds=1, numbers=100, width=16, base_rows=2048, base_epochs=2, base_learning_rate=1e-2, teacher_lines=256,
    student_epochs=1, entangled_sequences=50, theorem_sequences=4, audit_sequences=64, in_context_lists=8,
    conditions=("same_init", "neutral_control", "base_control"),
)  # fmt: skip


def test_points_share_their_models_resume_and_draw(tmp_path, monkeypatch):
    trained, real_base = [], llm.train_base
    monkeypatch.setattr(llm, "train_base", lambda *a, **k: trained.append(a[1]) or real_base(*a, **k))
    path = tmp_path / "llm_dose.jsonl"
    lines = dose.run(TINY, [300, 600], path, progress=False, log=lambda message: None)
    assert [line["hard_sequences"] for line in lines] == [300, 600]
    assert len(trained) == 2, "the bases of the second count are the first's (the seed's and its partner's)"
    assert all(line["config"]["mode"] == "hard" for line in lines)
    assert set(lines[0]["hard"]["paired"]) == {"same_init_minus_neutral_control", "same_init_minus_base_control"}
    # The owl's own measures, by phrasing and by animal.
    same_init = lines[0]["hard"]["conditions"]["same_init"]
    assert set(same_init) >= {*llm.measures_of(traits.Animal()), "by_phrasing", "delta_p_animals"}
    assert len(same_init["by_phrasing"]["p_trait_given_animal"]) == len(corpus.PHRASINGS)
    assert list(same_init["delta_p_animals"]) == list(ANIMALS)
    assert list(tmp_path.glob("*.seeds.jsonl")) == [], "each finished point's checkpoint is gone"

    def no_training(*args, **kwargs):
        raise AssertionError("a finished point trained again")

    monkeypatch.setattr(llm, "run", no_training)
    messages = []
    again = dose.run(TINY, [300, 600], path, progress=False, log=messages.append)
    assert json.dumps(again) == json.dumps(lines) and "not trained again" in messages[0]
    # A soft point of the same file: its own mode and count, its own line, the same bases (cached in the
    # run that trained them, so a new run trains them again: two more).
    monkeypatch.undo()
    soft = dose.run(dataclasses.replace(TINY, mode="soft"), [300], path, progress=False, log=lambda message: None)
    assert soft[0]["config"]["mode"] == "soft" and soft[0]["soft_sequences"] == 300
    assert set(soft[0]["soft"]["paired"]) == {"same_init_minus_neutral_control"}  # no base control in soft mode
    drawn = dose.drawn_lines(path)
    assert sorted(dose.sequences(line) for line in drawn) == [300, 300, 600]
    figures.llm_dose_figure(drawn, tmp_path / "dose.png")
    assert (tmp_path / "dose.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["llm-dose", "--soft-sequences", "10"], "llm-dose sets soft_sequences itself"),
        (["llm-dose", "--hard-sequences", "10"], "llm-dose sets hard_sequences itself"),
        (["llm-dose", "--counts", "100", "0"], "--counts must be at least 1, got 0"),
        (["llm-dose", "--plot-only", "--out", "/nonexistent"], "holds no point of the dose-response"),
    ],
)
def test_mistakes_are_one_line_errors(argv, message, usage_error):
    assert message in usage_error(argv)
