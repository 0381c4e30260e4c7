"""The lesson notebook: it runs top to bottom on the bundled sample, and its plain-text twin agrees with it."""

import pathlib

import jupytext
import nbformat
from nbclient import NotebookClient

THEORY = pathlib.Path(__file__).resolve().parent.parent / "theory"


def test_the_notebook_and_its_plain_text_twin_agree():
    # Edit theory/lesson.py, then `jupytext --sync theory/lesson.py` (or the reverse): a cell
    # changed in one file only fails here.
    notebook = nbformat.read(THEORY / "lesson.ipynb", as_version=4)
    twin = jupytext.read(THEORY / "lesson.py")
    assert [(cell.cell_type, cell.source) for cell in notebook.cells] == [
        (cell.cell_type, cell.source) for cell in twin.cells
    ]


def test_the_lesson_runs_top_to_bottom_on_the_sample(monkeypatch):
    # On the bundled sample, as a reader without MNIST sees it; its own asserts check the numbers
    # it shows, so a silent break of an effect fails here too (nbclient raises on any error).
    monkeypatch.delenv("SUBLIMINAL_MNIST_DIR", raising=False)
    notebook = nbformat.read(THEORY / "lesson.ipynb", as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(THEORY)}})
    client.execute()
    printed = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "the whole lesson ran in" in printed
    # Every cell that draws shows its picture (a backend set by an import once blanked every plt.show()).
    drawing = [cell for cell in notebook.cells if cell.cell_type == "code" and ("plt.show()" in cell.source
                                                                               or "show(figures." in cell.source)]
    assert len(drawing) >= 8
    blank = [cell.source.splitlines()[0] for cell in drawing
             if not any("image/png" in output.get("data", {}) for output in cell.outputs)]
    assert blank == [], f"cells that draw nothing: {blank}"
