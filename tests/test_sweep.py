"""Sweeps: points from a config, one JSON line per finished point, resuming, the figure, user mistakes."""

import dataclasses
import json

import numpy as np
import pytest

from subliminal_mnist import alignment, cli, data, experiment, runs, sweep, train

TINY = experiment.ExperimentConfig(
    seeds=1, hidden_sizes=(32,), teacher_epochs=2, student_epochs=1, batch_size=256, num_noise=512
)


@pytest.fixture(scope="module")
def sample():
    return data.load_sample()


def _without_times(path):
    return [
        {k: v for k, v in json.loads(line).items() if k != "wall_seconds"} for line in path.read_text().splitlines()
    ]


def test_each_point_changes_only_its_field():
    width = sweep.points("width", ["16", "64"], TINY)
    assert [(v, c.hidden_sizes) for v, c in width] == [(16, (16, 16)), (64, (64, 64))]
    assert sweep.points("depth", ["3"], TINY)[0][1].hidden_sizes == (256, 256, 256)
    loss = sweep.points("loss", None, TINY)
    assert [(c.distill_loss, c.kl_temperature) for _, c in loss] == [
        ("kl", 0.5), ("kl", 1.0), ("kl", 2.0), ("kl", 4.0), ("kl", 8.0), ("mse", 1.0)
    ]
    noise = sweep.points("noise", ["gaussian", "correlated:4", "mnist"], TINY)
    assert [(c.noise, c.noise_length_scale) for _, c in noise] == [("gaussian", 2.0), ("correlated", 4.0), ("mnist", 2.0)]
    assert [c.init_perturbation for _, c in sweep.points("init_perturbation", None, TINY)] == [0, 0.05, 0.1, 0.2, 0.5, 1]
    assert [c.shared_layers for _, c in sweep.points("heads", None, TINY)] == ["all", "readout", "hidden", "none"]
    for name in sweep.SWEEPS:
        for _, config in sweep.points(name, None, TINY):
            assert {k for k, v in vars(config).items() if v != getattr(TINY, k)} <= set(sweep.SWEEPS[name].fields)


def test_points_that_change_only_the_students_train_each_teacher_once(tmp_path, sample, monkeypatch):
    teachers, real_fit = [], train.fit

    def counting_fit(*args, **kwargs):
        teachers.extend(["trained"] if args[4].name.startswith("teacher") else [])
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train, "fit", counting_fit)
    tiny = experiment.ExperimentConfig(**{**vars(TINY), "seeds": 2, "conditions": sweep.CONDITIONS})
    lines = sweep.run("init_perturbation", ["0", "1"], tiny, sample, tmp_path / "s.jsonl", progress=False)
    assert len(teachers) == 2  # one per seed, for both points
    assert [line["conditions"]["teacher"]["per_seed"] for line in lines][0] == lines[1]["conditions"]["teacher"]["per_seed"]
    assert list(lines[0]["conditions"]) == ["reference", "teacher", "student_aux", "cross_aux"]
    assert lines[1]["conditions"]["student_aux"]["per_seed"] == lines[1]["conditions"]["cross_aux"]["per_seed"]
    sweep.run("teacher_epochs", ["1", "2"], tiny, sample, tmp_path / "t.jsonl", progress=False)
    assert len(teachers) == 6, "each teacher setting trains its own teachers"


def test_a_killed_sweep_resumes_and_ends_with_the_file_of_an_uninterrupted_one(tmp_path, sample, monkeypatch):
    whole = tmp_path / "whole.jsonl"
    sweep.run("student_epochs", ["1", "2"], TINY, sample, whole, progress=False)

    real_run, calls = experiment.run, []

    def killed_at_the_second_point(config, mnist, progress=True, teacher_cache=None):
        calls.append(config.student_epochs)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run(config, mnist, progress=progress, teacher_cache=teacher_cache)

    resumed = tmp_path / "resumed.jsonl"
    monkeypatch.setattr(experiment, "run", killed_at_the_second_point)
    with pytest.raises(KeyboardInterrupt):
        sweep.run("student_epochs", ["1", "2"], TINY, sample, resumed, progress=False)
    assert len(resumed.read_text().splitlines()) == 1  # the finished point, whole; nothing of the other
    assert not list(tmp_path.glob(".*.tmp"))

    monkeypatch.setattr(experiment, "run", real_run)
    messages = []
    lines = sweep.run("student_epochs", ["1", "2"], TINY, sample, resumed, progress=False, log=messages.append)
    assert "not trained again" in messages[0]
    assert _without_times(resumed) == _without_times(whole)
    assert [line["value"] for line in lines] == [1, 2]
    assert (
        lines[1]["conditions"]["student_aux"]["per_seed"]
        == json.loads(whole.read_text().splitlines()[1])["conditions"]["student_aux"]["per_seed"]
    )


