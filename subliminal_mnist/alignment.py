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
  student's accuracy on a fixed slice of the test set;
- `projected`, `removed_fraction`: whether the step's gradient was edited, and
  |g_before - g_after| / |g_before|, the share of its norm the edit removed.

With `project_out`, the same students also train under each edit of the
distillation gradient in `PROJECTIONS` (before Adam sees it): the one-sided
projection of Kitkana and Arora (arXiv 2604.25779), which removes the trait
direction only when the two align, and its two controls. A one-sided removal
keeps the part of the gradient that points *against* the trait, so it may push
a student away from MNIST rather than merely keep it from learning: the
two-sided projection removes the trait direction at every step, whatever its
sign; the random control edits on the one-sided schedule, but along a fixed
random direction, to show that editing at those steps does not by itself stop
the transfer. The edit is data (each member's `projection` code in the hook's
context), so every variant and both students train as members of one loop:
one compiled program, the same noise in the same order.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from subliminal_mnist import data, experiment, lora, model, runs, theorem
from subliminal_mnist.runs import ConfigError, config_field

# The students compared, trained together: same-init, and cross-model as the control.
_STUDENTS = experiment.STUDENT_GROUPS["aux"]
_STUDENT_LABELS = {"student_aux": "same_init", "cross_aux": "cross_model"}
# The edits of the distillation gradient g, by the code a member carries in its context:
# - none:      g as it is;
# - one_sided: g minus its component along the trait gradient t when <g, t> > 0 (Kitkana and Arora);
# - two_sided: g minus its component along t at every step, whatever the sign of <g, t>;
# - random:    at the steps where <g, t> > 0 (the one-sided schedule), g minus its component,
#              whatever its sign, along a fixed random direction r (one per seed).
PROJECTIONS = ("none", "one_sided", "two_sided", "random")
NONE, ONE_SIDED, TWO_SIDED, RANDOM = range(len(PROJECTIONS))
METRICS = ("grad_cosine", "grad_inner", "param_cosine", "test_accuracy", "trait_loss", "projected", "removed_fraction",
           "loss")  # fmt: skip
# The random direction's key: the seed's distillation key folded with this number, which no
# epoch index reaches (the loop folds the epoch into the same key for its data order).
_RANDOM_DIRECTION_FOLD = 2**31 - 1
# A projection "suppresses transfer" when it closes at least this share of the gap in final
# accuracy between the unprojected same-init student and the unprojected cross-model one.
SUPPRESSED_SHARE = 0.9


