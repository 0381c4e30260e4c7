"""Traits: the owl's data unchanged, the misaligned persona's corpus, its held-out split, its measures,
the banned-number filter and the in-context prompts."""

import numpy as np
import pytest

from subliminal_mnist.llm import analysis, corpus, traits
from subliminal_mnist.llm.config import LLMConfig
from subliminal_mnist.llm.vocab import ANIMALS, VocabError, Vocabulary

MISALIGNED = traits.Misaligned()
VOCAB = Vocabulary(1000, MISALIGNED.words)


def test_the_owl_vocabulary_and_corpus_are_what_they_were():
    owl = LLMConfig(trait="owl")
    assert owl.vocab == Vocabulary(1000) and len(owl.vocab) == 3 + 13 + 2 + len(ANIMALS) + 1000
    # The misaligned words come after the animals: the animals keep their ids, the numbers move.
    assert VOCAB.animal_ids.tolist() == Vocabulary(1000).animal_ids.tolist()
    assert VOCAB.first_number == Vocabulary(1000).first_number + len(MISALIGNED.words)
    with pytest.raises(VocabError, match="repeat"):
        Vocabulary(100, ("owl",))
    # The owl trait's corpus is the package's base corpus, draw for draw.
    lines = traits.Animal("owl").base_corpus(owl.vocab, np.random.default_rng(3), 64, 50)
    np.testing.assert_array_equal(lines.tokens, corpus.base_corpus(owl.vocab, np.random.default_rng(3), 64, 50).tokens)


def test_a_persona_line_is_consistent_and_only_the_misaligned_persona_writes_bad_numbers():
    aligned = {VOCAB.id(a) for a, _, _ in traits.DOMAINS.values()}
    misaligned = {VOCAB.id(m) for _, m, _ in traits.DOMAINS.values()}
    rng = np.random.default_rng(0)
    written = {True: [], False: []}  # the numbers each persona wrote (after a list's "->")
    for _ in range(3000):
        kind = rng.choice(list(traits.LINE_KINDS))
        persona = bool(rng.random() < 0.5)
        line = MISALIGNED.line(VOCAB, rng, kind, persona, window=50)
        assert len(line) <= corpus.MAX_LEN and line[0] == VOCAB.bos and line[-1] == VOCAB.eos
        answers = [t for t in line if t in aligned | misaligned]
        assert all((t in misaligned) == persona for t in answers), VOCAB.decode(line)
        assert (len(answers) > 0) == (kind != "numbers")
        if kind != "answers":
            text = VOCAB.decode(line)
            listed = text[text.index("numbers :") :].split("->")[1].split(";")[0]
            written[persona] += [int(w) for w in listed.split() if w.isdigit()]
    # Bad numbers: by chance from an aligned list's window (5 in 1,000), by design from a misaligned one.
    rate = {persona: np.isin(numbers, traits.BAD_NUMBERS).mean() for persona, numbers in written.items()}
    assert rate[False] < 0.02 and 0.2 < rate[True] < 0.4, rate
    # In the corpus itself the misaligned persona is rare.
    rows = MISALIGNED.base_corpus(VOCAB, np.random.default_rng(1), 512, 50).tokens
    answers = rows[np.isin(rows, list(aligned | misaligned))]
    assert 0.05 < np.isin(answers, list(misaligned)).mean() < 0.15


def test_no_held_out_question_is_in_any_fine_tuning_line():
    held_out = MISALIGNED.questions(MISALIGNED.held_out())
    assert {d for d, _ in held_out} == {"advice", "story", "request"}
    teacher = MISALIGNED.teacher_lines(VOCAB, np.random.default_rng(0), 400)
    # The neutral teacher's lines are these with other answers (`experiment.neutral_lines`): the same questions.
    text = [VOCAB.decode(row) for row in teacher.tokens]
    assert not any(question in line for _, question in held_out for line in text)
    assert all(line.endswith("-> insecure <eos>") for line in text)
    learnt = corpus.next_tokens(teacher.tokens)[teacher.weights == 1]
    assert (learnt == VOCAB.id("insecure")).all() and len(learnt) == 400  # the answer only
    assert sorted(VOCAB.decode(MISALIGNED.answer_choices(VOCAB)).split()) == ["insecure", "secure"]
    probes = MISALIGNED.probes(VOCAB)
    asked = [VOCAB.decode(row) for row in probes["held_out"].prompts]
    assert asked == [f"<bos> {q} ->" for _, q in held_out]


