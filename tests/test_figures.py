"""The demo figure is drawn from a results dict."""

from subliminal_mnist import experiment, figures


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
