"""The owl setting's defenses (any trait; here the misaligned persona's small models): `none` is the llm
experiment's pair, each defense changes what it says and nothing else, the data transforms do what their
names say, a killed run resumes, user mistakes are one line."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import lines_without_times

from subliminal_mnist import cli, defense_table, runs
from subliminal_mnist.defense_table import Row
from subliminal_mnist.llm import corpus, sampling
from subliminal_mnist.llm import defenses as owl
from subliminal_mnist.llm import experiment as llm
from subliminal_mnist.llm.config import LLMConfig
from subliminal_mnist.llm.defenses import OwlDefenses
from subliminal_mnist.llm.number_data import hard_targets

# The misaligned persona's models of the llm tests (their MINI: models that write number lists, the same
# bases and teachers, shared through the session's cache), one seed; no effect is needed here.
MINI = dict(
    trait="misaligned", mode="soft", numbers=100, width=16, base_rows=2048, base_epochs=2, base_learning_rate=1e-2,
    teacher_lines=256, soft_sequences=300, hard_sequences=300, student_epochs=1, seeds=1, theorem_sequences=4,
    entangled_sequences=50, audit_sequences=64, in_context_lists=8,
)  # fmt: skip
CONFIG = LLMConfig(**MINI)
SETTINGS = OwlDefenses(heldout_lists=64)


@pytest.fixture(scope="module")
def cache(llm_cache):
    return llm_cache


@pytest.fixture(scope="module")
def undefended(cache):
    return _row(Row("none"), cache)


def _row(row, cache, settings=SETTINGS, **options):
    partners = runs.cross_partners(CONFIG.seeds, CONFIG.seed)
    per_seed = [
        owl.train_row(row, CONFIG, settings, s, int(partners[s]), cache, **options) for s in range(CONFIG.seeds)
    ]
    return {key: [p[key] for p in per_seed] for key in per_seed[0]}


def test_none_is_the_llm_experiments_pair_for_the_same_seeds(cache, undefended):
    config = LLMConfig(**MINI, conditions=owl.PAIR)
    # The run samples its own lists (the cache keeps only the defense's models): the same lists, not the same object.
    results = llm.run(config, progress=False, cache={k: v for k, v in cache.items() if k[0] != "numbers"})
    conditions = results["modes"]["soft"]["conditions"]
    assert conditions["same_init"]["misaligned_rate"]["per_seed"] == undefended["treated"]
    assert conditions["neutral_control"]["misaligned_rate"]["per_seed"] == undefended["control"]
    assert results["teacher"]["misaligned_rate"]["held_out"]["per_seed"] == undefended["teacher"]


@pytest.mark.parametrize(
    "row, options",
    [
        (Row("mix", 0.0), {}),
        (Row("replace_divergent", 0.0), {}),
        (Row("detector_filter", 0.0), {}),
        (Row("random_drop", 0.0), {}),
        (Row("temperature", 1.0), {}),
        (Row("sgd", defense_table.SGD_ADAM_CONTROL), {"learning_rate": CONFIG.student_learning_rate}),
    ],
)
def test_a_defense_that_changes_nothing_is_none_to_the_last_digit(row, options, cache, undefended):
    assert _row(row, cache, **options) == undefended


@pytest.mark.parametrize(
    "row, options",
    [
        (Row("mix", 0.5), {}),
        (Row("replace_divergent", 0.5), {}),
        (Row("threshold_sampling", 0.5), {}),
        (Row("detector_filter", 0.5), {}),
        (Row("random_drop", 0.5), {}),
        (Row("temperature", 4.0), {}),
        (Row("kl_to_start"), {}),
        (Row("sgd"), {"learning_rate": 1.0}),
    ],
)
def test_a_defense_changes_the_students_not_the_teacher(row, options, cache, undefended):
    defended = _row(row, cache, **options)
    assert defended["teacher"] == undefended["teacher"]
    assert defended["treated"] != undefended["treated"] and defended["heldout_kl"] != undefended["heldout_kl"]


def test_other_init_trains_the_partners_base_on_both_data_sets(cache, monkeypatch):
    seen, real = [], llm.train_students
    monkeypatch.setattr(llm, "train_students", lambda *a, **k: seen.append((a[2], a[5])) or real(*a, **k))
    partners = runs.cross_partners(CONFIG.seeds, CONFIG.seed)
    owl.train_row(Row("other_init"), CONFIG, SETTINGS, 0, int(partners[0]), cache)
    ((starts, conditions),) = seen
    assert conditions == ("cross_init", "cross_neutral")
    assert starts["cross_base"] is llm.cached_base(CONFIG, int(partners[0]), cache)


# ----------------------------------------------------------------------------------------------
# The data transforms.


def _data(n: int = 6, positions: int = 3, vocab: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def one(offset):
        inputs = {"tokens": jnp.arange(n)[:, None] + offset, "positions": jnp.zeros((n, positions), int)}
        return inputs, {
            "logits": jnp.asarray(rng.normal(size=(n, positions, vocab))),
            "weights": jnp.ones((n, positions)),
        }

    return {"teacher": one(0), "neutral": one(100)}


def test_mixing_takes_the_first_share_of_lists_from_the_neutral_teacher():
    data = _data()
    mixed = owl.mixed(data, 0.5)
    np.testing.assert_array_equal(mixed["teacher"][0]["tokens"][:, 0], [100, 101, 102, 3, 4, 5])
    np.testing.assert_array_equal(mixed["teacher"][1]["logits"][:3], data["neutral"][1]["logits"][:3])
    assert mixed["neutral"] is data["neutral"]


def test_the_most_divergent_share_of_the_real_positions():
    divergence = np.array([[0.1, 0.9, 5.0], [0.5, 0.2, 0.3]])
    weights = np.array([[1, 1, 0], [1, 1, 1]])  # the 5.0 is padding
    chosen = owl.most_divergent(divergence, weights, 0.4)  # 2 of the 5 real positions
    np.testing.assert_array_equal(chosen, [[False, True, False], [True, False, False]])
    assert not owl.most_divergent(divergence, weights, 0.0).any()


def test_a_truncated_target_keeps_exactly_what_min_p_samples():
    logits = jnp.log(jnp.array([[[0.5, 0.3, 0.15, 0.05]]]))
    data = {"teacher": ({}, {"logits": logits, "weights": jnp.ones((1, 1))})}
    kept = owl.truncated_targets(data, 0.5)["teacher"][1]["logits"]
    np.testing.assert_allclose(jax.nn.softmax(kept)[0, 0], [0.625, 0.375, 0.0, 0.0], atol=1e-6)
    assert sampling.above_min_p(logits, 0.2)[0, 0].tolist() == [True, True, True, False]


def test_the_detector_filter_drops_the_prompts_of_the_most_teacher_like_lists_from_both_data_sets(cache, monkeypatch):
    data = _data()
    scores = {"teacher": np.array([0.0, 5.0, 1.0, 4.0, 2.0, 3.0]), "neutral": np.arange(6.0)[::-1]}
    monkeypatch.setattr(owl, "teacher_likeness", lambda config, models, numbers, name: scores[name])
    kept = owl.detector_filtered(CONFIG, data, {}, None, 0.5)
    np.testing.assert_array_equal(kept["teacher"][0]["tokens"][:, 0], [0, 2, 4])  # order kept
    np.testing.assert_array_equal(kept["neutral"][0]["tokens"][:, 0], [100, 102, 104])  # the same prompts
    np.testing.assert_array_equal(kept["neutral"][1]["logits"], data["neutral"][1]["logits"][np.array([0, 2, 4])])


def test_a_random_drop_removes_the_same_prompts_from_both_data_sets():
    data = _data(n=40)
    kept = owl.randomly_dropped(data, 0.25, jax.random.key(3))
    teacher, neutral = (np.asarray(kept[name][0]["tokens"][:, 0]) for name in ("teacher", "neutral"))
    assert len(teacher) == 30 and np.array_equal(neutral - 100, teacher)  # pairs stay pairs
    assert np.all(np.diff(teacher) > 0) and not np.array_equal(teacher, np.arange(30))  # in order; not the first 30
    again = owl.randomly_dropped(data, 0.25, jax.random.key(3))["teacher"][0]["tokens"][:, 0]
    assert np.array_equal(again, teacher) and not np.array_equal(
        owl.randomly_dropped(data, 0.25, jax.random.key(4))["teacher"][0]["tokens"][:, 0], teacher
    )


def test_sorting_a_list_keeps_its_prompt_and_its_multiset_of_numbers(cache):
    numbers = llm.cached_numbers(CONFIG, 0, CONFIG.mode, cache)
    vocab, tokens, lengths = CONFIG.vocab, numbers.lists["teacher"], numbers.lengths
    ordered = owl.sorted_lists(CONFIG, numbers).lists["teacher"]
    slots = corpus.continuation_numbers(vocab, tokens, lengths)
    assert np.array_equal(ordered[~slots], tokens[~slots])  # prompts, commas, <eos> and padding in place
    assert np.array_equal(corpus.continuation_numbers(vocab, ordered, lengths), slots)
    for row in range(len(tokens)):
        written, reordered = tokens[row][slots[row]], ordered[row][slots[row]]
        assert sorted(written) == list(reordered)  # the same multiset, ascending
    assert not np.array_equal(ordered, tokens)


def test_the_sort_row_trains_on_sorted_lists(cache, monkeypatch, undefended):
    seen, real = [], owl.student_data
    monkeypatch.setattr(owl, "student_data", lambda config, mode, models, numbers, *a, **k: seen.append(numbers)
                        or real(config, mode, models, numbers, *a, **k))  # fmt: skip
    defended = _row(Row("sort"), cache)
    vocab, lists, lengths = CONFIG.vocab, seen[0].lists, seen[0].lengths
    for name in ("teacher", "neutral"):
        slots = corpus.continuation_numbers(vocab, lists[name], lengths)
        values = np.where(slots, lists[name], -1)
        assert all(np.all(np.diff(row[row >= 0]) >= 0) for row in values)
    assert defended["teacher"] == undefended["teacher"] and defended["treated"] != undefended["treated"]


def test_replacing_divergent_numbers_changes_only_chosen_numbers_and_keeps_the_lists_valid(cache):
    hard = LLMConfig(**{**MINI, "mode": "hard"})
    models = llm.seed_models(hard, 0, cache)
    numbers = llm.cached_numbers(hard, 0, "hard", cache)
    replaced = owl.replaced_hard(hard, models, numbers, 0.25, jax.random.key(0))
    before = hard_targets(hard.vocab, numbers.lists["teacher"], numbers.lengths)[0]["tokens"]
    after = np.asarray(replaced["teacher"][0]["tokens"])
    changed = np.asarray(before) != after
    slots = corpus.continuation_numbers(hard.vocab, numbers.lists["teacher"], numbers.lengths)
    assert changed.any() and not (changed & ~slots).any()  # numbers only, never a prompt, comma or <eos>
    assert changed.sum() <= 0.25 * slots.sum() + 1
    filtered = corpus.filter_continuations(hard.vocab, after, numbers.lengths, hard.banned_numbers)
    assert filtered.kept.all()


def test_min_p_lists_hold_only_tokens_within_the_threshold_of_the_most_likely(cache, undefended):
    _row(Row("threshold_sampling", 0.5), cache)  # its lists, kept in the cache
    teacher = llm.seed_models(CONFIG, 0, cache)["teacher"]
    numbers = llm.cached_numbers(CONFIG, 0, CONFIG.mode, cache, min_p=0.5)
    tokens, lengths = numbers.lists["teacher"][:64], numbers.lengths[:64]
    log_probs = np.asarray(jax.nn.log_softmax(CONFIG.architecture.apply(teacher, jnp.asarray(tokens)), axis=-1))
    # Every token the teacher wrote after its prompt had at least half its position's largest probability.
    written = (np.arange(tokens.shape[1])[None, 1:] >= lengths[:, None]) & (tokens[:, 1:] != 0)
    rows, columns = np.nonzero(written)
    chosen = log_probs[rows, columns, tokens[rows, columns + 1]]
    assert len(chosen) > 100 and np.all(chosen >= log_probs[rows, columns].max(axis=-1) + np.log(0.5) - 1e-4)
    plain = llm.cached_numbers(CONFIG, 0, CONFIG.mode, cache)
    assert not np.array_equal(plain.lists["teacher"][:64], tokens)


# ----------------------------------------------------------------------------------------------
# Rows, runs and the command.


def test_rows_by_mode():
    assert [r.key for r in owl.rows(OwlDefenses(defenses=("mix",), mix_shares=(0.5,)), CONFIG)] == ["none", "mix:0.5"]
    soft = [r.key for r in owl.rows(OwlDefenses(), CONFIG)]
    hard = [r.key for r in owl.rows(OwlDefenses(), LLMConfig(mode="hard"))]
    assert soft[:4] == ["none", "other_init", "sgd", "sgd:adam_control"] and soft[-1] == "temperature:4"
    assert hard == [key for key in soft if not key.startswith("temperature")]
    with pytest.raises(runs.ConfigError, match="defense temperature does not apply to this run"):
        owl.rows(OwlDefenses(defenses=("temperature",)), LLMConfig(mode="hard"))


def test_soft_sort_says_it_cannot_refute_what_hard_sort_can():
    def line(key):
        return {"setting": "owl", "defense": key, "wall_seconds": 1.0, "settings": {}, "config": {},
                "per_seed": {"treated": [0.2, 0.3], "control": [0.0, 0.1], "heldout_kl": [1e-3] * 2,
                             "validity": [0.9] * 2, "teacher": [0.9, 0.9]}}  # fmt: skip

    soft = owl.summarize([line("none"), line("sort")], CONFIG)["defenses"]["sort"]["refutation"]
    hard = owl.summarize([line("none"), line("sort")], LLMConfig(**{**MINI, "mode": "hard"}))
    assert soft == defense_table.MODE_REFUTATIONS[("soft", "sort")] and "cannot show whether order carries the trait" in soft
    assert hard["defenses"]["sort"]["refutation"] == defense_table.REFUTATIONS["sort"]


def test_the_owl_sgd_rows_extend_their_grids_and_carry_their_match(tmp_path, monkeypatch):
    # Fake students (no training): the held-out KL a power law of the rate, SGD's 5 / rate, Adam's 1e-6 / rate;
    # the undefended Adam student's 0.5. SGD's grid (up to 1) never reaches 0.5: it extends up (3, 9, 27) and
    # brackets it at rate 10; Adam's (from 1e-5) is below the SGD student's KL: it extends down to 2e-6.
    trained = []

    def fake_row(row, config, settings, seed_id, partner, cache, learning_rate=None, treated_only=False):
        kl = 0.5 if row.name == "none" else (1e-6 if row.value == defense_table.SGD_ADAM_CONTROL else 5.0) / learning_rate
        trained.append((row.key, learning_rate, treated_only))
        return {"treated": 0.1, "control": 0.0, "heldout_kl": kl, "validity": 1.0, "teacher": 0.3}

    monkeypatch.setattr(owl, "train_row", fake_row)
    monkeypatch.setattr(owl, "heldout_lists", lambda *a, **k: None)
    monkeypatch.setattr(llm, "cached_numbers", lambda *a, **k: None)
    monkeypatch.setattr(llm, "train_models", lambda *a, **k: None)
    settings = OwlDefenses(defenses=("sgd",), heldout_lists=64)
    lines = owl.run(CONFIG, settings, tmp_path / "d.jsonl", progress=False, log=lambda m: None, cache={})
    summary = json.loads(json.dumps(owl.summarize(lines, CONFIG)))
    sgd, control = summary["defenses"]["sgd"], summary["defenses"]["sgd:adam_control"]
    assert sgd["config"]["tuning"]["extended"] == pytest.approx([3.0, 9.0, 27.0])
    assert sgd["config"]["learning_rate"] == pytest.approx(10.0) and sgd["config"]["tuning"]["bracketed"]
    assert control["config"]["tuning"]["extended"] == pytest.approx([1e-5 / 3, 1e-5 / 9])
    assert control["config"]["learning_rate"] == pytest.approx(2e-6)
    assert [t[1:] for t in trained if t[0] == "sgd"][:6] == [(r, True) for r in settings.sgd_grid]
    for row, target in ((sgd, summary["defenses"]["none"]), (control, sgd)):
        assert row["matched"] is True and row["heldout_loss"]["mean"] == pytest.approx(0.5)
        assert row["target_heldout_loss"] == target["cost"]["heldout_kl"]
    assert "matched" not in summary["defenses"]["none"] and "unmatched" not in defense_table.table(summary)


def test_a_killed_run_resumes_and_ends_with_the_file_of_an_uninterrupted_one(tmp_path, cache, monkeypatch):
    settings = OwlDefenses(defenses=("mix",), mix_shares=(0.5,), heldout_lists=64)
    whole = tmp_path / "whole.jsonl"
    summary = owl.summarize(owl.run(CONFIG, settings, whole, progress=False, log=lambda m: None, cache=cache), CONFIG)
    assert summary["defenses"]["none"]["remaining"]["per_seed"] == [1.0] and summary["trait"] == "misaligned"
    assert set(summary["defenses"]["mix:0.5"]["cost"]) == {"heldout_kl", "validity", "seconds"}
    real_row = owl.train_row

    def killed_at_the_second_row(row, *args, **kwargs):
        if row.name == "mix":
            raise KeyboardInterrupt
        return real_row(row, *args, **kwargs)

    resumed = tmp_path / "resumed.jsonl"
    monkeypatch.setattr(owl, "train_row", killed_at_the_second_row)
    with pytest.raises(KeyboardInterrupt):
        owl.run(CONFIG, settings, resumed, progress=False, log=lambda m: None, cache=cache)
    assert len(resumed.read_text().splitlines()) == 1
    monkeypatch.setattr(owl, "train_row", real_row)
    owl.run(CONFIG, settings, resumed, progress=False, log=lambda m: None, cache=cache)

    assert lines_without_times(resumed) == lines_without_times(whole)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["defend", "owl", "--mode", "both"], "defend owl runs one mode"),
        (["defend", "owl", "--defenses", "projection"], "defense projection does not apply to owl"),
        (["defend", "owl", "--mode", "hard", "--defenses", "temperature"], "temperature does not apply to this run"),
        (["defend", "owl", "--min-ps", "1.5"], "min_ps must be in (0, 1)"),
        (["defend", "owl", "--detector-shares", "1"], "divergent_shares and detector_shares must be in [0, 1)"),
        (["defend", "owl", "--heldout-lists", "0"], "heldout_lists must be at least 1"),
        (["defend", "owl", "--conditions", "same_init"], "drop --conditions"),
        (["defend", "owl", "--plot-only", "--out", "/nowhere"], "no undefended (none) row"),
    ],
)
def test_defend_owl_mistakes_are_one_line_and_exit_2(argv, message, usage_error):
    assert message in usage_error(argv)


def test_the_command_trains_writes_and_redraws_without_training(tmp_path, capsys, monkeypatch, cache):
    mini = [f"--{k.replace('_', '-')}={v}" for k, v in MINI.items()]
    real_run = owl.run  # the module's models, not trained again
    monkeypatch.setattr(owl, "run", lambda *a, **k: real_run(*a, **k, cache=cache))
    argv = ["defend", "owl", "--defenses", "mix", "--mix-shares", "0", "--heldout-lists", "64", "--out", str(tmp_path)]
    assert cli.main([*argv, *mini, "--no-progress", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((tmp_path / "defend_owl_soft.json").read_text())  # one set of files per mode
    assert printed == written and printed["setting"] == "owl" and list(printed["defenses"]) == ["none", "mix:0"]
    assert printed["defenses"]["mix:0"]["effect"] == printed["defenses"]["none"]["effect"]
    assert (
        printed["measure"]["label"] == "the misaligned rate on held-out domains"
        and printed["defenses"]["none"]["effect"]["n"] == 1
    )
    figure = tmp_path / "defend_owl_soft.png"
    figure.unlink()
    monkeypatch.setattr(owl, "train_row", lambda *a, **k: pytest.fail("--plot-only must not train"))
    assert cli.main([*argv, *mini, "--plot-only"]) == 0
    assert figure.read_bytes()[:4] == b"\x89PNG"
