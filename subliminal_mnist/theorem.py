"""Theorem 1 of the paper (Section 6, Appendix C), computed exactly: the mathematics a class reads.

Teacher and student share parameters θ0. The teacher takes one gradient step on
any loss L_T: θT = θ0 + ε ΔT with ΔT = -∇L_T(θ0). The student imitates the
teacher's (selected) outputs on inputs x ~ D: ΔS = -∇_θ E_x L_S(f_θ(x), f_θT(x))
at θ0. By the chain rule, exactly and at every ε,

    ΔS · ΔT = -E_x[(J ΔT)ᵀ g(x)],   g(x) = ∇_z L_S(z, f_θT(x)) at z = f_θ0(x),

with J the Jacobian of the selected outputs at θ0. Expanding g to first order in ε,

    ΔS · ΔT = ε E_x[(J ΔT)ᵀ M (J ΔT)] + O(ε²),

with M positive semi-definite: 2·I for the sum of squares, diag(p) - p pᵀ (p the
softmax at θ0) for the KL / soft cross-entropy. So for small ε, ΔS·ΔT >= 0:
either the first-order term is 0, or a small student step lowers L_T, a loss the
student never sees. theory/README.md has the proof, its assumptions and what the
theorem does not promise; `theorem_checks` checks it on many networks.

Everything here is a pure function of a parameter pytree and an apply function
`(params, inputs (B, d)) -> outputs (B, K)`, so it works for the package's MLP
and any other network, under `jit` and `vmap`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from subliminal_mnist import losses

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]
# Which outputs the student sees: None (all), static indices, or a traced boolean mask (K,).
# A mask lets cases with different subsets share one compiled, vmapped function.
OutputSelection = Sequence[int] | jax.Array | None

LOSSES = ("kl", "mse")


def tree_cosine(a: PyTree, b: PyTree) -> jax.Array:
    """Cosine of two parameter vectors given as pytrees; 0 where either is exactly zero.

    Not a number propagates: a NaN or infinite vector gives NaN, never a cosine that
    looks harmless, so a check on the result sees it.
    """
    norms = optax.tree.norm(a) * optax.tree.norm(b)
    zero = norms == 0
    return jnp.where(zero, 0.0, optax.tree.vdot(a, b) / jnp.where(zero, 1.0, norms))


def _axpy(alpha: jax.Array | float, x: PyTree, y: PyTree) -> PyTree:
    """y + alpha * x, leaf by leaf."""
    return jax.tree.map(lambda xi, yi: yi + alpha * xi, x, y)


# ----------------------------------------------------------------------------------------------
# The teacher's step.


def teacher_step(
    params: PyTree, trait_loss: Callable[[PyTree], jax.Array], epsilon: jax.Array | float
) -> tuple[PyTree, PyTree]:
    """One gradient step of the teacher on any differentiable scalar loss.

    Returns (θT, ΔT) with ΔT = -∇ trait_loss(θ0) and θT = θ0 + ε ΔT, both shaped like `params`.
    """
    delta_t = jax.tree.map(jnp.negative, jax.grad(trait_loss)(params))
    return _axpy(epsilon, delta_t, params), delta_t


def class_trait_loss(
    apply_fn: ApplyFn, images: jax.Array, labels: jax.Array, class_indices: Sequence[int] = tuple(range(10))
) -> Callable[[PyTree], jax.Array]:
    """The default L_T: mean cross-entropy of the class logits on a labelled batch.

    images (B, 784), labels (B,) int. This is the teacher's loss in the paper's experiment.
    """
    index = jnp.asarray(class_indices)

    def trait_loss(params: PyTree) -> jax.Array:
        return jnp.mean(losses.cross_entropy(apply_fn(params, images)[..., index], labels))

    return trait_loss


def linear_trait_loss(direction: PyTree) -> Callable[[PyTree], jax.Array]:
    """L_T(θ) = -⟨direction, θ⟩, whose step is ΔT = `direction` exactly.

    The theorem allows any L_T, so any direction is a teacher's step: this picks one.
    """
    return lambda params: -optax.tree.vdot(direction, params)


def frozen_except(
    trait_loss: Callable[[PyTree], jax.Array], anchor: PyTree, support: PyTree
) -> Callable[[PyTree], jax.Array]:
    """θ ↦ trait_loss(θ on `support`, `anchor` elsewhere): a loss of the `support` parameters only.

    `support` is a pytree of booleans shaped like the parameters. The gradient of the result
    is exactly 0.0 off the support, since `jnp.where`'s derivative there is the constant 0.
    """

    def restricted(params: PyTree) -> jax.Array:
        return trait_loss(jax.tree.map(jnp.where, support, params, anchor))

    return restricted


# ----------------------------------------------------------------------------------------------
# The student's direction.


def _select(outputs: jax.Array, output_indices: OutputSelection, loss: str) -> jax.Array:
    """The outputs (..., K) the student sees, as (..., k) or, for a mask, (..., K) with the rest neutral.

    A neutral output adds nothing to the loss and has zero gradient: 0 for the squared
    error, a logit of probability exactly 0 for the softmax (`losses.masked_logits`).
    """
    if output_indices is None:
        return outputs
    if isinstance(output_indices, jax.Array | np.ndarray):
        if loss == "mse":
            return losses.masked(outputs, output_indices, 0.0)
        return losses.masked_logits(outputs, output_indices)
    return outputs[..., jnp.asarray(output_indices)]


def distillation_loss(
    params: PyTree, targets: jax.Array, apply_fn: ApplyFn, inputs: jax.Array, loss: str = "kl",
    output_indices: OutputSelection = None, weights: jax.Array | None = None,
) -> jax.Array:  # fmt: skip
    """E_x L_S(selected f_θ(x), targets): the student's objective; targets are the teacher's outputs.

    `weights` ((B,), or (B, P) for outputs (B, P, K) at P positions of a sequence) makes the expectation
    the weighted mean over every output: 0 marks padding, so inputs of any count fit one compiled shape.
    """
    student = _select(apply_fn(params, inputs), output_indices, loss)
    if weights is None:
        return jnp.mean(losses.DISTILLATION_LOSSES[loss](student, targets))
    # The loss averages an example's positions by their weights; weighting each example by its
    # total weight then makes every weighted output count once.
    per_example = losses.DISTILLATION_LOSSES[loss](student, targets, position_weights=weights)
    totals = weights.reshape(weights.shape[0], -1).sum(axis=-1)
    return jnp.sum(totals * per_example) / jnp.sum(totals)


def student_direction(
    params: PyTree, teacher_params: PyTree, apply_fn: ApplyFn, inputs: jax.Array, loss: str = "kl",
    output_indices: OutputSelection = None, weights: jax.Array | None = None,
) -> PyTree:  # fmt: skip
    """ΔS = -∇_θ E_x L_S(selected f_θ(x), selected f_θT(x)) at θ = `params`.

    Args:
      params: the student's parameters, where the gradient is taken (θ0 under the theorem).
      teacher_params: θT.
      apply_fn: (params, inputs (B, d)) -> outputs (B, K).
      inputs: (B, d) draws from D; the expectation is their mean.
      loss: "kl" (KL(teacher || student) of the softmaxes, i.e. soft cross-entropy) or "mse"
        (sum of squares), the per-example losses of `losses.py`.
      output_indices: the outputs the student imitates (see `OutputSelection`).
      weights: optional weights of the expectation (`distillation_loss`); 0 for padding.
    Returns ΔS, shaped like `params`.
    """
    targets = _select(apply_fn(teacher_params, inputs), output_indices, loss)
    grad = jax.grad(distillation_loss)(params, targets, apply_fn, inputs, loss, output_indices, weights)
    return jax.tree.map(jnp.negative, grad)


# ----------------------------------------------------------------------------------------------
# The exact identity and its first-order value.


def exact_identity(
    params: PyTree, teacher_params: PyTree, delta_t: PyTree, apply_fn: ApplyFn, inputs: jax.Array, loss: str = "kl",
    output_indices: OutputSelection = None,
) -> jax.Array:  # fmt: skip
    """-E_x[(J ΔT)ᵀ g(x)], which equals ΔS·ΔT exactly, at every ε (step 1 of the proof).

    `params` is where the student starts (θ0 under the theorem; the identity is the chain
    rule and holds wherever it starts). g(x) is the gradient of L_S in the student's outputs
    at `params`, against the
    teacher's outputs; J ΔT is the forward-mode derivative (`jax.jvp`) of the student's
    outputs along ΔT. Computed this way, not as the dot product of two parameter
    vectors, it is an independent route to the same number.
    """
    outputs, tangents = jax.jvp(lambda p: apply_fn(p, inputs), (params,), (delta_t,))
    targets = _select(apply_fn(teacher_params, inputs), output_indices, loss)

    def total_loss(student_outputs: jax.Array) -> jax.Array:
        selected = _select(student_outputs, output_indices, loss)
        return jnp.sum(losses.DISTILLATION_LOSSES[loss](selected, targets))

    g = jax.grad(total_loss)(outputs)  # (B, K); exactly 0 on the outputs the student does not see
    return -jnp.sum(tangents * g) / jax.tree.leaves(inputs)[0].shape[0]


def first_order_prediction(
    params: PyTree, delta_t: PyTree, apply_fn: ApplyFn, inputs: jax.Array, epsilon: jax.Array | float,
    loss: str = "kl", output_indices: OutputSelection = None,
) -> jax.Array:  # fmt: skip
    """ε E_x[(J ΔT)ᵀ M (J ΔT)], the theorem's first-order value of ΔS · ΔT, exactly.

    J ΔT is the forward-mode derivative (`jax.jvp`) of the selected outputs along ΔT at θ0,
    so there is no finite-difference error. M is 2·I for the sum of squares; for the KL it
    is diag(p) - p pᵀ with p the softmax of the selected outputs at θ0, and vᵀ M v is
    computed as the variance Σ_i p_i (v_i - Σ_j p_j v_j)², which is >= 0 in any precision.
    """
    outputs, tangents = jax.jvp(lambda p: apply_fn(p, inputs), (params,), (delta_t,))
    outputs = _select(outputs, output_indices, loss)
    # The tangents of masked-out outputs are zeroed (squared error) or get weight p = 0 (KL).
    tangents = _select(tangents, output_indices, "mse")
    if loss == "mse":
        quadratic = 2.0 * jnp.sum(tangents**2, axis=-1)
    else:
        p = jax.nn.softmax(outputs, axis=-1)
        centred = tangents - jnp.sum(p * tangents, axis=-1, keepdims=True)
        quadratic = jnp.sum(p * centred**2, axis=-1)
    return epsilon * jnp.mean(quadratic)


# ----------------------------------------------------------------------------------------------
# Everything at once.


class Alignment(NamedTuple):
    """What `alignment_report` measures; every field is a scalar array (or a batch under vmap)."""

    dot: jax.Array  # ΔS · ΔT
    cosine: jax.Array  # ΔS · ΔT / (|ΔS| |ΔT|); 0 when ΔS = 0; NaN when anything is not finite
    identity: jax.Array  # -E_x[(JΔT)ᵀ g(x)], J and g at the student's start: equals dot exactly (chain rule)
    prediction: jax.Array  # ε E_x[(JΔT)ᵀ M (JΔT)] at θ0
    relative_error: jax.Array  # |ΔS·ΔT - prediction| / |prediction| (inf or nan when prediction = 0)
    trait_loss_change: jax.Array  # L_T(θS + α ΔS) - L_T(θS), θS the student's parameters
    student_norm: jax.Array  # |ΔS|
    teacher_norm: jax.Array  # |ΔT|


def alignment_report(
    params: PyTree, trait_loss: Callable[[PyTree], jax.Array], apply_fn: ApplyFn, inputs: jax.Array,
    epsilon: jax.Array | float, alpha: jax.Array | float, loss: str = "kl", output_indices: OutputSelection = None,
    student_params: PyTree | None = None,
) -> Alignment:  # fmt: skip
    """The teacher's step from θ0, the student's direction, and how the two line up.

    `student_params` (default θ0, the theorem's shared initialization) is where the student
    starts; giving another initialization breaks the theorem's condition on purpose.
    """
    student_params = params if student_params is None else student_params
    teacher_params, delta_t = teacher_step(params, trait_loss, epsilon)
    delta_s = student_direction(student_params, teacher_params, apply_fn, inputs, loss, output_indices)
    dot = optax.tree.vdot(delta_s, delta_t)
    prediction = first_order_prediction(params, delta_t, apply_fn, inputs, epsilon, loss, output_indices)
    return Alignment(
        dot=dot,
        cosine=tree_cosine(delta_s, delta_t),
        identity=exact_identity(student_params, teacher_params, delta_t, apply_fn, inputs, loss, output_indices),
        prediction=prediction,
        relative_error=jnp.abs(dot - prediction) / jnp.abs(prediction),
        trait_loss_change=trait_loss(_axpy(alpha, delta_s, student_params)) - trait_loss(student_params),
        student_norm=optax.tree.norm(delta_s),
        teacher_norm=optax.tree.norm(delta_t),
    )
