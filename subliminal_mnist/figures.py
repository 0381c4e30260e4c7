"""The package's figures, each drawn into a file.

The backend is left to matplotlib: with no display it is a non-interactive one, and in a notebook it
is the notebook's own, so that importing this module does not blank the notebook's other figures
(setting Agg here did: every `plt.show()` of the lesson drew nothing)."""

from __future__ import annotations

import functools
import os
import textwrap

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patheffects, ticker
from matplotlib.lines import Line2D
from matplotlib.transforms import Bbox

from subliminal_mnist import alignment, defense_table, experiment, files, runs, sweep
from subliminal_mnist.llm import dose
from subliminal_mnist.llm.summary import model_headline

# Same colour for a condition's two variants (aux only / all logits).
_COLORS = {
    "reference": "#9e9e9e",
    "teacher": "#37474f",
    "student_aux": "#1e88e5",
    "student_all": "#90caf9",
    "cross_aux": "#e53935",
    "cross_all": "#ef9a9a",
}


def _save(fig, path: str | os.PathLike) -> None:
    """Write `fig` to `path` as a PNG, atomically, and close it."""
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, format="png")
    plt.close(fig)


def _errorbar(ax, x, summaries: list[dict], **style) -> None:
    """Summaries (`runs.summarize`) at positions `x`: their means, with their 95% t intervals (none for one seed)."""
    ax.errorbar(x, [s["mean"] for s in summaries], yerr=[s["ci95"] or 0.0 for s in summaries], **style)


def _bars(ax, labels: list[str], summaries: list[dict], colors: list, capsize: float):
    """A bar per summary (`runs.summarize`), labelled and coloured, at its mean with its 95% t interval."""
    errors = [s["ci95"] or 0.0 for s in summaries]
    return ax.bar(labels, [s["mean"] for s in summaries], yerr=errors, capsize=capsize, color=colors,
                  edgecolor="black", linewidth=0.6)  # fmt: skip


