"""Alignment through training: the probe's numbers, the projection, and the findings on real MNIST."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from subliminal_mnist import alignment, experiment, model, theorem


@pytest.fixture(scope="module")
def probe_setup():
    arch = model.Architecture(hidden_sizes=(16,))
    keys = jax.random.split(jax.random.key(0), 4)
    params, teacher_init, teacher = (arch.init(k) for k in keys[:3])
    images = jax.random.uniform(keys[3], (32, model.INPUT_SIZE), minval=-1, maxval=1)
    labels = jnp.arange(32) % 10
    context = {
        "student_init": teacher_init,
        "teacher_init": teacher_init,
        "teacher": teacher,
        "trait_images": images,
        "trait_labels": labels,
        "test_images": images,
        "test_labels": labels,
    }
    return arch, params, context


def random_grads(params, seed):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def test_probe_measures_against_the_trait_gradient_and_leaves_the_step_alone(probe_setup):
    arch, params, context = probe_setup
    grads = random_grads(params, 1)
    probe = alignment.TraitProbe(arch, project_out=False)
    same, metrics = probe(params, grads, context)
    trait = jax.grad(theorem.class_trait_loss(arch, context["trait_images"], context["trait_labels"]))(params)
    np.testing.assert_allclose(metrics["grad_inner"], optax.tree.vdot(grads, trait), rtol=1e-5)
    np.testing.assert_allclose(
        metrics["grad_cosine"],
        optax.tree.vdot(grads, trait) / optax.tree.norm(grads) / optax.tree.norm(trait),
        rtol=1e-5,
    )
    jax.tree.map(np.testing.assert_array_equal, same, grads)
    assert 0 <= metrics["test_accuracy"] <= 1


def test_parameter_cosine_is_zero_at_the_start_and_one_along_the_teacher(probe_setup):
    arch, params, context = probe_setup
    probe = alignment.TraitProbe(arch, project_out=False)
    start = {**context, "student_init": params}
    assert probe(params, params, start)[1]["param_cosine"] == 0.0
    along = jax.tree.map(lambda p, t0, t: p + 0.5 * (t - t0), params, context["teacher_init"], context["teacher"])
    np.testing.assert_allclose(probe(along, params, start)[1]["param_cosine"], 1.0, rtol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_projection_removes_the_trait_direction_only_when_aligned(probe_setup, seed):
    arch, params, context = probe_setup
    grads = random_grads(params, seed)
    probe = alignment.TraitProbe(arch, project_out=True)
    projected, metrics = probe(params, grads, context)
    trait = jax.grad(theorem.class_trait_loss(arch, context["trait_images"], context["trait_labels"]))(params)
    if metrics["grad_inner"] > 0:
        scale = optax.tree.norm(grads) * optax.tree.norm(trait)
        assert abs(optax.tree.vdot(projected, trait)) < 1e-5 * scale
    else:
        jax.tree.map(np.testing.assert_array_equal, projected, grads)


def test_alignment_settings_are_checked():
    with pytest.raises(experiment.ConfigError, match="trait_batch must be at least 1"):
        alignment.AlignmentConfig(trait_batch=0)
    with pytest.raises(experiment.ConfigError, match="seeds must be at least 1"):
        alignment.AlignmentConfig(seeds=0)


@pytest.mark.mnist
def test_alignment_through_training_on_real_mnist(real_mnist):
    """Kitkana and Arora's findings with the paper's settings, 2 seeds."""
    config = alignment.AlignmentConfig(seeds=2, project_out=True)
    results = alignment.run(config, real_mnist, progress=False)
    claims = results["claims"]
    # 1. Weak but consistent alignment with the trait gradient, for the same-init student only.
    assert 0 < claims["alignment"]["same_init_mean_grad_cosine"] < 0.1
    assert claims["alignment"]["same_init_share_of_steps_aligned"] > 0.6
    assert abs(claims["alignment"]["cross_model_mean_grad_cosine"]) < claims["alignment"]["same_init_mean_grad_cosine"]
    assert (
        claims["alignment"]["same_init_final_param_cosine"]
        > 0.2
        > claims["alignment"]["cross_model_final_param_cosine"]
    )
    # 3. Projecting the trait direction out suppresses transfer without slowing distillation.
    projection = claims["projection"]
    assert projection["final_accuracy"] > 0.3 and projection["final_accuracy_projected"] < 0.15
    assert projection["final_distill_loss_projected"] < 1.1 * projection["final_distill_loss"]
    # 2. Transfer is fastest in the first epoch as movement along the teacher's displacement
    #    (test accuracy, by contrast, climbs steadily: the README reports both).
    assert claims["transfer_by_epoch"]["first_epoch_gains_most_param_cosine"]
    assert len(claims["transfer_by_epoch"]["accuracy_gain_per_epoch"]) == config.student_epochs - 1
