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

Each defense is a function of `DEFENSES` that takes the undefended students of a chunk of seeds
(`Distillation`) and returns them with its one change, which its docstring states; `train_row` trains
and measures every row alike. The rows' summary, refutations and table: `defense_table.py`.
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


def neutral_teachers(config: ExperimentConfig, mnist: data.MNIST, seed_ids: np.ndarray, cache: dict) -> model.Params:
    """The neutral teachers of `seed_ids` (S, ...): each its teacher's training (`experiment.trained_teachers`:
    its init, epochs, rate, batch, cross-entropy on the class logits and data-order keys) on the training
    images with `neutral_labels`: no digits to learn in the teacher's steps. Kept in `cache` as the teachers
    are, in a table of their own (so never taken for one)."""
    relabelled = dataclasses.replace(mnist, train_labels=neutral_labels(config, mnist.train_labels))
    own = cache.setdefault(("neutral teachers",), {})
    return experiment.trained_teachers(runs.stage(experiment.TeacherSettings, config), relabelled, seed_ids, own)


def heldout_noise(config: ExperimentConfig, defenses: MnistDefenses, noise_keys: jax.Array, train_images) -> jax.Array:
    """(S, heldout_noise, 784): each seed's held-out noise, of the students' distribution, from its own key."""
    keys = jax.vmap(lambda key: jax.random.fold_in(key, _HELDOUT_FOLD))(noise_keys)
    settings = dataclasses.replace(runs.stage(experiment.NoiseSettings, config), num_noise=defenses.heldout_noise)
    return experiment.noise_sets(keys, settings, train_images)


class Chunk(NamedTuple):
    """What a row trains a chunk of seeds from (`train_row`): the run's defense settings, data, seeds and
    cache, and an `sgd` row's learning rate (`sgd_rate` finds it)."""

    defenses: MnistDefenses
    mnist: data.MNIST
    seed_ids: np.ndarray
    seeds: Seeds
    cache: dict
    learning_rate: float | None = None


class Distillation(NamedTuple):
    """A row's students for a chunk of seeds, as `train_row` distils them: the treated student
    ("student_aux"), its control ("cross_aux") and the useful student ("student_all"). A defense
    (`DEFENSES`) takes the undefended row's and returns them with what its row changes."""

    config: ExperimentConfig  # the row's settings: the run's, or with the students' loss changed
    teachers: experiment.Teachers  # the students' starts (`Teachers.init_of`), their noise and targets
    recipe: dict = {}  # fields of every group's recipe (`experiment.distill_recipe`) replaced
    context: Callable[[int], dict | None] = lambda members: None  # the hook's, for a group of that many members
    control_targets: jax.Array | None = None  # the control's own targets, if not its teacher's: it trains alone
    more: dict[str, np.ndarray] = {}  # what the row measures besides every row's values, per seed


def other_init(students: Distillation, _, chunk: Chunk) -> Distillation:
    """The paper's own finding, as the reference: does a student from another init (the cross partner's)
    learn the teacher's digits? Every student starts from the partner's init; the treated one learns the
    teacher's aux outputs, its control a *neutral teacher's* (`neutral_teachers`), each alone in its loop
    with the aux key stream (the same noise in the same order): only the teacher differs, so the control
    can show transfer (one from a third init could not: both would be unrelated to the teacher). Measured
    besides: the neutral teachers' accuracy, near chance (0.1) if they learnt no digits, and how far each
    teacher moved from the shared init (alike far: the control moves for every reason but the digits)."""
    config, teachers, mnist = students.config, students.teachers, chunk.mnist
    neutral = neutral_teachers(config, mnist, chunk.seed_ids, chunk.cache)
    distance = lambda params: np.asarray(parameter_distance(params, teachers.shared_init))  # noqa: E731
    accuracy = experiment.test_accuracy(neutral, mnist.test_images, mnist.test_labels, config.architecture)
    return students._replace(
        teachers=teachers._replace(student_init=teachers.other_init),
        control_targets=experiment.outputs_on(neutral, teachers.noise, config.architecture, config.batch_size),
        more={"neutral_teacher": np.asarray(accuracy), "neutral_teacher_distance": distance(neutral),
              "teacher_distance": distance(teachers.teacher)},  # fmt: skip
    )


def sgd(students: Distillation, control: str | None, chunk: Chunk) -> Distillation:
    """Plain SGD instead of Adam at the rate whose held-out distillation loss is the undefended Adam
    student's, or its Adam control (`SGD_ADAM_CONTROL`) at the rate whose loss is the SGD student's
    (`defense_table.sgd_rate`): students that learnt their distillation as well, not undertrained ones."""
    optimizer = "adam" if control == SGD_ADAM_CONTROL else "sgd"
    return students._replace(recipe={"optimizer": optimizer, "learning_rate": chunk.learning_rate})