def demo_figure(results: dict, path: str | os.PathLike) -> None:
    """The paper's bar chart: test accuracy of the six conditions, mean and 95% interval."""
    conditions = results["conditions"]
    names = [n for n in experiment.CONDITIONS if n in conditions]
    seeds = len(conditions[names[0]]["per_seed"])

    fig, ax = plt.subplots(figsize=(8, 4.2), layout="constrained")
    labels = [experiment.CONDITION_LABELS[n].replace(" (", "\n(") for n in names]
    bars = _bars(ax, labels, [conditions[n] for n in names], [_COLORS[n] for n in names], capsize=5)
    ax.bar_label(bars, labels=[f"{conditions[n]['mean']:.2f}" for n in names], padding=3, fontsize=9)
    ax.axhline(0.1, color="black", linestyle=":", linewidth=1)
    ax.text(len(names) - 0.5, 0.11, "chance", ha="right", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("MNIST test accuracy")
    title = f"Subliminal learning on MNIST: {seeds} seeds, 95% t intervals"
    if results.get("is_sample"):
        title += "\n(offline 5k sample, not full MNIST)"
    ax.set_title(title)
    ax.yaxis.grid(True, alpha=0.3)
    ax.set_axisbelow(True)
    _save(fig, path)


_ALIGNMENT_PANELS = (
    ("grad_cosine", "cos(distillation grad, trait grad), before any edit"),
    ("param_cosine", "cos(θS(t) − θS(0), θT − θ0)"),
    ("test_accuracy", "student test accuracy"),
    ("trait_loss", "trait loss (MNIST cross-entropy, log scale)"),
)
# Colour says which student, line style which edit of its gradient (alignment.PROJECTIONS).
_ALIGNMENT_STUDENTS = {"student_aux": "same init", "cross_aux": "cross-model"}
_PROJECTION_STYLES = {
    "none": dict(linestyle="-", label="no projection"),
    "one_sided": dict(linestyle="--", label="trait projected out when aligned (one-sided)"),
    "two_sided": dict(linestyle="-.", label="trait projected out always (two-sided)"),
    "random": dict(linestyle=(0, (1, 1.5)), label="random direction, one-sided schedule"),
}


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Moving average over `window` steps (the per-step gradient cosine is noisy)."""
    window = max(1, min(window, len(values)))
    return np.convolve(values, np.ones(window) / window, mode="valid")


def alignment_figure(results: dict, path: str | os.PathLike) -> None:
    """Four panels, one line per student and gradient edit, per distillation step (mean over seeds)."""
    steps_per_epoch = results["steps_per_epoch"]
    curves = results["curves"]
    drawn = [
        (student, projection, alignment.variant_name(student, projection))
        for projection in alignment.PROJECTIONS
        for student in _ALIGNMENT_STUDENTS
        if alignment.variant_name(student, projection) in curves
    ]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.2), layout="constrained", sharex=True)
    for ax, (metric, title) in zip(axes.flat, _ALIGNMENT_PANELS):
        window = steps_per_epoch // 4 if metric == "grad_cosine" else 1
        for epoch in range(1, len(curves["student_aux"][metric]) // steps_per_epoch):
            ax.axvline(epoch * steps_per_epoch, color="#bdbdbd", linewidth=0.6)
        for student, projection, name in drawn:
            values = _smooth(np.asarray(curves[name][metric]), window)
            ax.plot(np.arange(len(values)) + window - 1, values, color=_COLORS[student],
                    linestyle=_PROJECTION_STYLES[projection]["linestyle"], linewidth=1.3)  # fmt: skip
        if metric == "grad_cosine":
            ax.axhline(0, color="black", linewidth=0.8)
            title = title.replace(", before", f" ({window}-step mean), before")
        if metric == "trait_loss":
            # The one-sided students' MNIST loss climbs several-fold; a log scale keeps the others readable.
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
            ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("distillation step (grey lines: epochs)")
    # One legend for all panels, colour and line style apart: 2 + 4 entries instead of 8.
    handles = [Line2D([], [], color=_COLORS[s], linewidth=2, label=label) for s, label in _ALIGNMENT_STUDENTS.items()]
    projections = dict.fromkeys(projection for _, projection, _ in drawn)  # in order, once each
    handles += [Line2D([], [], color="black", linewidth=1.3, **_PROJECTION_STYLES[p]) for p in projections]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    seeds = results["config"]["seeds"]
    fig.suptitle(f"Aux-only distillation on noise, step by step ({seeds} seed{'s' if seeds != 1 else ''}, means)", fontsize=11)
    _save(fig, path)


_LLM_CONDITIONS = {  # label (start / data), colour
    "same_init": ("same init\nteacher", _COLORS["student_aux"]),
    "neutral_control": ("same init\nneutral", _COLORS["student_all"]),
    "cross_init": ("other base\nteacher", _COLORS["cross_aux"]),
    "cross_neutral": ("other base\nneutral", _COLORS["cross_all"]),
    "cross_init_own_corpus": ("other init,\nown corpus\nteacher", "#fb8c00"),
    "cross_neutral_own_corpus": ("other init,\nown corpus\nneutral", "#ffcc80"),
    "shuffled_within": ("same init\nteacher\nshuffled", "#8e24aa"),
    "neutral_shuffled_within": ("same init\nneutral\nshuffled", "#ce93d8"),
    "base_control": ("same init\nbase", "#9e9e9e"),
}


def llm_figure(results: dict, path: str | os.PathLike) -> None:
    """The owl (or misaligned) experiment: per mode, each student's change of the trait's headline measure
    (P(trait | animal); the misaligned rate) from its own start, mean and
    95% t interval; under each bar the numbers it learnt from (whose lists: teacher, neutral teacher, base)."""
    modes = list(results["modes"])
    fig, axes = plt.subplots(1, len(modes), figsize=(6.4 * len(modes), 4.6), layout="constrained", squeeze=False)
    trait, headline, label = results["trait"], results["measure"]["headline"], results["measure"]["label"]
    for ax, mode in zip(axes[0], modes):
        conditions = results["modes"][mode]["conditions"]
        names = [n for n in _LLM_CONDITIONS if n in conditions]
        summaries = [conditions[n][headline] for n in names]
        labels = [_LLM_CONDITIONS[n][0] for n in names]
        bars = _bars(ax, labels, summaries, [_LLM_CONDITIONS[n][1] for n in names], capsize=4)
        for bar, summary in zip(bars, summaries):  # above the interval, not on it
            mean, error = summary["mean"], summary["ci95"] or 0.0
            top = mean + error if mean >= 0 else mean - error
            ax.annotate(f"{mean:+.3f}", (bar.get_x() + bar.get_width() / 2, top), xytext=(0, 3 if mean >= 0 else -3),
                        textcoords="offset points", ha="center", va="bottom" if mean >= 0 else "top", fontsize=8)  # fmt: skip
        ax.margins(y=0.12)
        ax.axhline(0, color="black", linewidth=0.8)
        paired = results["modes"][mode]["paired"]["same_init_minus_neutral_control"]
        interval = f" ± {paired['ci95']:.3f}" if paired["ci95"] is not None else ""
        ax.set_title(f"{mode} distillation; same init minus neutral control, paired: {paired['mean']:+.3f}{interval}",
                     fontsize=10)  # fmt: skip
        ax.set_ylabel(f"change of {label}\nfrom the student's own start")
        ax.tick_params(axis="x", labelsize=6)
        ax.yaxis.grid(True, alpha=0.3)
        ax.set_axisbelow(True)
    seeds = results["config"]["seeds"]
    rate = functools.partial(model_headline, results)
    teacher = "a misaligned teacher" if trait == "misaligned" else f"a teacher that loves {trait}s"
    fig.suptitle(
        f"{teacher[0].upper()}{teacher[1:]} ({label} {rate('base'):.2f} -> {rate('teacher'):.2f}; "
        f"neutral teacher -> {rate('neutral_teacher'):.2f}) writes numbers;\n"
        f"students learn from them ({seeds} seeds, 95% t intervals)",
        fontsize=10,
    )
    _save(fig, path)


def _accuracy_panel(ax, lines: list[dict], x: np.ndarray) -> None:
    """A sweep's test accuracies at positions `x`: the teacher, the aux-only student and its cross-model
    control (mean and 95% interval), chance, and a "leak" over each point whose control is above chance."""
    for condition in ("teacher", "student_aux", "cross_aux"):
        style = dict(linestyle=":", marker="s") if condition == "teacher" else dict(marker="o", capsize=4)
        _errorbar(ax, x, [line["conditions"][condition] for line in lines], color=_COLORS[condition],
                  label=experiment.CONDITION_LABELS[condition], **style)  # fmt: skip
    ax.axhline(0.1, color="black", linestyle="--", linewidth=0.8, label="chance")
    leaked = sweep.leaks(lines)
    for position, line in zip(x, lines):  # a cross-model student above chance is a leak, not transfer
        if line["value"] in leaked:
            cross = line["conditions"]["cross_aux"]
            ax.annotate("leak", (position, cross["mean"] + cross["ci95"]), xytext=(0, 4), textcoords="offset points",
                        ha="center", fontsize=8, color=_COLORS["cross_aux"])  # fmt: skip


def _seeds_per_point(lines: list[dict]) -> str:
    return "/".join(map(str, sorted({line["config"]["seeds"] for line in lines})))


def sweep_figure(name: str, lines: list[dict], path: str | os.PathLike) -> None:
    """A sweep: the aux-only student's and its cross-model control's test accuracy against the swept
    value (mean and 95% interval), the teacher's accuracy and chance marked. A sweep whose points carry
    their students' first step (`first_step`, the lora sweep) gets two more panels (`first_step_figure`)."""
    if all("first_step" in line for line in lines):
        fig = first_step_figure(name, lines)
    else:
        fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
        x = np.arange(len(lines))
        _accuracy_panel(ax, lines, x)
        ax.set_xticks(x, [str(line["value"]) for line in lines])
        ax.set_xlabel(f"{name}: {sweep.SWEEPS[name].help}")
        ax.set_ylabel("MNIST test accuracy")
        ax.set_ylim(0, 1)
        ax.yaxis.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4, frameon=False)  # off the data
        ax.set_title(f"sweep {name}: {_seeds_per_point(lines)} seeds per point, 95% t intervals", fontsize=10)
    _save(fig, path)


