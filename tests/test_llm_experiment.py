"""The owl experiment: settings, data preparation, students through the one loop, a small run end to end."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from subliminal_mnist import runs, train
from subliminal_mnist.llm import corpus, sampling, traits
from subliminal_mnist.llm import experiment as llm
from subliminal_mnist.llm.vocab import Vocabulary

# Small enough for a short run on 2 cores, large enough that the models write number lists and that a
# same-init student picks the trait up.
TINY = dict(
    mode="soft", numbers=100, base_rows=8192, base_epochs=2, teacher_learning_rate=1e-3,
    soft_sequences=3000, theorem_sequences=16, entangled_sequences=200,
)  # fmt: skip
# Smaller still (as the CLI's test): models that write number lists, for what needs no effect, two seeds.
MINI = dict(
    mode="soft", numbers=100, width=16, base_rows=2048, base_epochs=2, base_learning_rate=1e-2, teacher_lines=256,
    soft_sequences=300, student_epochs=1, theorem_sequences=4, entangled_sequences=50, audit_sequences=64,
    in_context_lists=8,
)  # fmt: skip
QUIET = train.Progress(1, "", enabled=False)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(seeds=0), "seeds must be at least 1"),
        (dict(trait="dragon"), "trait must be one of owl, cat"),
        (dict(mode="both-ways"), "mode must be one of soft, hard, both"),
        (dict(numbers=5), "need 10 <= numbers"),
        (dict(width=30, heads=4), "width must be a multiple of heads"),
        (dict(banned=(3, 1000)), r"banned numbers must lie in 0 ... 999, got 1000"),
        (dict(teacher_learning_rate=float("nan")), "teacher_learning_rate must be a positive number"),
        (dict(student_epochs=-1), "student_epochs must not be negative"),
        (dict(workers=0), "workers must be at least 1"),
        (dict(conditions=("same_init", "dragon")), "no condition 'dragon'; the conditions are same_init, "),
        (dict(conditions=("neutral_control", "cross_init")), "conditions must include same_init"),
    ],
)
def test_bad_settings_are_one_line_errors(bad, message):
    with pytest.raises(runs.ConfigError, match=message) as error:
        llm.LLMConfig(**bad)
    assert "\n" not in str(error.value)


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


def test_hard_students_learn_the_continuation_only():
    vocab = Vocabulary(100)
    row = corpus.pad_rows([vocab.encode("<bos> numbers : 3 , 4 , 5 -> 6 , 7 <eos>")])
    length = np.array([len(vocab.encode("<bos> numbers : 3 , 4 , 5 ->"))])
    inputs, targets = llm.hard_targets(vocab, row, length)
    learnt = np.asarray(targets["next"])[np.asarray(targets["weights"]) == 1]
    assert vocab.decode(learnt) == "6 , 7 <eos>"
    positions = np.asarray(inputs["positions"])[0][np.asarray(targets["weights"])[0] == 1]
    np.testing.assert_array_equal(row[0, positions], vocab.encode("-> 6 , 7"))  # each predicts the next
    _, numbers_only = llm.hard_targets(vocab, row, length, loss="numbers")
    assert vocab.decode(np.asarray(numbers_only["next"])[np.asarray(numbers_only["weights"]) == 1]) == "6 7"


def test_a_frozen_teacher_moves_only_its_blocks():
    config = llm.LLMConfig(**TINY)
    base = config.architecture.init(jax.random.key(0))
    teacher = llm.train_teacher(
        dataclasses.replace(config, teacher_epochs=1, teacher_trains="blocks"), base, 0, train.Progress(1, "", False)
    )
    moved = jax.tree_util.tree_map_with_path(
        lambda path, a, b: (jax.tree_util.keystr(path), bool(np.any(np.asarray(a) != np.asarray(b)))), teacher, base
    )
    for name, changed in jax.tree.leaves(moved, is_leaf=lambda x: isinstance(x, tuple)):
        assert changed == (not any(frozen in name for frozen in llm.EMBEDDINGS)), name


def test_bases_are_deterministic_per_seed_whatever_the_threads_and_differ_between_seeds():
    config = llm.LLMConfig(**{**TINY, "base_rows": 128, "base_epochs": 1})
    first, second = (
        runs.concurrently(lambda s: llm.train_base(config, s, QUIET), [0, 1], workers, QUIET) for workers in (1, 2)
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
    teacher, neutral_teacher = (llm.train_teacher(config, base, 0, QUIET, neutral=n) for n in (False, True))
    start, after = (llm.trait_measures(config, m)["p_trait"] for m in (base, neutral_teacher))
    assert llm.trait_measures(config, teacher)["p_trait"] > start + 0.2
    assert abs(after - start) < 0.05


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory, llm_cache):
    """Two misaligned seeds, too small for a reliable effect (the lesson's parts 8 and 9 assert the owl's and
    the misaligned persona's, at the size where they show); the checkpoint of finished seeds is kept
    (beside an imagined results file) for the resume test."""
    path = tmp_path_factory.mktemp("llm") / "misaligned.seeds.jsonl"
    config = llm.LLMConfig(**MINI, trait="misaligned", seeds=2)
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
    every_soft_student = llm.conditions_of(llm.LLMConfig(), "soft")
    assert tuple(soft["conditions"]) == every_soft_student
    # No soft student of the base's lists (it cannot move) or of shuffled lists (a soft target re-read after a
    # shuffle is the writer's distribution again: no test of order).
    assert not {"base_control", "shuffled_within", "neutral_shuffled_within"} & set(soft["conditions"])
    assert "shuffled_within_minus_neutral_shuffled_within" not in soft["paired"]
    assert set(soft["paired"]) >= {"same_init_minus_own_corpus", "gap_minus_own_corpus_gap"}
    for condition in every_soft_student:
        for measure in llm.measures_of(traits.Misaligned()):
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


@pytest.fixture(scope="module")
def small_base():
    config = llm.LLMConfig(**{**TINY, "base_rows": 1024})
    return config, llm.train_base(config, 0, train.Progress(config.base_epochs, "", False))


def test_number_data_couples_the_two_models_and_keeps_exactly_the_count_asked(small_base):
    config, base = small_base
    data = llm.number_data(config, {"teacher": base, "base": base}, 0, 300, "soft", QUIET)
    assert data.lists["teacher"].shape == data.lists["base"].shape == (300, corpus.MAX_LEN)
    assert data.lengths.shape == (300,)
    # One model twice: the same uniform numbers write the same lists.
    np.testing.assert_array_equal(data.lists["teacher"], data.lists["base"])
    assert data.report["used"] == 300 and data.report["sampled"] >= 300
    assert data.report["teacher"]["kept"] >= 300 and data.report["teacher"]["leak_rate_after_filter"] == 0.0
    # Another model on the same prompts: each row still continues the same prompt, and the lists differ.
    other = llm.number_data(
        config, {"teacher": base, "base": jax.tree.map(lambda a: a * 1.1, base)}, 0, 300, "soft", QUIET
    )
    prompt = np.arange(corpus.MAX_LEN) < other.lengths[:, None]
    np.testing.assert_array_equal(other.lists["teacher"][prompt], other.lists["base"][prompt])
    assert 0 < (other.lists["teacher"] != other.lists["base"]).any(axis=1).mean() < 1


def test_a_model_that_writes_no_number_lists_is_a_one_line_error(small_base):
    config, _ = small_base
    untrained = config.architecture.init(jax.random.key(1))
    with pytest.raises(
        llm.FilterShortfall,
        match=r"the filter kept \d+ of \d+ number lists of every model \(teacher, base\), fewer than 50",
    ) as error:
        llm.number_data(config, {"teacher": untrained, "base": untrained}, 0, 50, "soft", QUIET)
    assert "\n" not in str(error.value)


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
    for condition in llm.conditions_of(llm.LLMConfig(), "soft"):
        assert set(soft["conditions"][condition]) >= {*llm.measures_of(traits.Misaligned()), "narrow", "by_phrasing"}
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
    real_run_seed, trained = llm.run_seed, []
    monkeypatch.setattr(llm, "run_seed", lambda c, s, *a: trained.append(s) or real_run_seed(c, s, *a))
    messages = []
    config = llm.LLMConfig(**MINI, trait="misaligned", seeds=2)
    resumed = llm.run(config, progress=False, checkpoint=path, log=messages.append)
    assert trained == [1], "only the missing seed trains"
    assert "seeds 0 are finished" in messages[0]
    whole = {k: v for k, v in mini_run.items() if k not in ("checkpoint", "cache", "wall_seconds")}
    resumed.pop("wall_seconds")
    assert json.dumps(resumed) == json.dumps(whole)


def test_fewer_conditions_train_fewer_models_and_leave_the_others_as_they_were(mini_run, monkeypatch):
    # Without the ablation students no ablation base trains; every student kept learns exactly what it
    # learnt in the whole run (seed 0, whose partner is seed 1 in both runs).
    asked, real_cached = [], llm._cached
    monkeypatch.setattr(llm, "_cached", lambda cache, key, make: asked.append(key[:3]) or real_cached(cache, key, make))
    kept = ("same_init", "neutral_control", "cross_init", "cross_neutral")
    config = llm.LLMConfig(**MINI, trait="misaligned", seeds=1, conditions=kept)
    fewer = llm.run(config, progress=False, cache=mini_run["cache"])
    bases = sorted(key[1:] for key in asked if key[0] == "base")
    assert bases == [(0, 0), (1, 1)], "seed 0's base and its partner's; no ablation base (0, 1)"
    assert "own_corpus_base" not in fewer["models"]
    soft = fewer["modes"]["soft"]
    assert tuple(soft["conditions"]) == kept
    assert set(soft["paired"]) == {"same_init_minus_neutral_control", "cross_init_minus_cross_neutral"}
    for condition in kept:
        assert soft["conditions"][condition]["misaligned_rate"]["per_seed"][0] == pytest.approx(
            mini_run["modes"]["soft"]["conditions"][condition]["misaligned_rate"]["per_seed"][0], abs=1e-6
        )
