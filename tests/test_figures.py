"""The figures are drawn from results dicts: the demo's, and the defenses' with no label over another."""

import matplotlib.pyplot
import pytest

from subliminal_mnist import defense_table, experiment, figures


def fake_results(is_sample=False):
    conditions = {
        name: {"mean": 0.1 + 0.1 * i, "ci95": 0.01 * i, "per_seed": [0.1 + 0.1 * i] * 4}
        for i, name in enumerate(experiment.CONDITIONS)
    }
    return {"conditions": conditions, "is_sample": is_sample}


def test_demo_figure_is_a_png(tmp_path):
    for is_sample in (False, True):
        path = tmp_path / f"demo{is_sample}.png"
        figures.demo_figure(fake_results(is_sample), path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demoFalse.png", "demoTrue.png"]


def fake_defenses(setting):
    """A defenses summary whose points crowd: four rows on one point, three a hair apart, one alone."""
    where = [(0.5, 0.0)] * 4 + [(0.5 + 1e-3 * i, 0.01 * i) for i in (1, 2, 3)] + [(0.9, 1.0)]
    keys = ["none", "detector_filter:0.1", "l2_to_start", "temperature:0.25", "mix:0.1", "detector_filter:0.5",
            "other_init", "temperature:4"]  # fmt: skip
    rows = {
        key: {
            "cost": {cost: {"mean": x, "ci95": 0.01} for cost in defense_table.COSTS[setting]},
            "remaining": {"mean": y, "ci95": 0.05},
            "effect": {"n": 5},
        }
        for key, (x, y) in zip(keys, where)
    }
    # A cost's interval cut at its bound (drawn asymmetric), and an unmatched optimizer row (said in the key).
    rows["l2_to_start"]["cost"][next(iter(defense_table.COSTS[setting]))]["interval"] = [0.0, 0.51]
    rows["other_init"]["matched"] = False
    return {"setting": setting, "defenses": rows, "trait": "owl", "mode": "soft", "config": {"seed": 0}}


@pytest.mark.parametrize("setting", ["mnist", "owl"])
def test_defenses_figure_labels_overlap_nothing(tmp_path, monkeypatch, setting):
    # The figure as saved (closing it is skipped to keep it): the points' labels, the key and the title clear
    # of one another, however many points coincide.
    drawn = []
    monkeypatch.setattr(figures.plt, "close", drawn.append)
    path = tmp_path / f"defend_{setting}.png"
    figures.defenses_figure(fake_defenses(setting), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = drawn
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for ax in fig.axes for t in ax.texts]  # the points' labels, and the key's lines and title
    legends = [legend for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes)] if legend]
    key = [t for legend in legends for t in [*legend.texts, legend.get_title()]]
    assert len(labels) == 2 * 8  # one label per row and panel
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in [*labels, *key, fig._suptitle] if t]
    crossed = [(a, b) for i, (a, box) in enumerate(boxes) for b, other in boxes[i + 1 :] if box.overlaps(other)]
    assert not crossed
    assert "7  other_init  (unmatched)" in [t.get_text() for t in key]
    assert "seeds 0-4" in fig._suptitle.get_text() and "subliminal-mnist defend" in fig._suptitle.get_text()
    matplotlib.pyplot.close(fig)
