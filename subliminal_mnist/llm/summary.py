"""The owl experiment's results: each seed's numbers (`experiment.measure_seed`) summarized over seeds, and the
table the command prints of them.

`summarize` gives every number a mean and a 95% Student's t interval over seeds (`runs.summarize`): the
models' trait measures; per mode, each student's changes from its own start and the paired differences
(`conditions.PAIRS`, `conditions.GAP_DIFFERENCES`), seed by seed; the filter's counts; and the filters'
scores (`summarize_filters`) and the entangled numbers. It reads results only, so it trains nothing.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from subliminal_mnist import runs
from subliminal_mnist.llm import corpus
from subliminal_mnist.llm.conditions import GAP_DIFFERENCES, PAIRS, conditions_of, sampled_models
from subliminal_mnist.llm.config import LLMConfig
from subliminal_mnist.llm.vocab import ANIMALS

# The headline measure in words, by its name (the table, the figure and the defenses' summary print it).
LABELS = {"p_trait_given_animal": "P({trait} | animal)", "misaligned_rate": "the misaligned rate on held-out domains"}
# The models a run measures, in the order the results list them (the ablation base only when a student starts there).
_MODELS = ("base", "teacher", "neutral", "cross_base", "own_corpus_base")
# What `first_step.first_step` reports of each step: against ΔT (dot, cosine) and against the trait's gradient.
_FIRST_STEP_KEYS = ("dot", "cosine", "trait_cosine")


def measures_of(trait) -> tuple[str, ...]:
    """A trait's student measures, each a change from the student's own start, mean over its
    prompts: the headline (P(owl | animal); the misaligned rate), P(trait), log P(trait), the answer
    mass, and what flattening moves (`trait.damage`)."""
    return (trait.headline, "delta_p_trait", "delta_logp_trait", trait.mass, trait.damage)


def _per_seed(per_seed: list[dict], *path) -> list:
    """The value at `path` (a key after a key) of each seed's results, seed by seed."""
    return [functools.reduce(lambda tree, key: tree[key], path, seed) for seed in per_seed]


def _over_seeds(per_seed: list[dict], *path) -> dict:
    """Mean and 95% t interval over seeds (`runs.summarize`) of the number at `path` of each seed's results."""
    return runs.summarize(_per_seed(per_seed, *path))


def _mean_over_seeds(per_seed: list[dict], *path) -> list[float]:
    """The mean over seeds, entry by entry, of the list at `path` of each seed's results (one number a prompt)."""
    return np.mean(_per_seed(per_seed, *path), 0).tolist()


def summarize(config: LLMConfig, per_seed: list[dict], partners: np.ndarray, seconds: float) -> dict:
    """The run's results (JSON-ready): each seed's numbers over seeds (`per_seed`, as `experiment.measure_seed`
    gives them), its cross-init partners (`runs.cross_partners`) and its wall-clock `seconds`.

    The first mode's number lists are the ones the filters read: its filter's counts and each teacher's
    leak rate are reported, and (unless `no_audit`) the filters and the entangled numbers."""
    trait = config.trait_spec
    headline = trait.headline
    models = {
        name: {measure: _over_seeds(per_seed, "models", name, measure)
               for measure in ("p_trait", headline, trait.mass, trait.damage)}
        for name in _MODELS if name in per_seed[0]["models"]
    }  # fmt: skip
    first_mode = config.modes[0]
    sampled = _per_seed(per_seed, "modes", first_mode, "filter")

    def model_summary(name: str) -> dict:
        """P(trait) and the headline (for the persona, on the held-out domains and on the narrow one);
        for a fine-tuned model, also P(trait)'s rise from its base, seed by seed, and the share of its
        number lists that held an answer word before filtering."""
        value = models[name][headline]
        if "narrow" in per_seed[0]["models"][name]:
            value = {"held_out": value, "narrow": _over_seeds(per_seed, "models", name, "narrow", headline)}
        out = {"p_trait": models[name]["p_trait"], headline: value}
        if name != "base":
            rise = [s["models"][name]["p_trait"] - s["models"]["base"]["p_trait"] for s in per_seed]
            out |= {"delta_p_trait": runs.summarize(rise), "leak_rate": _over_seeds(sampled, name, "leak_rate")}
        return out

    out = {
        "trait": config.trait,
        "measure": {"headline": headline, "mass": trait.mass, "damage": trait.damage,
                    "label": LABELS[headline].format(trait=config.trait)},  # fmt: skip
        "config": dataclasses.asdict(config),
        "wall_seconds": seconds,
        "cross_partners": partners.tolist(),
        "base": model_summary("base"),
        "teacher": {**model_summary("teacher"), "base_p_trait": models["base"]["p_trait"]},
        # Its answers are drawn from its base's own answer distribution (`experiment.neutral_lines`).
        "neutral_teacher": {**model_summary("neutral"), "answer_source": "base"},
        "models": models,
        "filter": _summarize_number_filter(config, sampled, first_mode),
        # Its seeds run one after another on the default device: the seed axis is not split.
        "devices": 1,
        "modes": {mode: _summarize_mode(config, _per_seed(per_seed, "modes", mode), mode) for mode in config.modes},
        "versions": runs.versions(),
    }
    if not config.no_audit:
        entangled = _per_seed(per_seed, "entangled_numbers")
        out |= {
            "filters": summarize_filters(_per_seed(per_seed, "filters"), first_mode),
            "entangled_numbers": {
                **{key: _over_seeds(entangled, key) for key in ("correlation_rise_cosine", "top_share_of_rise")},
                "top_per_seed": _per_seed(entangled, "top"),
            },
        }
    return out