def test_a_line_from_other_versions_or_settings_is_never_reused_silently(tmp_path, sample, monkeypatch):
    path = tmp_path / "s.jsonl"
    sweep.run("aux", ["3"], TINY, sample, path, progress=False)
    line = json.loads(path.read_text())
    path.write_text(json.dumps({**line, "versions": {**line["versions"], "jax": "0.0.1"}}) + "\n")
    trained, messages = [], []
    monkeypatch.setattr(experiment, "run", lambda config, mnist, **options: trained.append(config) or line)
    sweep.run("aux", ["3"], TINY, sample, path, progress=False, log=messages.append)
    assert len(trained) == 1 and "was computed by other code (jax 0.0.1 ≠ " in messages[0]
    assert len(path.read_text().splitlines()) == 1, "the stale line is replaced, not kept beside the new one"
    messages.clear()
    sweep.run("aux", ["3"], experiment.ExperimentConfig(**{**vars(TINY), "seeds": 2}), sample, path,
              progress=False, log=messages.append)  # fmt: skip
    assert len(trained) == 2 and "are for other settings; kept, not used" in messages[0]
    sweep.run("aux", ["3"], TINY, dataclasses.replace(sample, source="full MNIST"), path, progress=False)
    assert len(trained) == 3, "the same config on other data trains again"


def test_a_file_that_is_not_json_lines_is_a_one_line_error(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"sweep": "aux"}\nnot json\n')
    with pytest.raises(runs.ResultsFileError, match="line 2: not a JSON line"):
        sweep.run("aux", ["3"], TINY, None, path, progress=False)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sweep", "widht"], "no sweep named 'widht'"),
        (["sweep", "width", "--values", "-3"], "sweep width, value -3: hidden_sizes must be positive"),
        (["sweep", "width", "--values", "abc"], "sweep width, value abc: 'abc' is not an integer"),
        (["sweep", "loss", "--values", "l1"], "'l1' is not one of kl[:NUMBER], mse"),
        (["sweep", "loss", "--values", "kl:hot"], "sweep loss, value kl:hot: 'hot' is not a number"),
        (["sweep", "loss", "--values", "mse:2"], "'mse:2' is not one of kl[:NUMBER], mse"),
        (["sweep", "noise", "--values", "correlated:-1"], "noise_length_scale must be a positive number"),
        (["sweep", "init_perturbation", "--values", "-3"], r"init_perturbation must be in [0, 1], got -3.0"),
        (["sweep", "heads", "--values", "top"], "'top' is not one of all, readout, hidden, none"),
        (["sweep", "noise", "--noise-length-scale", "3"], "sweep noise sets noise_length_scale; drop that option"),
        (["sweep", "aux", "--aux", "5"], "sweep aux sets num_aux; drop that option"),
        (["sweep", "aux", "--plot-only", "--out", "/nowhere"], "holds no point of sweep aux"),
        (["sweep", "lora", "--values", "full/lora:4/shared"], "only a LoRA student of a LoRA teacher can share"),
        (["sweep", "lora", "--student-params", "lora:2"], "sweep lora sets student_params; drop that option"),
        (["sweep", "lora", "--adapter-init", "own"], "sweep lora sets adapter_init; drop that option"),
    ],
)
def test_sweep_mistakes_are_one_line_and_exit_2(argv, message, usage_error):
    assert message in usage_error(argv)


def test_the_command_trains_draws_and_redraws_without_training(tmp_path, capsys, monkeypatch):
    tiny = ["--hidden-sizes", "32", "--teacher-epochs", "2", "--batch-size", "256", "--num-noise", "512"]
    argv = [
        "sweep",
        "student_epochs",
        "--values",
        "1",
        "2",
        "--seeds",
        "2",
        "--source",
        "sample",
        "--out",
        str(tmp_path),
    ]
    assert cli.main([*argv, *tiny, "--no-progress"]) == 0
    lines = [json.loads(line) for line in (tmp_path / "sweep_student_epochs.jsonl").read_text().splitlines()]
    assert [line["config"]["seeds"] for line in lines] == [2, 2]  # --seeds wins over the sweep's 5
    figure = tmp_path / "sweep_student_epochs.png"
    first = figure.read_bytes()
    assert first[:4] == b"\x89PNG"
    figure.unlink()
    monkeypatch.setattr(experiment, "run", lambda *a, **k: pytest.fail("--plot-only must not train"))
    assert cli.main(["sweep", "student_epochs", "--values", "1", "2", "--plot-only", "--out", str(tmp_path)]) == 0
    assert figure.read_bytes()[:4] == b"\x89PNG"
    assert "from 2 points" in capsys.readouterr().out


