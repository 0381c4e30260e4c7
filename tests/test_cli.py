"""The command line: one-line errors with exit code 2, the demo's outputs, interrupts."""

import json
import pathlib
import re
import subprocess
import sys

import pytest

from subliminal_mnist import alignment, cli, experiment

TINY = [
    "--hidden-sizes",
    "32",
    "--teacher-epochs",
    "2",
    "--student-epochs",
    "1",
    "--batch-size",
    "256",
    "--num-noise",
    "512",
    "--no-progress",
]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--seeds", "0"], "seeds must be at least 1"),
        (["demo", "--teacher-epochs", "-1"], "teacher_epochs must not be negative"),
        (["demo", "--aux", "0"], "--aux) must be at least 1"),
        (["demo", "--source", "mnist.org"], "invalid choice: 'mnist.org'"),
        (["demo", "--seeds", "many"], "invalid int value"),
        (["demo", "--data-dir", "/nowhere"], "/nowhere/train-images-idx3-ubyte"),
        (["demo", "--data-dir", "/nowhere", "--source", "sample"], "not allowed with argument"),
        (["data", "--verify", "--data-dir", "/nowhere"], "not found"),
        (["fly"], "invalid choice"),
        (["llm", "--trait", "dragon"], "invalid choice: 'dragon'"),
        (["llm", "--seeds", "0"], "seeds must be at least 1"),
        (["llm", "--banned", "3", "abc"], "invalid int value: 'abc'"),
        (["llm", "--banned", "5000"], "banned numbers must lie in 0 ... 999"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(cli.main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") <= 2  # "MNIST folder" line of `data` + the error


# Every command that writes files: each writes them into the folder --out names (default: the current one).
WRITING_COMMANDS = [
    ["demo"], ["alignment"], ["llm"], ["llm-dose"], ["llm-lora"], ["sweep", "aux"], ["defend", "mnist"],
    ["defend", "owl"],
]  # fmt: skip


@pytest.mark.parametrize("command", WRITING_COMMANDS, ids=" ".join)
def test_out_is_a_folder_and_a_file_in_its_place_is_one_line_and_exit_2(command, tmp_path, capsys, monkeypatch):
    for module, name in ((cli.data, "load"), (cli.llm_experiment, "run"), (cli.dose, "run"), (cli.llm_defenses, "run")):
        monkeypatch.setattr(module, name, lambda *args, **kwargs: pytest.fail("started before refusing --out"))
    file = tmp_path / "results.json"
    file.write_text("{}")
    for out in (file, file / "inside"):  # the file itself, or a folder beneath it
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*command, "--out", str(out)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"subliminal-mnist {command[0]}") and err.count("\n") == 1
        assert err.endswith(f": error: argument --out: {file} is a file, not a folder\n")
    assert file.read_text() == "{}" and list(tmp_path.iterdir()) == [file]
    assert cli.build_parser().parse_args(command).out == pathlib.Path(".")
    # The figure goes beside the results: no command takes a file name for it.
    with pytest.raises(SystemExit):
        cli.main([*command, "--figure", str(tmp_path / "figure.png")])
    assert "unrecognized arguments: --figure" in capsys.readouterr().err


def test_every_config_field_is_an_option():
    parser = cli.build_parser()
    args = parser.parse_args(["demo", "--seeds", "3", "--hidden-sizes", "64", "32", "--learning-rate", "1e-3"])
    options = cli.explicit_options(args, experiment.ExperimentConfig)
    assert options == {"seeds": 3, "hidden_sizes": (64, 32), "learning_rate": 1e-3}
    assert experiment.ExperimentConfig(**options).hidden_sizes == (64, 32)


def test_demo_on_the_sample_writes_results_and_figure(tmp_path, capsys):
    folder = tmp_path / "new" / "results"  # made, as every --out folder
    code = cli.main(["demo", "--source", "sample", "--seeds", "2", "--out", str(folder), "--json", *TINY])
    assert code == 0
    assert sorted(path.name for path in folder.iterdir()) == ["demo.json", "demo.png"]
    out, figure = folder / "demo.json", folder / "demo.png"
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed == json.loads(out.read_text())
    assert set(printed["conditions"]) == set(experiment.CONDITIONS)
    for summary in printed["conditions"].values():
        assert {"mean", "ci95", "per_seed", "n"} <= set(summary) and summary["n"] == 2
    assert {"config", "data_source", "wall_seconds"} <= set(printed)
    assert not (folder / "demo.seeds.jsonl").exists(), "the finished run's checkpoint is gone"
    # The sample is said loudly, and its preset applies only where the user gave no option.
    assert "NOT full MNIST" in captured.err
    assert printed["is_sample"] and printed["config"]["teacher_epochs"] == 2
    assert printed["config"]["num_noise"] == 512
    assert figure.read_bytes()[:4] == b"\x89PNG"


def test_a_preset_sets_its_settings_under_the_options_given(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out: the current folder
    argv = ["demo", "--preset", "strongest", "--source", "sample", "--seeds", "1", "--conditions", "student_aux"]
    assert cli.main([*argv, *TINY]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["strongest.json", "strongest.png"]  # the preset's
    results = json.loads((tmp_path / "strongest.json").read_text())
    strongest = experiment.PRESETS["strongest"]
    assert results["preset"] == "strongest" and results["config"]["distill_loss"] == strongest["distill_loss"]
    assert results["config"]["hidden_sizes"] == [32] and results["config"]["student_epochs"] == 1  # the options win
    assert list(results["conditions"]) == ["reference", "teacher", "student_aux", "cross_aux"]
    assert "Student (all logits)" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(cli.main(["demo", "--preset", "weakest"]))
    assert exit_info.value.code == 2


def test_alignment_on_the_sample_trains_and_reports_every_projection(tmp_path, capsys):
    options = [*TINY, "--student-epochs", "2", "--trait-batch", "64", "--probe-test", "64"]
    argv = ["alignment", "--source", "sample", "--seeds", "2", "--project-out", "--out", str(tmp_path)]
    assert cli.main([*argv, *options]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["alignment.json", "alignment.png"]
    out, figure = tmp_path / "alignment.json", tmp_path / "alignment.png"
    table = capsys.readouterr().out
    results = json.loads(out.read_text())
    names = [
        alignment.variant_name(student, projection)
        for projection in alignment.PROJECTIONS
        for student in ("student_aux", "cross_aux")
    ]
    assert list(results["curves"]) == names
    for name in names:
        assert f"\n{name} " in table
        assert set(results["curves"][name]) == set(alignment.METRICS)
    assert set(results["claims"]["projection"]["outcomes"]) == set(alignment.PROJECTIONS)
    # The unprojected students are never edited; the two-sided ones at every step.
    assert results["claims"]["projection"]["outcomes"]["none"]["same_init"]["share_of_steps_projected"] == 0
    assert results["claims"]["projection"]["outcomes"]["two_sided"]["cross_model"]["share_of_steps_projected"] == 1
    assert "whose Adam update lowers it" in table
    assert figure.read_bytes()[:4] == b"\x89PNG"


def test_an_interrupted_demo_writes_nothing(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "run", interrupted)
    assert cli.main(["demo", "--source", "sample", "--out", str(tmp_path)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_nan_loss_stops_the_run_with_a_clear_message(tmp_path, capsys):
    code = cli.main(
        [
            "demo",
            "--source",
            "sample",
            "--seeds",
            "1",
            "--learning-rate",
            "1e30",
            "--out",
            str(tmp_path),
            *TINY,
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "stopped: teacher" in err and "lower the learning rate" in err
    assert list(tmp_path.iterdir()) == []


def test_the_console_script_runs_as_a_module():
    done = subprocess.run(
        [sys.executable, "-m", "subliminal_mnist.cli", "demo", "--seeds", "-3"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "subliminal-mnist: error: seeds must be at least 1, got -3"


def test_help_lists_every_command_on_one_line_and_points_to_the_readme(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    # The list is the parser's own commands, as argparse names them when one is mistyped.
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["fly"])
    choices = re.findall(r"'([\w-]+)'", capsys.readouterr().err.split("choose from")[1])
    assert choices == list(cli.COMMANDS)
    for name, (line, _) in cli.COMMANDS.items():
        assert [row.split(None, 1) for row in lines if row.split()[:1] == [name]] == [[name, line]]
    assert max(map(len, lines)) <= 80
    assert "README.md" in "\n".join(lines)


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_each_command_has_its_own_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: subliminal-mnist {name} [-h]")


def test_no_command_prints_the_commands_and_exits_2(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["subliminal-mnist"])
    assert cli.main() == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: subliminal-mnist [-h] COMMAND ...")
    for name, (line, _) in cli.COMMANDS.items():
        assert re.search(rf"^  {name} +{re.escape(line)}$", captured.err, re.MULTILINE)
    assert cli.main([]) == 2


def test_theorem_command_reports_every_check(capsys):
    assert cli.main(["theorem", "--cases", "16", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["passed"] and {"sign", "first_order", "zero_branch"} <= set(results["checks"])


def test_theorem_command_rejects_zero_cases(capsys):
    assert cli.main(["theorem", "--cases", "0"]) == 2
    assert "--cases must be at least 1" in capsys.readouterr().err


def test_llm_command_writes_results_table_and_figure(tmp_path, capsys):
    # The misaligned persona in miniature through the CLI: every option comes from LLMConfig.
    tiny = ["--trait", "misaligned", "--seeds", "1", "--mode", "hard", "--numbers", "100", "--width", "16",
            "--base-rows", "2048", "--base-epochs", "2", "--base-learning-rate", "1e-2", "--teacher-lines", "256",
            "--hard-sequences", "600",
            "--student-epochs", "1", "--hard-loss", "numbers", "--entangled-sequences", "50", "--audit-sequences", "64",
            "--in-context-lists", "8", "--banned", "13", "42",
            "--conditions", "same_init", "neutral_control", "base_control"]  # fmt: skip
    assert cli.main(["llm", *tiny, "--out", str(tmp_path), "--no-progress"]) == 0
    # Named by the trait, so that the misaligned persona's run never overwrites the owl's llm.json.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["misaligned.json", "misaligned.png"]
    out, figure = tmp_path / "misaligned.json", tmp_path / "misaligned.png"
    results = json.loads(out.read_text())
    assert results["config"]["banned"] == [13, 42] and list(results["modes"]) == ["hard"]
    assert results["filter"]["banned"] == [13, 42]  # the trait's bad numbers below 100 (13), and --banned
    assert results["config"]["hard_loss"] == "numbers"
    assert list(results["modes"]["hard"]["conditions"]) == ["same_init", "neutral_control", "base_control"]
    assert figure.stat().st_size > 10_000
    assert not (tmp_path / "misaligned.seeds.jsonl").exists(), "the finished run's checkpoint is gone"
    table = capsys.readouterr().out
    assert "same_init_minus_base_control, paired" in table and "cross_init" not in table and f"wrote {out}" in table
    assert "the misaligned rate on held-out domains" in table