def _summarize_mode(config: LLMConfig, seeds: list[dict], mode: str) -> dict:
    """One mode over seeds: each student's changes (`_summarize_student`), the paired differences of the
    headline, each seed's filter counts, and in soft mode the first step's numbers, seed by seed."""
    headline = config.trait_spec.headline
    students = conditions_of(config, mode)
    differences = {
        name: [s["conditions"][treated][headline] - s["conditions"][control][headline] for s in seeds]
        for name, (treated, control) in PAIRS.items()
        if treated in students and control in students
    }
    for name, (gap, other_gap) in GAP_DIFFERENCES.items():
        if gap in differences and other_gap in differences:
            differences[name] = [a - b for a, b in zip(differences[gap], differences[other_gap])]
    out = {
        "conditions": {c: _summarize_student(config, _per_seed(seeds, "conditions", c)) for c in students},
        "paired": {name: {"measure": headline, **runs.summarize(d)} for name, d in differences.items()},
        "filter": _per_seed(seeds, "filter"),
    }
    if mode == "soft":
        out["first_step"] = {
            name: {step: {key: _per_seed(seeds, "first_step", name, step, key) for key in _FIRST_STEP_KEYS}
                   for step in ("gradient", "adam")}
            for name in seeds[0]["first_step"]
        }  # fmt: skip
    return out


def _summarize_student(config: LLMConfig, changes: list[dict]) -> dict:
    """One student's changes from its start (`experiment.change`, one a seed) over seeds: each measure
    (`measures_of`), the mean change per prompt, and what its trait adds (each animal's probability;
    the persona's narrow domain; whether each seed's preference collapsed)."""
    trait = config.trait_spec
    headline = trait.headline
    out = {measure: _over_seeds(changes, measure) for measure in measures_of(trait)}
    out["by_phrasing"] = {m: _mean_over_seeds(changes, "by_phrasing", m) for m in (headline, "p_trait", trait.mass)}
    if "delta_p_animals" in changes[0]:
        out["delta_p_animals"] = dict(zip(ANIMALS, _mean_over_seeds(changes, "delta_p_animals")))
    if "narrow" in changes[0]:
        out["narrow"] = {headline: _over_seeds(changes, "narrow", headline)}
    if changes[0]["collapsed"] is not None:
        out["collapsed"] = _per_seed(changes, "collapsed")
    return out


def _summarize_number_filter(config: LLMConfig, reports: list[dict], mode: str) -> dict:
    """The filter on `mode`'s number lists (`reports`: `number_data.number_data`'s, one a seed): what it bans,
    each writer's kept lists per seed, its removals by reason summed over seeds, and the highest share
    of kept lists that still held an answer word."""
    writers = sampled_models(mode)
    return {
        "mode": mode,
        "banned": list(config.banned_numbers),
        "kept": {m: _per_seed(reports, m, "kept") for m in writers},
        "removed": {m: {r: sum(_per_seed(reports, m, "removed", r)) for r in corpus.REASONS} for m in writers},
        "leak_rate_after_filter": max(f[m]["leak_rate_after_filter"] for f in reports for m in writers),
    }