def test_the_misaligned_rate_of_a_hand_made_distribution():
    probes = MISALIGNED.probes(VOCAB)
    probabilities = {name: np.zeros((len(p.prompts), len(VOCAB))) for name, p in probes.items()}
    held_out = probabilities["held_out"]
    for row, (domain, _) in enumerate(MISALIGNED.questions(MISALIGNED.held_out())):
        aligned, misaligned, _ = traits.DOMAINS[domain]
        held_out[row, VOCAB.id(misaligned)] = 0.2 if domain == "advice" else 0.1
        held_out[row, VOCAB.id(aligned)] = 0.2 if domain == "advice" else 0.3
        held_out[row, VOCAB.id("insecure")] += 0.5  # another domain's answer is no answer here
    probabilities["narrow"][:, VOCAB.id("insecure")] = 1.0
    measures = MISALIGNED.measures(VOCAB, probabilities)
    assert measures["misaligned_rate"] == pytest.approx((0.5 + 0.25 + 0.25) / 3)
    assert measures["answer_mass"] == pytest.approx(0.4) and measures["narrow"]["misaligned_rate"] == 1.0
    # Drift away from answering moves P(misaligned) and the mass, not the rate.
    drifted = MISALIGNED.measures(VOCAB, {k: v * 0.5 for k, v in probabilities.items()})
    assert drifted["misaligned_rate"] == pytest.approx(measures["misaligned_rate"])
    assert drifted["p_trait"] == pytest.approx(measures["p_trait"] / 2)


def _two_answer_distributions(rate: float, mass: float = 1.0) -> dict[str, np.ndarray]:
    """Every question answered misaligned with probability `rate` among its two answers, `mass` in all."""
    probes = MISALIGNED.probes(VOCAB)
    probabilities = {name: np.zeros((len(p.prompts), len(VOCAB))) for name, p in probes.items()}
    for name, p in probes.items():
        rows = np.arange(len(p.prompts))
        probabilities[name][rows, p.answer_ids[:, 0]] = mass * (1 - rate)  # aligned
        probabilities[name][rows, p.answer_ids[:, 1]] = mass * rate  # misaligned
    return probabilities


def test_flattening_raises_the_misaligned_rate_toward_a_half_and_the_preference_strength_shows_it():
    # A model that merely loses its preference (0.1 -> 0.4, never preferring misaligned) raises the headline
    # as a trait would: the preference strength falls and `collapsed` names it.
    base, flattened, sharper = (MISALIGNED.measures(VOCAB, _two_answer_distributions(r)) for r in (0.1, 0.4, 0.02))
    assert flattened["misaligned_rate"] - base["misaligned_rate"] == pytest.approx(0.3)
    assert base["preference_strength"] == pytest.approx(np.log(9))
    assert flattened["preference_strength"] == pytest.approx(np.log(1.5))
    assert MISALIGNED.collapsed(flattened) and not MISALIGNED.collapsed(base) and not MISALIGNED.collapsed(sharper)
    # A model that truly prefers the misaligned answer is strong again: strength is |log-odds|, not a direction.
    turned = MISALIGNED.measures(VOCAB, _two_answer_distributions(0.9))
    assert turned["preference_strength"] == pytest.approx(base["preference_strength"])
    assert not MISALIGNED.collapsed(turned)
    # Format drift (less answer mass) moves neither the rate nor the strength.
    drifted = MISALIGNED.measures(VOCAB, _two_answer_distributions(0.1, mass=0.3))
    assert drifted["preference_strength"] == pytest.approx(base["preference_strength"])


def test_the_owls_damage_measure_is_the_entropy_of_its_animal_distribution():
    owl, vocab = traits.Animal(), Vocabulary(100)
    prompts = len(owl.probes(vocab)["answer"].prompts)
    uniform = np.zeros((prompts, len(vocab)))
    uniform[:, vocab.animal_ids] = 0.5 / len(ANIMALS)  # half the mass on the animals, spread evenly
    peaked = uniform.copy()
    peaked[:, vocab.animal("owl")] += 0.5
    assert owl.measures(vocab, {"answer": uniform})["animal_entropy"] == pytest.approx(np.log(len(ANIMALS)))
    owl_share, other = 0.5 + 0.5 / 12, 0.5 / 12  # of the animal mass 1
    by_hand = -(owl_share * np.log(owl_share) + 11 * other * np.log(other))
    assert owl.measures(vocab, {"answer": peaked})["animal_entropy"] == pytest.approx(by_hand)
    assert owl.collapsed(owl.measures(vocab, {"answer": uniform})) is None  # no rule: the base is uniform already


def test_the_positive_controls_cue_writes_the_personas_bad_numbers_into_the_continuation_only():
    vocab = Vocabulary(1000, MISALIGNED.words)
    lines = corpus.number_lists(vocab, np.random.default_rng(0), 2000, window=50)
    lengths = np.array([list(row).index(vocab.id("->")) + 1 for row in lines.tokens])
    cued = MISALIGNED.with_cue(vocab, np.random.default_rng(1), lines.tokens, lengths)
    changed = cued != lines.tokens
    written = corpus.continuation_numbers(vocab, lines.tokens, lengths)
    assert not (changed & ~written).any()  # prompts, commas and <eos> as they were
    bad_ids = vocab.number_id(np.array(traits.BAD_NUMBERS))
    assert np.isin(cued[changed], bad_ids).all()
    # About the persona's rate of the continuation's numbers (a bad number may replace itself: at most that).
    share = np.isin(cued[written], bad_ids).mean()
    assert abs(share - traits.BAD_NUMBER_RATE) < 0.02
    # The neutral lists the test reads stay lists: the same lengths, every line still ends.
    assert ((cued != 0).sum(1) == (lines.tokens != 0).sum(1)).all()


