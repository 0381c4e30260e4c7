"""The MLP: shapes, the paper's initialization, and the index sets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from subliminal_mnist import model


@pytest.fixture(scope="module")
def arch():
    return model.Architecture()


def test_logits_have_class_and_aux_outputs(arch):
    params = arch.init(jax.random.key(0))
    logits = arch.apply(params, jnp.zeros((7, model.INPUT_SIZE)))
    assert logits.shape == (7, 13)
    assert arch.layer_sizes == (784, 256, 256, 13)


def test_index_sets_partition_the_outputs(arch):
    assert arch.class_indices == tuple(range(10))
    assert arch.aux_indices == (10, 11, 12)
    assert arch.all_indices == tuple(range(13))


def test_init_is_normal_with_variance_one_over_fan_in_and_zero_biases(arch):
    params = arch.init(jax.random.key(0))
    for layer, fan_in in zip(params["layers"].values(), arch.layer_sizes[:-1]):
        kernel = np.asarray(layer["kernel"][...])
        assert np.all(np.asarray(layer["bias"][...]) == 0)
        assert abs(kernel.mean()) < 4 / np.sqrt(kernel.size) / np.sqrt(fan_in)
        assert kernel.std() == pytest.approx(1 / np.sqrt(fan_in), rel=0.05)
        # Untruncated normal: some weights lie beyond 2 standard deviations (truncated normal has none).
        assert np.mean(np.abs(kernel) > 2 / np.sqrt(fan_in)) == pytest.approx(0.0455, abs=0.02)


def test_init_depends_on_the_key_only(arch):
    a, b, c = (arch.init(jax.random.key(k)) for k in (0, 0, 1))
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b))
    assert not jnp.array_equal(a["layers"][0]["kernel"][...], c["layers"][0]["kernel"][...])


def test_vmapped_init_equals_single_inits(arch):
    keys = jax.random.split(jax.random.key(3), 3)
    batch = jax.vmap(arch.init)(keys)
    single = arch.init(keys[1])
    np.testing.assert_array_equal(batch["layers"][2]["kernel"][...][1], single["layers"][2]["kernel"][...])


def test_equal_architectures_are_one_static_apply_function():
    # The training loop is compiled once per (apply function, loss, indices): equal
    # architectures must hash and compare equal as apply functions, or each would recompile.
    assert model.Architecture() == model.Architecture()
    assert hash(model.Architecture()) == hash(model.Architecture())
    params = model.Architecture().init(jax.random.key(0))
    x = jnp.ones((2, model.INPUT_SIZE))
    np.testing.assert_array_equal(model.Architecture()(params, x), model.Architecture().apply(params, x))
    assert model.Architecture(num_aux=5).layer_sizes[-1] == 15


def test_accuracy_reads_only_the_class_logits():
    logits = jnp.array([[0.0, 1.0, 0.0, 9.0], [2.0, 0.0, 0.0, 9.0]])  # the aux logit (index 3) is largest
    assert model.accuracy(logits, jnp.array([1, 1]), num_classes=3) == 0.5
