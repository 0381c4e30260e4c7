"""Per-example losses for the one training loop.

Each takes the selected outputs of the model being trained, shape (B, ..., K),
and its targets, and returns one loss per example, shape (B,). The loop
averages them with weights, which is how it handles the last, partial batch of
an epoch exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _per_example(loss: jax.Array) -> jax.Array:
    """Mean over any positions between the batch axis and the output axis (e.g. tokens)."""
    return loss.reshape(loss.shape[0], -1).mean(axis=-1)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy against integer labels: the teacher's loss."""
    return _per_example(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def kl_divergence(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
    """KL(softmax(teacher) || softmax(student)) at temperature 1, the paper's distillation loss.

    Its gradient in the student logits equals that of softmax cross-entropy with the
    teacher's probabilities as soft labels, which is the case Theorem 1 covers.
    """
    teacher_log_probs = jax.nn.log_softmax(teacher_logits, axis=-1)
    student_log_probs = jax.nn.log_softmax(student_logits, axis=-1)
    kl = jnp.sum(jnp.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)
    return _per_example(kl)


def squared_error(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
    """Sum of squared differences of the logits: the other loss Theorem 1 covers."""
    return _per_example(jnp.sum((student_logits - teacher_logits) ** 2, axis=-1))


DISTILLATION_LOSSES = {"kl": kl_divergence, "mse": squared_error}