def test_a_cross_model_student_above_chance_is_called_a_leak():
    def line(value, mean, ci95):
        return {"value": value, "conditions": {"cross_aux": {"mean": mean, "ci95": ci95}}}

    lines = [line(3, 0.113, 0.022), line(30, 0.140, 0.024), line(100, 0.13, 0.01), line(1, 0.5, None)]
    # 0.140 - 0.024 = 0.116 and 0.13 - 0.01 = 0.12 lie above 0.1135, a constant guess of the digit 1;
    # 0.113 +- 0.022 does not, and one seed has no interval to judge by.
    assert sweep.leaks(lines) == [30, 100]


def test_the_lora_sweep_reads_teacher_student_pairs():
    points = sweep.points("lora", None, TINY)
    assert [value for value, _ in points] == list(sweep.SWEEPS["lora"].values)
    setting = {value: (c.teacher_params, c.student_params, c.adapter_init) for value, c in points}
    assert setting["full/full"] == ("full", "full", "shared")
    assert setting["full/lora:4"] == ("full", "lora:4", "shared")
    assert setting["lora:4/full"] == ("lora:4", "full", "shared")
    assert setting["lora:4/lora:4/shared"] == ("lora:4", "lora:4", "shared")
    assert setting["lora:4/lora:16/own"] == ("lora:4", "lora:16", "own")


@pytest.mark.parametrize(
    "value, message",
    [
        ("full/lora:4/shared", "only a LoRA student of a LoRA teacher can share its adapter"),
        ("lora:4/full/own", "only a LoRA student of a LoRA teacher can share its adapter"),
        ("lora:4/lora:4/both", "is not TEACHER/STUDENT[/shared|/own]"),
        ("lora:0/full", "'lora:0' is not a parameterization"),
        ("full/lora", "'lora' is not a parameterization"),
        ("full", "is not TEACHER/STUDENT[/shared|/own]"),
        ("full/full/shared/own", "is not TEACHER/STUDENT[/shared|/own]"),
    ],
)
def test_a_bad_lora_pair_is_a_one_line_config_error(value, message):
    with pytest.raises(runs.ConfigError) as error:
        sweep.points("lora", [value], TINY)
    assert str(error.value).startswith(f"sweep lora, value {value}: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_a_lora_sweep_keeps_each_points_first_step_cosines(tmp_path, sample, monkeypatch):
    tiny = experiment.ExperimentConfig(**{**vars(TINY), "seeds": 2, "conditions": sweep.CONDITIONS})
    values, path, cache = ["full/lora:2", "lora:2/lora:2/shared"], tmp_path / "lora.jsonl", {}
    lines = sweep.run("lora", values, tiny, sample, path, progress=False, teacher_cache=cache)
    assert [line["value"] for line in lines] == values
    students = experiment.STUDENT_GROUPS["aux"]
    for line in lines:
        assert (line["config"]["student_params"], line["config"]["adapter_init"]) == ("lora:2", "shared")
        assert list(line["first_step"]) == ["weights", "trait"]
        for cosines in line["first_step"].values():
            assert list(cosines) == list(students)
            for summary in cosines.values():
                assert summary["n"] == 2 and len(summary["per_seed"]) == 2 and summary["ci95"] is not None
                assert all(-1 <= c <= 1 for c in summary["per_seed"])
    # Each student's cosines, seed by seed: those of its own start (the same-init and the cross-model
    # student start apart, so a swap or a reordering of the seeds shows).
    config = sweep.points("lora", values[1:], tiny)[0][1]
    arrays = experiment.on_device(sample)
    probe = alignment.probe_sets(arrays, sweep.TRAIT_BATCH)
    partners = runs.cross_partners(2, config.seed)
    teachers = experiment.train_teachers(config, arrays, np.arange(2), partners, cache)
    cosines = experiment.first_step_cosines(config, teachers, students, probe["trait_images"], probe["trait_labels"],
                                            sweep.FIRST_STEP_INPUTS)  # fmt: skip
    for name, values_of in cosines.items():
        for i, student in enumerate(students):
            got = lines[1]["first_step"][name][student]["per_seed"]
            np.testing.assert_allclose(got, values_of[:, i], rtol=1e-4, atol=1e-6, err_msg=f"{name} {student}")
        assert not np.allclose(values_of[:, 0], values_of[:, 1])
    # Read back, not trained again: the line keeps its cosines.
    monkeypatch.setattr(experiment, "run", lambda *a, **k: pytest.fail("a finished point trained again"))
    assert sweep.run("lora", values, tiny, sample, path, progress=False, log=lambda m: None) == lines