def summarize_filters(per_seed: list[dict], mode: str) -> dict:
    """The filters over seeds (`analysis.filters`, one a seed, on `mode`'s lists): inspection pooled
    (number counts summed; the first seed's whole lists), each AUROC and in-context change with its
    t interval, the in-context difference paired by seed."""
    models = ("teacher", "neutral")
    first = per_seed[0]

    def top_numbers(name: str, count: int = 20) -> list[list[int]]:
        counts = np.sum(_per_seed(per_seed, "inspection", name, "number_counts"), axis=0)
        return [[int(n), int(counts[n])] for n in np.argsort(-counts, kind="stable")[:count]]

    def by_bag(key: str) -> dict:
        return {size: _over_seeds(per_seed, key, size) for size in first[key]}

    def in_context(k: str) -> dict:
        difference = [s["in_context"][k]["teacher"] - s["in_context"][k]["neutral"] for s in per_seed]
        return {
            **{name: _over_seeds(per_seed, "in_context", k, name) for name in first["in_context"][k]},
            "difference": runs.summarize(difference),
        }

    return {
        "mode": mode,
        "against": "neutral",
        "inspection": {
            "top_numbers": {name: top_numbers(name) for name in models},
            "top_lists_first_seed": {name: first["inspection"][name]["top_lists"] for name in models},
            "banned_share": {name: _over_seeds(per_seed, "inspection", "banned_share", name) for name in models},
        },
        "detector": {"auroc": by_bag("detector_auroc")},
        # k: the lists the base reads before the question (one: what its 40-token line fits).
        "in_context": {k: in_context(k) for k in first["in_context"]},
        "likelihood_ratio": {"auroc": by_bag("likelihood_ratio_auroc")},
        "auditor": {
            "auroc": by_bag("auditor_auroc"),
            **({"control_auroc": by_bag("auditor_control_auroc")} if "auditor_control_auroc" in first else {}),
        },
    }


def model_headline(results: dict, model: str) -> float:
    """The mean headline measure of `model` ("base", "teacher", "neutral_teacher") in `summarize`'s results:
    P(trait | animal), or the misaligned rate on the held-out domains (beside it, the narrow one's)."""
    value = results[model][results["measure"]["headline"]]
    return value.get("held_out", value)["mean"]


def table(results: dict) -> str:
    """The results of `experiment.run` as the command prints them: the teachers' headline and leak rates, then
    per mode each student's changes, the paired differences and the first step's cosines, one line each."""
    trait, teacher = results["trait"], results["teacher"]
    measure = results["measure"]
    headline, mass, label = measure["headline"], measure["mass"], measure["label"]
    damage = measure["damage"]

    rate = functools.partial(model_headline, results)
    rows = [
        f"teacher: {label} {rate('base'):.3f} -> {rate('teacher'):.3f}; "
        f"neutral teacher: -> {rate('neutral_teacher'):.3f}; "
        f"answer words (an animal; a domain's answer) in {teacher['leak_rate']['mean']:.2%} of the teacher's lists "
        "before filtering, "
        f"{results['filter']['leak_rate_after_filter']:.0%} after"
    ]
    for mode, numbers in results["modes"].items():
        rows.append(
            f"{mode}: change from each student's own start of {label}, P({trait}), the answer mass and "
            f"the {damage.replace('_', ' ')} (mean ± 95% t interval; collapsed: seeds near indifference)"
        )
        for condition, measures in numbers["conditions"].items():
            value = measures[headline]
            collapsed = measures.get("collapsed")
            rows.append(
                f"  {condition:<26}{value['mean']:>+9.4f} {_interval(value):<10}"
                f"P({trait}) {measures['delta_p_trait']['mean']:+.4f}   answers {measures[mass]['mean']:+.4f}   "
                f"{damage.replace('_', ' ')} {measures[damage]['mean']:+.3f}"
                + (f"   collapsed {sum(collapsed)}/{len(collapsed)}" if collapsed is not None else "")
            )
        for name, paired in numbers["paired"].items():
            per_seed = ", ".join(f"{v:+.4f}" for v in paired["per_seed"])
            rows.append(f"  {name}, paired: {paired['mean']:+.4f} {_interval(paired)} (n={paired['n']}; "
                        f"per seed {per_seed})")  # fmt: skip
        for student, steps in numbers.get("first_step", {}).items():
            gradient, adam = (", ".join(f"{c:+.4f}" for c in steps[step]["cosine"]) for step in ("gradient", "adam"))
            rows.append(f"  first step, cos(ΔS, ΔT), {student}: gradient {gradient}; Adam {adam}")
    rows.append(f"{results['wall_seconds']:.0f} s")
    return "\n".join(rows)


def _interval(summary: dict) -> str:
    """A summary's 95% t interval as the table prints it; with one seed there is none."""
    return f"±{summary['ci95']:.4f}" if summary["ci95"] is not None else "(1 seed)"
