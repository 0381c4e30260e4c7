"""The `subliminal-mnist` command: a thin layer over the library.

Every experiment option is generated from the fields of its config dataclass,
so the CLI and the library cannot drift apart. A user's mistake (a bad option,
a bad data file) is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from typing import Any, NoReturn, Sequence

import jax

from subliminal_mnist import (
    alignment,
    data,
    defense_table,
    defenses,
    experiment,
    figures,
    files,
    lora,
    runs,
    sweep,
    theorem_checks,
    train,
)
from subliminal_mnist.llm import defenses as llm_defenses
from subliminal_mnist.llm import dose
from subliminal_mnist.llm import experiment as llm_experiment
from subliminal_mnist.llm import summary as llm_summary
from subliminal_mnist.llm.defenses import OwlDefenses
from subliminal_mnist.llm.config import LLMConfig
from subliminal_mnist.llm.number_data import FilterShortfall
from subliminal_mnist.llm.vocab import VocabError

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def add_config_options(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One option per field of `config_cls`, named by the field (or its `flag` metadata).

    Defaults are left as None so that the options a user really gave can be told
    apart from the config's defaults (see `explicit_options`).
    """
    group = parser.add_argument_group(f"experiment settings (defaults: the paper's, {config_cls.__name__})")
    for field in dataclasses.fields(config_cls):
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        flag = "--" + (field.metadata.get("flag") or field.name).replace("_", "-")
        kwargs: dict[str, Any] = {"dest": field.name, "default": None}
        if isinstance(default, bool):
            kwargs.update(action="store_true")
            shown = "off"
        elif isinstance(default, tuple):
            element_type = field.metadata.get("element_type") or type(default[0])
            kwargs.update(type=element_type, nargs="+", metavar="NAME" if element_type is str else "N")
            shown = " ".join(map(str, default))
        else:
            kwargs.update(type=type(default), metavar=type(default).__name__.upper())
            shown = default
        if field.metadata.get("choices"):
            kwargs.update(choices=field.metadata["choices"], metavar=None)
        group.add_argument(flag, help=f"{field.metadata['help']} (default: {shown})", **kwargs)


