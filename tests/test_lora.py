"""Low-rank adapters (`lora.py`): the adapted model starts as its base, its first step moves B only,
and in W's coordinates that step is the full step through A Aᵀ."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from subliminal_mnist import lora, model, theorem

ARCH = model.Architecture(hidden_sizes=(16, 8))


@pytest.fixture(scope="module")
def base():
    return ARCH.init(jax.random.key(0))


def _inputs(n=12):
    return jax.random.uniform(jax.random.key(1), (n, model.INPUT_SIZE), minval=-1.0, maxval=1.0)


def test_every_kernel_is_adapted_and_nothing_else(base):
    which = jax.tree.leaves(lora.adapted(base))
    shapes = [leaf.shape for leaf in jax.tree.leaves(base)]
    assert sum(which) == 3 and all(len(shape) == 2 for shape, flag in zip(shapes, which) if flag)
    assert all(len(shape) == 1 for shape, flag in zip(shapes, which) if not flag)  # the biases


def test_an_adapter_with_b_zero_leaves_the_outputs_unchanged(base):
    adapter = lora.init(jax.random.key(2), base, rank=4)
    x = _inputs()
    np.testing.assert_array_equal(ARCH.apply(lora.merge(base, *adapter), x), ARCH.apply(base, x))
    # A is N(0, 1/d_in): over the kernels' entries its variance times d_in is about 1.
    downs = [a for a in jax.tree.leaves(adapter.down) if a.ndim == 2]
    assert [a.shape for a in downs] == [(784, 4), (16, 4), (8, 4)]
    assert np.mean([np.var(a) * a.shape[0] for a in downs]) == pytest.approx(1.0, abs=0.3)


def _student_loss(base, down, x, targets):
    def loss(up_and_down):
        up, adapted_down = up_and_down
        outputs = ARCH.apply(lora.merge(base, adapted_down, up), x)
        return jnp.mean((outputs - targets) ** 2)

    return loss


def test_the_first_step_moves_b_only_and_is_the_full_step_through_a_a_transpose(base):
    adapter = lora.init(jax.random.key(3), base, rank=3)
    x = _inputs()
    targets = ARCH.apply(ARCH.init(jax.random.key(4)), x)
    grad_up, grad_down = jax.grad(_student_loss(base, adapter.down, x, targets))((adapter.up, adapter.down))
    # With B = 0 the gradient in A is exactly 0: a first step moves B only, A trained or not.
    assert all(float(jnp.abs(g).max(initial=0.0)) == 0.0 for g in jax.tree.leaves(grad_down))
    assert any(float(jnp.abs(g).max(initial=0.0)) > 0 for g in jax.tree.leaves(grad_up))
    # In W's coordinates the step of B is A Aᵀ G, G the full gradient; the biases do not move.
    full = jax.grad(lambda p: jnp.mean((ARCH.apply(p, x) - targets) ** 2))(base)
    in_weights = lora.in_weight_space(adapter.down, grad_up, base)
    for got, want in zip(jax.tree.leaves(in_weights), jax.tree.leaves(lora.project(adapter.down, full))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)


def test_a_full_rank_adapter_reaches_the_full_step_direction_up_to_its_a_a_transpose():
    # One kernel 5 x 2, rank 5 = d_in: A is invertible, so A Aᵀ G spans what G spans, and with an
    # orthogonal A (A Aᵀ = I) the adapter's first step in W is the full step itself.
    w0 = {"kernel": jax.random.normal(jax.random.key(5), (5, 2))}
    x = jax.random.normal(jax.random.key(6), (7, 5))
    targets = jax.random.normal(jax.random.key(7), (7, 2))
    full = jax.grad(lambda p: jnp.mean((x @ p["kernel"] - targets) ** 2))(w0)
    orthogonal = {"kernel": jnp.linalg.qr(jax.random.normal(jax.random.key(8), (5, 5)))[0]}
    np.testing.assert_allclose(lora.project(orthogonal, full)["kernel"], full["kernel"], atol=1e-5)
    skewed = {"kernel": jnp.diag(jnp.arange(1.0, 6.0))}
    projected = lora.project(skewed, full)["kernel"]
    np.testing.assert_allclose(projected, jnp.diag(jnp.arange(1.0, 6.0) ** 2) @ full["kernel"], rtol=1e-5)
    assert float(theorem.tree_cosine(projected, full["kernel"])) < 0.999  # another direction, same span


@pytest.mark.parametrize("rank", [0, -2])
def test_a_rank_below_one_is_refused(base, rank):
    with pytest.raises(ValueError, match="at least 1"):
        lora.init(jax.random.key(0), base, rank)


def test_no_leaf_to_adapt_is_refused(base):
    with pytest.raises(ValueError, match="no 2-D leaf named weights"):
        lora.init(jax.random.key(0), base, 2, names=("weights",))


def test_the_shared_adapter_counterexample_in_w_coordinates():
    # theory/README.md's worked case: ΔB_S·ΔB_T = 1.62 = the trait term, W's dot -16.2 (all per ε).
    from subliminal_mnist import theorem_checks

    case = theorem_checks.lora_example()
    assert case["adapter_dot"] == pytest.approx(1.62, rel=1e-5) and case["trait"] == pytest.approx(1.62, rel=1e-5)
    assert case["weights_dot"] == pytest.approx(-16.2, rel=1e-5)


def test_an_adapter_that_leaves_the_bias_out_has_no_sign_even_in_expectation():
    # theory/README.md's second worked case: f = w x + b at x = 1, only w adapted: the full student's
    # trait term +2, a LoRA student's (and a full student of a LoRA teacher's) -2 A², so -2 on average.
    from subliminal_mnist import theorem_checks

    case = theorem_checks.lora_bias_example()
    assert case["full_full_trait"] == pytest.approx(2.0)
    assert case["full_teacher_lora_student_trait"] == pytest.approx(-2.0)
    assert case["lora_teacher_full_student_trait"] == pytest.approx(-2.0)
    assert theorem_checks.check_lora_example()["passed"]
    # For every A, not only its expectation: -2 A² at A = 3.
    other = theorem_checks.lora_bias_example(adapter=3.0)
    assert other["full_teacher_lora_student_trait"] == pytest.approx(-18.0)
    assert other["lora_teacher_full_student_trait"] == pytest.approx(-18.0) and other["full_full_trait"] == pytest.approx(2.0)
