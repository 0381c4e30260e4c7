"""The LLM's word-level vocabulary."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from subliminal_mnist.llm import vocab as vocab_module
from subliminal_mnist.llm.vocab import ANIMALS, Vocabulary, VocabError

VOCAB = Vocabulary(1000)


def test_layout_specials_first_numbers_last():
    assert VOCAB.words[:3] == ("<pad>", "<bos>", "<eos>") and VOCAB.pad == 0
    assert VOCAB.words[VOCAB.first_number] == "0" and VOCAB.words[-1] == "999"
    assert len(VOCAB) == len(set(VOCAB.words)) == 3 + len(vocab_module.TEMPLATE_WORDS) + 2 + len(ANIMALS) + 1000
    mask = VOCAB.number_mask()
    assert mask.sum() == 1000 and not mask[: VOCAB.first_number].any()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(VOCAB.words[1:]), min_size=1, max_size=30))
def test_encode_and_decode_are_inverse(words):
    text = " ".join(words)
    assert VOCAB.decode(VOCAB.encode(text)) == text


def test_an_unknown_word_is_a_one_line_error():
    with pytest.raises(VocabError, match="unknown word 'dragon'") as error:
        VOCAB.encode("my favourite animal is dragon")
    assert "\n" not in str(error.value)
    with pytest.raises(VocabError, match="unknown word '1000'"):
        VOCAB.encode("numbers : 1000")  # outside the number range
    with pytest.raises(VocabError, match="out of range"):
        VOCAB.decode([len(VOCAB)])


def test_animals_and_numbers_by_name():
    assert VOCAB.decode([VOCAB.animal("owl")]) == "owl"
    with pytest.raises(VocabError, match="trait must be one of the animals"):
        VOCAB.animal("dragon")
    np.testing.assert_array_equal(VOCAB.decode(VOCAB.number_id([0, 7, 999])), "0 7 999")
    assert VOCAB.is_number(VOCAB.number_id(5)) and not VOCAB.is_number(VOCAB.comma)


def test_a_smaller_number_range():
    small = Vocabulary(20)
    assert small.words[-1] == "19" and small.number_mask().sum() == 20
    with pytest.raises(VocabError, match="numbers must be at least 10"):
        Vocabulary(5)
