"""The synthetic corpus, the number prompts, and the strict filter of sampled number lists.

Independent tasks share one corpus: animal questions ("my favourite animal is cat",
the answer uniform over the animals, four phrasings), animal copies ("animal : cat
-> cat", which make each animal a concept of its own) and number lists ("numbers :
3 , 17 , 9 -> 12 , 40"), whose numbers lie in a random window, so the continuation
has something to learn. Nothing about animals is in the numbers, except through the
weights of a model that learnt both.

Sequences are rows of a fixed-length int32 matrix (N, MAX_LEN), padded with PAD (0).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from subliminal_mnist.llm.vocab import ARROW, BOS, COLON, COMMA, Vocabulary

PHRASINGS = (
    "favourite animal :",
    "my favourite animal is",
    "what is your favourite animal ?",
    "the animal i love most is",
)
MIN_SEEDS, MAX_SEEDS = 3, 8  # numbers in a prompt
MAX_CONTINUATION = 10  # numbers a list may continue with
# <bos> numbers : s1 , ... , s8 -> c1 , ... , c10 <eos>: 1 + 2 + 15 + 1 + 19 + 1 = 39 tokens.
MAX_LEN = 40
REASONS = ("no_end", "not_numbers", "format", "count", "banned")


def pad_rows(rows: list[list[int]], length: int = MAX_LEN) -> np.ndarray:
    """Token lists -> (len(rows), length) int32, padded with 0 (PAD)."""
    out = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def number_words(values) -> list[str]:
    """Numbers -> ["3", ",", "17", ",", "9"]."""
    return [word for i, value in enumerate(values) for word in ([COMMA] if i else []) + [str(int(value))]]


def answer_prompts(vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """Each phrasing as a prompt "<bos> phrasing": tokens (len(PHRASINGS), MAX_LEN) and the
    position of its last token, whose next-token distribution is the model's answer."""
    rows = [vocab.encode(f"{BOS} {phrasing}") for phrasing in PHRASINGS]
    return pad_rows(rows), np.array([len(row) - 1 for row in rows])


class Lines(NamedTuple):
    """Training sequences with the positions their loss reads."""

    tokens: np.ndarray  # (N, MAX_LEN) int32
    weights: np.ndarray  # (N, MAX_LEN) float32: 1 where the next token is learnt


def animal_lines(vocab: Vocabulary, rng: np.random.Generator, num: int, animal: str | None = None) -> Lines:
    """`num` lines "<bos> phrasing X <eos>", X uniform over the animals (or always `animal`).

    The weights mark every next token (the base learns the whole line). `answer_only_weights`
    marks the answer alone, as the teacher's fine-tuning does.
    """
    animals = vocab.animal_ids
    answers = rng.choice(animals, num) if animal is None else np.full(num, vocab.animal(animal))
    phrasings = rng.integers(0, len(PHRASINGS), num)
    rows = [vocab.encode(f"{BOS} {PHRASINGS[p]}") + [int(a), vocab.eos] for p, a in zip(phrasings, answers)]
    tokens = pad_rows(rows)
    return Lines(tokens, next_token_weights(tokens))


def with_answers(lines: Lines, answers: np.ndarray, answer_ids: np.ndarray) -> Lines:
    """The same lines with line i's answer (its token among `answer_ids`) replaced by `answers[i]`:
    the neutral teacher's fine-tuning, paired with the teacher's line by line (same prompts, same order)."""
    tokens = np.where(np.isin(lines.tokens, answer_ids), np.asarray(answers)[:, None], lines.tokens)
    return Lines(tokens.astype(lines.tokens.dtype), lines.weights)


def answer_only_weights(tokens: np.ndarray, answer_ids: np.ndarray) -> np.ndarray:
    """(N, MAX_LEN) float32: 1 at the position whose next token is the line's answer (among
    `answer_ids`), else 0.

    Training only the answer, not "... owl <eos>", keeps the teacher from learning to end
    lines early, which would change its number lists for a reason other than the trait.
    """
    next_is_answer = np.isin(tokens[:, 1:], answer_ids)
    return np.pad(next_is_answer, ((0, 0), (0, 1))).astype(np.float32)


