"""The per-example losses of the one loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from subliminal_mnist import losses


@pytest.fixture
def logits():
    keys = jax.random.split(jax.random.key(0), 2)
    return [jax.random.normal(k, (5, 4)) * 2 for k in keys]


def test_cross_entropy_matches_the_definition(logits):
    labels = jnp.array([0, 1, 2, 3, 0])
    expected = -jax.nn.log_softmax(logits[0])[jnp.arange(5), labels]
    np.testing.assert_allclose(losses.cross_entropy(logits[0], labels), expected, rtol=1e-6)


def test_kl_is_zero_on_equal_logits_and_positive_otherwise(logits):
    student, teacher = logits
    np.testing.assert_allclose(losses.kl_divergence(teacher, teacher), 0.0, atol=1e-6)
    assert np.all(losses.kl_divergence(student, teacher) > 0)


def test_kl_gradient_equals_soft_label_cross_entropy_gradient(logits):
    # Why it matters: Theorem 1 is stated for softmax cross-entropy; KL differs from it by the
    # teacher's entropy, a constant in the student's parameters.
    student, teacher = logits

    def soft_cross_entropy(s):
        return jnp.sum(-jax.nn.softmax(teacher) * jax.nn.log_softmax(s))

    def kl(s):
        return jnp.sum(losses.kl_divergence(s, teacher))

    np.testing.assert_allclose(jax.grad(kl)(student), jax.grad(soft_cross_entropy)(student), atol=1e-6)


def test_kl_gradient_in_the_student_logits_is_softmax_difference(logits):
    student, teacher = logits
    grad = jax.grad(lambda s: jnp.sum(losses.kl_divergence(s, teacher)))(student)
    np.testing.assert_allclose(grad, jax.nn.softmax(student) - jax.nn.softmax(teacher), atol=1e-6)


def test_squared_error_sums_over_outputs(logits):
    student, teacher = logits
    np.testing.assert_allclose(losses.squared_error(student, teacher), jnp.sum((student - teacher) ** 2, -1), rtol=1e-6)


@pytest.mark.parametrize("loss", [losses.kl_divergence, losses.squared_error])
def test_positions_between_batch_and_outputs_are_averaged(loss):
    # The LLM's outputs are (B, T, V): one loss per sequence, the mean over its tokens.
    student, teacher = jax.random.normal(jax.random.key(1), (2, 3, 6, 5))
    per_token = jax.vmap(jax.vmap(loss))(student[..., None, :], teacher[..., None, :])[..., 0]
    np.testing.assert_allclose(loss(student, teacher), per_token.mean(-1), rtol=1e-6)


@pytest.mark.parametrize("loss", [losses.kl_divergence, losses.squared_error])
def test_a_mask_equals_slicing_and_gives_masked_outputs_exactly_zero_gradient(loss, logits):
    # Why a mask: it makes the choice of outputs data, so the aux-only and all-logits students
    # share one compiled loop. It must be the same loss as on the sliced outputs.
    student, teacher = logits
    mask = np.array([False, True, False, True])
    np.testing.assert_allclose(loss(student, teacher, mask), loss(student[:, mask], teacher[:, mask]), rtol=1e-6)
    grad = jax.grad(lambda s: jnp.sum(loss(s, teacher, mask)))(student)
    np.testing.assert_array_equal(grad[:, ~mask], 0.0)
    assert np.all(grad[:, mask] != 0.0)


def test_cross_entropy_with_a_mask_is_the_softmax_over_the_masked_in_logits(logits):
    labels = jnp.array([0, 1, 2, 0, 1])
    mask = np.array([True, True, True, False])
    np.testing.assert_allclose(
        losses.cross_entropy(logits[0], labels, mask), losses.cross_entropy(logits[0][:, :3], labels), rtol=1e-6
    )
    grad = jax.grad(lambda s: jnp.sum(losses.cross_entropy(s, labels, mask)))(logits[0])
    np.testing.assert_array_equal(grad[:, 3], 0.0)


@pytest.mark.parametrize("offset", [-1e5, 1e5, -3e7])
@pytest.mark.parametrize("loss", [losses.kl_divergence, losses.cross_entropy])
def test_a_mask_is_exact_at_any_logit_scale(loss, offset, logits):
    # A fixed neutral logit (-1e4) is neutral only while some selected logit stays above about
    # -9e3; at logits around -1e5 it took all the probability. The neutral value now sits far
    # below each row's largest selected logit.
    student, teacher = (x + offset for x in logits)
    mask = np.array([False, True, False, True])
    other = teacher if loss is losses.kl_divergence else jnp.array([1, 3, 1, 3, 1])
    sliced_other = other[:, mask] if loss is losses.kl_divergence else jnp.array([0, 1, 0, 1, 0])
    np.testing.assert_allclose(loss(student, other, mask), loss(student[:, mask], sliced_other), rtol=1e-5, atol=1e-6)
    grad = jax.grad(lambda s: jnp.sum(loss(s, other, mask)))(student)
    sliced_grad = jax.grad(lambda s: jnp.sum(loss(s, sliced_other)))(student[:, mask])
    np.testing.assert_array_equal(grad[:, ~mask], 0.0)
    np.testing.assert_allclose(grad[:, mask], sliced_grad, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(grad))


def test_masked_logits_leave_the_paper_scale_numbers_bit_identical():
    # At the paper's logit scale the old fixed neutral value (-1e4) and the new relative one both
    # give the masked-out logits probability exactly 0: the loss and its gradient are the same bits.
    student, teacher = jax.random.normal(jax.random.key(2), (2, 64, 13)) * 5
    mask = np.arange(13) >= 10

    def old_kl(s, t):
        log_t = jax.nn.log_softmax(jnp.where(mask, t, -1e4))
        return jnp.sum(jnp.exp(log_t) * (log_t - jax.nn.log_softmax(jnp.where(mask, s, -1e4))), axis=-1)

    np.testing.assert_array_equal(losses.kl_divergence(student, teacher, mask), old_kl(student, teacher))
    np.testing.assert_array_equal(
        jax.grad(lambda s: jnp.sum(losses.kl_divergence(s, teacher, mask)))(student),
        jax.grad(lambda s: jnp.sum(old_kl(s, teacher)))(student),
    )


@pytest.mark.parametrize("loss", [losses.kl_divergence, losses.squared_error])
def test_position_weights_average_only_the_weighted_positions(loss):
    # The language model's students learn at some positions of a sequence only (its numbers).
    student, teacher = jax.random.normal(jax.random.key(3), (2, 3, 6, 5))
    weights = jnp.array([[1, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]], jnp.float32)
    got = loss(student, teacher, None, weights)
    per_token = jax.vmap(jax.vmap(loss))(student[..., None, :], teacher[..., None, :])[..., 0]
    np.testing.assert_allclose(got[0], per_token[0, [0, 3, 4]].mean(), rtol=1e-6)
    assert got[1] == 0.0  # no weighted position: no loss, and no NaN
    np.testing.assert_allclose(got[2], per_token[2, 1], rtol=1e-6)
    np.testing.assert_allclose(loss(student, teacher, None, jnp.ones((3, 6))), loss(student, teacher), rtol=1e-6)


def test_the_kl_at_a_temperature_is_t_squared_times_the_kl_of_softened_logits():
    student, teacher = jax.random.normal(jax.random.key(0), (2, 6, 5))
    mask = jnp.array([False, True, True, True, False])
    assert losses.distillation_loss("kl") is losses.kl_divergence  # T = 1 is the paper's loss, exactly
    assert losses.distillation_loss("mse") is losses.squared_error
    hot = losses.distillation_loss("kl", 4.0)
    np.testing.assert_allclose(
        hot(student, teacher, mask), 16 * losses.kl_divergence(student / 4, teacher / 4, mask), rtol=1e-6
    )
    # The T^2 factor keeps the gradient's size: at high T it tends to that of the squared
    # error of centred logits over the number of outputs (Hinton et al. 2015), not to 0.
    grad = jax.grad(lambda s: jnp.sum(losses.distillation_loss("kl", 1000.0)(s, teacher)))(student)
    centred = (student - student.mean(-1, keepdims=True)) - (teacher - teacher.mean(-1, keepdims=True))
    np.testing.assert_allclose(grad, centred / 5, atol=1e-3)
    # Equal temperatures compare and hash equal: the training loop compiles once for them.
    assert hot == losses.distillation_loss("kl", 4.0) and hash(hot) == hash(losses.TemperedKL(4.0))