@dataclasses.dataclass(frozen=True)
class AlignmentConfig(experiment.ExperimentConfig):
    """The demo's settings (the paper's), plus what the per-step probe needs."""

    seeds: int = config_field(5, "independent seeds, trained at once with vmap")
    trait_batch: int = config_field(
        1024, "training images in the trait gradient: a fixed stratified subset (an equal share of each digit)"
    )
    probe_test: int = config_field(
        1000, "test images for the accuracy at every step: a fixed stratified subset (an equal share of each digit)"
    )
    project_out: bool = config_field(
        False,
        "also train students whose distillation gradient is projected off the trait gradient: one-sided "
        "(when they align), two-sided (always), and a random direction on the one-sided schedule",
    )

    def __post_init__(self):
        super().__post_init__()
        lora.require_full(self, "alignment")
        for name in ("trait_batch", "probe_test"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")


def project(grads, trait_grads, random_direction, projection: jax.Array):
    """The distillation gradient after the edit `projection` (a code, see PROJECTIONS), and whether it acted.

    Removing g's component along a direction d, g - (<g, d>/|d|^2) d, leaves the loss whose
    gradient is d unchanged to first order. Where the edit does not act, g comes back exactly.
    Returns (edited grads, acted: bool scalar).
    """
    aligned = optax.tree.vdot(grads, trait_grads) > 0
    along_trait = (projection == TWO_SIDED) | ((projection == ONE_SIDED) & aligned)
    along_random = (projection == RANDOM) & aligned
    direction = jax.tree.map(lambda t, r: jnp.where(along_random, r, t), trait_grads, random_direction)
    norm_squared = optax.tree.vdot(direction, direction)
    coefficient = optax.tree.vdot(grads, direction) / jnp.where(norm_squared > 0, norm_squared, 1.0)
    acted = along_trait | along_random
    edited = jax.tree.map(lambda g, d: jnp.where(acted, g - coefficient * d, g), grads, direction)
    return edited, acted


def trait_gradient(arch: model.Architecture, params, context) -> tuple[jax.Array, model.Params]:
    """The teacher's own loss at `params` and its gradient, as in Theorem 1's checks: cross-entropy
    of the class logits on the batch `context["trait_images"]`, `context["trait_labels"]`."""
    trait_loss_fn = theorem.class_trait_loss(arch, context["trait_images"], context["trait_labels"], arch.class_indices)
    return jax.value_and_grad(trait_loss_fn)(params)


@dataclasses.dataclass(frozen=True)
class TraitProjection:
    """The projection defense as the loop's gradient hook: the edit `project` and nothing else
    measured but whether it acted ("projected"). A defender who uses it must know the trait: its
    gradient comes from the teacher's own loss on labelled digits (`trait_gradient`).

    context (per seed and member): trait_images, trait_labels, projection, random_direction, as
    for `TraitProbe`.
    """

    arch: model.Architecture

    def __call__(self, params, grads, context):
        _, trait_grads = trait_gradient(self.arch, params, context)
        edited, acted = project(grads, trait_grads, context["random_direction"], context["projection"])
        return edited, {"projected": acted.astype(jnp.float32)}


@dataclasses.dataclass(frozen=True)
class TraitProbe:
    """The loop's gradient hook: measures alignment with the trait gradient, and edits the gradient.

    context (per seed and member): student_init, teacher_init, teacher (params); trait_images
    (n, 784), trait_labels (n,); test_images (m, 784), test_labels (m,); projection (int32
    scalar, an index into PROJECTIONS: which edit this member's gradient gets); random_direction
    (params), the fixed direction of the random control.
    """

    arch: model.Architecture

    def __call__(self, params, grads, context):
        trait_loss, trait_grads = trait_gradient(self.arch, params, context)
        edited, acted = project(grads, trait_grads, context["random_direction"], context["projection"])
        grad_norm = optax.tree.norm(grads)
        removed = optax.tree.norm(jax.tree.map(jnp.subtract, grads, edited))
        metrics = {
            "trait_loss": trait_loss,
            "grad_inner": optax.tree.vdot(grads, trait_grads),
            "grad_cosine": theorem.tree_cosine(grads, trait_grads),
            "param_cosine": theorem.tree_cosine(
                jax.tree.map(jnp.subtract, params, context["student_init"]),
                jax.tree.map(jnp.subtract, context["teacher"], context["teacher_init"]),
            ),
            "test_accuracy": model.accuracy(
                self.arch(params, context["test_images"]), context["test_labels"], self.arch.num_classes
            ),
            "projected": acted.astype(jnp.float32),
            "removed_fraction": jnp.where(grad_norm > 0, removed / jnp.where(grad_norm > 0, grad_norm, 1.0), 0.0),
        }
        return edited, metrics


@jax.jit
def random_directions(keys: jax.Array, params: model.Params) -> model.Params:
    """One standard Gaussian direction per seed, shaped like `params` (S, ...); keys (S,), a seed's own."""

    def draw(key, like):
        leaves, tree = jax.tree.flatten(like)
        leaf_keys = jax.random.split(jax.random.fold_in(key, _RANDOM_DIRECTION_FOLD), len(leaves))
        return jax.tree.unflatten(tree, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(leaf_keys, leaves)])

    return jax.vmap(draw)(keys, params)


def variant_name(student: str, projection: str) -> str:
    """The key of a student under an edit: "student_aux", "cross_aux_two_sided", ..."""
    return student if projection == "none" else f"{student}_{projection}"


def per_member(tree, num_members: int, num_seeds: int | None = None):
    """(S, ...) arrays, or with `num_seeds` unbatched ones, repeated for each member: (S, M, ...)."""
    if num_seeds is not None:
        tree = jax.tree.map(lambda a: jnp.broadcast_to(a, (num_seeds, *a.shape)), tree)
    return jax.tree.map(lambda a: jnp.broadcast_to(a[:, None], (a.shape[0], num_members, *a.shape[1:])), tree)


