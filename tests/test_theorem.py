"""Tests for subliminal_mnist.theorem: the mathematics of Theorem 1, on small networks.

The checks on families of networks are in test_theorem_checks.py; theory/README.md maps each
claim to its test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from subliminal_mnist import losses, theorem


def _tiny_mlp(key: jax.Array) -> dict[str, jax.Array]:
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (6, 8)) / 2.0, "w2": jax.random.normal(k2, (8, 5))}


def _tiny_apply(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    return jnp.tanh(x @ params["w1"]) @ params["w2"]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_cosine_of_a_non_finite_vector_is_nan_not_zero(bad):
    """A NaN or infinite direction must not look like an orthogonal one (cosine 0) to a check."""
    a = {"x": jnp.array([1.0, 2.0]), "y": jnp.array([bad])}
    b = {"x": jnp.array([1.0, 0.0]), "y": jnp.array([1.0])}
    assert np.isnan(theorem.tree_cosine(a, b))
    assert np.isnan(theorem.tree_cosine(b, a))


def test_cosine_is_zero_for_a_zero_vector_and_exact_otherwise():
    zero, a = {"x": jnp.zeros(3)}, {"x": jnp.array([1.0, 2.0, 2.0])}
    assert theorem.tree_cosine(zero, a) == 0.0
    np.testing.assert_allclose(theorem.tree_cosine(a, {"x": jnp.array([2.0, 0.0, 0.0])}), 1 / 3, rtol=1e-6)


def test_frozen_except_has_exactly_zero_gradient_off_support():
    """The tool behind the zero branch: a loss of the support's parameters only has gradient 0.0 elsewhere."""
    params = {"a": jnp.arange(3.0), "b": jnp.ones((2, 2))}
    support = {"a": jnp.array([True, False, True]), "b": jnp.zeros((2, 2), bool)}
    loss = theorem.frozen_except(lambda p: jnp.sum(p["a"] ** 3) + jnp.sum(jnp.sin(p["b"])), params, support)
    grad = jax.grad(loss)(params)
    assert grad["a"].tolist() == [0.0, 0.0, 12.0]
    assert not grad["b"].any()


def test_linear_trait_loss_steps_exactly_along_its_direction():
    direction = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]])}
    params = {"w": jnp.ones((2, 2))}
    teacher, delta_t = theorem.teacher_step(params, theorem.linear_trait_loss(direction), 0.5)
    np.testing.assert_array_equal(delta_t["w"], direction["w"])
    np.testing.assert_array_equal(teacher["w"], params["w"] + 0.5 * direction["w"])


def test_mask_selection_equals_index_selection():
    """Outputs chosen by a boolean mask (one compiled function for all subsets) = chosen by indices."""
    indices = (1, 3, 4)
    mask = np.isin(np.arange(5), indices)
    apply_fn = lambda p, x: x @ p["w"]  # noqa: E731

    @jax.jit  # one small compilation instead of many eager ones
    def directions_and_predictions(key):
        key_w, key_x = jax.random.split(key)
        params = {"w": jax.random.normal(key_w, (6, 5))}
        teacher, delta_t = {"w": params["w"] + 0.1}, {"w": jnp.ones((6, 5))}
        inputs = jax.random.normal(key_x, (7, 6))
        return {
            (loss, name): (
                theorem.student_direction(params, teacher, apply_fn, inputs, loss, outputs)["w"],
                theorem.first_order_prediction(params, delta_t, apply_fn, inputs, 0.1, loss, outputs),
                theorem.exact_identity(params, teacher, delta_t, apply_fn, inputs, loss, outputs),
            )
            for loss in theorem.LOSSES
            for name, outputs in (("indices", indices), ("mask", jnp.asarray(mask)))
        }

    out = directions_and_predictions(jax.random.key(0))
    for loss in theorem.LOSSES:
        for by_mask, by_index in zip(out[loss, "mask"], out[loss, "indices"]):
            np.testing.assert_allclose(by_mask, by_index, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("scale", [1e5, -1e5, 3e7])
def test_a_masked_single_logit_softmax_has_no_student_direction_at_any_logit_scale(scale):
    """A softmax over one selected logit is the constant 1, so ΔS = 0 exactly, however large the logits.

    With a fixed neutral value (-1e4) for the masked-out logits this broke once the logits passed
    it: the neutral logits took probability from the selected one, and ΔS was not 0.
    """
    mask = jnp.array([False, True, False, False])
    apply_fn = lambda p, x: scale + x @ p["w"]  # noqa: E731
    params = {"w": jax.random.normal(jax.random.key(0), (3, 4))}
    inputs = jax.random.normal(jax.random.key(1), (5, 3))
    teacher = {"w": params["w"] * 1.5}
    with jax.enable_x64(True):
        as_64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)  # noqa: E731
        delta_s = theorem.student_direction(as_64(params), as_64(teacher), apply_fn, as_64(inputs), "kl", mask)
        prediction = theorem.first_order_prediction(
            as_64(params), as_64(teacher), apply_fn, as_64(inputs), 1.0, "kl", mask
        )
        delta_s, prediction = np.asarray(delta_s["w"]), float(prediction)
    np.testing.assert_array_equal(delta_s, 0.0)
    assert prediction == 0.0


