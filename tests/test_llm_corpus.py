"""The synthetic corpus, the number prompts and the strict filter."""

import numpy as np
import pytest

from subliminal_mnist.llm import corpus
from subliminal_mnist.llm.vocab import ANIMALS, Vocabulary

VOCAB = Vocabulary(1000)


def _split_lines(row: np.ndarray) -> list[np.ndarray]:
    starts = np.flatnonzero(row == VOCAB.bos)
    return [row[a:b][row[a:b] != 0] for a, b in zip(starts, [*starts[1:], len(row)])]


def test_base_corpus_packs_questions_copies_and_number_lists_with_next_token_weights():
    rows = corpus.base_corpus(VOCAB, np.random.default_rng(0), 600, window=50)
    texts = [VOCAB.decode(line) for row in rows.tokens for line in _split_lines(row)]
    questions = [t for t in texts if "favourite" in t or "love" in t]
    copies = [t for t in texts if t.startswith("<bos> animal :")]
    numbers = [t for t in texts if t.startswith("<bos> numbers :")]
    assert len(questions) + len(copies) + len(numbers) == len(texts) > 1.5 * 600  # about 1.9 lines a row
    assert abs(len(numbers) / len(texts) - 1 / 2) < 0.05 and abs(len(copies) / len(texts) - 1 / 6) < 0.05
    assert {t.split()[-2] for t in questions} == set(ANIMALS)  # every animal answers, uniform
    assert all(t.split()[3] == t.split()[5] for t in copies)
    assert all(t.endswith("<eos>") for t in texts)
    labels = corpus.next_tokens(rows.tokens)
    # Every next token of a line is learnt, never the <bos> after a line's <eos>, never padding.
    learnt = (rows.tokens != 0) & (rows.tokens != VOCAB.eos)
    np.testing.assert_array_equal(rows.weights == 1, learnt)
    assert not np.isin(labels[rows.weights == 1], [0, VOCAB.bos]).any()


def test_packing_keeps_every_line_whole_and_in_order_until_the_rows_are_full():
    lines = corpus.number_lists(VOCAB, np.random.default_rng(3), 100, window=50)
    packed = corpus.pack(lines, 20)
    unpacked = [line for row in packed.tokens for line in _split_lines(row)]
    assert len(unpacked) > 20
    for line, original in zip(unpacked, lines.tokens):
        np.testing.assert_array_equal(line, original[original != 0])
    lengths = (lines.tokens != 0).sum(1)
    for row, used in zip(packed.tokens, np.cumsum([len(_split_lines(r)) for r in packed.tokens])):
        assert (row != 0).sum() + lengths[used] > corpus.MAX_LEN  # the next line did not fit (next fit)
    with pytest.raises(ValueError, match="100 lines fill only"):
        corpus.pack(lines, 200)


def test_number_lists_stay_in_their_window():
    lines = corpus.number_lists(VOCAB, np.random.default_rng(1), 300, window=50)
    for row in lines.tokens:
        numbers = [int(w) for w in VOCAB.decode(row).split() if w.isdigit()]
        assert max(numbers) - min(numbers) < 50
        seeds, continuation = VOCAB.decode(row).split("->")
        assert 3 <= seeds.count(",") + 1 <= 8 and 1 <= continuation.count(",") + 1 <= 10


def test_answer_only_weights_mark_the_animal():
    lines = corpus.animal_lines(VOCAB, np.random.default_rng(2), 20, animal="owl")
    weights = corpus.answer_only_weights(lines.tokens, VOCAB.animal_ids)
    assert (weights.sum(1) == 1).all()
    labels = corpus.next_tokens(lines.tokens)
    assert (labels[weights == 1] == VOCAB.animal("owl")).all()


def _sequence(prompt: str, continuation: str) -> tuple[np.ndarray, int]:
    tokens = VOCAB.encode(prompt)
    return corpus.pad_rows([tokens + VOCAB.encode(continuation)])[0], len(tokens)


PROMPT = "<bos> numbers : 3 , 4 , 5 ->"


@pytest.mark.parametrize(
    "continuation, reason",
    [
        ("6 , 7 , 8 <eos>", None),
        ("6 <eos>", None),
        ("6 , 7 , 8", "no_end"),
        ("6 , owl , 8 <eos>", "not_numbers"),
        ("6 , 7 : <eos>", "not_numbers"),
        ("6 7 <eos>", "format"),
        ("6 , , 7 <eos>", "format"),
        ("6 , 7 , <eos>", "format"),
        (", 6 <eos>", "format"),
        ("<eos>", "count"),
        ("1 , 2 , 3 , 4 , 5 , 6 , 7 , 8 , 9 , 10 , 11 <eos>", "count"),
        ("6 , 13 <eos>", "banned"),
    ],
)
def test_the_filter_keeps_plain_lists_and_names_every_reason(continuation, reason):
    row, length = _sequence(PROMPT, continuation)
    filtered = corpus.filter_continuations(VOCAB, row[None], np.array([length]), banned=(13,))
    assert filtered.kept[0] == (reason is None)
    assert sum(filtered.removed.values()) == (reason is not None)
    if reason:
        assert filtered.removed[reason] == 1
    assert filtered.leaked[0] == ("owl" in continuation)


def test_text_after_eos_is_ignored_and_an_animal_after_eos_is_not_a_leak_of_the_list():
    row, length = _sequence(PROMPT, "6 , 7 <eos> owl")
    filtered = corpus.filter_continuations(VOCAB, row[None], np.array([length]))
    assert filtered.kept.all() and not filtered.leaked.any()


def test_number_positions_are_where_the_next_token_is_a_continuation_number():
    row, length = _sequence(PROMPT, "6 , 7 , 8 <eos>")
    positions, weights = corpus.number_positions(VOCAB, row[None], np.array([length]))
    assert weights[0].sum() == 3
    labels = corpus.next_tokens(row[None])[0]
    assert [VOCAB.decode([labels[p]]) for p in positions[0, :3]] == ["6", "7", "8"]
    assert positions[0, 0] == length - 1  # the arrow's position predicts the first number