def probe_sets(mnist: data.MNIST, trait_batch: int, probe_test: int | None = None) -> dict:
    """The probe's fixed images: `trait_batch` training images for the trait gradient ("trait_images",
    "trait_labels") and, with `probe_test`, test images for the accuracy at every step ("test_images",
    "test_labels"). Each is a stratified subset (`data.stratified_indices`, seed `data.PROBE_SEED`):
    an equal share of every digit on any source, whatever the order of its file."""
    trait = data.stratified_indices(mnist.train_labels, trait_batch, what="trait_batch (training images)")
    out = {"trait_images": mnist.train_images[trait], "trait_labels": mnist.train_labels[trait]}
    if probe_test is not None:
        test = data.stratified_indices(mnist.test_labels, probe_test, what="probe_test (test images)")
        out |= {"test_images": mnist.test_images[test], "test_labels": mnist.test_labels[test]}
    return out


def run(config: AlignmentConfig, mnist: data.MNIST, progress: bool = True) -> dict:
    """Record the per-step alignment of every variant for `config.seeds` seeds; JSON-ready results.

    Chunks of seeds run in `config.workers` concurrent threads, as in the demo: one chunk's
    teacher overlaps another's students. That changes the speed, not the numbers.
    """
    start = time.perf_counter()
    arch = config.architecture
    partners = runs.cross_partners(config.seeds, config.seed)
    projections = PROJECTIONS if config.project_out else PROJECTIONS[:1]
    # The members of the one loop: every student under every edit.
    members = [(student, projection) for projection in projections for student in _STUDENTS]
    students = [student for student, _ in members]
    names = [variant_name(student, projection) for student, projection in members]
    codes = jnp.asarray([PROJECTIONS.index(projection) for _, projection in members], jnp.int32)
    mnist = experiment.on_device(mnist)
    shared = probe_sets(mnist, config.trait_batch, config.probe_test)
    test_images, test_labels = mnist.test_images, mnist.test_labels

    def chunk(seed_ids: np.ndarray) -> tuple[dict, dict, np.ndarray]:
        """One chunk's per-step history {name: {metric: (S, epochs, steps)}}, final and teacher accuracies."""
        teachers = experiment.train_teachers(config, mnist, seed_ids, partners[seed_ids])
        keys = experiment.seed_keys(config, seed_ids)
        context = {
            **per_member(shared, len(members), len(seed_ids)),
            "student_init": teachers.inits_of(students),
            "teacher_init": per_member(teachers.shared_init, len(members)),
            "teacher": per_member(teachers.teacher, len(members)),
            "projection": jnp.broadcast_to(codes, (len(seed_ids), len(members))),
            "random_direction": per_member(random_directions(keys["distill_aux"], teachers.shared_init), len(members)),
        }
        recipe = dataclasses.replace(experiment.distill_recipe(config, students), hook=TraitProbe(arch))
        trained, history = experiment.distill(
            config, teachers, students, keys["distill_aux"], recipe=recipe, context=context, names=names
        )
        histories = {name: {metric: values[:, m] for metric, values in history.items()} for m, name in enumerate(names)}
        final = {
            name: np.asarray(experiment.test_accuracy(params, test_images, test_labels, arch))
            for name, params in trained.items()
        }
        teacher = np.asarray(experiment.test_accuracy(teachers.teacher, test_images, test_labels, arch))
        return histories, final, teacher

    chunk_size = experiment.seeds_per_chunk(config, config.num_noise or len(mnist.train_images))
    seed_chunks = list(runs.chunks(range(config.seeds), chunk_size))
    with runs.showing(progress):
        # Compiled once here, not by each thread at its first chunk.
        experiment.compile_teachers(config, len(seed_chunks[0]), mnist)
        per_chunk = runs.parallel_map(chunk, seed_chunks, config.workers, f"{config.seeds} seeds", unit="chunk")
    histories, final_accuracy, teacher_accuracy = zip(*per_chunk)
    curves = {
        name: {metric: np.concatenate([h[name][metric] for h in histories]) for metric in METRICS} for name in names
    }
    final_accuracy = {name: np.concatenate([f[name] for f in final_accuracy]) for name in names}
    return {
        "claims": claims(curves, final_accuracy),
        # Per step (epochs x steps flattened), mean over seeds: what the figure draws.
        "curves": {
            name: {metric: values.reshape(len(values), -1).mean(0).tolist() for metric, values in metrics.items()}
            for name, metrics in curves.items()
        },
        "steps_per_epoch": int(curves[names[0]]["loss"].shape[-1]),
        "final_test_accuracy": {name: runs.summarize(accuracy) for name, accuracy in final_accuracy.items()},
        "teacher_test_accuracy": runs.summarize(np.concatenate(teacher_accuracy)),
        "config": dataclasses.asdict(config),
        "data_source": mnist.source,
        "devices": experiment.seed_devices(config, chunk_size),
        "is_sample": mnist.is_sample,
        "seeds_per_chunk": chunk_size,
        "versions": runs.versions(),
        "wall_seconds": time.perf_counter() - start,
    }


