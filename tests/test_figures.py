"""The figures are drawn from results dicts: the demo's, the defenses' with no label over another, and the
lora sweep's three panels."""

import matplotlib.pyplot
import numpy as np
import pytest

from subliminal_mnist import defense_table, experiment, figures, runs


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


def fake_lora_lines(seeds=4):
    """Lines of a lora sweep: accuracies whose paired differences vary far less than either student's
    accuracy (each seed's two students move together), and each aux-only student's first-step cosines
    (`sweep.first_step`)."""
    rng = np.random.default_rng(0)
    values = ["full/full", "full/lora:4", "lora:4/full", "lora:4/lora:4/shared", "lora:4/lora:16/shared",
              "lora:4/lora:16/own"]  # fmt: skip
    lines = []
    for i, value in enumerate(values):
        seed_level = 0.2 * rng.standard_normal(seeds)  # shared by a seed's two students: pairing removes it
        cross = 0.12 + seed_level + 0.01 * rng.standard_normal(seeds)
        aux = cross + 0.05 * i + 0.01 * rng.standard_normal(seeds)
        conditions = {"teacher": runs.summarize(0.9 + 0.01 * rng.standard_normal(seeds)),
                      "student_aux": runs.summarize(aux), "cross_aux": runs.summarize(cross)}  # fmt: skip
        first_step = {  # the cosine with the teacher's move ("weights") far from the trait's, so that they differ
            measure: {name: runs.summarize(scale * i * (name == "student_aux") + 0.005 * rng.standard_normal(seeds))
                      for name in ("student_aux", "cross_aux")}
            for measure, scale in (("weights", 0.1), ("trait", 0.01))
        }  # fmt: skip
        lines.append({"sweep": "lora", "value": value, "config": {"seeds": seeds}, "conditions": conditions,
                      "first_step": first_step})  # fmt: skip
    return lines


def _errorbars(ax):
    """Each error bar series of `ax`: (x, means, half-widths of its intervals)."""
    out = []
    for container in ax.containers:
        data_line, _, (bars, *_) = container.lines
        segments = np.array(bars.get_segments())  # (points, 2 ends, x and y)
        xy = np.asarray(data_line.get_xydata(), dtype=float)
        out.append((xy[:, 0], xy[:, 1], (segments[:, 1, 1] - segments[:, 0, 1]) / 2))
    return out


def test_lora_sweep_figure_has_the_paired_effect_and_the_first_step_panels(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures.plt, "close", drawn.append)
    lines = fake_lora_lines()
    figures.sweep_figure("lora", lines, tmp_path / "sweep_lora.png")
    assert (tmp_path / "sweep_lora.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = drawn
    assert len(fig.axes) == 3
    accuracy, paired, cosine = fig.axes
    assert [t.get_text() for t in cosine.get_xticklabels()] == [line["value"] for line in lines]
    assert all(t.get_rotation() == 30 for t in cosine.get_xticklabels())
    # (b): per seed, aux-only minus cross-model (the per_seed lists are in seed order), mean and t interval.
    differences = [
        np.subtract(*(line["conditions"][name]["per_seed"] for name in ("student_aux", "cross_aux"))) for line in lines
    ]
    ((x, means, halves),) = _errorbars(paired)
    np.testing.assert_array_equal(x, np.arange(len(lines)))
    np.testing.assert_allclose(means, [d.mean() for d in differences], rtol=1e-12)
    np.testing.assert_allclose(halves, [runs.summarize(d)["ci95"] for d in differences], rtol=1e-9)
    # The pairing matters here: an unpaired interval (either student's alone) is several times wider.
    assert np.all(halves * 3 < [line["conditions"]["cross_aux"]["ci95"] for line in lines])
    # (c): each student's first-step cosine beside its point, mean and interval as summarized.
    students = _errorbars(cosine)
    assert len(students) == 2
    for (x, means, halves), name in zip(students, ("student_aux", "cross_aux")):
        np.testing.assert_allclose(np.round(x), np.arange(len(lines)))
        np.testing.assert_allclose(means, [line["first_step"]["weights"][name]["mean"] for line in lines])
        np.testing.assert_allclose(halves, [line["first_step"]["weights"][name]["ci95"] for line in lines], rtol=1e-9)
    assert "θT − θ0" in cosine.get_ylabel() and "Theorem 1" in cosine.get_ylabel()
    assert len(_errorbars(accuracy)) == 3  # teacher, aux-only student, cross-model control
    # The words clear of one another and inside the figure: titles, labels, ticks' labels, key.
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [fig._suptitle, *fig.legends[0].texts]
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax.yaxis.label, ax.xaxis.label]
        texts += [t for t in ax.get_xticklabels() if t.get_visible() and ax is cosine]
    boxes = [(t, t.get_window_extent(renderer)) for t in texts if t.get_text()]
    ticks = set(cosine.get_xticklabels())
    # Two rotated tick labels: their upright boxes overlap, their parallel strips need not (checked below).
    crossed = [(a.get_text(), b.get_text()) for i, (a, box) in enumerate(boxes) for b, other in boxes[i + 1 :]
               if box.overlaps(other) and not {a, b} <= ticks]  # fmt: skip
    assert not crossed
    # Rotated by 30 degrees, neighbouring tick labels lie on parallel strips spacing x sin(30) apart: more
    # than a line of text.
    spacing = np.diff(cosine.transData.transform([(0, 0), (1, 0)])[:, 0])[0]
    label = cosine.get_xticklabels()[0]
    assert spacing * np.sin(np.radians(label.get_rotation())) > 1.2 * label.get_fontsize() * fig.dpi / 72
    outside = [t.get_text() for t, box in boxes
               if not (fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1))]  # fmt: skip
    assert not outside
    assert "subliminal-mnist sweep lora" in fig._suptitle.get_text() and "4 seeds per point" in fig._suptitle.get_text()
    matplotlib.pyplot.close(fig)
    # Any other sweep keeps its one panel.
    drawn.clear()
    other = [{k: v for k, v in line.items() if k != "first_step"} | {"sweep": "aux", "value": v}
             for line, v in zip(lines, (1, 3, 10, 30, 100, 300))]  # fmt: skip
    figures.sweep_figure("aux", other, tmp_path / "sweep_aux.png")
    assert len(drawn[0].axes) == 1
    matplotlib.pyplot.close(drawn[0])