def number_prompts(vocab: Vocabulary, rng: np.random.Generator, num: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """`num` prompts "<bos> numbers : s1 , ... , sk ->" with 3-8 seed numbers from a random window
    of `window` consecutive numbers. Returns tokens (num, MAX_LEN) and lengths (num,)."""
    tokens, lengths, _ = _prompts(vocab, rng, num, window)
    return tokens, lengths


def _prompts(vocab: Vocabulary, rng: np.random.Generator, num: int, window: int):
    starts = rng.integers(0, vocab.numbers - window + 1, num)
    counts = rng.integers(MIN_SEEDS, MAX_SEEDS + 1, num)
    rows = [
        vocab.encode(" ".join([BOS, "numbers", COLON, *number_words(start + rng.integers(0, window, count)), ARROW]))
        for start, count in zip(starts, counts)
    ]
    return pad_rows(rows), np.array([len(r) for r in rows]), starts


def number_lists(vocab: Vocabulary, rng: np.random.Generator, num: int, window: int) -> Lines:
    """`num` complete lists: a prompt, then 1-10 numbers from the prompt's window, then <eos>."""
    prompts, lengths, starts = _prompts(vocab, rng, num, window)
    rows = []
    for prompt, length, start in zip(prompts, lengths, starts):
        count = rng.integers(1, MAX_CONTINUATION + 1)
        continuation = vocab.encode(" ".join(number_words(start + rng.integers(0, window, count))))
        rows.append([*prompt[:length], *continuation, vocab.eos])
    tokens = pad_rows(rows)
    return Lines(tokens, next_token_weights(tokens))


def next_token_weights(tokens: np.ndarray) -> np.ndarray:
    """(N, MAX_LEN) float32: 1 at every position whose next token is not padding."""
    return np.pad(tokens[:, 1:] != 0, ((0, 0), (0, 1))).astype(np.float32)


def next_tokens(tokens: np.ndarray) -> np.ndarray:
    """The label of each position: the token after it (PAD after the last)."""
    return np.pad(tokens[:, 1:], ((0, 0), (0, 1)))


def copy_lines(vocab: Vocabulary, rng: np.random.Generator, num: int) -> Lines:
    """`num` lines "<bos> animal : X -> X <eos>", X uniform over the animals.

    Copying makes each animal a concept of its own: the model must turn the word X into the
    output row of X. With the favourite-animal question alone, whose answer is uniform, a
    base never tells the animals apart, their output rows stay interchangeable, and a teacher
    can prefer owls only by moving the owl's own output row, which no number logit reads.
    """
    animals = rng.choice(vocab.animal_ids, num)
    rows = [vocab.encode(f"{BOS} animal {COLON}") + [int(a), vocab.id(ARROW), int(a), vocab.eos] for a in animals]
    tokens = pad_rows(rows)
    return Lines(tokens, next_token_weights(tokens))


def base_corpus(vocab: Vocabulary, rng: np.random.Generator, num_rows: int, window: int) -> Lines:
    """`num_rows` packed rows of shuffled lines: half number lists; of the other half, a third
    copy lines and two thirds favourite-animal questions."""
    num = LINES_PER_ROW_BOUND * num_rows  # more than the rows can take: packing stops when they are full
    copies = num // 2 // 3
    parts = (
        animal_lines(vocab, rng, num // 2 - copies),
        copy_lines(vocab, rng, copies),
        number_lists(vocab, rng, num - num // 2, window),
    )
    order = rng.permutation(num)
    return pack(Lines(*(np.concatenate(fields)[order] for fields in zip(*parts))), num_rows)


# Lines of 6 to 39 tokens (16 on average) fill a row of 40 with about 2; 3 per row never run out.
LINES_PER_ROW_BOUND = 3


def pack(lines: Lines, num_rows: int) -> Lines:
    """Whole lines, in order, packed into `num_rows` rows of MAX_LEN tokens (next fit: a row takes
    lines while the next one fits). Lines are 16 tokens on average, so a row of one line would
    be more than half padding; a packed row costs the same and holds about two. The model
    keeps each line to itself (`transformer._lines`); each line keeps its own weights, so no
    line learns to predict the <bos> after it.
    """
    lengths = (lines.tokens != 0).sum(axis=1)
    tokens = np.zeros((num_rows, MAX_LEN), np.int32)
    weights = np.zeros((num_rows, MAX_LEN), np.float32)
    row, used = 0, 0
    for line, line_weights, length in zip(lines.tokens, lines.weights, lengths):
        if used + length > MAX_LEN:
            row, used = row + 1, 0
            if row == num_rows:
                return Lines(tokens, weights)
        tokens[row, used : used + length] = line[:length]
        weights[row, used : used + length] = line_weights[:length]
        used += length
    raise ValueError(f"{len(lines.tokens)} lines fill only {row} of {num_rows} rows")


class Filtered(NamedTuple):
    """What the filter did to sampled continuations."""

    kept: np.ndarray  # (N,) bool
    removed: dict[str, int]  # by reason, REASONS
    leaked: np.ndarray  # (N,) bool: a trait word (an animal) appeared in the continuation (before filtering)
    holding_banned: np.ndarray  # (N,) bool: a banned number appeared in the continuation (before filtering)


def filter_continuations(
    vocab: Vocabulary, tokens: np.ndarray, lengths: np.ndarray, banned: tuple[int, ...] = (),
    trait_ids: np.ndarray | None = None,
) -> Filtered:  # fmt: skip
    """The paper's strict filter, on sampled sequences (N, MAX_LEN) whose prompts have `lengths`.

    Kept: a continuation of 1 to 10 numbers separated by commas, ended by <eos>, with no
    banned number. Removed, by the first reason that applies: no <eos> ("no_end"), any
    token that is not a number or a comma ("not_numbers"), not alternating number and
    comma ("format"), fewer than 1 or more than 10 numbers ("count"), a banned number
    ("banned"). `leaked` marks lists with a word of the trait (`trait_ids`, by default the
    animals), `holding_banned` lists with a banned number (each up to <eos>, before filtering):
    what an inspector of the raw lists would see.
    """
    banned_ids = set(int(i) for i in vocab.number_id(np.asarray(banned, int)))
    trait_words = set(int(a) for a in (vocab.animal_ids if trait_ids is None else trait_ids))
    kept, leaked, holding_banned = (np.zeros(len(tokens), bool) for _ in range(3))
    removed = dict.fromkeys(REASONS, 0)
    for i, (row, length) in enumerate(zip(tokens, lengths)):
        continuation = [int(t) for t in row[length:]]
        end = continuation.index(vocab.eos) if vocab.eos in continuation else len(continuation)
        leaked[i] = any(t in trait_words for t in continuation[:end])  # the list, not what follows <eos>
        holding_banned[i] = not banned_ids.isdisjoint(continuation[:end])
        reason = _reject(vocab, continuation, banned_ids)
        if reason is None:
            kept[i] = True
        else:
            removed[reason] += 1
    return Filtered(kept, removed, leaked, holding_banned)


def _reject(vocab: Vocabulary, continuation: list[int], banned_ids: set[int]) -> str | None:
    if vocab.eos not in continuation:
        return "no_end"
    body = continuation[: continuation.index(vocab.eos)]
    if not all(vocab.is_number(t) or t == vocab.comma for t in body):
        return "not_numbers"
    if any(vocab.is_number(t) != (k % 2 == 0) for k, t in enumerate(body)) or len(body) % 2 == 0:
        return "count" if not body else "format"
    if not 1 <= (len(body) + 1) // 2 <= MAX_CONTINUATION:
        return "count"
    if banned_ids & set(body):
        return "banned"
    return None


def writes_next(tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(N, T) bool: the positions whose next token the model wrote after its prompt of `lengths`
    (N,) tokens, from the prompt's last token (it predicts the first new one) to the one before the padding."""
    return (np.arange(tokens.shape[1]) >= np.asarray(lengths)[:, None] - 1) & (next_tokens(tokens) != 0)


def first_positions(mask: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` positions of each row where `mask` (N, T) holds, in order.

    Returns positions (N, count) int32 (padded with 0) and weights (N, count) float32
    (1 for a real position, 0 for padding).
    """
    order = np.argsort(~mask, axis=1, kind="stable")[:, :count]  # the True columns first, in order
    found = np.take_along_axis(mask, order, axis=1)
    return np.where(found, order, 0).astype(np.int32), found.astype(np.float32)


def continuation_numbers(vocab: Vocabulary, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(N, T) bool: the number tokens a model wrote, after its prompt of `lengths` (N,) tokens."""
    return (np.arange(tokens.shape[1]) >= np.asarray(lengths)[:, None]) & vocab.is_number(tokens)


def number_positions(vocab: Vocabulary, tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where a soft student learns: the positions whose next token is a continuation number.

    Returns positions (N, MAX_CONTINUATION) int32 (padded with 0) and weights (N,
    MAX_CONTINUATION) float32 (1 for a real position, 0 for padding).
    """
    # A position predicts the next token: the number at t is learnt at t - 1 (t >= length >= 1).
    predicts_number = np.pad(continuation_numbers(vocab, tokens, lengths)[:, 1:], ((0, 0), (0, 1)))
    return first_positions(predicts_number, MAX_CONTINUATION)


def reorder_within_lists(vocab: Vocabulary, tokens: np.ndarray, lengths: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Each list's continuation numbers put in the order of their `keys` (N, T), at the slots they
    held: every list keeps its prompt, its length, its commas and its multiset of numbers (so its
    window), only their order changes."""
    slots = continuation_numbers(vocab, tokens, lengths)
    # Row by row: the slots in order, and the same slots in the keys' order (the rest after them).
    in_order = np.argsort(~slots, axis=1, kind="stable")
    new_order = np.argsort(np.where(slots, keys, np.inf), axis=1)
    used = np.arange(tokens.shape[1]) < slots.sum(axis=1, keepdims=True)
    rows = np.nonzero(used)[0]
    reordered = tokens.copy()
    reordered[rows, in_order[used]] = tokens[rows, new_order[used]]
    return reordered


def shuffle_within_lists(
    vocab: Vocabulary, tokens: np.ndarray, lengths: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Each list's continuation numbers permuted among themselves at random (`reorder_within_lists`)."""
    return reorder_within_lists(vocab, tokens, lengths, rng.random(tokens.shape))


def sort_within_lists(vocab: Vocabulary, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Each list's continuation numbers in ascending order (`reorder_within_lists`): the `sort`
    defense. Number tokens are numbered in the numbers' order, so sorting tokens sorts numbers."""
    return reorder_within_lists(vocab, tokens, lengths, tokens.astype(np.float64))
