"""The owl experiment's results over seeds, from per-seed results made up in the shape `experiment.measure_seed`
gives them (no model trains here): each number's summary, the paired differences seed by seed, the filters
pooled, and the table the command prints."""

import json

import numpy as np
import pytest

from subliminal_mnist import runs
from subliminal_mnist.llm import corpus, summary, traits
from subliminal_mnist.llm.conditions import GAP_DIFFERENCES, PAIRS, conditions_of, sampled_models, with_own_corpus_base
from subliminal_mnist.llm.config import LLMConfig
from subliminal_mnist.llm.vocab import ANIMALS

PHRASINGS = 4
SUMMARY_KEYS = {"mean", "ci95", "per_seed", "n"}


def seed_result(config: LLMConfig, rng: np.random.Generator) -> dict:
    """One seed's results as `experiment.measure_seed` gives them (every number random), as JSON holds them."""
    trait = config.trait_spec
    headline, mass, damage = trait.headline, trait.mass, trait.damage
    misaligned = isinstance(trait, traits.Misaligned)

    def number() -> float:
        return float(rng.uniform(-1, 1))

    def by_phrasing() -> dict:
        return {key: rng.uniform(-1, 1, PHRASINGS).tolist() for key in (headline, "p_trait", mass)}

    def model() -> dict:
        out = {"p_trait": float(rng.uniform()), headline: float(rng.uniform()), mass: number(), damage: number(),
               "by_phrasing": by_phrasing()}  # fmt: skip
        if misaligned:
            out["narrow"] = {headline: float(rng.uniform()), "p_trait": number(), mass: number()}
        return out

    def student() -> dict:
        out = {measure: number() for measure in summary.measures_of(trait)}
        out |= {"collapsed": bool(rng.uniform() < 0.5) if misaligned else None, "by_phrasing": by_phrasing()}
        if not misaligned:
            out["delta_p_animals"] = rng.uniform(-1, 1, len(ANIMALS)).tolist()
        else:
            out["narrow"] = {headline: number()}
        return out

    def writer() -> dict:
        return {"kept": int(rng.integers(300, 400)), "removed": {r: int(rng.integers(0, 50)) for r in corpus.REASONS},
                "leak_rate": float(rng.uniform()), "leak_rate_after_filter": float(rng.uniform(0, 0.01)),
                "banned_share": float(rng.uniform())}  # fmt: skip

    def by_bag() -> dict:
        return {size: float(rng.uniform()) for size in ("1", "8", "32")}

    names = ["base", "cross_base", *(["own_corpus_base"] * with_own_corpus_base(config)), "teacher", "neutral"]
    modes = {}
    for mode in config.modes:
        modes[mode] = {
            "conditions": {c: student() for c in conditions_of(config, mode)},
            "filter": {**{m: writer() for m in sampled_models(mode)}, "sampled": 400, "used": 300},
        }
        if mode == "soft":
            # As `jax.tree.map` leaves a step's numbers: their keys sorted.
            steps = ("adam", "gradient")
            modes[mode]["first_step"] = {
                name: {step: {"cosine": number(), "dot": number(), "trait_cosine": number()} for step in steps}
                for name in ("same_init", "cross_init", "neutral_control")
            }
    out = {"models": {name: model() for name in names}, "modes": modes}
    if not config.no_audit:
        in_context = {"teacher": number(), "neutral": number()}
        if misaligned:
            in_context["positive_control"] = number()
        # Few distinct counts, so that some numbers tie.
        inspection = {name: {"number_counts": rng.integers(0, 4, config.numbers).tolist(),
                             "top_lists": [[f"{n} {n + 1}", 3] for n in rng.integers(0, 99, 10)]}
                      for name in ("teacher", "neutral")}  # fmt: skip
        out["filters"] = {
            "inspection": {**inspection, "banned_share": {"teacher": number(), "neutral": number()}},
            "detector_auroc": by_bag(),
            "in_context": {"1": in_context},
            "likelihood_ratio_auroc": by_bag(),
            "auditor_auroc": by_bag(),
        }
        if "neutral_control" in config.conditions:
            out["filters"]["auditor_control_auroc"] = by_bag()
        out["entangled_numbers"] = {
            "correlation_rise_cosine": number(), "top_share_of_rise": number(),
            "top": [{"number": int(n), "rise": number(), "cosine_with_trait": number()} for n in range(10)],
        }  # fmt: skip
    return json.loads(json.dumps(out))