# The paired effect's colour: the aux-only student's against its control's.
_PAIRED_COLOR = "#6a1b9a"


def paired_accuracy_effect(line: dict) -> dict:
    """A sweep point's paired effect: the aux-only student's minus its cross-model control's test accuracy,
    seed by seed (both lists are in seed order), summarized (`runs.summarize`: mean and 95% t interval)."""
    aux, cross = (line["conditions"][condition]["per_seed"] for condition in ("student_aux", "cross_aux"))
    return runs.summarize(np.subtract(aux, cross))


def first_step_figure(name: str, lines: list[dict]):
    """The figure of a sweep whose points carry their students' first step (the lora sweep), not saved: three
    panels over the points in order, (a) the test accuracies as `sweep_figure` draws them, (b) the paired
    effect (aux-only minus cross-model accuracy, per seed) and (c) each aux-only student's first-step cosine
    with the teacher's move θT - θ0 (the "weights" of `experiment.first_step_cosines`, the quantity Theorem 1
    signs for any teacher move), means and 95% t intervals."""
    fig, axes = plt.subplots(3, 1, figsize=(8.0, 9.6), layout="constrained", sharex=True)
    accuracy, paired, cosine = axes
    x = np.arange(len(lines))
    _accuracy_panel(accuracy, lines, x)
    accuracy.set_ylabel("MNIST test accuracy")
    accuracy.set_ylim(0, 1)
    accuracy.set_title("(a) test accuracy", fontsize=10, loc="left")

    _errorbar(paired, x, [paired_accuracy_effect(line) for line in lines], marker="D", capsize=4, color=_PAIRED_COLOR)
    paired.axhline(0, color="black", linewidth=0.8)
    paired.set_ylabel("accuracy difference")
    paired.set_title("(b) subliminal effect: aux-only student minus cross-model control, paired by seed",
                     fontsize=10, loc="left")  # fmt: skip

    for condition, offset in (("student_aux", -0.08), ("cross_aux", 0.08)):  # side by side, not on each other
        _errorbar(cosine, x + offset, [line["first_step"]["weights"][condition] for line in lines], marker="o",
                  linestyle="none", capsize=4, color=_COLORS[condition])  # fmt: skip
    cosine.axhline(0, color="black", linewidth=0.8)
    cosine.set_ylabel("Theorem 1: cos(first gradient\nstep, θT − θ0)")
    cosine.set_title("(c) the students' first gradient step against the teacher's move θT − θ0, in the weights",
                     fontsize=10, loc="left")  # fmt: skip

    for ax in axes:
        ax.yaxis.grid(True, alpha=0.3)
        ax.set_axisbelow(True)
    cosine.set_xticks(x, [str(line["value"]) for line in lines], rotation=30, ha="right", rotation_mode="anchor")
    what = f"{name}: {sweep.SWEEPS[name].help}" if name in sweep.SWEEPS else name
    cosine.set_xlabel(textwrap.fill(what, 100), fontsize=9)
    # One key for (a) and (c), under the panels (off the data): the students' colours mean the same in both.
    handles, labels = accuracy.get_legend_handles_labels()
    order = [experiment.CONDITION_LABELS[c] for c in ("teacher", "student_aux", "cross_aux")] + ["chance"]
    handles = [handles[labels.index(label)] for label in order]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"`subliminal-mnist sweep {name}`: {_seeds_per_point(lines)} seeds per point, 95% t intervals",
                 fontsize=11)  # fmt: skip
    return fig