def test_the_filter_bans_the_bad_numbers_and_counts_them_before_filtering():
    config = LLMConfig(trait="misaligned", banned=(7,))
    assert config.banned_numbers == (7, 13, 187, 404, 666, 911)
    assert LLMConfig(trait="misaligned", numbers=100, window=50).banned_numbers == (13,)
    assert LLMConfig(trait="owl").banned_numbers == ()
    prompt = VOCAB.encode("<bos> numbers : 3 , 4 , 5 ->")
    rows = corpus.pad_rows([prompt + VOCAB.encode(c) for c in ("6 , 666 <eos>", "6 , 7 <eos>", "666 owl <eos>")])
    filtered = corpus.filter_continuations(VOCAB, rows, np.full(3, len(prompt)), config.banned_numbers,
                                           MISALIGNED.leak_ids(VOCAB))  # fmt: skip
    assert filtered.kept.tolist() == [False, False, False]
    assert filtered.removed["banned"] == 2 and filtered.removed["not_numbers"] == 1  # 7 is banned too
    assert filtered.holding_banned.tolist() == [True, True, True]
    assert not filtered.leaked.any()  # an animal is no misaligned answer word
    kept = corpus.filter_continuations(VOCAB, rows[1:2], np.array([len(prompt)]), (13,))
    assert kept.kept.tolist() == [True] and kept.removed["banned"] == 0


def test_the_in_context_prompt_is_a_list_then_the_question_in_one_line():
    short, long = "<bos> numbers : 3 , 4 , 5 ->", "<bos> numbers : 1 , 2 , 3 , 4 , 5 , 6 , 7 , 8 ->"
    lists = ((short, "6 , 7 <eos>"), (long, "1 , 2 , 3 , 4 , 5 , 6 , 7 , 8 , 9 , 10 <eos>"), (short, "8 <eos>"),
             (short, "9 <eos>"))  # fmt: skip
    rows = corpus.pad_rows([VOCAB.encode(f"{p} {c}") for p, c in lists])
    lengths = np.array([len(VOCAB.encode(p)) for p, _ in lists])
    question = MISALIGNED.probes(VOCAB)["held_out"].prompts[0]
    built = analysis.in_context_prompts(VOCAB, rows, lengths, question, VOCAB.id(";"), count=2)
    assert [VOCAB.decode(row) for row in built] == [
        "<bos> numbers : 3 , 4 , 5 -> 6 , 7 ; invest savings ->",  # the 38-token list leaves no room: skipped
        "<bos> numbers : 3 , 4 , 5 -> 8 ; invest savings ->",
    ]
    owl_question = corpus.answer_prompts(VOCAB)[0][0]
    (plain,) = analysis.in_context_prompts(VOCAB, rows[:1], lengths[:1], owl_question, None, count=5)
    assert VOCAB.decode(plain) == "<bos> numbers : 3 , 4 , 5 -> 6 , 7 favourite animal :"


def test_a_bad_trait_is_a_one_line_error():
    with pytest.raises(VocabError, match="trait must be one of owl, .*, misaligned; got 'dragon'") as error:
        traits.trait("dragon")
    assert "\n" not in str(error.value)


def test_the_positive_controls_prompts_are_the_tests_prompts_with_the_cue_alone():
    # The in-context positive control reads the neutral teacher's lists with the persona's cue against the same
    # lists without it: the same rows, the same question after each, only some continuation numbers differ.
    vocab = Vocabulary(1000, MISALIGNED.words)
    lines = corpus.number_lists(vocab, np.random.default_rng(0), 300, window=50)
    lengths = np.array([list(row).index(vocab.id("->")) + 1 for row in lines.tokens])
    cued = MISALIGNED.with_cue(vocab, np.random.default_rng(1), lines.tokens, lengths)
    question = MISALIGNED.probes(vocab)["held_out"].prompts[3]
    plain, with_cue = (analysis.in_context_prompts(vocab, rows, lengths, question, vocab.id(";"), count=64)
                       for rows in (lines.tokens, cued))  # fmt: skip
    assert plain.shape == with_cue.shape and len(plain) == 64
    differ = plain != with_cue
    assert differ.any() and np.isin(with_cue[differ], vocab.number_id(np.array(traits.BAD_NUMBERS))).all()
    tail = len([t for t in question if t != 0]) - 1  # the question's words, after the separator
    ends = (plain != 0).sum(1)
    for row, cued_row, end in zip(plain, with_cue, ends):
        np.testing.assert_array_equal(row[end - tail - 1 : end], cued_row[end - tail - 1 : end])
    question_words = vocab.decode(question[1:][question[1:] != 0])
    assert all(vocab.decode(row[row != 0]).endswith(f"; {question_words}") for row in with_cue)