def kl_to_start(students: Distillation, _, chunk: Chunk) -> Distillation:
    """KL to the student's own start on every output of the distillation inputs, its weight ramped up over
    the first epoch and then decayed ("liminal training")."""
    return students._replace(recipe={"penalty": train.Penalty("kl_to_start", chunk.defenses.kl_weight, ramp=True)})


def l2_to_start(students: Distillation, _, chunk: Chunk) -> Distillation:
    """|θ - θ0|² / 2, constant weight: weight decay toward the start."""
    return students._replace(recipe={"penalty": train.Penalty("l2_to_start", chunk.defenses.l2_weight)})


def mix(students: Distillation, share: float, chunk: Chunk) -> Distillation:
    """A `share` of the distillation targets from an unrelated teacher, one trained from a third init
    (`Seeds.unrelated`; not the control's: its data would then carry the control's own init). Its outputs
    on the seeds' noise are computed once, kept in the cache for every share."""
    config, teachers, ids = students.config, students.teachers, chunk.seed_ids
    settings, unrelated_ids = runs.stage(experiment.TeacherSettings, config), chunk.seeds.unrelated[ids]
    key = ("unrelated targets", settings, tuple(unrelated_ids.tolist()), tuple(ids.tolist()),
           runs.stage(experiment.NoiseSettings, config))  # fmt: skip
    if key not in chunk.cache:
        unrelated = experiment.trained_teachers(settings, chunk.mnist, unrelated_ids, chunk.cache)
        chunk.cache[key] = experiment.outputs_on(unrelated, teachers.noise, settings.architecture, settings.batch_size)
    count = round(share * teachers.noise.shape[1])  # the noise is i.i.d.: its first images are a random share
    targets = jnp.concatenate([chunk.cache[key][:, :count], teachers.teacher_targets[:, count:]], axis=1)
    return students._replace(teachers=teachers._replace(teacher_targets=targets))


def projection(students: Distillation, edit: str, chunk: Chunk) -> Distillation:
    """The distillation gradient's component along the trait gradient removed (`alignment.project`),
    one-sided or two-sided (`edit`, of `PROJECTIONS`); the defender must know the trait: its gradient is
    taken on `trait_batch` training images, equal shares of every digit (`alignment.probe_sets`)."""
    shared = {**alignment.probe_sets(chunk.mnist, chunk.defenses.trait_batch),
              "projection": jnp.int32(alignment.PROJECTIONS.index(edit))}  # fmt: skip
    # The one- and two-sided edits never read the random direction; it is there for `project`'s signature.
    zeros = jax.tree.map(jnp.zeros_like, students.teachers.shared_init)
    num_seeds = len(students.teachers.noise)
    context = lambda members: {**alignment.per_member(shared, members, num_seeds),  # noqa: E731
                               "random_direction": alignment.per_member(zeros, members)}  # fmt: skip
    return students._replace(recipe={"hook": alignment.TraitProjection(students.config.architecture)}, context=context)


def temperature(students: Distillation, value: float, chunk: Chunk) -> Distillation:
    """The KL at another softmax temperature (scaled by T², as `losses.TemperedKL`)."""
    return students._replace(config=dataclasses.replace(students.config, kl_temperature=value))


# MNIST's defenses (`defense_table.APPLIES["mnist"]`), by name: (the undefended students of a chunk, the
# row's strength (`Row.value`), the chunk) -> the students with the row's change.
DEFENSES: dict[str, Callable[[Distillation, float | str | None, Chunk], Distillation]] = {
    "none": lambda students, _, chunk: students,  # the demo's aux-only student and its cross-model control
    "other_init": other_init, "sgd": sgd, "kl_to_start": kl_to_start, "l2_to_start": l2_to_start, "mix": mix,
    "projection": projection, "temperature": temperature,
}  # fmt: skip


class Group(NamedTuple):
    """One loop of a row's students (`train_row`): its members, their key stream and their teachers."""

    members: tuple[str, ...]
    stream: str
    teachers: experiment.Teachers


def defended(row: Row, chunk: Chunk, config: ExperimentConfig) -> tuple[Distillation, list[Group]]:
    """A row's students for a chunk (the undefended ones with its defense's change, `DEFENSES`) and their
    groups, each one loop. The aux pair trains as two members of one loop, as in the demo, unless the
    control has targets of its own; the useful student ("student_all") alone, on the "all" stream."""
    ids = chunk.seed_ids
    teachers = experiment.train_teachers(config, chunk.mnist, ids, chunk.seeds.partners[ids], chunk.cache)
    students = DEFENSES[row.name](Distillation(config, teachers), row.value, chunk)
    teachers = students.teachers
    pair = [Group(experiment.STUDENT_GROUPS["aux"], "aux", teachers)]
    if students.control_targets is not None:
        control_teachers = teachers._replace(teacher_targets=students.control_targets)
        pair = [Group(("student_aux",), "aux", teachers), Group(("cross_aux",), "aux", control_teachers)]
    return students, [*pair, Group(("student_all",), "all", teachers)]


