"""The tiny transformer: shapes, causality, positions, cached decoding, and the loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from subliminal_mnist import losses, train
from subliminal_mnist.llm.transformer import AtPositions, TransformerArchitecture, at_positions

ARCH = TransformerArchitecture(vocab_size=50, max_len=12, width=16, depth=2, heads=2)


@pytest.fixture(scope="module")
def params():
    return ARCH.init(jax.random.key(0))


@pytest.fixture(scope="module")
def tokens():
    return jax.random.randint(jax.random.key(1), (3, 12), 2, 50)  # one line each: no <bos> (1) inside


def test_logits_shape_and_an_architecture_is_a_hashable_static_value(params, tokens):
    assert ARCH.apply(params, tokens).shape == (3, 12, 50)
    assert hash(ARCH) == hash(TransformerArchitecture(50, 12, 16, 2, 2))
    with pytest.raises(ValueError, match="multiple of heads"):
        TransformerArchitecture(50, width=15, heads=2)


def test_attention_is_causal(params, tokens):
    # Changing a later token never changes an earlier position's logits.
    changed = tokens.at[:, 7].set((tokens[:, 7] + 1) % 50)
    before, after = ARCH.apply(params, tokens), ARCH.apply(params, changed)
    np.testing.assert_array_equal(before[:, :7], after[:, :7])
    assert not np.allclose(before[:, 7:], after[:, 7:])


def test_a_packed_row_computes_each_line_as_if_it_were_alone(params):
    first, second = [1, 7, 8, 9, 2], [1, 30, 31, 2]  # two lines, each from <bos> (1) to <eos> (2)
    packed = jnp.array([first + second + [0, 0, 0]])
    alone = jnp.array([first + [0] * 7, second + [0] * 8])
    logits, separate = ARCH.apply(params, packed)[0], ARCH.apply(params, alone)
    np.testing.assert_allclose(logits[:5], separate[0, :5], atol=1e-6)
    np.testing.assert_allclose(logits[5:9], separate[1, :4], atol=1e-6)
    # The second line does not see the first: without the line boundary it would.
    unaware = TransformerArchitecture(50, 12, 16, 2, 2, bos=-1).apply(params, packed)[0]
    assert not np.allclose(unaware[5:9], separate[1, :4], atol=1e-3)


def test_logits_at_positions_equal_the_full_logits_there(params, tokens):
    positions = jnp.array([[0, 5], [11, 3], [2, 2]])
    full = jnp.take_along_axis(ARCH.apply(params, tokens), positions[..., None], axis=1)
    np.testing.assert_allclose(ARCH.logits_at(params, tokens, positions), full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(AtPositions(ARCH)(params, at_positions(tokens, positions)), full, rtol=1e-5, atol=1e-6)


def test_cached_decoding_equals_the_full_forward_pass(params, tokens):
    # Prefill 4 tokens, then decode the rest one position at a time from the cache.
    full = ARCH.apply(params, tokens)
    prompt = tokens.at[:, 4:].set(0)
    logits, caches = ARCH.prefill(params, prompt, jnp.full(3, 3))
    np.testing.assert_allclose(logits, full[:, 3], rtol=1e-5, atol=1e-5)
    for position in range(4, 12):
        logits, caches = ARCH.step(params, tokens[:, position], jnp.full(3, position), caches)
        np.testing.assert_allclose(logits, full[:, position], rtol=1e-4, atol=1e-5)


def _number_kl(logits, targets, mask):
    return losses.kl_divergence(logits, targets["logits"], mask, targets["weights"])


def test_a_masked_output_never_receives_gradient_through_the_loop(params, tokens):
    # The soft students see only the number tokens: the unembedding rows of every other
    # token must stay exactly where they started, through train.fit and Adam.
    mask = np.arange(50) >= 30  # the "numbers"
    positions = jnp.tile(jnp.arange(4, 8), (3, 1))
    teacher = ARCH.init(jax.random.key(2))
    targets = {"logits": ARCH.logits_at(teacher, tokens, positions), "weights": jnp.ones((3, 4))}
    trained, history = train.fit(
        jax.tree.map(lambda a: a[None], params),
        jax.random.split(jax.random.key(3), 1),
        at_positions(tokens, positions),  # a pytree of inputs, batched leaf by leaf
        targets,
        train.Recipe(train.Objective(AtPositions(ARCH), _number_kl, mask), epochs=5, learning_rate=1e-2, batch_size=2),
        data_axis=None,
    )
    before = ARCH.unembedding_rows(params)
    after = ARCH.unembedding_rows(jax.tree.map(lambda a: a[0], trained))
    np.testing.assert_array_equal(after[~mask], before[~mask])
    assert not np.allclose(after[mask], before[mask])
    assert history["loss"][0, -1].mean() < history["loss"][0, 0].mean()