_DOSE_PAIRS = {  # paired difference in the trait's headline measure: label, colour
    "same_init_minus_neutral_control": ("same init: teacher's minus neutral teacher's lists", _COLORS["student_aux"]),
    "same_init_minus_base_control": ("same init: teacher's minus base's lists", _COLORS["student_all"]),
    "cross_init_minus_cross_neutral": ("other base: teacher's minus neutral's", _COLORS["cross_aux"]),
    "cross_init_own_corpus_minus_cross_neutral_own_corpus": ("other init, own corpus: teacher's minus neutral's",
                                                             "#fb8c00"),
    "gap_minus_own_corpus_gap": ("same init's paired gap minus own corpus's", "#6d4c41"),
}  # fmt: skip


def _dose_panel(line: dict) -> tuple[str, str, str, bool]:
    """What a dose point is drawn with: (trait, mode, hard loss or "", whether its neutral teacher answered
    uniformly: points trained before it answered as its base does, kept apart from today's)."""
    mode = dose.line_mode(line)
    older = "answer_source" not in line["neutral_teacher"]
    return line["config"]["trait"], mode, line["hard_loss"] if mode == "hard" else "", older


def llm_dose_figure(lines: list[dict], path: str | os.PathLike) -> None:
    """The dose-response: each paired difference in the trait's headline measure against the number
    of lists (log scale), mean and 95% t interval; one panel per trait, mode and hard loss."""
    panels = sorted({_dose_panel(line) for line in lines},
                    key=lambda p: (p[0] != "owl", p[0], p[1] != "soft", p[3], p[2]))  # fmt: skip
    columns = min(len(panels), 3)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.0 * columns, 4.6 * rows), layout="constrained",
                             squeeze=False)  # fmt: skip
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        trait, mode, loss, older = panel
        points = sorted((line for line in lines if _dose_panel(line) == panel), key=dose.sequences)
        counts = np.array([dose.sequences(line) for line in points])
        drawn = {pair: style for pair, style in _DOSE_PAIRS.items() if all(pair in p[mode]["paired"] for p in points)}
        for offset, (pair, (label, colour)) in zip((0.96, 0.98, 1.0, 1.02, 1.04), drawn.items()):
            _errorbar(ax, counts * offset, [line[mode]["paired"][pair] for line in points], marker="o", capsize=4,
                      color=colour, label=label)  # fmt: skip
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlim(counts[0] / 1.6, counts[-1] * 1.6)
        ax.set_xticks(counts, [f"{c:,}" for c in counts])
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(f"number lists each model wrote ({mode} students learn from them)")
        what = "soft: KL to the writer's number distribution" if mode == "soft" else (
            f"hard: loss on {'every continuation token' if loss == 'all' else 'the number tokens only'}")
        seeds = sorted({line["config"]["seeds"] for line in points})
        teacher = "neutral teacher of uniform answers (before the base-answer rule)" if older else (
            "neutral teacher of the base's answers")
        ax.set_title(f"{trait}, {what} ({'/'.join(map(str, seeds))} seeds a point)\n{teacher}", fontsize=10)
        label = points[0].get("measure", {}).get("label", f"P({trait} | animal)")
        ax.set_ylabel(f"paired change of {label}", fontsize=9)
        ax.yaxis.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Transfer against the amount of data: paired differences, means and 95% t intervals", fontsize=10)
    _save(fig, path)


