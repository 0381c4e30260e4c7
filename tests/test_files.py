"""Atomic writes: a file is whole or untouched, never half-written."""

import json

import pytest

from subliminal_mnist import files


def test_write_json_writes_the_whole_file(tmp_path):
    path = tmp_path / "sub" / "results.json"
    files.write_json(path, {"a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    assert list(path.parent.iterdir()) == [path]


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, interrupt):
    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(interrupt):
        with files.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise interrupt()
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]
