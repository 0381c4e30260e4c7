"""The dose-response: points by count and mode, resuming, shared models, the figure, user mistakes; the LoRA
sweep's points (`llm-lora`) the same way."""

import dataclasses
import json

import pytest

from subliminal_mnist import cli, figures, runs, train
from subliminal_mnist.llm import analysis, corpus, dose, summary, traits
from subliminal_mnist.llm import experiment as llm
from subliminal_mnist.llm.config import LLMConfig
from subliminal_mnist.llm.vocab import ANIMALS

# The smallest owl experiment whose models still write number lists (as the CLI's test), with the
# students of the dose-response's two main pairs only.
TINY = LLMConfig(
    seeds=1, numbers=100, width=16, base_rows=2048, base_epochs=2, base_learning_rate=1e-2, teacher_lines=256,
    student_epochs=1, entangled_sequences=50, theorem_sequences=4, audit_sequences=64, in_context_lists=8,
    conditions=("same_init", "neutral_control", "base_control"),
)  # fmt: skip


def test_points_share_their_models_resume_and_draw(tmp_path, monkeypatch):
    trained, real_base = [], llm.train_base
    monkeypatch.setattr(llm, "train_base", lambda *a, **k: trained.append(a[1]) or real_base(*a, **k))
    path = tmp_path / "llm_dose.jsonl"
    lines = dose.run("dose", dose.dose_points(TINY, [300, 600]), path, progress=False, log=lambda message: None)
    assert [line["hard_sequences"] for line in lines] == [300, 600]
    assert len(trained) == 2, "the bases of the second count are the first's (the seed's and its partner's)"
    assert all(line["config"]["mode"] == "hard" for line in lines)
    assert set(lines[0]["hard"]["paired"]) == {"same_init_minus_neutral_control", "same_init_minus_base_control"}
    # The owl's own measures, by phrasing and by animal.
    same_init = lines[0]["hard"]["conditions"]["same_init"]
    assert set(same_init) >= {*summary.measures_of(traits.Animal()), "by_phrasing", "delta_p_animals"}
    assert len(same_init["by_phrasing"]["p_trait_given_animal"]) == len(corpus.PHRASINGS)
    assert list(same_init["delta_p_animals"]) == list(ANIMALS)
    assert list(tmp_path.glob("*.seeds.jsonl")) == [], "each finished point's checkpoint is gone"

    def no_training(*args, **kwargs):
        raise AssertionError("a finished point trained again")

    monkeypatch.setattr(llm, "run", no_training)
    messages = []
    again = dose.run("dose", dose.dose_points(TINY, [300, 600]), path, progress=False, log=messages.append)
    assert json.dumps(again) == json.dumps(lines) and "not trained again" in messages[0]
    # A soft point of the same file: its own mode and count, its own line, the same bases (cached in the
    # run that trained them, so a new run trains them again: two more).
    monkeypatch.undo()
    points = dose.dose_points(dataclasses.replace(TINY, mode="soft"), [300])
    soft = dose.run("dose", points, path, progress=False, log=lambda message: None)
    assert soft[0]["config"]["mode"] == "soft" and soft[0]["soft_sequences"] == 300
    assert set(soft[0]["soft"]["paired"]) == {"same_init_minus_neutral_control"}  # no base control in soft mode
    drawn = dose.drawn_lines(path)
    assert sorted(dose.sequences(line) for line in drawn) == [300, 300, 600]
    # `llm-dose --plot-only` draws them from the --out folder's llm_dose.jsonl into its llm_dose.png.
    assert cli.main(["llm-dose", "--plot-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "llm_dose.png").read_bytes()[:4] == b"\x89PNG"


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


# ----------------------------------------------------------------------------------------------
# The LoRA sweep (`llm-lora`): points by how the teachers and the students are fine-tuned.


def test_a_lora_points_config_is_the_pair_of_students_in_one_mode_without_the_audit():
    config = dose.lora_config(TINY, "lora:2/lora:4/own")
    assert TINY.mode == "both" and config.mode == "soft"  # soft when the base asks for both
    assert config.conditions == dose.LORA_CONDITIONS == ("same_init", "neutral_control")
    assert config.no_audit and not TINY.no_audit
    assert (config.teacher_params, config.student_params, config.adapter_init) == ("lora:2", "lora:4", "own")
    assert dose.lora_config(TINY, "full/lora:1").adapter_init == "shared"
    assert dose.lora_config(dataclasses.replace(TINY, mode="hard"), "full/full").mode == "hard"
    # Everything else is the base's.
    undone = dict(mode=TINY.mode, conditions=TINY.conditions, no_audit=False, teacher_params="full",
                  student_params="full", adapter_init="shared")  # fmt: skip
    assert dataclasses.replace(config, **undone) == TINY
    for value, message in (("full/lora:0", "'lora:0' is not a parameterization"),
                           ("full/lora:2/shared", "only a LoRA student of a LoRA teacher can share"),
                           ("full", "is not TEACHER/STUDENT")):  # fmt: skip
        with pytest.raises(runs.ConfigError, match=message) as error:
            dose.lora_config(TINY, value)
        assert "\n" not in str(error.value)


def _no_training(*args, **kwargs):
    raise AssertionError("trained before refusing")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["llm-lora", "--values", "full/full", "full/lora:0"], "'lora:0' is not a parameterization"),
        (["llm-lora", "--values", "full/lora:2/own"], "only a LoRA student of a LoRA teacher can share"),
        (["llm-lora", "--student-params", "lora:2"], "llm-lora sets student_params itself; drop that option"),
        (["llm-lora", "--teacher-params", "full"], "llm-lora sets teacher_params itself"),
        (["llm-lora", "--adapter-init", "own"], "llm-lora sets adapter_init itself"),
        (["llm-lora", "--conditions", "same_init"], "llm-lora sets conditions itself"),
        (["llm-lora", "--no-audit"], "llm-lora sets no_audit itself"),
        (["llm-lora", "--plot-only"], "holds no point of the LoRA sweep to draw"),
        (["defend", "owl", "--student-params", "lora:2"], "defend owl fine-tunes every parameter; student_params"),
        (["defend", "owl", "--teacher-params", "lora:4"], "defend owl fine-tunes every parameter; teacher_params"),
    ],
)
def test_lora_mistakes_are_one_line_errors_before_anything_trains(argv, message, usage_error, tmp_path, monkeypatch):
    for module, name in ((llm, "run"), (llm, "train_base"), (train, "fit")):
        monkeypatch.setattr(module, name, _no_training)
    assert message in usage_error([*argv, "--out", str(tmp_path), "--no-progress"])
    assert list(tmp_path.iterdir()) == [], "nothing written"


