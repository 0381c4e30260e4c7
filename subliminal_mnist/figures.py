"""The package's figures, drawn with matplotlib's non-interactive backend."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # no display is needed or wanted: figures go to files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

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
        [experiment.CONDITION_LABELS[n].replace(" (", "\n(") for n in names],
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
    ax.yaxis.grid(True, alpha=0.3)
    ax.set_axisbelow(True)
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, format="png")
    plt.close(fig)


_ALIGNMENT_PANELS = (
    ("grad_cosine", "cos(distillation grad, trait grad)"),
    ("param_cosine", "cos(θS(t) − θS(0), θT − θ0)"),
    ("test_accuracy", "student test accuracy"),
    ("trait_loss", "trait loss (MNIST cross-entropy)"),
)
_ALIGNMENT_STYLES = {
    "student_aux": dict(color=_COLORS["student_aux"], label="same init"),
    "cross_aux": dict(color=_COLORS["cross_aux"], label="cross-model"),
    "student_aux_projected": dict(color=_COLORS["student_aux"], linestyle="--", label="same init, trait projected out"),
    "cross_aux_projected": dict(color=_COLORS["cross_aux"], linestyle="--", label="cross-model, trait projected out"),
}


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Moving average over `window` steps (the per-step gradient cosine is noisy)."""
    window = max(1, min(window, len(values)))
    return np.convolve(values, np.ones(window) / window, mode="valid")


def alignment_figure(results: dict, path: str | os.PathLike) -> None:
    """Four panels, one line per student variant, per distillation step (mean over seeds)."""
    steps_per_epoch = results["steps_per_epoch"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), layout="constrained", sharex=True)
    for ax, (metric, title) in zip(axes.flat, _ALIGNMENT_PANELS):
        window = steps_per_epoch // 4 if metric == "grad_cosine" else 1
        for name, curves in results["curves"].items():
            values = _smooth(np.asarray(curves[metric]), window)
            ax.plot(np.arange(len(values)) + window - 1, values, linewidth=1.4, **_ALIGNMENT_STYLES[name])
        for epoch in range(1, len(results["curves"]["student_aux"][metric]) // steps_per_epoch):
            ax.axvline(epoch * steps_per_epoch, color="black", linewidth=0.5, linestyle=":")
        if metric == "grad_cosine":
            ax.axhline(0, color="black", linewidth=0.8)
            title += f" ({window}-step mean)"
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("distillation step (dotted: epochs)")
    axes[0, 0].legend(fontsize=8)
    seeds = results["config"]["seeds"]
    fig.suptitle(f"Aux-only distillation on noise, step by step ({seeds} seeds, means)", fontsize=11)
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, format="png")
    plt.close(fig)