def summarized(seeds: int = 3, **options) -> tuple[LLMConfig, list[dict], dict]:
    """A config, its made-up per-seed results and their summary."""
    config = LLMConfig(numbers=100, seeds=seeds, **options)
    rng = np.random.default_rng(0)
    per_seed = [seed_result(config, rng) for _ in range(seeds)]
    return config, per_seed, summary.summarize(config, per_seed, runs.cross_partners(seeds, config.seed), 12.0)


@pytest.mark.parametrize("trait", ["owl", "misaligned"])
def test_each_pair_is_the_seed_by_seed_difference_of_its_students_and_each_gap_of_its_pairs(trait):
    config, per_seed, results = summarized(trait=trait, mode="both")
    headline = config.trait_spec.headline
    for mode in config.modes:
        paired = results["modes"][mode]["paired"]
        students = conditions_of(config, mode)
        assert [name for name in paired if name in PAIRS] == [
            name for name, (a, b) in PAIRS.items() if a in students and b in students
        ]
        for name, (treated, control) in PAIRS.items():
            if name in paired:
                changes = [s["modes"][mode]["conditions"] for s in per_seed]
                assert paired[name]["measure"] == headline
                assert paired[name]["per_seed"] == [c[treated][headline] - c[control][headline] for c in changes]
                assert paired[name]["n"] == 3 and paired[name]["ci95"] is not None
        for name, (gap, other_gap) in GAP_DIFFERENCES.items():
            np.testing.assert_allclose(
                paired[name]["per_seed"], np.subtract(paired[gap]["per_seed"], paired[other_gap]["per_seed"])
            )
    # No pair of a hard-only student in soft mode; every pair in hard mode.
    assert "shuffled_within_minus_neutral_shuffled_within" not in results["modes"]["soft"]["paired"]
    assert set(results["modes"]["hard"]["paired"]) == {*PAIRS, *GAP_DIFFERENCES}


def test_a_pair_or_gap_whose_students_did_not_train_is_left_out():
    kept = ("same_init", "neutral_control", "cross_init", "cross_neutral")
    _, _, results = summarized(seeds=1, conditions=kept, mode="soft")
    soft = results["modes"]["soft"]
    assert tuple(soft["conditions"]) == kept
    assert set(soft["paired"]) == {"same_init_minus_neutral_control", "cross_init_minus_cross_neutral"}
    assert soft["paired"]["same_init_minus_neutral_control"]["ci95"] is None  # one seed: no interval
    assert "own_corpus_base" not in results["models"]


@pytest.mark.parametrize("trait", ["owl", "misaligned"])
def test_every_students_change_is_summarized_over_seeds(trait):
    config, per_seed, results = summarized(trait=trait, mode="soft")
    headline, mass = config.trait_spec.headline, config.trait_spec.mass
    soft = results["modes"]["soft"]
    assert tuple(soft["conditions"]) == conditions_of(config, "soft")
    for condition, measures in soft["conditions"].items():
        changes = [s["modes"]["soft"]["conditions"][condition] for s in per_seed]
        for measure in summary.measures_of(config.trait_spec):
            assert measures[measure] == runs.summarize([c[measure] for c in changes])
        for key in (headline, "p_trait", mass):
            mean = np.mean([c["by_phrasing"][key] for c in changes], 0)
            np.testing.assert_allclose(measures["by_phrasing"][key], mean)
        if trait == "owl":
            assert list(measures["delta_p_animals"]) == list(ANIMALS)
            owl = np.mean([c["delta_p_animals"][0] for c in changes])
            assert measures["delta_p_animals"]["owl"] == pytest.approx(owl)
            assert "collapsed" not in measures and "narrow" not in measures
        else:
            assert measures["collapsed"] == [c["collapsed"] for c in changes]  # a boolean per seed
            assert measures["narrow"][headline]["per_seed"] == [c["narrow"][headline] for c in changes]
    first_step = soft["first_step"]
    assert set(first_step) == {"same_init", "cross_init", "neutral_control"}
    assert list(first_step["same_init"]) == ["gradient", "adam"]
    assert list(first_step["same_init"]["adam"]) == ["dot", "cosine", "trait_cosine"]
    assert first_step["cross_init"]["gradient"]["cosine"] == [
        s["modes"]["soft"]["first_step"]["cross_init"]["gradient"]["cosine"] for s in per_seed
    ]
    assert "first_step" not in summarized(mode="hard")[2]["modes"]["hard"]


