"""Shared fixtures (the full MNIST files, when the environment provides them; the language-model runs' models)
and how the tests are shared out between pytest-xdist's workers."""

from __future__ import annotations

import json
import os
import pathlib

import pytest

from subliminal_mnist import data, runs

# The test modules whose tests share trained language models (the `llm_cache`, `small_base` and `lora_models`
# fixtures): one worker builds them.
_SHARING_MODELS = {"test_llm_analysis", "test_llm_defenses", "test_llm_experiment", "test_llm_first_step",
                   "test_llm_number_data"}  # fmt: skip
# Owl settings of the language-model tests. TINY: small enough for a short run on 2 cores, large enough that the
# models write number lists and that a same-init student picks the trait up. MINI: smaller still (as the CLI's
# test), models that write number lists, for what needs no effect. LORA: MINI with LoRA teachers and students
# (rank 2; the student's A shared with the teachers'), and fewer lists.
TINY = dict(
    mode="soft", numbers=100, base_rows=8192, base_epochs=2, teacher_learning_rate=1e-3,
    soft_sequences=3000, theorem_sequences=16, entangled_sequences=200,
)  # fmt: skip
MINI = dict(
    mode="soft", numbers=100, width=16, base_rows=2048, base_epochs=2, base_learning_rate=1e-2, teacher_lines=256,
    soft_sequences=300, student_epochs=1, theorem_sequences=4, entangled_sequences=50, audit_sequences=64,
    in_context_lists=8,
)  # fmt: skip
LORA = dict(MINI, teacher_params="lora:2", student_params="lora:2", soft_sequences=64)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    """How pytest-xdist (`-n 2 --dist loadgroup`, pyproject.toml) shares the tests out between its two
    workers: a module's tests go to one worker, so that its module fixtures are built once (the modules
    that share `llm_cache` go together), and the lesson, the longest test (about 5 minutes in a kernel of
    its own), goes first, so that the other worker runs the rest beside it."""
    for item in items:
        module = item.path.stem
        item.add_marker(pytest.mark.xdist_group("llm_cache" if module in _SHARING_MODELS else module))
    items.sort(key=lambda item: item.path.stem != "test_lesson")  # stable: the order within stays


@pytest.fixture(scope="session")
def real_mnist_dir() -> pathlib.Path:
    """The folder named by $SUBLIMINAL_MNIST_DIR; skips the test when unset (CI sets it)."""
    directory = os.environ.get("SUBLIMINAL_MNIST_DIR")
    if not directory:
        pytest.skip("set SUBLIMINAL_MNIST_DIR to the folder with the four MNIST IDX files")
    if not pathlib.Path(directory).is_dir():
        pytest.fail(f"SUBLIMINAL_MNIST_DIR={directory} is not a folder")  # a typo must not pass as a skip
    return pathlib.Path(directory)


@pytest.fixture(scope="session")
def real_mnist(real_mnist_dir: pathlib.Path) -> data.MNIST:
    """Full MNIST, loaded and verified once per test session."""
    return data.load_idx_dir(real_mnist_dir)


@pytest.fixture
def compiled(caplog):
    """compiled(name): how many times XLA compiled jit(name) since the test began.

    JAX logs a compilation also when it loads the program from its persistent
    cache (which the CLI turns on): either means `jit` had no program in memory.
    """
    import jax

    def compiled(name: str) -> int:
        return sum(f"XLA compilation of jit({name})" in r.getMessage() for r in caplog.records)

    with jax.log_compiles(True), caplog.at_level("WARNING"):
        yield compiled


@pytest.fixture
def usage_error(capsys):
    """usage_error(argv): runs the command, checks that it ends with exit code 2 and one line on
    stderr (a user's mistake, never a traceback), and returns that line."""
    import sys

    from subliminal_mnist import cli

    def run(argv: list[str]) -> str:
        with pytest.raises(SystemExit) as exit_info:
            sys.exit(cli.main(argv))  # argparse's errors exit by themselves; the others return 2
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        return err

    return run


@pytest.fixture(scope="session")
def llm_cache():
    """Trained bases and teachers of the small language-model runs, shared by the test modules whose
    settings agree (`llm.experiment.run`'s cache: what it reuses is the very model it would train)."""
    return {}


@pytest.fixture(scope="session")
def small_base():
    """(config, base): TINY's seed-0 base on a smaller corpus, which writes number lists."""
    from subliminal_mnist.llm import experiment
    from subliminal_mnist.llm.config import BaseSettings, LLMConfig

    config = LLMConfig(**{**TINY, "base_rows": 1024})
    return config, experiment.train_base(runs.stage(BaseSettings, config), 0)


@pytest.fixture(scope="session")
def lora_models():
    """Seed 0 of a LoRA-teacher run (LORA): its config, {"base", "cross_base" (an untrained other start),
    "teacher", "neutral"}, their number lists, and the starts the teachers' fine-tunings got."""
    import jax

    from subliminal_mnist.llm import experiment, fine_tuning
    from subliminal_mnist.llm.config import BaseSettings, LLMConfig, NumberSettings, TeacherSettings
    from subliminal_mnist.llm.number_data import number_data

    config = LLMConfig(**LORA)
    base = experiment.train_base(runs.stage(BaseSettings, config), 0)
    starts, real_fit = [], fine_tuning.fit_next_tokens
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fine_tuning, "fit_next_tokens", lambda a, s, *r, **k: starts.append(s) or real_fit(a, s, *r, **k))
        teachers = [experiment.train_teacher(runs.stage(TeacherSettings, config), base, 0, n) for n in (False, True)]
    models = {"base": base, "cross_base": config.architecture.init(jax.random.key(7)), "teacher": teachers[0],
              "neutral": teachers[1]}  # fmt: skip
    writers = {m: models[m] for m in ("teacher", "neutral")}
    numbers = number_data(runs.stage(NumberSettings, config), writers, 0, 64, "soft")
    return config, models, numbers, starts


def lines_without_times(path) -> list[dict]:
    """A JSON-lines results file's lines without their wall times: what a resumed run must reproduce."""
    return [
        {k: v for k, v in json.loads(line).items() if k != "wall_seconds"} for line in path.read_text().splitlines()
    ]