def test_student_direction_uses_the_package_losses():
    """ΔS is minus the gradient of the mean of losses.py's per-example loss, for both losses."""
    params = {"w": jnp.array([[1.0, -2.0, 0.5], [0.0, 1.0, 1.0]])}
    teacher = {"w": params["w"] * 1.5}
    apply_fn = lambda p, x: x @ p["w"]  # noqa: E731
    inputs = jnp.array([[1.0, 2.0], [-1.0, 0.5]])
    for loss, per_example in (("kl", losses.kl_divergence), ("mse", losses.squared_error)):
        targets = apply_fn(teacher, inputs)
        expected = jax.grad(lambda p: -jnp.mean(per_example(apply_fn(p, inputs), targets)))(params)
        got = theorem.student_direction(params, teacher, apply_fn, inputs, loss)
        np.testing.assert_allclose(got["w"], expected["w"], rtol=1e-6)


@pytest.mark.parametrize("loss", theorem.LOSSES)
@pytest.mark.parametrize("epsilon", [1e-3, 1.0, 30.0])
@pytest.mark.parametrize("shared", [True, False])
def test_the_exact_identity_equals_the_dot_product_at_every_epsilon_and_init(loss, epsilon, shared):
    """ΔS·ΔT = -E[(JΔT)ᵀ g] (step 1 of the proof) is the chain rule: exact at any ε, from any start."""
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.key(3), 3)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), _tiny_mlp(keys[0]))
        student = params if shared else jax.tree.map(lambda a: a.astype(jnp.float64), _tiny_mlp(keys[1]))
        inputs = jax.random.uniform(keys[2], (16, 6), jnp.float64, -1.0, 1.0)
        trait_loss = lambda p: jnp.sum(_tiny_apply(p, inputs[:4])[:, 0] ** 2)  # noqa: E731
        report = theorem.alignment_report(params, trait_loss, _tiny_apply, inputs, epsilon, 0.0, loss, None, student)
        dot, identity = float(report.dot), float(report.identity)
    assert np.isfinite(dot) and dot != 0.0
    np.testing.assert_allclose(identity, dot, rtol=1e-12)


def test_prediction_is_the_first_order_of_the_dot_product():
    """ε Q from jax.jvp agrees with ΔS·ΔT to O(ε²) (float64): ten times smaller ε, ~100 times closer."""
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.key(4), 2)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), _tiny_mlp(keys[0]))
        inputs = jax.random.uniform(keys[1], (16, 6), jnp.float64, -1.0, 1.0)
        trait_loss = lambda p: jnp.sum(_tiny_apply(p, inputs[:4])[:, 0] ** 2)  # noqa: E731
        gaps = [
            abs(float(r.dot - r.prediction))
            for r in (
                theorem.alignment_report(params, trait_loss, _tiny_apply, inputs, e, 0.0, "kl") for e in (1e-3, 1e-4)
            )
        ]
    assert 50 < gaps[0] / gaps[1] < 200


def test_alignment_report_measures_the_trait_loss_change_along_the_student_direction():
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: a.astype(jnp.float64), _tiny_mlp(jax.random.key(5)))
        inputs = jax.random.uniform(jax.random.key(6), (16, 6), jnp.float64, -1.0, 1.0)
        trait_loss = lambda p: jnp.sum(_tiny_apply(p, inputs[:4])[:, 0] ** 2)  # noqa: E731
        report = theorem.alignment_report(params, trait_loss, _tiny_apply, inputs, 1e-3, 0.1, "mse")
        teacher, _ = theorem.teacher_step(params, trait_loss, 1e-3)
        delta_s = theorem.student_direction(params, teacher, _tiny_apply, inputs, "mse")
        moved = jax.tree.map(lambda p, d: p + 0.1 * d, params, delta_s)
        change, norm = trait_loss(moved) - trait_loss(params), optax.tree.norm(delta_s)
    np.testing.assert_allclose(report.trait_loss_change, change, rtol=1e-12)
    np.testing.assert_allclose(report.student_norm, norm, rtol=1e-12)