@pytest.mark.parametrize("trait", ["owl", "misaligned"])
def test_the_teachers_report_their_headline_and_their_rise_from_the_base(trait):
    config, per_seed, results = summarized(trait=trait, mode="hard")
    headline = config.trait_spec.headline
    assert results["measure"] == {"headline": headline, "mass": config.trait_spec.mass,
                                  "damage": config.trait_spec.damage,
                                  "label": summary.LABELS[headline].format(trait=trait)}  # fmt: skip
    assert list(results["models"]) == ["base", "teacher", "neutral", "cross_base", "own_corpus_base"]
    for name, model in results["models"].items():
        assert set(model) == {"p_trait", headline, config.trait_spec.mass, config.trait_spec.damage}
        assert model["p_trait"]["per_seed"] == [s["models"][name]["p_trait"] for s in per_seed]
    for key, name in (("teacher", "teacher"), ("neutral_teacher", "neutral")):
        rise = [s["models"][name]["p_trait"] - s["models"]["base"]["p_trait"] for s in per_seed]
        assert results[key]["delta_p_trait"]["per_seed"] == rise
        leaks = [s["modes"]["hard"]["filter"][name]["leak_rate"] for s in per_seed]
        assert results[key]["leak_rate"]["per_seed"] == leaks
    assert set(results["base"]) == {"p_trait", headline}
    assert results["teacher"]["base_p_trait"] == results["models"]["base"]["p_trait"]
    assert results["neutral_teacher"]["answer_source"] == "base"
    teacher = results["teacher"][headline]
    if trait == "misaligned":  # the held-out domains (the headline) beside the narrow one
        assert teacher["held_out"] == results["models"]["teacher"][headline]
        assert teacher["narrow"]["per_seed"] == [s["models"]["teacher"]["narrow"][headline] for s in per_seed]
        assert summary.model_headline(results, "teacher") == teacher["held_out"]["mean"]
    else:
        assert summary.model_headline(results, "teacher") == teacher["mean"]


@pytest.mark.parametrize("mode, first", [("both", "soft"), ("hard", "hard")])
def test_the_filter_counts_are_those_of_the_first_modes_lists(mode, first):
    config, per_seed, results = summarized(trait="misaligned", mode=mode)
    reports = [s["modes"][first]["filter"] for s in per_seed]
    counted = results["filter"]
    assert counted["mode"] == first and counted["banned"] == [13]  # the persona's bad numbers below 100
    assert list(counted["kept"]) == list(sampled_models(first))
    for writer in sampled_models(first):
        assert counted["kept"][writer] == [r[writer]["kept"] for r in reports]
        assert counted["removed"][writer] == {r: sum(f[writer]["removed"][r] for f in reports) for r in corpus.REASONS}
    assert counted["leak_rate_after_filter"] == max(
        r[w]["leak_rate_after_filter"] for r in reports for w in sampled_models(first)
    )
    assert results["modes"][first]["filter"] == reports
    assert results["filters"]["mode"] == first


