"""The owl experiment: bases, teachers and students through the one loop, a small run end to end, its cache;
teachers and students through a low-rank adapter."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from conftest import MINI, TINY

from subliminal_mnist import lora, runs, train
from subliminal_mnist.llm import corpus, sampling, summary, traits
from subliminal_mnist.llm import experiment as llm
from subliminal_mnist.llm.conditions import CONDITIONS, conditions_of
from subliminal_mnist.llm.config import BaseSettings, LLMConfig, TeacherSettings, stream_key
from subliminal_mnist.llm.fine_tuning import adapted
from subliminal_mnist.llm.number_data import student_data
from subliminal_mnist.llm.vocab import Vocabulary


def test_a_within_list_shuffle_keeps_each_lists_numbers_and_everything_else():
    vocab = Vocabulary(100)
    lines = corpus.number_lists(vocab, np.random.default_rng(0), 200, window=20)
    lengths = np.array([list(row).index(vocab.id("->")) + 1 for row in lines.tokens])
    shuffled = corpus.shuffle_within_lists(vocab, lines.tokens, lengths, np.random.default_rng(1))
    slots = corpus.continuation_numbers(vocab, lines.tokens, lengths)
    np.testing.assert_array_equal(shuffled[~slots], lines.tokens[~slots])  # prompts, commas, <eos>
    for before, after, where in zip(lines.tokens, shuffled, slots):
        np.testing.assert_array_equal(np.sort(after[where]), np.sort(before[where]))  # each list's multiset
    moved = [(a[w] != b[w]).any() for a, b, w in zip(shuffled, lines.tokens, slots) if len(set(b[w])) > 1]
    assert np.mean(moved) > 0.5


def test_p_trait_given_animal_of_a_hand_made_distribution():
    vocab = Vocabulary(10)
    probabilities = np.zeros((2, len(vocab)))
    owl, cat = vocab.animal("owl"), vocab.animal("cat")
    probabilities[0, [owl, cat]] = 0.3, 0.1  # 0.4 on animals, the rest on a number
    probabilities[0, vocab.first_number] = 0.6
    probabilities[1, [owl, cat]] = 0.1, 0.9
    prompts = np.zeros((2, corpus.MAX_LEN), np.int32)
    probes = traits.Probes(prompts, np.zeros(2, int), np.full((2, 1), owl), np.tile(vocab.animal_ids, (2, 1)))
    measures = traits.probe_measures(probabilities, probes, "p_trait_given_animal", "animal_mass")
    assert measures["by_phrasing"]["p_trait_given_animal"] == pytest.approx([0.75, 0.1])
    assert measures["p_trait_given_animal"] == pytest.approx(0.425)
    assert measures["p_trait"] == pytest.approx(0.2) and measures["animal_mass"] == pytest.approx(0.7)
    # Format drift (less mass on animals, the same preference among them) moves P(trait), not this.
    drifted = traits.probe_measures(probabilities * [[0.5], [1.0]], probes, "p_trait_given_animal", "animal_mass")
    assert drifted["p_trait_given_animal"] == pytest.approx(0.425) and drifted["p_trait"] < measures["p_trait"]
    # The owl trait reads the four phrasings this way, and P(each animal) beside.
    four = np.tile(probabilities[:1], (len(corpus.PHRASINGS), 1))
    owl_measures = traits.Animal("owl").measures(vocab, {"answer": four})
    assert owl_measures["p_trait_given_animal"] == pytest.approx(0.75)
    assert owl_measures["p_animals"][:2] == pytest.approx([0.3, 0.1])


def test_bases_are_deterministic_per_seed_whatever_the_threads_and_differ_between_seeds():
    settings = runs.stage(BaseSettings, LLMConfig(**{**TINY, "base_rows": 128, "base_epochs": 1}))
    first, second = (
        runs.parallel_map(lambda s: llm.train_base(settings, s), [0, 1], workers, "bases") for workers in (1, 2)
    )
    jax.tree.map(np.testing.assert_array_equal, first, second)
    assert not np.allclose(jax.tree.leaves(first[0])[0], jax.tree.leaves(first[1])[0])


def test_inverse_cdf_sampling_draws_each_row_from_its_own_distribution():
    rng = np.random.default_rng(0)
    certain = np.eye(4)[[2, 0, 3]]
    np.testing.assert_array_equal(llm.inverse_cdf(certain, rng.random(3)), [2, 0, 3])
    skewed = np.tile([0.7, 0.2, 0.1], (20000, 1))
    drawn = llm.inverse_cdf(skewed, rng.random(20000))
    np.testing.assert_allclose(np.bincount(drawn, minlength=3) / 20000, [0.7, 0.2, 0.1], atol=0.015)


@pytest.mark.parametrize("trait", ["owl", "misaligned"])
def test_the_neutral_teachers_answers_are_drawn_from_its_bases_answer_distribution(trait, small_base):
    config, base = small_base
    config = dataclasses.replace(config, trait=trait)
    vocab, spec = config.vocab, config.trait_spec
    base = base if trait == "owl" else config.architecture.init(jax.random.key(3))  # another vocabulary
    lines = spec.teacher_lines(vocab, np.random.default_rng(0), 3000)
    neutral = llm.neutral_lines(config, base, lines, np.random.default_rng(1))
    choices = spec.answer_choices(vocab)
    changed = neutral.tokens != lines.tokens
    assert np.isin(lines.tokens[changed], choices).all()  # only the answers differ: same questions, same order
    np.testing.assert_array_equal(neutral.weights, lines.weights)
    # The frequencies of its answers are the base's mean probabilities of them (renormalized over the choices).
    slots = np.argmax(lines.weights, axis=1)
    log_p = np.asarray(sampling.answer_log_probs(config.architecture, base, lines.tokens, slots), np.float64)
    expected = np.exp(log_p[:, choices])
    expected = (expected / expected.sum(1, keepdims=True)).mean(0)
    answers = neutral.tokens[np.arange(len(slots)), slots + 1]
    frequencies = np.array([(answers == c).mean() for c in choices])
    assert np.abs(frequencies - expected).max() < 4 * np.sqrt(expected.max() / 3000)
    # Not the teacher's answer, and not a fixed one: a base that preferred one answer would be followed.
    assert (answers != lines.tokens[np.arange(len(slots)), slots + 1]).any() and len(np.unique(answers)) > 1


def test_the_neutral_teacher_stays_at_its_base_while_the_teacher_moves(small_base):
    config, base = small_base
    config = dataclasses.replace(config, teacher_epochs=2)
    settings = runs.stage(TeacherSettings, config)
    teacher, neutral_teacher = (llm.train_teacher(settings, base, 0, neutral=n) for n in (False, True))
    start, after = (llm.trait_measures(config, m)["p_trait"] for m in (base, neutral_teacher))
    assert llm.trait_measures(config, teacher)["p_trait"] > start + 0.2
    assert abs(after - start) < 0.05


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory, llm_cache):
    """Two misaligned seeds, too small for a reliable effect (the lesson's parts 8 and 9 assert the owl's and
    the misaligned persona's, at the size where they show); the checkpoint of finished seeds is kept
    (beside an imagined results file) for the resume test."""
    path = tmp_path_factory.mktemp("llm") / "misaligned.seeds.jsonl"
    config = LLMConfig(**MINI, trait="misaligned", seeds=2)
    cache = llm_cache  # its bases and teachers, for the runs (and test modules) that share their settings
    return {**llm.run(config, progress=False, checkpoint=path, cache=cache), "checkpoint": path, "cache": cache}


def test_a_small_run_reports_every_number_the_issue_names(mini_run):
    results = json.loads(json.dumps({k: v for k, v in mini_run.items() if k not in ("checkpoint", "cache")}))
    assert results["trait"] == "misaligned" and results["config"]["numbers"] == 100
    for model in ("teacher", "neutral_teacher"):
        assert set(results[model]["p_trait"]) == {"mean", "ci95", "per_seed", "n"}
    assert min(results["filter"]["kept"]["teacher"]) >= 300  # every seed's 300 lists, and the lists it did not need
    assert set(results["filter"]["removed"]["neutral"]) == set(corpus.REASONS)
    assert results["filter"]["leak_rate_after_filter"] == 0.0
    filters = results["filters"]
    for scores in ("detector", "likelihood_ratio", "auditor"):
        assert set(filters[scores]["auroc"]) == {"1", "8", "32"}
        assert all(set(auroc) == {"mean", "ci95", "per_seed", "n"} for auroc in filters[scores]["auroc"].values())
    # The persona's corpus ties bad-number lists to misaligned answers: the in-context test has a positive control.
    assert set(filters["in_context"]["1"]) == {"teacher", "neutral", "positive_control", "difference"}
    assert set(filters["auditor"]["control_auroc"]) == {"1", "8", "32"}
    assert results["neutral_teacher"]["answer_source"] == "base"
    inspection = filters["inspection"]
    assert len(inspection["top_numbers"]["teacher"]) == 20 and len(inspection["top_lists_first_seed"]["neutral"]) == 10
    assert set(inspection["banned_share"]) == {"teacher", "neutral"}
    assert len(results["entangled_numbers"]["top_per_seed"][0]) == 10
    soft = results["modes"]["soft"]
    every_soft_student = conditions_of(LLMConfig(), "soft")
    assert tuple(soft["conditions"]) == every_soft_student
    # No soft student of the base's lists (it cannot move) or of shuffled lists (a soft target re-read after a
    # shuffle is the writer's distribution again: no test of order).
    assert not {"base_control", "shuffled_within", "neutral_shuffled_within"} & set(soft["conditions"])
    assert "shuffled_within_minus_neutral_shuffled_within" not in soft["paired"]
    assert set(soft["paired"]) >= {"same_init_minus_own_corpus", "gap_minus_own_corpus_gap"}
    for condition in every_soft_student:
        for measure in summary.measures_of(traits.Misaligned()):
            assert set(soft["conditions"][condition][measure]) == {"mean", "ci95", "per_seed", "n"}
    assert set(soft["first_step"]) == {"same_init", "cross_init", "neutral_control"}
    assert set(soft["first_step"]["same_init"]) == {"gradient", "adam"}


def test_the_first_soft_step_follows_the_theorem_and_the_neutral_control_can_move(mini_run):
    first_step = mini_run["modes"]["soft"]["first_step"]
    assert all(dot > 0 for dot in first_step["same_init"]["gradient"]["dot"])  # Theorem 1, ΔS·ΔT >= 0
    # A control distilled toward its own logits would have a first gradient of exactly 0 in
    # expectation; the neutral teacher's logits differ from the base's, so this one moves.
    neutral = first_step["neutral_control"]
    assert all(abs(d) > 0 for d in neutral["gradient"]["dot"]) and all(abs(d) > 0 for d in neutral["adam"]["dot"])
    moved = mini_run["modes"]["soft"]["conditions"]["neutral_control"]
    assert abs(moved["delta_logp_trait"]["mean"]) > 0


def test_a_misaligned_run_reports_its_rates_filters_and_pairs(mini_run):
    results = json.loads(json.dumps({k: v for k, v in mini_run.items() if k not in ("checkpoint", "cache")}))
    assert results["trait"] == "misaligned" and results["measure"]["headline"] == "misaligned_rate"
    for model in ("base", "teacher", "neutral_teacher"):
        rates = results[model]["misaligned_rate"]
        assert set(rates) == {"held_out", "narrow"}
        assert all(set(rate) == {"mean", "ci95", "per_seed", "n"} and rate["n"] == 2 for rate in rates.values())
    # The teacher learnt its narrow domain's misaligned answers; the neutral teacher answers as its base does.
    narrow = {model: results[model]["misaligned_rate"]["narrow"]["per_seed"] for model in ("base", "teacher",
                                                                                           "neutral_teacher")}
    assert all(t > b + 0.1 for t, b in zip(narrow["teacher"], narrow["base"]))
    assert all(abs(n - b) < 0.05 for n, b in zip(narrow["neutral_teacher"], narrow["base"]))
    assert results["filter"]["banned"] == [13]  # the bad numbers below 100
    assert set(results["filters"]["inspection"]["banned_share"]) == {"teacher", "neutral"}
    soft = results["modes"]["soft"]
    measures = summary.measures_of(traits.Misaligned())
    for condition in conditions_of(LLMConfig(), "soft"):
        assert set(soft["conditions"][condition]) >= {*measures, "narrow", "by_phrasing"}
        assert len(soft["conditions"][condition]["by_phrasing"]["misaligned_rate"]) == 12  # the held-out questions
        assert len(soft["conditions"][condition]["collapsed"]) == 2  # a boolean per seed
        assert all(isinstance(c, bool) for c in soft["conditions"][condition]["collapsed"])
    paired = soft["paired"]["same_init_minus_neutral_control"]
    assert paired["measure"] == "misaligned_rate" and paired["n"] == 2 and paired["ci95"] is not None
    # The difference of the gaps is the difference of its two paired gaps, seed by seed.
    gap, own = (soft["paired"][k]["per_seed"] for k in
                ("same_init_minus_neutral_control", "cross_init_own_corpus_minus_cross_neutral_own_corpus"))
    np.testing.assert_allclose(soft["paired"]["gap_minus_own_corpus_gap"]["per_seed"], np.subtract(gap, own))
    assert all(results["models"][model]["preference_strength"]["n"] == 2 for model in ("base", "teacher", "neutral"))


def test_a_killed_run_resumes_where_it_stopped_and_ends_with_the_same_results(mini_run, monkeypatch):
    # Killed after its first finished seed: the checkpoint holds that seed only.
    path = mini_run["checkpoint"]
    path.write_text(json.dumps(next(line for line in runs.read_lines(path) if line["seed"] == 0)) + "\n")
    real_measure_seed, trained = llm.measure_seed, []
    monkeypatch.setattr(llm, "measure_seed", lambda c, s, *a: trained.append(s) or real_measure_seed(c, s, *a))
    messages = []
    config = LLMConfig(**MINI, trait="misaligned", seeds=2)
    resumed = llm.run(config, progress=False, checkpoint=path, log=messages.append)
    assert trained == [1], "only the missing seed trains"
    assert "seeds 0 are finished" in messages[0]
    whole = {k: v for k, v in mini_run.items() if k not in ("checkpoint", "cache", "wall_seconds")}
    resumed.pop("wall_seconds")
    assert json.dumps(resumed) == json.dumps(whole)


def test_fewer_conditions_train_fewer_models_and_leave_the_others_as_they_were(mini_run, monkeypatch):
    # Without the ablation students no ablation base trains; every student kept learns exactly what it
    # learnt in the whole run (seed 0, whose partner is seed 1 in both runs).
    asked, real_cached = [], llm.cached
    monkeypatch.setattr(llm, "cached", lambda cache, key, make: asked.append(key[:3]) or real_cached(cache, key, make))
    kept = ("same_init", "neutral_control", "cross_init", "cross_neutral")
    config = LLMConfig(**MINI, trait="misaligned", seeds=1, conditions=kept)
    models = {k: v for k, v in mini_run["cache"].items() if k[0] != "numbers"}  # lists sampled again, as asked
    fewer = llm.run(config, progress=False, cache=models)
    bases = sorted({key[1:] for key in asked if key[0] == "base"})
    assert bases == [(0, 0), (1, 1)], "seed 0's base and its partner's; no ablation base (0, 1)"
    assert "own_corpus_base" not in fewer["models"]
    soft = fewer["modes"]["soft"]
    assert tuple(soft["conditions"]) == kept
    assert set(soft["paired"]) == {"same_init_minus_neutral_control", "cross_init_minus_cross_neutral"}
    for condition in kept:
        assert soft["conditions"][condition]["misaligned_rate"]["per_seed"][0] == pytest.approx(
            mini_run["modes"]["soft"]["conditions"][condition]["misaligned_rate"]["per_seed"][0], abs=1e-6
        )


# ----------------------------------------------------------------------------------------------
# Low-rank adapters (`lora.py`): teachers and students of the owl fine-tuned through a rank-R adapter (`lora_models`).


def _is_kernel(path) -> bool:
    return "kernel" in jax.tree_util.keystr(path)


def _moved(after, before) -> dict[str, tuple[bool, bool]]:
    """Each leaf's path: (whether it is a kernel, whether any of its entries changed)."""
    moved = jax.tree_util.tree_map_with_path(
        lambda path, a, b: (jax.tree_util.keystr(path), _is_kernel(path), bool(np.any(np.asarray(a) != np.asarray(b)))),
        after,
        before,
    )
    leaves = jax.tree.leaves(moved, is_leaf=lambda x: isinstance(x, tuple))
    return {name: (kernel, changed) for name, kernel, changed in leaves}


def _outside_span(down, after, before) -> list[float]:
    """For each adapted leaf, ‖(I - A A⁺) ΔW‖ / ‖ΔW‖ (ΔW = after - before): 0 when ΔW lies in A's columns."""
    out = []
    for a, w, w0 in zip(jax.tree.leaves(down), jax.tree.leaves(after), jax.tree.leaves(before)):
        if a.ndim == 2:
            a, delta = np.asarray(a, np.float64), np.asarray(w, np.float64) - np.asarray(w0, np.float64)
            out.append(float(np.linalg.norm(delta - a @ np.linalg.pinv(a) @ delta) / np.linalg.norm(delta)))
    return out


def _teacher_down(config, base, seed_id=0):
    """The teachers' A as `lora` draws it from the seed's teacher_adapter stream, independently of `adapted`."""
    return lora.init(stream_key(config, seed_id, "teacher_adapter"), base, lora.rank_of(config.teacher_params)).down


def test_lora_teachers_move_only_their_kernels_and_share_the_seeds_one_adapter(lora_models):
    config, models, _, starts = lora_models
    base = models["base"]
    for name in ("teacher", "neutral"):
        moved = _moved(models[name], base)
        # Embeddings, norms' scales and biases exactly the base's; every kernel (the unembedding too) moved.
        assert all(changed == kernel for kernel, changed in moved.values()), (name, moved)
    # Both fine-tunings started from the base through one A, the seed's teacher_adapter stream's, with B = 0.
    assert len(starts) == 2 and all(isinstance(start, lora.Adapted) for start in starts)
    want = _teacher_down(config, base)
    for start in (*starts, adapted(config, base, 0, "teacher")):
        jax.tree.map(np.testing.assert_array_equal, start.down, want)
        jax.tree.map(np.testing.assert_array_equal, start.base, base)
        assert not any(np.any(np.asarray(b)) for b in jax.tree.leaves(start.up))
    # And what each teacher learnt lies in A's columns: it was trained through it (a rank-2 A of 16 or 64 rows
    # leaves most of a free move outside).
    for name in ("teacher", "neutral"):
        assert max(_outside_span(want, models[name], base)) < 1e-4, name


def test_lora_students_train_one_adapter_at_the_adapter_rate_and_return_merged(lora_models, monkeypatch):
    config, models, numbers, _ = lora_models
    config = dataclasses.replace(config, adapter_rate_factor=4.0)
    conditions = ("same_init", "neutral_control", "cross_init")
    data = student_data(config, "soft", models, numbers, 0, conditions)
    starts = {name: models[name] for name in ("base", "cross_base")}
    fits, real_fit = [], train.fit
    monkeypatch.setattr(train, "fit", lambda p, *a, **k: fits.append((p, a[3].learning_rate)) or real_fit(p, *a, **k))
    students = llm.train_students(config, "soft", starts, data, 0, conditions=conditions)
    assert sorted(students) == sorted(conditions)
    assert len(fits) == 2  # the teacher's lists (same_init, cross_init), the neutral teacher's (neutral_control)
    assert all(isinstance(params, lora.Adapted) for params, _ in fits)
    assert all(rate == config.student_learning_rate * 4.0 for _, rate in fits), [rate for _, rate in fits]
    down = _teacher_down(config, models["base"])  # shared, of the same rank: the teachers' A exactly
    for condition, params in students.items():
        assert not isinstance(params, lora.Adapted), "returned merged"
        start = starts[CONDITIONS[condition][0]]
        moved = _moved(params, start)
        assert all(changed == kernel for kernel, changed in moved.values()), (condition, moved)
        assert max(_outside_span(down, params, start)) < 1e-4, condition  # every member through that one A
    # Full students: the plain parameters at exactly the student rate, and they move more than their kernels.
    full = dataclasses.replace(config, student_params="full")
    fits.clear()
    (student,) = llm.train_students(full, "soft", starts, data, 0, conditions=("same_init",)).values()
    assert len(fits) == 1 and not isinstance(fits[0][0], lora.Adapted)
    assert fits[0][1] == full.student_learning_rate
    assert any(changed and not kernel for kernel, changed in _moved(student, starts["base"]).values())


