"""Alignment through training: Theorem 1's single step, followed over the whole distillation.

Theorem 1 covers one small step from the shared init; the demo takes hundreds.
At every step of the real aux-only distillation this records, for same-init and
cross-model students:

- `param_cosine`: cos(θS(t) - θS(0), θT - θ0), how far the student has moved
  along the teacher's own displacement;
- `grad_inner`, `grad_cosine`: the inner product and cosine between the
  distillation gradient and the *trait gradient*, the gradient of the teacher's
  own loss (MNIST cross-entropy on a fixed batch) at the student's current
  parameters. Positive means the distillation step also descends the trait loss;
- `trait_loss`: that MNIST cross-entropy itself, and `test_accuracy`: the
  student's accuracy on a fixed slice of the test set.

With `project_out`, the loop's gradient hook also removes the trait direction
from the distillation gradient whenever the two align (inner product > 0), the
intervention of Kitkana and Arora (arXiv 2604.25779).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from subliminal_mnist import data, experiment, model, theorem
from subliminal_mnist.experiment import ConfigError, config_field

# The students compared, trained together: same-init, and cross-model as the control.
_STUDENTS = experiment.STUDENT_GROUPS["aux"]
METRICS = ("grad_cosine", "grad_inner", "param_cosine", "test_accuracy", "trait_loss", "loss")


@dataclasses.dataclass(frozen=True)
class AlignmentConfig(experiment.ExperimentConfig):
    """The demo's settings (the paper's), plus what the per-step probe needs."""

    seeds: int = config_field(5, "independent seeds, trained at once with vmap")
    trait_batch: int = config_field(1024, "training images in the trait gradient: the first N, fixed")
    probe_test: int = config_field(1000, "test images for the accuracy at every step: the first N")
    project_out: bool = config_field(
        False, "also train students whose distillation gradient is projected off the trait gradient when they align"
    )

    def __post_init__(self):
        super().__post_init__()
        for name in ("trait_batch", "probe_test"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class TraitProbe:
    """The loop's gradient hook: measures alignment with the trait gradient, optionally projects it out.

    context (per seed): student_init, teacher_init, teacher (params); trait_images (n, 784),
    trait_labels (n,); test_images (m, 784), test_labels (m,).
    """

    arch: model.Architecture
    project_out: bool

    def __call__(self, params, grads, context):
        # The teacher's own loss, as in Theorem 1's checks: cross-entropy of the class logits on MNIST.
        trait_loss_fn = theorem.class_trait_loss(
            self.arch, context["trait_images"], context["trait_labels"], self.arch.class_indices
        )
        trait_loss, trait_grads = jax.value_and_grad(trait_loss_fn)(params)
        inner = optax.tree.vdot(grads, trait_grads)
        metrics = {
            "trait_loss": trait_loss,
            "grad_inner": inner,
            "grad_cosine": theorem.tree_cosine(grads, trait_grads),
            "param_cosine": theorem.tree_cosine(
                jax.tree.map(jnp.subtract, params, context["student_init"]),
                jax.tree.map(jnp.subtract, context["teacher"], context["teacher_init"]),
            ),
            "test_accuracy": model.accuracy(
                self.arch(params, context["test_images"]), context["test_labels"], self.arch.num_classes
            ),
        }
        if self.project_out:
            # Descending g - c t with c = <g, t>/|t|^2 leaves the trait loss unchanged to first order.
            coefficient = jnp.where(inner > 0, inner / optax.tree.vdot(trait_grads, trait_grads), 0.0)
            grads = jax.tree.map(lambda g, t: g - coefficient * t, grads, trait_grads)
        return grads, metrics


def _variant_name(condition: str, projected: bool) -> str:
    return condition + ("_projected" if projected else "")


def _per_member(tree, num_members: int, num_seeds: int | None = None):
    """(S, ...) arrays, or with `num_seeds` unbatched ones, repeated for each member: (S, M, ...)."""
    if num_seeds is not None:
        tree = jax.tree.map(lambda a: jnp.broadcast_to(a, (num_seeds, *a.shape)), tree)
    return jax.tree.map(lambda a: jnp.broadcast_to(a[:, None], (a.shape[0], num_members, *a.shape[1:])), tree)


def run(config: AlignmentConfig, mnist: data.MNIST, progress: bool = True) -> dict:
    """Record the per-step alignment of every variant for `config.seeds` seeds; JSON-ready results."""
    start = time.perf_counter()
    arch = config.architecture
    partners = experiment.cross_partners(config.seeds, config.seed)
    variants = (False, True) if config.project_out else (False,)  # projected or not
    mnist = experiment.on_device(mnist)
    shared = {
        "trait_images": mnist.train_images[: config.trait_batch],
        "trait_labels": mnist.train_labels[: config.trait_batch],
        "test_images": mnist.test_images[: config.probe_test],
        "test_labels": mnist.test_labels[: config.probe_test],
    }
    test_images, test_labels = mnist.test_images, mnist.test_labels
    names = [_variant_name(student, projected) for projected in variants for student in _STUDENTS]
    histories = {name: [] for name in names}
    final_accuracy = {name: [] for name in names}
    teacher_accuracy = []
    members = len(_STUDENTS)
    for seed_ids in experiment.chunks(config.seeds, config.seeds_per_chunk):
        teachers = experiment.train_teachers(config, mnist, seed_ids, partners[seed_ids], progress)
        teacher_accuracy.append(np.asarray(experiment.test_accuracy(teachers.teacher, test_images, test_labels, arch)))
        keys = experiment.seed_keys(config, seed_ids)
        context = {
            **_per_member(shared, members, len(seed_ids)),
            "student_init": teachers.inits_of(_STUDENTS),
            "teacher_init": _per_member(teachers.shared_init, members),
            "teacher": _per_member(teachers.teacher, members),
        }
        for projected in variants:
            students, history = experiment.distill(
                config,
                teachers,
                _STUDENTS,
                keys["distill_aux"],
                progress,
                hook=TraitProbe(arch, projected),
                context=context,
            )
            for m, student in enumerate(_STUDENTS):
                name = _variant_name(student, projected)
                histories[name].append({metric: values[:, m] for metric, values in history.items()})
                accuracy = experiment.test_accuracy(students[student], test_images, test_labels, arch)
                final_accuracy[name].append(np.asarray(accuracy))

    curves = {
        name: {metric: np.concatenate([h[metric] for h in chunks]) for metric in METRICS}
        for name, chunks in histories.items()
    }
    return {
        "claims": claims(curves, {n: np.concatenate(a) for n, a in final_accuracy.items()}),
        # Per step (epochs x steps flattened), mean over seeds: what the figure draws.
        "curves": {
            name: {metric: values.reshape(len(values), -1).mean(0).tolist() for metric, values in metrics.items()}
            for name, metrics in curves.items()
        },
        "steps_per_epoch": int(next(iter(curves.values()))["loss"].shape[-1]),
        "final_test_accuracy": {n: experiment.summarize(np.concatenate(a)) for n, a in final_accuracy.items()},
        "teacher_test_accuracy": experiment.summarize(np.concatenate(teacher_accuracy)),
        "config": dataclasses.asdict(config),
        "data_source": mnist.source,
        "is_sample": mnist.is_sample,
        "versions": experiment.versions(),
        "wall_seconds": time.perf_counter() - start,
    }


def claims(curves: dict[str, dict[str, np.ndarray]], final_accuracy: dict[str, np.ndarray]) -> dict:
    """The three findings of Kitkana and Arora, as numbers from the curves (seed, epoch, step) arrays."""
    same, cross = curves["student_aux"], curves["cross_aux"]

    def per_epoch_change(metric: str) -> np.ndarray:
        # Metrics are measured before each step: an epoch's change runs from its first step to the next's.
        values = same[metric]  # (S, epochs, steps)
        return (values[:, 1:, 0] - values[:, :-1, 0]).mean(0)

    accuracy_gains, trait_loss_drops = per_epoch_change("test_accuracy"), -per_epoch_change("trait_loss")
    param_cosine_gains = per_epoch_change("param_cosine")
    result = {
        "alignment": {
            "same_init_mean_grad_cosine": float(same["grad_cosine"].mean()),
            "same_init_share_of_steps_aligned": float((same["grad_inner"] > 0).mean()),
            "cross_model_mean_grad_cosine": float(cross["grad_cosine"].mean()),
            "cross_model_share_of_steps_aligned": float((cross["grad_inner"] > 0).mean()),
            "same_init_final_param_cosine": float(same["param_cosine"][:, -1, -1].mean()),
            "cross_model_final_param_cosine": float(cross["param_cosine"][:, -1, -1].mean()),
        },
        # Over the epochs that have a next one to compare with (all but the last).
        "transfer_by_epoch": {
            "accuracy_gain_per_epoch": accuracy_gains.tolist(),
            "trait_loss_drop_per_epoch": trait_loss_drops.tolist(),
            "param_cosine_gain_per_epoch": param_cosine_gains.tolist(),
            "mean_grad_cosine_per_epoch": same["grad_cosine"].mean((0, 2)).tolist(),
            "first_epoch_gains_most_accuracy": bool(accuracy_gains.argmax() == 0),
            "first_epoch_drops_trait_loss_most": bool(trait_loss_drops.argmax() == 0),
            "first_epoch_gains_most_param_cosine": bool(param_cosine_gains.argmax() == 0),
        },
    }
    if "student_aux_projected" in curves:
        projected = curves["student_aux_projected"]
        result["projection"] = {
            "final_accuracy": float(final_accuracy["student_aux"].mean()),
            "final_accuracy_projected": float(final_accuracy["student_aux_projected"].mean()),
            # Distillation speed: the last epoch's mean distillation loss, with and without projection.
            "final_distill_loss": float(same["loss"][:, -1].mean()),
            "final_distill_loss_projected": float(projected["loss"][:, -1].mean()),
            "share_of_steps_projected": float((projected["grad_inner"] > 0).mean()),
        }
    return result
