"""Theorem 1 at the owl's first soft student step, computed independently."""

import dataclasses

import jax
import jax.numpy as jnp
import optax
import pytest

from subliminal_mnist import lora, theorem, train
from subliminal_mnist.llm import corpus
from subliminal_mnist.llm.config import stream_key, stream_rng
from subliminal_mnist.llm.first_step import first_step
from subliminal_mnist.llm.transformer import AtPositions, at_positions


def test_a_lora_students_first_step_is_the_full_step_through_its_adapter(lora_models):
    config, models, numbers, _ = lora_models
    arch, delta_t = config.architecture, jax.tree.map(jnp.subtract, models["teacher"], models["base"])
    # The trait's direction -∇L_T: the teacher's cross-entropy at the answers of its first lines (one a line).
    lines = config.trait_spec.teacher_lines(config.vocab, stream_rng(config, 0, "teacher_lines"), config.teacher_lines)
    trait_tokens, trait_weights = lines.tokens[: config.theorem_sequences], lines.weights[: config.theorem_sequences]

    def trait_loss(params):
        log_p = jax.nn.log_softmax(arch.apply(params, jnp.asarray(trait_tokens)), axis=-1)
        answers = jnp.asarray(corpus.next_tokens(trait_tokens))[..., None]
        return -jnp.sum(trait_weights * jnp.take_along_axis(log_p, answers, axis=-1)[..., 0])

    direction = jax.jit(theorem.student_direction, static_argnums=(2, 4))  # compiled: faster than op by op
    trait_gradient = jax.jit(jax.grad(trait_loss))

    def independent(start, target, down, learning_rate):
        tokens = numbers.lists[target][: config.theorem_sequences]
        positions, weights = corpus.number_positions(config.vocab, tokens, numbers.lengths[: len(tokens)])
        full = direction(models[start], models[target], AtPositions(arch), at_positions(tokens, positions), "kl",
                         jnp.asarray(config.soft_outputs), jnp.asarray(weights))  # fmt: skip
        gradient = full if down is None else lora.project(down, full)
        # Adam's first update, of B (in A's coordinates) for a LoRA student, read in the weights.
        moved = full if down is None else lora.in_adapter_space(down, full)
        adam = train.optimizer(learning_rate)
        update, _ = adam.update(jax.tree.map(jnp.negative, moved), adam.init(moved))
        adam_step = update if down is None else lora.in_weight_space(down, update, models[start])
        trait = jax.tree.map(jnp.negative, trait_gradient(models[start]))
        return {name: {"dot": float(optax.tree.vdot(step, delta_t)),
                       "cosine": float(theorem.tree_cosine(step, delta_t)),
                       "trait_cosine": float(theorem.tree_cosine(step, trait))}
                for name, step in (("gradient", gradient), ("adam", adam_step))}, full  # fmt: skip

    students = (("same_init", "base", "teacher"), ("cross_init", "cross_base", "teacher"),
                ("neutral_control", "base", "neutral"))  # fmt: skip
    # A rank-3 student with an A of its own (not the teachers' rank 2), and a full student.
    low_rank = dataclasses.replace(config, student_params="lora:3", adapter_init="own")
    down = lora.init(stream_key(config, 0, "student_adapter"), models["base"], 3).down
    full = dataclasses.replace(config, student_params="full")
    for settings, down, rate in ((low_rank, down, config.student_learning_rate * config.adapter_rate_factor),
                                 (full, None, config.student_learning_rate)):  # fmt: skip
        got = first_step(settings, models, numbers, 0)
        assert set(got) == {name for name, *_ in students}
        for name, start, target in students:
            want, full_step = independent(start, target, down, rate)
            for step in ("gradient", "adam"):
                # float32 and another program: Adam's near-sign step and the neutral control's small move
                # amplify the last bits (its rate's factor, 10 or 1, is far outside these tolerances).
                close = dict(cosine=1e-5, dot=1e-3) if step == "gradient" else dict(cosine=1e-4, dot=1e-2)
                for key in ("cosine", "trait_cosine"):
                    want_key = pytest.approx(want[step][key], abs=close["cosine"])
                    assert got[name][step][key] == want_key, (name, step, key)
                assert got[name][step]["dot"] == pytest.approx(want[step]["dot"], rel=close["dot"]), (name, step)
            if down is not None:
                unprojected = float(theorem.tree_cosine(full_step, delta_t))
                assert abs(want["gradient"]["cosine"] - unprojected) > 1e-3, "the adapter's step is another direction"