def test_lora_points_train_each_parameterization_resume_and_draw(tmp_path, monkeypatch):
    base = dataclasses.replace(TINY, seeds=2, soft_sequences=300, theorem_sequences=4)
    values = ["full/full", "lora:2/lora:2/shared"]
    results, real_run, audits = [], llm.run, []
    monkeypatch.setattr(llm, "run", lambda *a, **k: results.append(real_run(*a, **k)) or results[-1])
    monkeypatch.setattr(analysis, "filters", lambda *a, **k: audits.append(a) or pytest.fail("no_audit ran the filters"))
    path = tmp_path / "sweep_lora_owl.jsonl"
    lines = dose.run("lora", dose.lora_points(base, values), path, progress=False, log=lambda message: None)
    assert [line["value"] for line in lines] == values and len(path.read_text().splitlines()) == 2
    assert [(line["config"]["teacher_params"], line["config"]["student_params"]) for line in lines] == [
        ("full", "full"), ("lora:2", "lora:2")
    ]
    for line in lines:
        assert line["config"]["mode"] == "soft" and line["config"]["no_audit"]
        soft = line["soft"]
        assert set(soft["conditions"]) == set(dose.LORA_CONDITIONS)
        assert soft["paired"]["same_init_minus_neutral_control"]["n"] == 2
        for student in dose.LORA_CONDITIONS:
            for step in ("gradient", "adam"):
                assert all(len(soft["first_step"][student][step][k]) == 2 for k in ("dot", "cosine", "trait_cosine"))
    assert len(results) == 2 and not audits
    assert all("filters" not in r and "entangled_numbers" not in r for r in results), "no audit"
    assert list(tmp_path.glob("*.seeds.jsonl")) == [], "each finished point's checkpoint is gone"
    # Read back: nothing trains, the same lines.
    monkeypatch.setattr(llm, "run", _no_training)
    messages = []
    again = dose.run("lora", dose.lora_points(base, values), path, progress=False, log=messages.append)
    assert json.dumps(again) == json.dumps(lines) and "not trained again" in messages[0]
    # What --plot-only draws: the points asked for, in their order.
    configs = [dose.lora_config(base, value) for value in values]
    assert [line["value"] for line in dose.drawn_lora_lines(configs, path)] == values
    assert [line["value"] for line in dose.drawn_lora_lines(configs[::-1], path)] == values[::-1]
    assert [line["value"] for line in dose.drawn_lora_lines(configs[1:], path)] == values[1:]
    drawn = []
    monkeypatch.setattr(figures.plt, "close", drawn.append)
    figures.lora_owl_figure(lines, tmp_path / "sweep_lora_owl.png")
    assert (tmp_path / "sweep_lora_owl.png").read_bytes()[:4] == b"\x89PNG"
    (fig,) = drawn
    assert len(fig.axes) == 3
    assert [t.get_text() for t in fig.axes[2].get_xticklabels()] == values
    # A hard run has no first step (its students learn sampled tokens): two panels, no error.
    without_first_step = [{k: v for k, v in line["soft"].items() if k != "first_step"} for line in lines]
    hard = [{**line, "config": {**line["config"], "mode": "hard"}, "hard": soft}
            for line, soft in zip(lines, without_first_step)]  # fmt: skip
    figures.lora_owl_figure(hard, tmp_path / "sweep_lora_owl_hard.png")
    assert len(drawn[-1].axes) == 2