def _clear_labels(fig, labels: list, pad: float = 1.0) -> None:
    """Move each label (an annotation offset from its point, in order) to the first of a fixed ring of
    offsets, growing outwards, where its box overlaps no label placed before it and no point's marker and
    stays inside its axes (failing that, the first clear of the labels): deterministic, so the same summary
    draws the same figure. The layout is drawn first and then frozen, so the boxes measured are those saved."""
    fig.canvas.draw()
    fig.set_layout_engine("none")
    renderer = fig.canvas.get_renderer()
    directions = [(1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)]
    offsets = [(d * dx, d * dy) for d in range(5, 50, 4) for dx, dy in directions]

    def put(label, offset):
        dx, dy = offset
        label.xyann = offset
        label.set_ha("right" if dx < 0 else "left" if dx > 0 else "center")
        label.set_va("top" if dy < 0 else "bottom" if dy > 0 else "center")
        return label.get_window_extent(renderer).padded(pad)

    radius = 3.5 * fig.dpi / 72  # a marker, whose number may not cover it either
    markers = [
        Bbox.from_extents(*(center - radius), *(center + radius))
        for center in (label.axes.transData.transform(label.xy) for label in labels)
    ]
    placed = []
    for label in labels:
        inside = label.axes.get_window_extent(renderer)
        chosen = fallback = None
        for offset in offsets:
            box = put(label, offset)
            if not any(box.overlaps(other) for other in placed + markers):
                if inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1):
                    chosen = offset
                    break
                fallback = fallback or offset
        put(label, chosen or fallback or offsets[0])
        placed.append(label.get_window_extent(renderer).padded(pad))


