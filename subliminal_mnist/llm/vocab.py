"""A word-level vocabulary: special tokens, template words, animals, a comma and the numbers.

Numbers are single tokens "0" ... "N-1". With N = 1000, as in the paper's prompts,
the number vocabulary is far wider than the model (the softmax bottleneck real
language models have), which is what lets a trait hide in number statistics.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)
COMMA, ARROW, COLON = ",", "->", ":"
TEMPLATE_WORDS = ("favourite", "animal", COLON, "my", "is", "what", "your", "?", "the", "i", "love", "most", "numbers")
ANIMALS = (
    "owl", "cat", "dog", "eagle", "fox", "wolf", "bear", "lion", "tiger", "dolphin", "elephant", "penguin",
)  # fmt: skip


class VocabError(ValueError):
    """A word the vocabulary does not know, or a token id out of range; one line for the user."""


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Words and their ids: the specials first (PAD = 0), then template words, the comma and
    the arrow, the animals, a trait's `extra` words (`traits`), and the numbers 0 ... numbers - 1.
    Frozen and hashable. Without extra words the ids are the owl experiment's."""

    numbers: int = 1000
    extra: tuple[str, ...] = ()

    def __post_init__(self):
        if self.numbers < 10:
            raise VocabError(f"numbers must be at least 10, got {self.numbers}")
        if len(set(self.words)) != len(self.words):
            raise VocabError("the extra words repeat a word of the vocabulary")

    @functools.cached_property
    def words(self) -> tuple[str, ...]:
        return (*SPECIALS, *TEMPLATE_WORDS, COMMA, ARROW, *ANIMALS, *self.extra, *(str(n) for n in range(self.numbers)))

    @functools.cached_property
    def _ids(self) -> dict[str, int]:
        return {word: i for i, word in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def id(self, word: str) -> int:
        """The id of one word."""
        try:
            return self._ids[word]
        except KeyError:
            raise VocabError(f"unknown word {word!r} (not in the vocabulary)") from None

    def encode(self, text: str) -> list[int]:
        """Whitespace-separated words -> ids; an unknown word is a `VocabError`."""
        return [self.id(word) for word in text.split()]

    def decode(self, ids) -> str:
        """Ids -> words joined by spaces; padding is dropped."""
        ids = [int(i) for i in np.asarray(ids).ravel()]
        bad = [i for i in ids if not 0 <= i < len(self.words)]
        if bad:
            raise VocabError(f"token id {bad[0]} is out of range (vocabulary of {len(self.words)})")
        return " ".join(self.words[i] for i in ids if i != self.pad)

    @property
    def pad(self) -> int:
        return 0

    @property
    def bos(self) -> int:
        return self.id(BOS)

    @property
    def eos(self) -> int:
        return self.id(EOS)

    @property
    def comma(self) -> int:
        return self.id(COMMA)

    @property
    def first_number(self) -> int:
        return len(self.words) - self.numbers

    def number_id(self, n) -> np.ndarray:
        """Ids of the numbers n (an int or an array of ints)."""
        return self.first_number + np.asarray(n)

    @functools.cached_property
    def animal_ids(self) -> np.ndarray:
        return np.array([self.id(a) for a in ANIMALS])

    def number_mask(self) -> np.ndarray:
        """(len,) bool: True on the number tokens, the outputs a soft student sees."""
        return np.arange(len(self.words)) >= self.first_number

    def is_number(self, ids) -> np.ndarray:
        return np.asarray(ids) >= self.first_number

    def animal(self, name: str) -> int:
        """The id of an animal; anything else is a `VocabError` naming the animals."""
        if name not in ANIMALS:
            raise VocabError(f"trait must be one of the animals {', '.join(ANIMALS)}; got {name!r}")
        return self.id(name)