@pytest.mark.parametrize("trait", ["owl", "misaligned"])
def test_the_filters_pool_the_counts_and_pair_the_in_context_change_by_seed(trait):
    _, per_seed, results = summarized(trait=trait, mode="soft")
    filters = [s["filters"] for s in per_seed]
    pooled = results["filters"]
    assert pooled["against"] == "neutral"
    counts = np.sum([f["inspection"]["teacher"]["number_counts"] for f in filters], axis=0)
    top = pooled["inspection"]["top_numbers"]["teacher"]
    assert len(top) == 20 and [count for _, count in top] == sorted(counts, reverse=True)[:20]
    assert all(counts[n] == count for n, count in top)
    ties = [n for n, count in top if count == top[-1][1]]
    assert ties == sorted(ties), "equal counts in the order of the numbers"
    assert pooled["inspection"]["top_lists_first_seed"]["neutral"] == filters[0]["inspection"]["neutral"]["top_lists"]
    assert pooled["inspection"]["banned_share"]["teacher"]["per_seed"] == [
        f["inspection"]["banned_share"]["teacher"] for f in filters
    ]
    for scores, key in (("detector", "detector_auroc"), ("likelihood_ratio", "likelihood_ratio_auroc"),
                        ("auditor", "auditor_auroc")):  # fmt: skip
        assert set(pooled[scores]["auroc"]) == {"1", "8", "32"}
        assert pooled[scores]["auroc"]["8"]["per_seed"] == [f[key]["8"] for f in filters]
    assert pooled["auditor"]["control_auroc"]["32"]["per_seed"] == [f["auditor_control_auroc"]["32"] for f in filters]
    in_context = pooled["in_context"]["1"]
    expected = {"teacher", "neutral", "difference"} | ({"positive_control"} if trait == "misaligned" else set())
    assert set(in_context) == expected
    assert in_context["difference"]["per_seed"] == [f["in_context"]["1"]["teacher"] - f["in_context"]["1"]["neutral"]
                                                    for f in filters]  # fmt: skip
    entangled = results["entangled_numbers"]
    assert entangled["top_per_seed"] == [s["entangled_numbers"]["top"] for s in per_seed]
    assert set(entangled["top_share_of_rise"]) == SUMMARY_KEYS
    # Without the neutral control there is no auditor's control.
    _, _, fewer = summarized(seeds=2, trait=trait, mode="soft", conditions=("same_init", "cross_init"))
    assert "control_auroc" not in fewer["filters"]["auditor"]


def test_without_the_audit_there_are_no_filters_and_no_entangled_numbers():
    _, _, results = summarized(seeds=2, mode="both", no_audit=True)
    assert "filters" not in results and "entangled_numbers" not in results
    assert set(results["modes"]) == {"soft", "hard"}


@pytest.mark.parametrize("trait", ["owl", "misaligned"])
def test_the_results_are_json_and_the_table_has_a_line_per_student_pair_and_first_step(trait):
    config, _, results = summarized(trait=trait, mode="both")
    json_ready = {key: value for key, value in results.items() if key != "config"}  # the config's tuples: lists in JSON
    assert json.loads(json.dumps(json_ready)) == json_ready
    assert results["wall_seconds"] == 12.0 and results["cross_partners"] == runs.cross_partners(3, 0).tolist()
    assert results["config"]["trait"] == trait and results["devices"] == 1
    lines = summary.table(results).splitlines()
    label = summary.LABELS[config.trait_spec.headline].format(trait=trait)
    assert lines[0].startswith(f"teacher: {label} ") and lines[-1] == "12 s"
    modes = results["modes"].values()
    for mode in config.modes:
        assert sum(line.startswith(f"{mode}: change from each student's own start of {label}") for line in lines) == 1
    for condition in {c for numbers in modes for c in numbers["conditions"]}:
        times = sum(condition in numbers["conditions"] for numbers in modes)
        assert sum(line.startswith(f"  {condition} ") for line in lines) == times
    for name in {n for numbers in modes for n in numbers["paired"]}:
        times = sum(name in numbers["paired"] for numbers in modes)
        assert sum(line.startswith(f"  {name}, paired: ") for line in lines) == times
    first_step = [line for line in lines if line.startswith("  first step, cos(ΔS, ΔT), ")]
    assert len(first_step) == 3  # soft mode's three students
    collapsed = [line for line in lines if "collapsed " in line and line.startswith("  ")]
    assert len(collapsed) == (len(results["modes"]["soft"]["conditions"]) + 9 if trait == "misaligned" else 0)
    one_seed = summary.table(summarized(seeds=1, trait=trait, mode="soft")[2])
    assert "(1 seed)" in one_seed and "±" not in one_seed.split("\n", 2)[2]
