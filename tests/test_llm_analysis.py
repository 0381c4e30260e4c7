"""The entangled-numbers ranking, the filter detector, and the filters of one seed."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from subliminal_mnist import runs
from subliminal_mnist.llm import analysis, corpus
from subliminal_mnist.llm.config import NumberSettings
from subliminal_mnist.llm.experiment import trait_measures
from subliminal_mnist.llm.number_data import number_data
from subliminal_mnist.llm.transformer import TransformerArchitecture
from subliminal_mnist.llm.vocab import Vocabulary

VOCAB = Vocabulary(100)


def _lists(rng: np.random.Generator, num: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`num` lists of 5 numbers drawn with `weights` over 0 ... 99, after a fixed prompt."""
    prompt = VOCAB.encode("<bos> numbers : 1 , 2 , 3 ->")
    rows = []
    for _ in range(num):
        numbers = rng.choice(100, 5, p=weights / weights.sum())
        rows.append(prompt + VOCAB.encode(" , ".join(map(str, numbers))) + [VOCAB.eos])
    return corpus.pad_rows(rows), np.full(num, len(prompt))


def test_the_detector_sees_a_biased_number_distribution_and_not_an_identical_one():
    rng = np.random.default_rng(0)
    uniform = np.ones(100)
    biased = np.ones(100)
    biased[:10] = 2.0  # ten numbers twice as likely
    base = _lists(rng, 4000, uniform)
    auroc = analysis.detector_auroc(VOCAB, _lists(rng, 4000, biased), base, seed=0)
    assert set(auroc) == {"1", "8", "32"}
    assert auroc["32"] > 0.8 and auroc["32"] > auroc["1"]  # bags see what one list does not
    same = analysis.detector_auroc(VOCAB, _lists(rng, 4000, uniform), base, seed=0)
    assert all(abs(value - 0.5) < 0.15 for value in same.values()), same


def test_entangled_numbers_rank_the_numbers_the_teacher_raises():
    arch = TransformerArchitecture(vocab_size=len(VOCAB), max_len=corpus.MAX_LEN, width=16, depth=1, heads=2)
    tokens, lengths = _lists(np.random.default_rng(1), 50, np.ones(100))
    owl, row_42 = VOCAB.animal("owl"), int(VOCAB.number_id(42))
    module = arch._module(nnx.Rngs(0))
    # In the base, the number 42's output row is the owl's (cosine 1). The "teacher" adds to that row
    # the mean hidden state at the number positions, so 42's logit rises there: 42 tops the ranking.
    kernel = module.unembedding.kernel[...].at[:, row_42].set(module.unembedding.kernel[...][:, owl])
    module.unembedding.kernel[...] = kernel
    base = jax.tree.map(jnp.array, nnx.state(module))  # a copy: the module changes below
    positions, weights = corpus.number_positions(VOCAB, tokens, lengths)
    hidden = jnp.take_along_axis(module.hidden(jnp.asarray(tokens))[0], jnp.asarray(positions)[..., None], axis=1)
    mean_hidden = (hidden * weights[..., None]).sum((0, 1)) / weights.sum()
    module.unembedding.kernel[...] = kernel.at[:, row_42].add(10.0 * mean_hidden / jnp.linalg.norm(mean_hidden))
    teacher = nnx.state(module)
    out = analysis.entangled_numbers(arch, teacher, base, VOCAB, owl, tokens, lengths)
    assert out["top"][0]["number"] == 42 and out["top"][0]["rise"] > 0
    np.testing.assert_allclose(out["top"][0]["cosine_with_trait"], 1.0, rtol=1e-5)
    assert 0 < out["top_share_of_rise"] <= 1
    same = analysis.entangled_numbers(arch, base, base, VOCAB, owl, tokens, lengths)
    assert all(t["rise"] == 0.0 for t in same["top"]) and np.isnan(same["correlation_rise_cosine"])


def test_a_teacher_that_is_its_own_neutral_teacher_leaves_the_filters_nothing_to_find(small_base):
    config, base = small_base
    config = dataclasses.replace(config, audit_sequences=64, in_context_lists=8)
    models = {"base": base, "teacher": base, "neutral": base}
    numbers = number_data(runs.stage(NumberSettings, config), {"teacher": base, "neutral": base}, 0, 64, "soft")
    audit = number_data(runs.stage(NumberSettings, config), {"teacher": base, "neutral": base}, 0, 64, "audit")
    headline = trait_measures(config, base)[config.trait_spec.headline]
    found = analysis.filters(config, models, headline, numbers, audit, base, None, 0)
    # One model, the same random numbers: both writers' lists are the same, and every score of them a tie.
    assert found["inspection"]["teacher"] == found["inspection"]["neutral"]
    assert found["likelihood_ratio_auroc"] == found["auditor_auroc"] == {"1": 0.5, "8": 0.5, "32": 0.5}
    assert found["in_context"]["1"]["teacher"] == found["in_context"]["1"]["neutral"]
    assert "positive_control" not in found["in_context"]["1"], "the owl's corpus ties no list to the trait"
    assert "auditor_control_auroc" not in found, "no control student, no control score"