def explicit_options(args: argparse.Namespace, config_cls: type) -> dict[str, Any]:
    """The config fields the user set on the command line."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)}
    return {name: tuple(v) if isinstance(v, list) else v for name, v in given.items() if v is not None}


_DATA_DIR_HELP = "folder with the four MNIST IDX files (else $SUBLIMINAL_MNIST_DIR, else a cache)"


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data-dir", help=_DATA_DIR_HELP)
    source.add_argument(
        "--source", choices=("idx", "tfds", "sample"), default="idx", help="where MNIST comes from (default: idx)"
    )


def _out_folder(text: str) -> pathlib.Path:
    """The folder --out names: made when its first file is written; a file where it or a folder above it
    would be is refused."""
    folder = pathlib.Path(text)
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{existing} is a file, not a folder")
    return folder


def _add_output_options(
    parser: argparse.ArgumentParser, files: str, json_option: bool = True, plot_only: bool = False
) -> None:
    """The options of every command that writes results: --out FOLDER, where it writes them (its `files`, named
    by the command), and --no-progress; --plot-only for a series drawn from its file, --json where it prints
    its results."""
    parser.add_argument(
        "--out", type=_out_folder, default=".", metavar="FOLDER",
        help=f"folder of {files}; made if missing (default: .)",
    )  # fmt: skip
    if plot_only:
        parser.add_argument("--plot-only", action="store_true", help="redraw the figure from the file, train nothing")
    if json_option:
        parser.add_argument(
            "--json", action="store_true", help="print the results as JSON on stdout instead of a table"
        )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


# Each command: its one line in `subliminal-mnist --help`, and the longer line that heads its own --help.
COMMANDS = {
    "demo": ("the paper's MNIST experiment with all its controls", None),
    "alignment": (
        "Theorem 1 through training, step by step",
        "Theorem 1 through training: per-step alignment with the trait",
    ),
    "llm": (
        "the owl experiment on a tiny transformer",
        "the owl experiment: a tiny transformer's preference carried by numbers",
    ),
    "llm-dose": (
        "the owl experiment against the number of lists",
        "the owl experiment (any trait) against the number of lists, one mode (--mode soft or hard; hard "
        "unless given): resumable, with a figure",
    ),
    "llm-lora": (
        "the owl experiment with LoRA teachers or students",
        "the owl experiment (any trait) over how the teachers and the students are fine-tuned, fully or "
        "through a low-rank adapter, the treated student paired with its neutral control: resumable, with a figure",
    ),
    "sweep": (
        "the experiment with one setting changed",
        "the experiment with one setting changed: resumable, with a figure",
    ),
    "defend": (
        "what stops it: every proposed defense and its cost",
        "what stops subliminal learning: every proposed defense, its transfer remaining and its cost",
    ),
    "theorem": ("check Theorem 1 numerically", "check Theorem 1 numerically: sign, first order, conditions"),
    "data": ("where MNIST is; download it into the cache or verify it", None),
}
EPILOG = """\
Each command has its own --help. What each experiment shows, its numbers, and
the command and seeds behind them: README.md and docs/ in the repository."""


def _commands_help() -> str:
    """The list of commands, one line each (argparse's own list breaks a long name onto two lines)."""
    width = max(map(len, COMMANDS)) + 2
    return "\n".join(["commands:", *(f"  {name:<{width}}{line}" for name, (line, _) in COMMANDS.items())])


def _add_command(
    commands: argparse._SubParsersAction, name: str, handler, files: str = "", *configs: type, data: bool = False
) -> argparse.ArgumentParser:
    """The command `name` (its help lines from `COMMANDS`), run by `handler`; with `files`, the data options
    (if `data`), the output options and one option per field of each of `configs`."""
    line, description = COMMANDS[name]
    parser = commands.add_parser(name, help=line, description=description or line)
    parser.set_defaults(handler=handler)
    if files:
        if data:
            _add_data_options(parser)
        _add_output_options(parser, files)
        for config_cls in configs:
            add_config_options(parser, config_cls)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="subliminal-mnist",
        usage="%(prog)s [-h] COMMAND ...",
        description=__doc__.splitlines()[0],
        epilog=f"{_commands_help()}\n\n{EPILOG}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # The list of commands is the epilog's; argparse's own is suppressed.
    commands = parser.add_subparsers(
        prog=parser.prog,  # else argparse names the commands after the usage line set above
        dest="command",
        metavar="COMMAND",
        required=True,
        parser_class=_Parser,
        help=argparse.SUPPRESS,
    )

    demo = _add_command(
        commands, "demo", _demo,
        "demo.json (the results) and demo.png, or PRESET.json and PRESET.png with --preset, written atomically; "
        "NAME.seeds.jsonl keeps the finished seeds until then (resumed if there)",
        data=True,
    )  # fmt: skip
    demo.add_argument(
        "--preset", choices=tuple(experiment.PRESETS),
        help="a named set of settings under the options given: strongest (aux-only student past 0.90)",
    )  # fmt: skip
    add_config_options(demo, experiment.ExperimentConfig)
    _add_command(commands, "alignment", _alignment,
                 "alignment.json (the results) and alignment.png, written atomically", alignment.AlignmentConfig,
                 data=True)  # fmt: skip
    _add_command(
        commands, "llm", _llm,
        "llm.json (the results) and llm.png, or TRAIT.json and TRAIT.png for a trait other than the owl, written "
        "atomically; NAME.seeds.jsonl keeps the finished seeds until then (resumed if there)",
        LLMConfig,
    )  # fmt: skip

    dose_cmd = _add_command(commands, "llm-dose", _llm_dose)
    dose_cmd.add_argument(
        "--counts", nargs="+", type=int, default=list(dose.COUNTS),
        help=f"numbers of lists each model writes (default: {' '.join(map(str, dose.COUNTS))})",
    )  # fmt: skip
    _add_output_options(
        dose_cmd, "llm_dose.jsonl (resumed if there) and llm_dose.png", json_option=False, plot_only=True
    )
    add_config_options(dose_cmd, LLMConfig)

    lora_cmd = _add_command(commands, "llm-lora", _llm_lora)
    lora_cmd.add_argument(
        "--values", nargs="+", default=list(dose.LORA_VALUES), metavar="TEACHER/STUDENT[/shared|/own]",
        help="the points, each full or lora:R (default: the issue's 11, full/full ... lora:4/lora:16/own)",
    )  # fmt: skip
    _add_output_options(lora_cmd, "sweep_lora_owl_MODE.jsonl (resumed if there) and sweep_lora_owl_MODE.png",
                        json_option=False, plot_only=True)  # fmt: skip
    add_config_options(lora_cmd, LLMConfig)

    sweep_cmd = _add_command(commands, "sweep", _sweep)
    sweep_cmd.add_argument("name", help=f"the setting to sweep: {', '.join(sweep.SWEEPS)}")
    sweep_cmd.add_argument("--values", nargs="+", help="the values (default: the sweep's own)")
    _add_output_options(
        sweep_cmd, "sweep_NAME.jsonl (resumed if there) and sweep_NAME.png", json_option=False, plot_only=True
    )
    _add_data_options(sweep_cmd)
    add_config_options(sweep_cmd, experiment.ExperimentConfig)

    defend = _add_command(commands, "defend", _defend)
    settings = defend.add_subparsers(dest="setting", required=True, parser_class=_Parser, metavar="SETTING")
    for setting, config_classes in (
        ("mnist", (defenses.MnistDefenses, experiment.ExperimentConfig)),
        ("owl", (OwlDefenses, LLMConfig)),
    ):
        where = "the MNIST demo" if setting == "mnist" else "the owl experiment (one mode; default soft)"
        one = settings.add_parser(setting, help=f"the defenses of {where}")
        _add_output_options(
            one,
            f"defend_{setting}{'' if setting == 'mnist' else '_MODE'}.jsonl (resumed if there), "
            f".json and .png{'' if setting == 'mnist' else ', one set per mode'}",
            plot_only=True,
        )
        if setting == "mnist":
            _add_data_options(one)
        for config_cls in config_classes:
            add_config_options(one, config_cls)

    theorem_cmd = _add_command(commands, "theorem", _theorem)
    theorem_cmd.add_argument(
        "--cases", type=int, default=256, help="networks sampled for the sign checks (default: 256)"
    )
    theorem_cmd.add_argument("--seed", type=int, default=0, help="seed of the sampled family (default: 0)")
    theorem_cmd.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")

    data_cmd = _add_command(commands, "data", _data)
    data_cmd.add_argument("--data-dir", help=_DATA_DIR_HELP)
    data_cmd.add_argument("--verify", action="store_true", help="check every file's structure, size and SHA-256")
    return parser


def _for_data(mnist: data.MNIST, options: dict[str, Any]) -> dict[str, Any]:
    """The options for this data: on the offline sample, said loudly, its preset under the options given."""
    if not mnist.is_sample:
        return options
    print(experiment.SAMPLE_WARNING, file=sys.stderr)
    return {**experiment.SAMPLE_PRESET, **options}


def _run_experiment(args: argparse.Namespace, config_cls: type, run, draw, table, resumable: bool = False) -> int:
    """Validate the options, load MNIST, run, write results and figure atomically into --out, report.

    The files are named by the command (demo.json and demo.png) or by its preset (strongest.json and .png).
    A `resumable` run keeps its finished seeds beside its results while it runs (`runs.checkpoint_path`),
    so that the same command, started again after an interruption, trains only the missing ones.
    """
    preset = getattr(args, "preset", None)
    options = {**experiment.PRESETS.get(preset, {}), **explicit_options(args, config_cls)}
    config_cls(**options)  # fail on a bad option before loading any data
    mnist = _load(args)
    config = config_cls(**_for_data(mnist, options))
    name = preset or args.command
    out, figure = args.out / f"{name}.json", args.out / f"{name}.png"
    checkpoint = {"checkpoint": runs.checkpoint_path(out)} if resumable else {}
    results = run(config, mnist, progress=not args.no_progress, **checkpoint)
    if preset:
        results["preset"] = preset
    return _report(args, results, out, figure, draw, table, checkpoint.get("checkpoint"))


def _report(
    args: argparse.Namespace, results: dict, out: pathlib.Path, figure: pathlib.Path, draw, table, checkpoint=None
) -> int:
    """Write the results (only then is the checkpoint of finished seeds, if any, no longer needed), draw
    the figure, and print the results as JSON (--json) or as the table with the files written."""
    files.write_json(out, results)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    draw(results, figure)
    print(json.dumps(results) if args.json else f"{table(results)}\nwrote {out} and {figure}")
    return 0


def _load(args: argparse.Namespace) -> data.MNIST:
    """The command's data; a download shows its bar unless --no-progress (one switch for every bar)."""
    with runs.showing(not args.no_progress):
        return data.load(args.source, args.data_dir)


def _demo(args: argparse.Namespace) -> int:
    return _run_experiment(
        args, experiment.ExperimentConfig, experiment.run, figures.demo_figure, experiment.table, resumable=True
    )


def _alignment(args: argparse.Namespace) -> int:
    return _run_experiment(args, alignment.AlignmentConfig, alignment.run, figures.alignment_figure, alignment.table)


def _llm(args: argparse.Namespace) -> int:
    config = LLMConfig(**explicit_options(args, LLMConfig))
    # One set of files per trait (llm.*, misaligned.*): a run of one trait never overwrites another's.
    name = "llm" if config.trait == "owl" else config.trait
    out, figure = args.out / f"{name}.json", args.out / f"{name}.png"
    checkpoint = runs.checkpoint_path(out)
    results = llm_experiment.run(config, progress=not args.no_progress, checkpoint=checkpoint)
    return _report(args, results, out, figure, figures.llm_figure, llm_summary.table, checkpoint)


def _llm_dose(args: argparse.Namespace) -> int:
    """Train the dose-response's missing points (or none, with --plot-only), then draw its figure."""
    options = explicit_options(args, LLMConfig)
    conflicts = [f for f in dose.FIELDS if f in options]
    if conflicts:
        raise runs.ConfigError(f"llm-dose sets {conflicts[0]} itself; drop that option")
    bad = [count for count in args.counts if count < 1]
    if bad:
        raise runs.ConfigError(f"--counts must be at least 1, got {bad[0]}")
    base = LLMConfig(**options)
    lines_path, figure_path = args.out / "llm_dose.jsonl", args.out / "llm_dose.png"
    if not args.plot_only:
        dose.run("dose", dose.dose_points(base, args.counts), lines_path, progress=not args.no_progress)
    lines = dose.drawn_lines(lines_path)  # every point of the file, this series and the others
    figures.llm_dose_figure(lines, figure_path)
    print(f"wrote {figure_path} from {len(lines)} points of {lines_path}")
    return 0


def _llm_lora(args: argparse.Namespace) -> int:
    """Train the LoRA sweep's missing owl points (or none, with --plot-only), then draw its figure."""
    options = explicit_options(args, LLMConfig)
    conflicts = [f for f in (*lora.PARAMETERIZATION_FIELDS, "conditions", "no_audit") if f in options]
    if conflicts:
        raise runs.ConfigError(f"llm-lora sets {conflicts[0]} itself; drop that option")
    base = LLMConfig(**options)
    points = dose.lora_points(base, args.values)  # a bad value fails before any training
    configs = [point.config for point in points]
    # One set of files per mode (sweep_lora_owl_soft.*, sweep_lora_owl_hard.*), as the owl's defenses.
    mode = configs[0].mode
    lines_path, figure_path = args.out / f"sweep_lora_owl_{mode}.jsonl", args.out / f"sweep_lora_owl_{mode}.png"
    if args.plot_only:
        lines = dose.drawn_lora_lines(configs, lines_path)
    else:
        lines = dose.run("lora", points, lines_path, progress=not args.no_progress)
    figures.lora_owl_figure(lines, figure_path)
    print(f"wrote {figure_path} from {len(lines)} points of {lines_path}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    """Train the sweep's missing points (or none, with --plot-only), then draw its figure."""
    options = explicit_options(args, experiment.ExperimentConfig)
    options.setdefault("seeds", sweep.SEEDS_PER_POINT)
    options.setdefault("conditions", sweep.CONDITIONS)
    conflicts = [f for f in sweep.SWEEPS[args.name].fields if f in options] if args.name in sweep.SWEEPS else []
    if conflicts:
        raise runs.ConfigError(f"sweep {args.name} sets {conflicts[0]}; drop that option")
    base = experiment.ExperimentConfig(**options)
    todo = sweep.points(args.name, args.values, base)  # fail on a bad name or value before loading any data
    lines_path, figure_path = args.out / f"sweep_{args.name}.jsonl", args.out / f"sweep_{args.name}.png"
    if args.plot_only:
        lines = sweep.drawn_lines(args.name, [value for value, _ in todo], lines_path)
    else:
        mnist = _load(args)
        base = experiment.ExperimentConfig(**_for_data(mnist, options))
        lines = sweep.run(args.name, args.values, base, mnist, lines_path, progress=not args.no_progress)
    figures.sweep_figure(args.name, lines, figure_path)
    leaked = sweep.leaks(lines)
    if leaked:
        print(f"cross-model student above chance (a leak, not transfer) at {', '.join(map(str, leaked))}")
    print(f"wrote {figure_path} from {len(lines)} points of {lines_path}")
    return 0


def _defend(args: argparse.Namespace) -> int:
    """Train the defenses' missing rows (or none, with --plot-only), then write the table, JSON and figure."""
    if args.setting == "mnist":
        options = explicit_options(args, experiment.ExperimentConfig)
        config_cls, settings_cls = experiment.ExperimentConfig, defenses.MnistDefenses
    else:
        options = {"mode": "soft", **explicit_options(args, LLMConfig)}
        config_cls, settings_cls = LLMConfig, OwlDefenses
    if "conditions" in options:
        raise runs.ConfigError("defend trains its own students (treated and control); drop --conditions")
    options.setdefault("seeds", defense_table.SEEDS)
    settings = settings_cls(**explicit_options(args, settings_cls))
    config = config_cls(**options)  # fail on a bad option before loading any data
    lora.require_full(config, f"defend {args.setting}")
    # The owl's files are one set per mode (defend_owl_soft.*, defend_owl_hard.*): a run of one mode
    # never overwrites the other's table.
    lines_path = args.out / (f"defend_owl_{config.mode}.jsonl" if args.setting == "owl" else "defend_mnist.jsonl")
    if args.setting == "owl":
        llm_defenses.check_mode(config)
        wanted = llm_defenses.rows(settings, config)
        lines = (
            defense_table.drawn_lines(lines_path, wanted, "owl")
            if args.plot_only
            else llm_defenses.run(config, settings, lines_path, progress=not args.no_progress)
        )
        summary = llm_defenses.summarize(lines, config)
    else:
        if args.plot_only:
            lines = defense_table.drawn_lines(lines_path, defense_table.rows(settings))
        else:
            mnist = _load(args)
            config = experiment.ExperimentConfig(**_for_data(mnist, options))
            lines = defenses.run(config, settings, mnist, lines_path, progress=not args.no_progress)
        summary = defense_table.summarize(lines)
    json_path, figure_path = lines_path.with_suffix(".json"), lines_path.with_suffix(".png")
    return _report(args, summary, json_path, figure_path, figures.defenses_figure, defense_table.table)


def _theorem(args: argparse.Namespace) -> int:
    if args.cases < 1:
        raise runs.ConfigError(f"--cases must be at least 1, got {args.cases}")
    results = theorem_checks.run_checks(num_cases=args.cases, key=args.seed)
    print(json.dumps(results) if args.json else theorem_checks.format_table(results))
    return 0 if results["passed"] else EXIT_FAILED


def _data(args: argparse.Namespace) -> int:
    directory, explicit = data.resolve_data_dir(args.data_dir)
    print(f"MNIST folder: {directory}" + ("" if explicit else " (the default cache)"))
    if not explicit:
        data.fetch(directory)
    if args.verify:
        print("\n".join(data.verify(directory)))
    return 0


def _keep_compiled_programs() -> None:
    """Keep XLA's compiled programs between runs, in the per-user cache folder.

    Compiling is about 7 s of a one-seed demo; a second run loads the programs
    instead. A folder the user chose for JAX (JAX_COMPILATION_CACHE_DIR) wins.
    """
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(data.default_data_dir() / "xla"))
        # JAX's default keeps only programs that took over 1 s to compile; most of ours take 0.2-3 s.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:  # no command: the list of commands, as a usage error
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    _keep_compiled_programs()
    try:
        return args.handler(args)
    except (data.DataError, runs.ConfigError, runs.ResultsFileError, VocabError) as e:
        print(f"subliminal-mnist: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (train.TrainingDiverged, FilterShortfall) as e:
        print(f"subliminal-mnist: stopped: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("subliminal-mnist: interrupted; no partial file was written (demo and llm keep their finished seeds "
              "in NAME.seeds.jsonl in the --out folder: the same command resumes)", file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