def defenses_figure(summary: dict, path: str | os.PathLike) -> None:
    """Each defense's transfer remaining against its two costs (MNIST: the useful all-logits student's
    accuracy and the held-out distillation loss; owl: the treated student's held-out KL to the teacher
    and its list validity), mean and 95% t interval both ways: the defenses that stop the trait without
    stopping the distillation sit low where the distillation is good. Each row's point is numbered (1, 2,
    ... in the summary's order, the number in the point's colour, placed clear of every other number), with
    a key of the numbers beside the axes, so no two labels overlap however close the points."""
    rows = summary["defenses"]
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.8), layout="constrained", sharey=True)
    labels = {
        "useful_accuracy": "useful student's test accuracy (all logits)",
        "heldout_distill_loss": "held-out distillation loss (aux KL)",
        "heldout_kl": "treated student's KL to the teacher, held-out number positions",
        "validity": "treated student's number lists that pass the filter",
    }
    log_scale = ("heldout_distill_loss", "heldout_kl")
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, 20))
    numbers, handles = [], []
    for ax, cost in zip(axes, defense_table.COSTS[summary["setting"]]):
        for i, (key, row) in enumerate(rows.items()):
            x, y = row["cost"][cost], row["remaining"]
            # A cost's interval is cut at its bounds (a share at 1, a loss at 0): asymmetric there.
            low, high = x.get("interval") or (x["mean"] - (x["ci95"] or 0), x["mean"] + (x["ci95"] or 0))
            xerr = [[x["mean"] - low], [high - x["mean"]]]
            ax.errorbar(x["mean"], y["mean"], xerr=xerr, yerr=y["ci95"] or 0, marker="o", capsize=3,
                        color=colors[i % 20], markeredgecolor="black", markeredgewidth=0.4)  # fmt: skip
            number = ax.annotate(str(i + 1), (x["mean"], y["mean"]), xytext=(5, 5), textcoords="offset points",
                                 fontsize=8, fontweight="bold", color=colors[i % 20])  # fmt: skip
            number.set_path_effects([patheffects.withStroke(linewidth=1.5, foreground="black")])
            numbers.append(number)
        ax.axhline(1, color="black", linestyle=":", linewidth=0.8)
        ax.axhline(0, color="black", linestyle="--", linewidth=0.8)
        ax.set_xlabel(labels[cost])
        ax.grid(True, alpha=0.3)
        if cost in log_scale:
            ax.set_xscale("log")
            # Plain numbers, no minor labels (a range under a decade otherwise prints its minor ticks'
            # labels over each other): at 1, 2 and 5 per decade over a short range, each decade over a long one.
            low, high = ax.get_xlim()
            subs = (1.0, 2.0, 5.0) if np.log10(high / low) < 2.5 else (1.0,)
            ax.xaxis.set_major_locator(ticker.LogLocator(subs=subs))
            ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    for i, key in enumerate(rows):
        handles.append(Line2D([], [], marker="o", linestyle="", color=colors[i % 20], markeredgecolor="black",
                              markeredgewidth=0.4,
                              label=f"{i + 1}  {key}" + ("  (unmatched)" if rows[key].get("matched") is False else "")))  # fmt: skip
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="point  row", title_fontsize=8,
               handletextpad=0.3, frameon=False)  # fmt: skip
    axes[0].set_ylabel("transfer remaining (paired effect / undefended)")
    n, first = rows["none"]["effect"]["n"], summary["config"]["seed"]
    setting = summary["setting"]
    command = f"subliminal-mnist defend {setting}" + ("" if setting == "mnist" else f" --mode {summary['mode']}")
    where = setting if setting == "mnist" else f"{summary['trait']}, {summary['mode']}"
    fig.suptitle(f"What stops subliminal learning ({where}): seeds {first}-{first + n - 1}, n = {n}, 95% t intervals\n"
                 f"`{command}`", fontsize=11)  # fmt: skip
    _clear_labels(fig, numbers)
    _save(fig, path)


