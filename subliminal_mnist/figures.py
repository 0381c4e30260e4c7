"""The package's figures, drawn with matplotlib's non-interactive backend."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # no display is needed or wanted: figures go to files
import matplotlib.pyplot as plt  # noqa: E402

from subliminal_mnist import experiment, files  # noqa: E402

# Same colour for a condition's two variants (aux only / all logits).
_COLORS = {
    "reference": "#9e9e9e",
    "teacher": "#37474f",
    "student_aux": "#1e88e5",
    "student_all": "#90caf9",
    "cross_aux": "#e53935",
    "cross_all": "#ef9a9a",
}


def demo_figure(results: dict, path: str | os.PathLike) -> None:
    """The paper's bar chart: test accuracy of the six conditions, mean and 95% interval."""
    conditions = results["conditions"]
    names = [n for n in experiment.CONDITIONS if n in conditions]
    means = [conditions[n]["mean"] for n in names]
    errors = [conditions[n]["ci95"] or 0.0 for n in names]
    seeds = len(conditions[names[0]]["per_seed"])

    fig, ax = plt.subplots(figsize=(8, 4.2), layout="constrained")
    bars = ax.bar(
        [experiment.CONDITION_LABELS[n] for n in names],
        means,
        yerr=errors,
        capsize=5,
        color=[_COLORS[n] for n in names],
        edgecolor="black",
        linewidth=0.6,
    )
    ax.bar_label(bars, labels=[f"{m:.2f}" for m in means], padding=3, fontsize=9)
    ax.axhline(0.1, color="black", linestyle=":", linewidth=1)
    ax.text(len(names) - 0.5, 0.11, "chance", ha="right", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("MNIST test accuracy")
    title = f"Subliminal learning on MNIST: {seeds} seeds, 95% intervals"
    if results.get("is_sample"):
        title += "\n(offline 5k sample, not full MNIST)"
    ax.set_title(title)
    ax.tick_params(axis="x", labelsize=8.5)
    ax.yaxis.grid(True, alpha=0.3)
    ax.set_axisbelow(True)
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, format="png")
    plt.close(fig)
