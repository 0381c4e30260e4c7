"""What stops subliminal learning on MNIST: the proposed defenses, side by side, each with what it costs.

A defense is a small change to the students' distillation, never a new experiment: the
same teachers, noise, keys and loop as the demo (`experiment.py`), with one thing changed.
Each *row* (a defense at one strength) trains, for every seed, three students on the
same defended data:

- the treated student: the aux-only student from the teacher's own init, as in the demo;
- its control: the aux-only student from another init (the demo's cross-model student), on
  the same defended data with the same defense, so it can move for every reason the
  treated one moves except the shared init;
- the useful student: the all-logits student from the teacher's init under the same
  defense. Distilling the teacher's class logits is the useful task, so its test accuracy
  is what the defense costs.

The row's *effect* is treated minus control accuracy, paired by seed; its *transfer
remaining* is the effect divided by the undefended (`none`) effect of the same seed, with a
Student's t interval over seeds. Its other cost is the treated student's distillation loss
(KL of the aux logits' softmaxes) on held-out noise: how well it still learnt what it was
distilled on.

Rows, by defense (`defense_table.DEFENSES`):

- none: the demo's aux-only student and its cross-model control, unchanged; `remaining` 1.
- other_init: the paper's own finding, as the reference: does a student from another init (the
  cross partner's) learn the teacher's digits? The treated student starts from the partner's init
  and is distilled on the teacher's aux outputs; its control starts from the same init and is
  distilled on a *neutral teacher's* (`neutral_teachers`: the teacher's init and recipe, trained on
  the training labels permuted across the training set: the teacher's recipe and steps without digit
  knowledge; how far each teacher moves from the init is measured, `neutral_teacher_distance` and
  `teacher_distance`), with the same noise in the same order and the same loop: the pair
  differs only in which teacher wrote the targets. Another init does *not* stop transfer if the
  treated student ends above its control, the paired effect's interval above 0; this control can
  show it, as `none`'s does (a control from a third init could not: both students would be
  unrelated to the teacher, their expected difference 0 whatever another init learns).
- sgd: plain SGD instead of Adam, at the learning rate whose held-out distillation loss is
  the undefended Adam student's (a grid on the first seeds, extended where no two rates bracket
  it, interpolated between the bracketing rates: `defense_table.tuned_rate`), so the row compares students that
  learnt their distillation as well, not undertrained ones; its Adam control is matched alike to
  the SGD student's loss. Where no rate brackets the target, or the row's mean held-out loss ends
  more than 10% from the target's, the row is unmatched and draws no conclusion
  (`defense_table.optimizer_match`). The rows' summary, refutations and table: `defense_table.py`.
- kl_to_start: KL to the student's own start on every output of the distillation inputs,
  its weight ramped up over the first epoch and then decayed ("liminal training").
- l2_to_start: |θ - θ0|² / 2, constant weight: weight decay toward the start.
- mix: a share of the distillation targets comes from an unrelated teacher, one trained from
  a third init (not the control's: its data would then carry the control's own init).
- projection: the distillation gradient's component along the trait gradient removed
  (`alignment.project`), one-sided or two-sided; the defender must know the trait.
- temperature: the KL at another softmax temperature (scaled by T², as `losses.TemperedKL`).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from subliminal_mnist import alignment, data, experiment, lora, losses, model, runs, train
from subliminal_mnist.defense_table import (
    SGD_ADAM_CONTROL,
    DefenseSettings,
    Row,
    row_fields,
    rows,
    run_rows,
    sgd_rate,
)
from subliminal_mnist.experiment import ExperimentConfig
from subliminal_mnist.runs import ConfigError, config_field

# The projection defense's edits: the trait direction removed when aligned, or always. (The
# alignment probe's random-direction control is a control of the edit, not a defense.)
PROJECTIONS = ("one_sided", "two_sided")
# The three students of every row: the aux pair trains as two members of one loop, as in the demo.
_AUX_PAIR = experiment.STUDENT_GROUPS["aux"]
_USEFUL = ("student_all",)
# The held-out noise's key: the seed's noise key folded with a number no other use of it reaches.
_HELDOUT_FOLD = 2**31 - 2
# The neutral teacher's labels (`neutral_labels`): the training labels permuted once, by the key
# fold_in(key(config.seed), _NEUTRAL_LABELS_FOLD). Seed s's streams come from fold_in(key(config.seed),
# s) and a run's seed ids stay below 2 x seeds (`runs.unrelated_seeds`), so no seed's key is this one.
_NEUTRAL_LABELS_FOLD = 2**31 - 3


@dataclasses.dataclass(frozen=True)
class MnistDefenses(DefenseSettings):
    """Which defenses `defend mnist` runs and at what strengths. The CLI is generated from it."""

    setting: ClassVar[str] = "mnist"

    projections: tuple[str, ...] = config_field(
        ("one_sided", "two_sided"), "projection: the edits of the distillation gradient, one row each"
    )
    heldout_noise: int = config_field(10_000, "noise images, never trained on, for the held-out distillation loss")
    trait_batch: int = config_field(
        1024, "projection: training images in the trait gradient, a fixed stratified subset (equal shares of digits)"
    )

    def __post_init__(self):
        super().__post_init__()
        unknown = [p for p in self.projections if p not in PROJECTIONS]
        if unknown:
            raise ConfigError(f"no projection {unknown[0]!r}; they are {', '.join(PROJECTIONS)}")
        runs.check_fields(self, at_least_one=("heldout_noise", "trait_batch"))

    @property
    def strengths(self) -> dict[str, tuple]:
        return {**super().strengths, "projection": self.projections}


class Seeds(NamedTuple):
    """Who is whose: seed s's cross partner (the control's init) and unrelated seed (a third model's)."""

    partners: np.ndarray
    unrelated: np.ndarray

    @classmethod
    def of(cls, config: ExperimentConfig) -> "Seeds":
        return cls(runs.cross_partners(config.seeds, config.seed), runs.unrelated_seeds(config.seeds))


@functools.partial(jax.jit, static_argnames="arch")
def heldout_distill_loss(student: model.Params, teacher: model.Params, noise: jax.Array, arch: model.Architecture):
    """Each seed's mean KL (temperature 1, the paper's loss) of its aux logits' softmax to the teacher's,
    on noise it never trained on: student, teacher (S, ...), noise (S, n, 784) -> (S,)."""
    kl = losses.distillation_loss("kl")
    mask = arch.output_mask(arch.aux_indices)
    return jax.vmap(lambda s, t, x: jnp.mean(kl(arch.apply(s, x), arch.apply(t, x), mask)))(student, teacher, noise)


def neutral_labels(config: ExperimentConfig, labels: jax.Array) -> jax.Array:
    """The training `labels` permuted once across the training set, by a fixed key derived from the
    run's base seed (`_NEUTRAL_LABELS_FOLD`): the same labels in other places, so no image keeps a
    relation to its label beyond chance. One permutation per run, shared by its seeds, as the
    teachers share one training set; the same on every call."""
    key = jax.random.fold_in(jax.random.key(config.seed), _NEUTRAL_LABELS_FOLD)
    # Not the identity but with probability 1/N! (N = 60,000 on MNIST, 4,000 on the sample).
    return jnp.asarray(labels)[jax.random.permutation(key, len(labels))]


def neutral_teachers(
    config: ExperimentConfig,
    mnist: data.MNIST,
    seed_ids: np.ndarray,
    teachers: experiment.Teachers,
    cache: dict,
) -> model.Params:
    """The neutral teachers of `seed_ids` (S, ...): each from its teacher's init (`shared_init`) by its
    teacher's recipe (`experiment.trained_teachers`: the epochs, rate, batch, cross-entropy on the class
    logits and the teacher's data-order keys), on the training images with `neutral_labels`. It learns
    no digits (test accuracy near chance, 0.1) in the teacher's steps; how far it moves from its init
    against the teacher is the other_init row's `neutral_teacher_distance`. Kept in `cache` as the teachers are, in a table of their own (so never taken for one)."""
    relabelled = dataclasses.replace(mnist, train_labels=neutral_labels(config, mnist.train_labels))
    keys = experiment.seed_keys(config, seed_ids)["teacher"]
    own = cache.setdefault(("neutral teachers",), {})
    return experiment.trained_teachers(config, relabelled, seed_ids, teachers.shared_init, keys, own)


def heldout_noise(config: ExperimentConfig, defenses: MnistDefenses, noise_keys: jax.Array, train_images) -> jax.Array:
    """(S, heldout_noise, 784): each seed's held-out noise, of the students' distribution, from its own key."""
    keys = jax.vmap(lambda key: jax.random.fold_in(key, _HELDOUT_FOLD))(noise_keys)
    return experiment.noise_sets(keys, dataclasses.replace(config, num_noise=defenses.heldout_noise), train_images)


def _projection_context(defenses: MnistDefenses, mnist: data.MNIST, teachers, projection: str, members: int):
    num_seeds = len(teachers.noise)
    shared = {
        **alignment.probe_sets(mnist, defenses.trait_batch),
        "projection": jnp.int32(alignment.PROJECTIONS.index(projection)),
    }
    # The one- and two-sided edits never read the random direction; it is there for `project`'s signature.
    zeros = jax.tree.map(jnp.zeros_like, teachers.shared_init)
    return {
        **alignment.per_member(shared, members, num_seeds),
        "random_direction": alignment.per_member(zeros, members),
    }


def train_row(
    row: Row,
    config: ExperimentConfig,
    defenses: MnistDefenses,
    mnist: data.MNIST,
    seed_ids: np.ndarray,
    seeds: Seeds,
    teacher_cache: dict | None = None,
    learning_rate: float | None = None,
) -> dict[str, np.ndarray]:
    """One row for a chunk of seeds: per seed (each (S,)), the treated, control and useful students'
    test accuracies, the treated student's held-out distillation loss, and the teacher's accuracy (and
    for other_init the neutral teacher's, "neutral_teacher").

    `learning_rate` is the optimizer's for an `sgd` row (`sgd_rate` finds it).
    """
    arch = config.architecture
    cache = {} if teacher_cache is None else teacher_cache
    if row.name == "temperature":
        config = dataclasses.replace(config, kl_temperature=row.value)
    teachers = experiment.train_teachers(config, mnist, seed_ids, seeds.partners[seed_ids], cache)
    keys = experiment.seed_keys(config, seed_ids)
    # How a group of students trains, given its members: the experiment's recipe, with the row's change.
    recipe: Callable[[Sequence[str]], train.Recipe] = functools.partial(experiment.distill_recipe, config)
    context: Callable[[int], dict | None] = lambda members: None
    # The groups of students, each one loop: (its teachers, None for the row's own; its members; its
    # key stream). The treated student is "student_aux", its control "cross_aux".
    groups = {"aux": (None, _AUX_PAIR, "aux"), "all": (None, _USEFUL, "all")}
    if row.name == "other_init":
        # Every student starts from the partner's init. The treated one learns the teacher's aux outputs,
        # the control the neutral teacher's, each alone in its loop (their targets differ) with the aux
        # key stream: the same noise in the same order.
        neutral = neutral_teachers(config, mnist, seed_ids, teachers, cache)
        control = teachers._replace(
            teacher_targets=experiment.outputs_on(neutral, teachers.noise, arch, config.batch_size)
        )
        teachers = teachers._replace(student_init=teachers.other_init)
        groups = {"aux": (None, ("student_aux",), "aux"), "neutral": (control, ("cross_aux",), "aux"),
                  "all": (None, _USEFUL, "all")}  # fmt: skip
    elif row.name == "mix":
        # The unrelated teachers' outputs on these seeds' noise: computed once, shared by every share.
        unrelated_ids = seeds.unrelated[seed_ids]
        mixed_key = ("unrelated targets", experiment.teacher_key(config, unrelated_ids), tuple(seed_ids.tolist()),
                     config.noise, config.noise_length_scale, config.num_noise)  # fmt: skip
        if mixed_key not in cache:
            unrelated_keys = experiment.seed_keys(config, unrelated_ids)
            unrelated_init = experiment.init_seeds(unrelated_keys["init"], arch)
            unrelated = experiment.trained_teachers(
                config, mnist, unrelated_ids, unrelated_init, unrelated_keys["teacher"], cache
            )
            cache[mixed_key] = experiment.outputs_on(unrelated, teachers.noise, arch, config.batch_size)
        mixed = cache[mixed_key]
        count = round(row.value * teachers.noise.shape[1])  # the noise is i.i.d.: its first images are a random share
        targets = jnp.concatenate([mixed[:, :count], teachers.teacher_targets[:, count:]], axis=1)
        teachers = teachers._replace(teacher_targets=targets)
    elif row.name == "sgd":
        # The SGD row proper, or its Adam control: Adam at the rate that distils as (un)well as SGD did.
        optimizer = "adam" if row.value == SGD_ADAM_CONTROL else "sgd"
        change = {"optimizer": optimizer, "learning_rate": learning_rate}
        recipe = lambda members: dataclasses.replace(experiment.distill_recipe(config, members), **change)
    elif row.name in ("kl_to_start", "l2_to_start"):
        weight = defenses.kl_weight if row.name == "kl_to_start" else defenses.l2_weight
        penalty = train.Penalty(row.name, weight, ramp=row.name == "kl_to_start")
        recipe = lambda members: dataclasses.replace(experiment.distill_recipe(config, members), penalty=penalty)
    elif row.name == "projection":
        hook = alignment.TraitProjection(arch)
        recipe = lambda members: dataclasses.replace(experiment.distill_recipe(config, members), hook=hook)
        context = lambda members: _projection_context(defenses, mnist, teachers, row.value, members)

    students = {}
    for own, members, stream in groups.values():  # one group after the other: the run's threads are its chunks
        students |= experiment.distill(
            config, teachers if own is None else own, members, keys[f"distill_{stream}"],
            recipe=recipe(members), context=context(len(members)),
        )[0]  # fmt: skip

    def accuracy(params):
        return np.asarray(experiment.test_accuracy(params, mnist.test_images, mnist.test_labels, arch))

    def cross_entropy(params):
        return np.asarray(experiment.test_cross_entropy(params, mnist.test_images, mnist.test_labels, arch))

    noise = heldout_noise(config, defenses, keys["noise"], mnist.train_images)
    more = {}
    if row.name == "other_init":
        # Its neutral teachers' accuracy, near chance (0.1) if they learnt no digits, and how far each
        # teacher moved from the shared init (the neutral teacher's control moves for every reason
        # the treated student's teacher moves if the two moved alike far).
        more = {
            "neutral_teacher": accuracy(neutral),
            "neutral_teacher_distance": np.asarray(parameter_distance(neutral, teachers.shared_init)),
            "teacher_distance": np.asarray(parameter_distance(teachers.teacher, teachers.shared_init)),
        }
    return {
        "treated": accuracy(students["student_aux"]),
        "control": accuracy(students["cross_aux"]),
        # The cost-free readout below chance accuracy: how far each aux-only student's test cross-entropy
        # fell from its own start's (nats), so partial transfer shows where accuracy stays at 0.1.
        "treated_xent_drop": cross_entropy(teachers.student_init) - cross_entropy(students["student_aux"]),
        "control_xent_drop": cross_entropy(teachers.other_init) - cross_entropy(students["cross_aux"]),
        "useful": accuracy(students["student_all"]),
        "heldout_distill_loss": np.asarray(
            heldout_distill_loss(students["student_aux"], teachers.teacher, noise, arch)
        ),
        "teacher": accuracy(teachers.teacher),
        **more,
    }


@jax.jit
def parameter_distance(params: model.Params, start: model.Params) -> jax.Array:
    """Each seed's Euclidean distance |θ - θ0| over every parameter: (S, ...), (S, ...) -> (S,)."""
    return jax.vmap(lambda a, b: optax.tree.norm(jax.tree.map(jnp.subtract, a, b)))(params, start)


def heldout_loss(
    config: ExperimentConfig,
    defenses: MnistDefenses,
    mnist: data.MNIST,
    seed_ids: np.ndarray,
    seeds: Seeds,
    teacher_cache: dict | None,
) -> Callable[[float, str], float]:
    """loss_at(rate, optimizer): the treated student's held-out distillation loss (mean over `seed_ids`)
    trained at that rate with that optimizer, what an `sgd` row's rate is matched on (`sgd_rate`): only
    the distillation loss decides, never the transfer. The teachers and held-out noise are made once."""
    arch = config.architecture
    teachers = experiment.train_teachers(config, mnist, seed_ids, seeds.partners[seed_ids], teacher_cache)
    keys = experiment.seed_keys(config, seed_ids)
    noise = heldout_noise(config, defenses, keys["noise"], mnist.train_images)
    students = ("student_aux",)

    def loss_at(rate: float, optimizer: str) -> float:
        recipe = dataclasses.replace(experiment.distill_recipe(config, students), optimizer=optimizer, learning_rate=rate)
        student = experiment.distill(config, teachers, students, keys["distill_aux"], recipe=recipe)[0]["student_aux"]
        return float(np.mean(heldout_distill_loss(student, teachers.teacher, noise, arch)))

    return loss_at


def _row_fields(row: Row, config: ExperimentConfig, defenses: MnistDefenses) -> dict:
    """What a row's line must match to be reused: the setting, the row, the experiment's config and
    the defense settings the row reads. A line of an earlier design of a row (other_init's third-init
    control, the projection's first N digits) is not reused either: `runs.point` matches the source's
    fingerprint too."""
    return row_fields(row, config, defenses, ("heldout_noise", *{"projection": ("trait_batch",)}.get(row.name, ())))


def run(
    config: ExperimentConfig,
    defenses: MnistDefenses,
    mnist: data.MNIST,
    path: str | pathlib.Path | None,
    progress: bool = True,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
    teacher_cache: dict | None = None,
) -> list[dict]:
    """Every row, trained or read back from `path` (JSON lines, one per finished row; see
    `runs.Lines`): a run killed at any moment resumes at the row it was training."""
    lora.require_full(config, "defend mnist")
    seeds = Seeds.of(config)
    arrays = experiment.on_device(mnist)
    cache = {} if teacher_cache is None else teacher_cache
    chunk_size = experiment.seeds_per_chunk(config, config.num_noise or len(mnist.train_images))
    seed_chunks = list(runs.chunks(range(config.seeds), chunk_size))

    def compute(row: Row, label: str, results: list[dict]) -> dict:
        extra, rate = {}, None
        if row.name == "sgd":
            first = seed_chunks[0]
            loss_at = heldout_loss(config, defenses, arrays, first, seeds, cache)
            rate, extra = sgd_rate(row, defenses, results, first, "heldout_distill_loss", loss_at, config.workers)
        per_chunk = runs.parallel_map(
            lambda ids: train_row(row, config, defenses, arrays, ids, seeds, cache, rate),
            seed_chunks, config.workers, label, unit="chunk",
        )  # fmt: skip
        per_seed = {name: np.concatenate([c[name] for c in per_chunk]).tolist() for name in per_chunk[0]}
        return {"per_seed": per_seed, **extra, "data_source": mnist.source}

    with runs.showing(progress):
        return run_rows(defenses, rows(defenses), lambda row: _row_fields(row, config, defenses), compute, path, log)
