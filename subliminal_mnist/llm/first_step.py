"""Theorem 1 at the owl's first soft student step: its dot product and cosine with the teacher's fine-tuning
displacement ΔT, and its cosine with the trait's direction (-∇L_T at the student's start), for the gradient
direction (the theorem's ΔS) and for Adam's first update.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from subliminal_mnist import lora, theorem, train
from subliminal_mnist.llm import corpus
from subliminal_mnist.llm.config import LLMConfig, stream_rng
from subliminal_mnist.llm.fine_tuning import adapted, apply_for, next_token_loss, rate_factor
from subliminal_mnist.llm.number_data import NumberData
from subliminal_mnist.llm.transformer import AtPositions, at_positions


@functools.partial(jax.jit, static_argnames=("arch", "learning_rate"))
def _first_step(arch, student, target, delta_t, trait_direction, inputs, weights, number_mask, learning_rate):
    """The soft student's first step from `student` toward `target` on `inputs` (`at_positions`,
    `weights` (B, P) 0 for padding), against ΔT and against the trait direction -∇L_T at the student's
    start: {"gradient": {dot, cosine, trait_cosine}, "adam": {...}}. The gradient direction is the
    theorem's ΔS; Adam's first update is close to -lr · sign(gradient), a different vector. A LoRA student
    (`lora.Adapted`) steps its B, read in the model's weights through A (`lora.step_in_weight_space`).
    Every model is an argument, not a constant, and the positions are padded to one shape, so all
    seeds and conditions run one compiled program."""
    apply_fn = apply_for(student, AtPositions(arch))
    delta_s = theorem.student_direction(student, target, apply_fn, inputs, "kl", number_mask, weights)
    adam = train.optimizer(learning_rate)
    update, _ = adam.update(jax.tree.map(jnp.negative, delta_s), adam.init(student), student)
    out = {}
    for name, step in (("gradient", delta_s), ("adam", update)):
        step = lora.step_in_weight_space(student, step)
        out[name] = {
            "dot": optax.tree.vdot(step, delta_t),
            "cosine": theorem.tree_cosine(step, delta_t),
            "trait_cosine": theorem.tree_cosine(step, trait_direction),
        }
    return out


@functools.partial(jax.jit, static_argnames="arch")
def _trait_direction(arch, params, tokens, next_tokens, weights):
    """-∇L_T at `params`: L_T is the teachers' own loss, next-token cross-entropy at the answers `weights` marks."""
    loss = train.Objective(arch, next_token_loss).batch_loss
    targets = {"next": next_tokens, "weights": weights}
    return jax.tree.map(jnp.negative, jax.grad(loss)(params, tokens, targets, jnp.ones(tokens.shape[0])))


def first_step(config: LLMConfig, models: dict, numbers: NumberData, seed_id: int) -> dict:
    """Theorem 1 at the first soft student step, ΔT = θ_teacher - θ_base (the trait's direction):
    for same_init and cross_init (toward the teacher, on its lists) and for the neutral control
    (from the base toward the neutral teacher, on its lists), whose first step is not 0; each
    student as `student_params` says (a LoRA student's step through its adapter, `adapted`).

    The expectation is over the number positions of the target's first `theorem_sequences` lists;
    the student's output is the number-token distribution there. `trait_cosine` is against -∇L_T at
    the student's start, L_T the trait teacher's loss on its first `theorem_sequences` training lines:
    positive, the step lowers it (theory/README.md section 9's "trait"; `cosine` is its "weights").
    """
    delta_t = jax.tree.map(jnp.subtract, models["teacher"], models["base"])
    rng = stream_rng(config, seed_id, "teacher_lines")  # the trait teacher's lines, as it was taught them
    lines = config.trait_spec.teacher_lines(config.vocab, rng, config.teacher_lines)
    trait_tokens, trait_weights = lines.tokens[: config.theorem_sequences], lines.weights[: config.theorem_sequences]
    trait_lines = [jnp.asarray(a) for a in (trait_tokens, corpus.next_tokens(trait_tokens), trait_weights)]
    out = {}
    for name, student, target in (
        ("same_init", "base", "teacher"),
        ("cross_init", "cross_base", "teacher"),
        ("neutral_control", "base", "neutral"),
    ):
        tokens = numbers.lists[target][: config.theorem_sequences]
        positions, weights = corpus.number_positions(config.vocab, tokens, numbers.lengths[: len(tokens)])
        trait_direction = _trait_direction(config.architecture, models[student], *trait_lines)
        step = _first_step(
            config.architecture, adapted(config, models[student], seed_id, "student"), models[target], delta_t,
            trait_direction, at_positions(tokens, positions), jnp.asarray(weights), jnp.asarray(config.soft_outputs),
            config.student_learning_rate * rate_factor(config, "student"),
        )  # fmt: skip
        out[name] = jax.tree.map(float, step)
    return out