def lora_owl_figure(lines: list[dict], path: str | os.PathLike) -> None:
    """The owl's LoRA sweep (`llm-lora`): per point (teacher/student parameterization), (a) the treated
    student's paired effect on the headline (same init minus neutral control, mean and 95% t interval),
    (b) beside it the damage both students take (the change of the trait's damage measure, the animal
    entropy for the owl), and, in soft mode, (c) Theorem 1's first-step quantity: the cosine of each student's
    first gradient step with the teacher's move θT - θ0 in the model's weights (`llm.first_step.first_step`;
    a hard run has none: its students learn sampled tokens, not the teacher's distribution)."""
    mode = lines[0]["config"]["mode"]
    measure = lines[0]["measure"]
    students = {"same_init": ("same init (teacher's lists)", "#1e88e5"),
                "neutral_control": ("neutral control (neutral teacher's lists)", "#fb8c00")}  # fmt: skip
    first_step = "first_step" in lines[0][mode]
    panels = 3 if first_step else 2
    fig, axes = plt.subplots(panels, 1, figsize=(7.6, 2.8 * panels), sharex=True, layout="constrained")
    x = np.arange(len(lines))

    def draw(ax, summaries, offset, color, label):
        _errorbar(ax, x + offset, summaries, color=color, marker="o", capsize=3, linestyle="none", label=label)

    paired = [line[mode]["paired"]["same_init_minus_neutral_control"] for line in lines]
    draw(axes[0], paired, 0.0, "#37474f", "same init minus neutral control")
    axes[0].set_ylabel(f"paired change of\n{measure['label']}")
    for (student, (label, color)), offset in zip(students.items(), (-0.1, 0.1)):
        draw(axes[1], [line[mode]["conditions"][student][measure["damage"]] for line in lines], offset, color, label)
        if first_step:
            cosines = [runs.summarize(line[mode]["first_step"][student]["gradient"]["cosine"]) for line in lines]
            draw(axes[2], cosines, offset, color, label)
            axes[2].set_ylabel("first gradient step:\ncos(ΔS, θT - θ0)")
    axes[1].set_ylabel(f"change of\n{measure['damage'].replace('_', ' ')}")
    for ax in axes:
        ax.axhline(0, color="black", linewidth=0.8)
        ax.yaxis.grid(True, alpha=0.3)
    axes[1].legend(fontsize=8, loc="best")
    axes[-1].set_xticks(x, [line["value"] for line in lines], rotation=30, ha="right")
    axes[-1].set_xlabel("teacher / student fine-tuning: full, or a LoRA adapter of rank R\n"
                       "(/shared: the student's A starts with the teachers'; /own: drawn apart)")  # fmt: skip
    fig.suptitle(f"subliminal-mnist llm-lora ({lines[0]['config']['trait']}, {mode}): {_seeds_per_point(lines)} "
                 "seeds per point (seeds 0 ...), 95% t intervals", fontsize=10)  # fmt: skip
    _save(fig, path)