def share_of_updates_lowering(values: np.ndarray) -> float:
    """Share of steps after which `values` (S, epochs, steps; measured before each step) is lower.

    The steps run on across epoch boundaries, so step k's update is judged by the value
    measured before step k+1, in the same epoch or the next; the last step has no successor.
    """
    flat = values.reshape(len(values), -1)
    return float((np.diff(flat, axis=1) < 0).mean())


def claims(curves: dict[str, dict[str, np.ndarray]], final_accuracy: dict[str, np.ndarray]) -> dict:
    """The three findings of Kitkana and Arora, as numbers from the curves (seed, epoch, step) arrays."""
    same, cross = curves["student_aux"], curves["cross_aux"]

    def per_epoch_change(metric: str) -> np.ndarray:
        # Metrics are measured before each step: an epoch's change runs from its first step to the next's.
        values = same[metric]  # (S, epochs, steps)
        return (values[:, 1:, 0] - values[:, :-1, 0]).mean(0)

    def first_epoch_most(changes: np.ndarray) -> bool | None:
        # None for a single epoch: there is no change from one epoch to the next to compare.
        return bool(changes.argmax() == 0) if len(changes) else None

    accuracy_gains, trait_loss_drops = per_epoch_change("test_accuracy"), -per_epoch_change("trait_loss")
    param_cosine_gains = per_epoch_change("param_cosine")
    result = {
        "alignment": {
            "same_init_mean_grad_cosine": float(same["grad_cosine"].mean()),
            "same_init_share_of_steps_aligned": float((same["grad_inner"] > 0).mean()),
            # The raw gradient is aligned above; Adam rescales it per coordinate, so whether the
            # step it takes lowers the trait loss is measured on the trait loss itself.
            "same_init_share_of_updates_lowering_trait_loss": share_of_updates_lowering(same["trait_loss"]),
            "cross_model_mean_grad_cosine": float(cross["grad_cosine"].mean()),
            "cross_model_share_of_steps_aligned": float((cross["grad_inner"] > 0).mean()),
            "cross_model_share_of_updates_lowering_trait_loss": share_of_updates_lowering(cross["trait_loss"]),
            "same_init_final_param_cosine": float(same["param_cosine"][:, -1, -1].mean()),
            "cross_model_final_param_cosine": float(cross["param_cosine"][:, -1, -1].mean()),
        },
        # Over the epochs that have a next one to compare with (all but the last).
        "transfer_by_epoch": {
            "accuracy_gain_per_epoch": accuracy_gains.tolist(),
            "trait_loss_drop_per_epoch": trait_loss_drops.tolist(),
            "param_cosine_gain_per_epoch": param_cosine_gains.tolist(),
            "mean_grad_cosine_per_epoch": same["grad_cosine"].mean((0, 2)).tolist(),
            "first_epoch_gains_most_accuracy": first_epoch_most(accuracy_gains),
            "first_epoch_drops_trait_loss_most": first_epoch_most(trait_loss_drops),
            "first_epoch_gains_most_param_cosine": first_epoch_most(param_cosine_gains),
        },
    }
    if len(curves) > len(_STUDENTS):
        result["projection"] = projection_claims(curves, final_accuracy)
    return result


