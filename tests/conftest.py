"""Shared fixtures (the full MNIST files, when the environment provides them; the language-model runs' models)
and how the tests are shared out between pytest-xdist's workers."""

from __future__ import annotations

import json
import os
import pathlib

import pytest

from subliminal_mnist import data


# The test modules whose tests share the `llm_cache` fixture's trained models.
_SHARING_MODELS = {"test_llm_defenses", "test_llm_experiment"}


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


def lines_without_times(path) -> list[dict]:
    """A JSON-lines results file's lines without their wall times: what a resumed run must reproduce."""
    return [
        {k: v for k, v in json.loads(line).items() if k != "wall_seconds"} for line in path.read_text().splitlines()
    ]
