"""Per-example losses for the one training loop.

Each takes the outputs of the model being trained, shape (B, ..., K), its
targets, and optionally a boolean `output_mask` (K,) of the outputs the loss
sees; it returns one loss per example, shape (B,). The loop averages them with
weights, which is how it handles the last, partial batch of an epoch exactly.

A mask, not an index set, chooses the outputs so that the choice is data: the
students of the aux-only and the all-logits conditions then share one compiled
training loop. A masked-out output is replaced by a *neutral* value, which adds
exactly 0 to the loss and gets exactly 0 gradient (`jnp.where` passes none to
the branch it does not take), so the loss equals that of the sliced outputs:
0 for the squared error, and for a softmax a logit far below the row's largest
masked-in logit (`masked_logits`), which keeps it neutral at any logit scale.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax


# How far below the largest masked-in logit of its row a masked-out logit is put: its softmax
# probability is then exp(-1e4) or less, which is exactly 0 in float32 and float64, at any logit
# scale (a fixed neutral value is neutral only while the logits stay above it). Finite, so KL
# terms are 0 * finite = 0 and no NaN reaches a gradient.
NEUTRAL_LOGIT_GAP = 1e4


def masked(outputs: jax.Array, output_mask: jax.Array | None, neutral: float) -> jax.Array:
    """outputs (..., K) with the masked-out ones set to `neutral`; unchanged for no mask."""
    return outputs if output_mask is None else jnp.where(output_mask, outputs, neutral)


def masked_logits(logits: jax.Array, output_mask: jax.Array | None) -> jax.Array:
    """logits (..., K) with the masked-out ones set far below each row's largest masked-in logit.

    A softmax over the result equals the softmax over the masked-in logits alone, with
    probability exactly 0 elsewhere, whatever the scale of the logits. The offset is
    `NEUTRAL_LOGIT_GAP` plus the row maximum's magnitude, so that it is not lost to rounding
    when the logits themselves are huge. It goes through `stop_gradient`: the row maximum
    is a constant to the gradient, which the masked-out entries (probability 0) would not
    carry anyway, so masked and sliced logits get the same gradient.
    """
    if output_mask is None:
        return logits
    row_max = jnp.max(jnp.where(output_mask, logits, -jnp.inf), axis=-1, keepdims=True)
    neutral = jax.lax.stop_gradient(row_max - (NEUTRAL_LOGIT_GAP + jnp.abs(row_max)))
    return jnp.where(output_mask, logits, neutral)


def _per_example(loss: jax.Array, position_weights: jax.Array | None = None) -> jax.Array:
    """One loss per example from per-position losses (B, ...): the mean over the positions
    between the batch axis and the output axis (e.g. tokens), or, with `position_weights`
    shaped like `loss`, their weighted mean (0 for an example whose weights are all 0)."""
    loss = loss.reshape(loss.shape[0], -1)
    if position_weights is None:
        return loss.mean(axis=-1)
    weights = position_weights.reshape(loss.shape).astype(loss.dtype)
    total = jnp.sum(weights, axis=-1)
    return jnp.sum(weights * loss, axis=-1) / jnp.where(total > 0, total, 1.0)


def cross_entropy(
    logits: jax.Array, labels: jax.Array, output_mask: jax.Array | None = None,
    position_weights: jax.Array | None = None,
) -> jax.Array:  # fmt: skip
    """Softmax cross-entropy against integer labels: the teacher's loss (the softmax over the masked-in logits)."""
    logits = masked_logits(logits, output_mask)
    return _per_example(optax.softmax_cross_entropy_with_integer_labels(logits, labels), position_weights)


def kl_divergence(
    student_logits: jax.Array, teacher_logits: jax.Array, output_mask: jax.Array | None = None,
    position_weights: jax.Array | None = None,
) -> jax.Array:  # fmt: skip
    """KL(softmax(teacher) || softmax(student)) at temperature 1, the paper's distillation loss.

    Its gradient in the student logits equals that of softmax cross-entropy with the
    teacher's probabilities as soft labels, which is the case Theorem 1 covers.
    """
    teacher_log_probs = jax.nn.log_softmax(masked_logits(teacher_logits, output_mask), axis=-1)
    student_log_probs = jax.nn.log_softmax(masked_logits(student_logits, output_mask), axis=-1)
    kl = jnp.sum(jnp.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)
    return _per_example(kl, position_weights)


def squared_error(
    student_logits: jax.Array, teacher_logits: jax.Array, output_mask: jax.Array | None = None,
    position_weights: jax.Array | None = None,
) -> jax.Array:  # fmt: skip
    """Sum of squared differences of the logits: the other loss Theorem 1 covers."""
    squares = jnp.sum(masked(student_logits - teacher_logits, output_mask, 0.0) ** 2, axis=-1)
    return _per_example(squares, position_weights)


DISTILLATION_LOSSES = {"kl": kl_divergence, "mse": squared_error}


@dataclasses.dataclass(frozen=True)
class TemperedKL:
    """KL of the softmaxes at temperature T, times T^2 (Hinton, Vinyals, Dean 2015): the
    factor keeps the gradient's size as T changes. A frozen dataclass, so it compares by
    value and equal temperatures share one compiled training loop."""

    temperature: float

    def __call__(self, student_logits, teacher_logits, output_mask=None, position_weights=None):
        t = self.temperature
        return t**2 * kl_divergence(student_logits / t, teacher_logits / t, output_mask, position_weights)


def distillation_loss(name: str, temperature: float = 1.0):
    """The per-example loss of a student: "mse", or "kl" at `temperature` (1: the paper's, exactly)."""
    if name == "kl" and temperature != 1:
        return TemperedKL(temperature)
    return DISTILLATION_LOSSES[name]