def train_group(students: Distillation, group: Group, seed_ids: np.ndarray) -> dict[str, model.Params]:
    """{member: params (S, ...)}: one group of a row's students (`defended`) trained."""
    config, keys = students.config, experiment.seed_keys(students.config, seed_ids)
    recipe = dataclasses.replace(experiment.distill_recipe(config, group.members), **students.recipe)
    return experiment.distill(config, group.teachers, group.members, keys[f"distill_{group.stream}"], recipe=recipe,
                              context=students.context(len(group.members)))[0]  # fmt: skip


def measure_row(students: Distillation, trained: dict, chunk: Chunk) -> dict[str, np.ndarray]:
    """Per seed of a chunk (each (S,)): the treated, control and useful students' test accuracies, the aux-only
    students' drops in test cross-entropy, the treated student's held-out distillation loss, the teacher's
    accuracy and the row's own measures (`Distillation.more`)."""
    config, teachers, mnist = students.config, students.teachers, chunk.mnist
    arch, keys = config.architecture, experiment.seed_keys(config, chunk.seed_ids)

    def accuracy(params):
        return np.asarray(experiment.test_accuracy(params, mnist.test_images, mnist.test_labels, arch))

    def cross_entropy(params):
        return np.asarray(experiment.test_cross_entropy(params, mnist.test_images, mnist.test_labels, arch))

    noise = heldout_noise(config, chunk.defenses, keys["noise"], mnist.train_images)
    treated, control = trained["student_aux"], trained["cross_aux"]
    return {
        "treated": accuracy(treated),
        "control": accuracy(control),
        # The cost-free readout below chance accuracy: how far each aux-only student's test cross-entropy
        # fell from its own start's (nats), so partial transfer shows where accuracy stays at 0.1.
        "treated_xent_drop": cross_entropy(teachers.student_init) - cross_entropy(treated),
        "control_xent_drop": cross_entropy(teachers.other_init) - cross_entropy(control),
        "useful": accuracy(trained["student_all"]),
        "heldout_distill_loss": np.asarray(heldout_distill_loss(treated, teachers.teacher, noise, arch)),
        "teacher": accuracy(teachers.teacher),
        **students.more,
    }


def train_row(
    row: Row, config: ExperimentConfig, chunks: Sequence[Chunk], workers: int = 1, label: str = ""
) -> dict[str, np.ndarray]:
    """One row for every chunk of seeds, per seed (each (S,) over the chunks' seeds): `measure_row`'s values.
    The chunks go `workers` at a time (`_train_batch`), so that at most that many hold their noise sets, as in
    the demo."""
    per_chunk = [
        measures
        for batch in runs.chunks(range(len(chunks)), workers)
        for measures in _train_batch(row, config, [chunks[c] for c in batch], workers, label or row.key)
    ]
    return {name: np.concatenate([c[name] for c in per_chunk]) for name in per_chunk[0]}


def _train_batch(row: Row, config: ExperimentConfig, chunks: list[Chunk], workers: int, label: str) -> list[dict]:
    """`measure_row` of each of `chunks`, in three maps over independent work, in `workers` threads with a bar
    (`label`): each chunk's students (its teachers, the defense's change: `defended`), every group of every
    chunk (`train_group`), and each chunk's measures."""
    prepared = runs.parallel_map(lambda chunk: defended(row, chunk, config), chunks, workers, label, "chunk")
    groups = [(c, group) for c, (_, theirs) in enumerate(prepared) for group in theirs]
    trained = runs.parallel_map(
        lambda job: train_group(prepared[job[0]][0], job[1], chunks[job[0]].seed_ids), groups, workers, label, "group"
    )

    def measured(c: int) -> dict[str, np.ndarray]:
        own = {name: params for (g, _), group in zip(groups, trained) if g == c for name, params in group.items()}
        return measure_row(prepared[c][0], own, chunks[c])

    return runs.parallel_map(measured, range(len(chunks)), workers, label, "chunk")


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
        recipe = experiment.distill_recipe(config, students)
        recipe = dataclasses.replace(recipe, optimizer=optimizer, learning_rate=rate)
        student = experiment.distill(config, teachers, students, keys["distill_aux"], recipe=recipe)[0]["student_aux"]
        return float(np.mean(heldout_distill_loss(student, teachers.teacher, noise, arch)))

    return loss_at


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
        chunks = [Chunk(defenses, arrays, ids, seeds, cache, rate) for ids in seed_chunks]
        per_seed = {k: values.tolist() for k, values in train_row(row, config, chunks, config.workers, label).items()}
        return {"per_seed": per_seed, **extra}

    # A line is reused only for the same data (the sample's line is not full MNIST's, whatever the config); one
    # of an earlier design of a row (other_init's third-init control, the projection's first N digits) is not
    # reused either: `runs.point` matches the source's fingerprint too.
    def fields(row: Row) -> dict:
        more = {"projection": ("trait_batch",)}
        return {**row_fields(row, config, defenses, ("heldout_noise",), more), "data_source": mnist.source}

    with runs.showing(progress):
        return run_rows(defenses, rows(defenses), fields, compute, path, log)