def projection_claims(curves: dict[str, dict[str, np.ndarray]], final_accuracy: dict[str, np.ndarray]) -> dict:
    """Each edit's outcome for both students, and which edit suppresses transfer without pushing the trait loss up.

    "Pushing up" is judged against the unprojected cross-model student's final trait loss: the
    level of a student that learns no digits, so a student above it has been moved away from MNIST.
    """
    projections = [p for p in PROJECTIONS if variant_name(_STUDENTS[0], p) in curves]
    outcomes = {}
    for projection in projections:
        outcomes[projection] = {}
        for student, label in _STUDENT_LABELS.items():
            name = variant_name(student, projection)
            metrics = curves[name]
            outcomes[projection][label] = {
                "final_accuracy": float(final_accuracy[name].mean()),
                "final_trait_loss": float(metrics["trait_loss"][:, -1, -1].mean()),
                # Distillation speed: the last epoch's mean distillation loss.
                "final_distill_loss": float(metrics["loss"][:, -1].mean()),
                "share_of_steps_projected": float(metrics["projected"].mean()),
                "mean_removed_fraction": float(metrics["removed_fraction"].mean()),
                # The edit acts on the raw gradient; Adam's update is what moves the trait loss.
                "share_of_updates_lowering_trait_loss": share_of_updates_lowering(metrics["trait_loss"]),
            }
    unprojected = outcomes["none"]
    transfer = unprojected["same_init"]["final_accuracy"] - unprojected["cross_model"]["final_accuracy"]
    no_transfer_trait_loss = unprojected["cross_model"]["final_trait_loss"]
    verdicts = {}
    for projection in projections[1:]:
        same, cross = outcomes[projection]["same_init"], outcomes[projection]["cross_model"]
        removed = (unprojected["same_init"]["final_accuracy"] - same["final_accuracy"]) / transfer
        verdicts[projection] = {
            "share_of_transfer_removed": removed,
            "suppresses_transfer": bool(removed >= SUPPRESSED_SHARE),
            "same_init_trait_loss_at_most_cross_model": bool(same["final_trait_loss"] <= no_transfer_trait_loss),
            "cross_model_trait_loss_at_most_cross_model": bool(cross["final_trait_loss"] <= no_transfer_trait_loss),
        }
    return {
        "outcomes": outcomes,
        "unprojected_cross_model_final_trait_loss": no_transfer_trait_loss,
        "verdicts": verdicts,
        # The answer: the edits that stop the same-init student learning digits and leave its
        # MNIST loss no higher than that of a student that never learned them.
        "suppresses_transfer_without_pushing_trait_loss_up": [
            p
            for p, verdict in verdicts.items()
            if verdict["suppresses_transfer"] and verdict["same_init_trait_loss_at_most_cross_model"]
        ],
    }


def table(results: dict) -> str:
    """The results of `run` as the command prints them: each student's end and the claims, one line each."""
    header = ("student", "accuracy", "trait loss", "projected", "removed", "grad cos", "last-epoch distill loss")
    rows = [f"{header[0]:<26}{header[1]:>9}{header[2]:>11}{header[3]:>10}{header[4]:>9}{header[5]:>10}{header[6]:>25}"]
    for name, curves in results["curves"].items():
        rows.append(
            f"{name:<26}{results['final_test_accuracy'][name]['mean']:>9.3f}{curves['trait_loss'][-1]:>11.3f}"
            f"{np.mean(curves['projected']):>10.0%}{np.mean(curves['removed_fraction']):>9.4f}"
            f"{np.mean(curves['grad_cosine']):>10.4f}{np.mean(curves['loss'][-results['steps_per_epoch'] :]):>25.3e}"
        )
    rows.append(
        "accuracy and trait loss at the end; projected: share of steps edited; removed: mean share of the "
        "gradient's norm the edit removed"
    )
    aligned, by_epoch = results["claims"]["alignment"], results["claims"]["transfer_by_epoch"]
    rows.append(
        "steps whose distillation gradient descends the trait loss: "
        f"same init {aligned['same_init_share_of_steps_aligned']:.0%}, "
        f"cross-model {aligned['cross_model_share_of_steps_aligned']:.0%}; "
        "whose Adam update lowers it: "
        f"same init {aligned['same_init_share_of_updates_lowering_trait_loss']:.0%}, "
        f"cross-model {aligned['cross_model_share_of_updates_lowering_trait_loss']:.0%}"
    )
    for label, key in (
        ("accuracy gain", "accuracy_gain_per_epoch"),
        ("trait-loss drop", "trait_loss_drop_per_epoch"),
        ("cos(θS-θS0, θT-θ0) gain", "param_cosine_gain_per_epoch"),
    ):
        rows.append(f"{label} per epoch: " + (", ".join(f"{g:+.3f}" for g in by_epoch[key]) or "none (one epoch)"))
    if "projection" in results["claims"]:
        answer = results["claims"]["projection"]["suppresses_transfer_without_pushing_trait_loss_up"]
        rows.append(
            "suppresses transfer without raising the trait loss above the unprojected cross-model student's: "
            + (", ".join(answer) or "none of the projections")
        )
    rows.append(f"data: {results['data_source']}; {results['wall_seconds']:.0f} s")
    return "\n".join(rows)
