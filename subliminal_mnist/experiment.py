"""The paper's MNIST experiment with all its controls, for many seeds at once.

Cloud, Le et al., "Subliminal Learning" (arXiv 2507.14805), Fig. 10 in v1:

- reference:   the untrained shared initialization;
- teacher:     trained on MNIST, cross-entropy on the 10 class logits only;
- student_aux: from the teacher's own init, distilled on the teacher's auxiliary
               logits only, on uniform-noise images only;
- student_all: the same on all logits;
- cross_aux / cross_all: the same two students, but starting from *another
               seed's* init. Seeds are paired by a derangement, so no
               cross-model student ever starts from its own teacher's init.

Every stage trains all seeds of a chunk at once through the one loop in
`train.py`; chunks bound memory (each seed holds its own noise set) and change
numbers only by the float rounding of batched against single matmuls. The
same-init and the cross-model student of each output set train together, as
two members of one loop on the same noise in the same order: they differ only
in where they start. Chunks run in concurrent threads (`workers`, the run's one
`runs.parallel_map`), which changes the speed, not the numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import sys
import time
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from subliminal_mnist import data, lora, losses, model, runs, theorem, train
from subliminal_mnist.runs import ConfigError, config_field

CONDITIONS = ("reference", "teacher", "student_aux", "student_all", "cross_aux", "cross_all")
CONDITION_LABELS = {
    "reference": "Reference",
    "teacher": "Teacher",
    "student_aux": "Student (aux only)",
    "student_all": "Student (all logits)",
    "cross_aux": "Cross-model (aux only)",
    "cross_all": "Cross-model (all logits)",
}
# The students that train together, as members of one `fit`: same noise, same data
# order, their own inits. Each pair shares its outputs, hence one objective; the two
# objectives differ only in their output mask, so both pairs run one compiled loop.
STUDENT_GROUPS = {"aux": ("student_aux", "cross_aux"), "all": ("student_all", "cross_all")}
# Which layers of the teacher's init the same-init students start from (`shared_layers`); the
# others come from a fresh init. "readout" is the last layer, "hidden" all the others.
SHARED_LAYERS = ("all", "readout", "hidden", "none")
# Independent randomness of one seed; each gets its own key split from the seed's key.
_STREAMS = ("init", "teacher", "noise", "distill_aux", "distill_all")


# On the bundled 4,000-digit sample the paper's settings see too little: 5 epochs
# are 20 Adam steps for the teacher, and a 4,000-image noise set is too small a
# probe of the teacher's function for the aux-only student to learn digits
# (measured, 3 seeds: teacher 0.79, aux-only student 0.11). So on the sample the
# teacher takes the paper's number of steps (75 epochs x 4 steps ~ 5 x 59) and
# each student sees the paper's 60,000 noise images. Options given by the user win.
SAMPLE_PRESET = {"teacher_epochs": 75, "num_noise": 60_000}
SAMPLE_WARNING = (
    "WARNING: running on the 5,000-digit offline sample, NOT full MNIST.\n"
    "WARNING: numbers are indicative only and not comparable with the paper's; "
    f"settings adjusted for the sample: {SAMPLE_PRESET}"
)


# Named sets of settings, applied under the options a user gives (`demo --preset NAME`).
# "strongest": the strongest subliminal transfer measured here, still with 3 auxiliary logits,
# on uniform noise only (docs/sweeps.md, "A recipe past 90%", has each change and its gain). Squared
# error passes the aux logits' values, not only their softmax; a narrower net, a 10-epoch
# teacher (a 20-epoch one transfers less) and 16x the distillation make up the rest.
PRESETS = {
    "strongest": {"distill_loss": "mse", "hidden_sizes": (128, 128), "teacher_epochs": 10, "student_epochs": 80},
}


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """The experiment's settings; the defaults are the paper's. The CLI is generated from it."""

    seeds: int = config_field(25, "independent seeds (init, data order, noise), trained at once with vmap")
    seed: int = config_field(0, "base random seed; seed i uses fold_in(key(seed), i)")
    hidden_sizes: tuple[int, ...] = config_field((256, 256), "hidden layer widths")
    num_aux: int = config_field(3, "auxiliary logits, never trained by the teacher", flag="aux")
    teacher_epochs: int = config_field(5, "teacher epochs on MNIST")
    student_epochs: int = config_field(5, "student epochs on noise")
    batch_size: int = config_field(1024, "minibatch size")
    learning_rate: float = config_field(3e-4, "Adam learning rate")
    distill_loss: str = config_field(
        "kl", "distillation loss: KL of softmaxes (paper) or squared error of logits", choices=("kl", "mse")
    )
    kl_temperature: float = config_field(
        1.0, "temperature of both softmaxes of the KL loss (paper: 1); the loss is scaled by T^2"
    )
    noise: str = config_field(
        "uniform",
        "student inputs: uniform in [-1, 1] (paper), standard Gaussian, spatially correlated Gaussian, "
        "or MNIST training images without their labels",
        choices=data.NOISE_DISTRIBUTIONS,
    )
    noise_length_scale: float = config_field(
        2.0, "correlated noise: std, in pixels, of the blur that correlates neighbouring pixels"
    )
    num_noise: int = config_field(0, "noise images per seed; 0 means as many as the training set (paper)")
    # "How shared must the init be?" The fresh parts are the partner seed's init, the cross-model
    # students' start, so that a perturbation of 1 (or nothing shared) is the cross-model student.
    init_perturbation: float = config_field(
        0.0,
        "same-init students start from sqrt(1-a^2) x the teacher's init + a x a fresh init: "
        "0 is the teacher's own init (paper), 1 a full re-draw",
    )
    shared_layers: str = config_field(
        "all",
        "layers of the teacher's init the same-init students start from; the others come from a fresh init",
        choices=SHARED_LAYERS,
    )
    # Low-rank adapters (`lora.py`, theory/README.md section 9): either model may be fine-tuned through a
    # rank-R adapter on every kernel (biases frozen) instead of in all its parameters.
    teacher_params: str = config_field(
        "full", "how the teacher is fine-tuned from its init: full (paper), or lora:R, a rank-R adapter on every kernel"
    )
    student_params: str = config_field(
        "full", "how the students are fine-tuned from their inits: full (paper), or lora:R"
    )
    # At the paper's rate an adapter barely moves in 5 epochs (a rank-4 teacher: 0.35 test accuracy, 2 seeds);
    # LoRA is usually trained at about 10x the rate of full fine-tuning, the rule here (docs/lora.md).
    adapter_rate_factor: float = config_field(
        10.0, "a model fine-tuned through an adapter trains at this multiple of the learning rate"
    )
    adapter_init: str = config_field(
        "shared",
        "a LoRA student's A: shared, starting with the LoRA teacher's columns (part of the shared init), "
        "or own, drawn apart; both the same for a full teacher",
        choices=("shared", "own"),
    )
    conditions: tuple[str, ...] = config_field(
        CONDITIONS,
        "conditions to train and report; students train in pairs (student_X with cross_X), "
        "the reference and the teacher always",
    )
    # On a CPU, XLA's batched (vmapped) matmuls run slower than single ones: one epoch of one
    # seed took 0.60 s alone and 0.78 s per seed inside a batch of 5 (2 cores). So 0 (the
    # default) chooses from the backend (`seeds_per_chunk`): one seed per device on a CPU, as
    # many as fit in a quarter of its memory on a GPU or TPU (an H100 took all 25 at once).
    seeds_per_chunk: int = config_field(
        0,
        "seeds trained together (vmap); bounds memory; 0: chosen from the backend; results equal up to float rounding",
    )
    devices: int = config_field(
        0, "local devices a chunk's seeds are split across (jax.sharding); 0: all; results do not depend on it"
    )
    # Chunks of seeds are independent, so they run in concurrent threads (in the demo a chunk's student groups
    # run one after the other: one level of threads). Much of a step is small matmuls and elementwise work that
    # leaves one of two cores idle; a second stream fills it. Results do not depend on this setting.
    workers: int = config_field(
        2,
        "threads for independent work: chunks of seeds (a defense row's chunks, then their groups of students; its "
        "grid rates); results do not depend on it",
    )

    def __post_init__(self):
        runs.check_fields(
            self,
            at_least_one=("seeds", "num_aux", "batch_size", "workers"),
            not_negative=("teacher_epochs", "student_epochs", "num_noise", "seeds_per_chunk", "devices"),
            positive=("learning_rate", "adapter_rate_factor", "kl_temperature", "noise_length_scale"),
        )
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ConfigError(f"hidden_sizes must be positive widths, got {self.hidden_sizes}")
        if self.distill_loss != "kl" and self.kl_temperature != 1:
            raise ConfigError(f"kl_temperature applies to distill_loss kl only, not {self.distill_loss}")
        if not 0 <= self.init_perturbation <= 1:
            raise ConfigError(f"init_perturbation must be in [0, 1], got {self.init_perturbation}")
        lora.check_parameterizations(self)
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown:
            raise ConfigError(f"no condition {unknown[0]!r}; the conditions are {', '.join(CONDITIONS)}")

    @property
    def architecture(self) -> model.Architecture:
        return model.Architecture(hidden_sizes=tuple(self.hidden_sizes), num_aux=self.num_aux)

    @property
    def student_groups(self) -> tuple[str, ...]:
        """The student groups (`STUDENT_GROUPS`) that train: those with a condition asked for."""
        return tuple(g for g, members in STUDENT_GROUPS.items() if set(members) & set(self.conditions))

    @property
    def reported(self) -> tuple[str, ...]:
        """The conditions a run trains and reports, in the order of `CONDITIONS`."""
        trained = {"reference", "teacher", *(m for g in self.student_groups for m in STUDENT_GROUPS[g])}
        return tuple(c for c in CONDITIONS if c in trained)


@dataclasses.dataclass(frozen=True)
class TeacherSettings:
    """All that training a teacher reads of an `ExperimentConfig` (`runs.stage`): `trained_teachers` takes only
    this and caches under it, so configs that agree on it (a sweep's points) share their teachers."""

    seed: int  # with `devices`, what the seeds' keys read (`seed_keys`)
    devices: int
    architecture: model.Architecture  # the config's property: `hidden_sizes` and `num_aux`
    teacher_epochs: int
    batch_size: int
    learning_rate: float
    teacher_params: str
    adapter_rate_factor: float | None  # None for a full teacher, which reads no adapter's rate

    def __post_init__(self):
        # So configs that differ only in the students' adapter rate share their full teachers.
        if lora.rank_of(self.teacher_params) is None:
            object.__setattr__(self, "adapter_rate_factor", None)


@dataclasses.dataclass(frozen=True)
class NoiseSettings:
    """All that drawing a seed's noise set reads of an `ExperimentConfig` (`runs.stage`, `noise_sets`)."""

    noise: str
    noise_length_scale: float
    num_noise: int


def seed_keys(config: ExperimentConfig | TeacherSettings, seed_ids: np.ndarray) -> dict[str, jax.Array]:
    """One key per seed and stream: {stream: (len(seed_ids),) keys}.

    Seed i's key is `fold_in(key(config.seed), i)`, so its numbers do not depend
    on how many seeds run beside it. The keys are split across the chunk's devices
    (`seed_sharding`); everything computed from them inherits that split, so a chunk's
    inits, teachers, noise and students all live one seed per device.
    """
    ids = jnp.asarray(seed_ids)
    sharding = seed_sharding(config, len(seed_ids))
    return _stream_keys(ids if sharding is None else jax.device_put(ids, sharding), config.seed)


def available_devices(config: ExperimentConfig) -> int:
    """The local devices the seed axis may be split across: `config.devices`, or all (0)."""
    local = jax.local_device_count()
    if config.devices > local:
        raise ConfigError(f"devices is {config.devices}, but this host has {local} {jax.default_backend()} devices")
    return config.devices or local


def seed_devices(config: ExperimentConfig, num_seeds: int) -> int:
    """How many devices a chunk of `num_seeds` seeds is split across: the most that divide it evenly."""
    most = available_devices(config)
    return max(d for d in range(1, most + 1) if num_seeds % d == 0)


def seed_sharding(config: ExperimentConfig, num_seeds: int) -> NamedSharding | None:
    """A chunk's seed axis split across its devices (a one-axis `Mesh`); None for one device."""
    count = seed_devices(config, num_seeds)
    if count == 1:
        return None
    return NamedSharding(Mesh(np.array(jax.local_devices()[:count]), ("seeds",)), PartitionSpec("seeds"))


def seeds_per_chunk(config: ExperimentConfig, num_noise: int) -> int:
    """The seeds trained together: `config.seeds_per_chunk`, or chosen from the backend (0).

    On a CPU, one seed per device (vmapped seeds run slower there than single ones). On an
    accelerator, as many per device as fit in a quarter of its memory, each seed holding its
    noise set and the teacher's outputs on it, so a GPU host trains its seeds together.
    """
    if config.seeds_per_chunk:
        return min(config.seeds_per_chunk, config.seeds)
    devices = available_devices(config)
    if jax.default_backend() == "cpu":
        return min(config.seeds, devices)
    stats = jax.local_devices()[0].memory_stats() or {}
    per_seed = num_noise * (model.INPUT_SIZE + len(config.architecture.all_indices)) * 4
    per_device = max(1, stats.get("bytes_limit", 8 * 4 * per_seed) // (4 * per_seed))
    return min(config.seeds, devices * per_device)


@functools.partial(jax.jit, static_argnames="base_seed")
def _stream_keys(seed_ids: jax.Array, base_seed: int) -> dict[str, jax.Array]:
    # Jitted as a whole: eagerly, each of its small steps compiles a program of its own.
    base = jax.random.key(base_seed)
    per_seed = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(base, i), len(_STREAMS)))(seed_ids)
    return {stream: per_seed[:, i] for i, stream in enumerate(_STREAMS)}


@functools.partial(jax.jit, static_argnames="arch")
def init_seeds(keys: jax.Array, arch: model.Architecture) -> model.Params:
    """(S,) keys -> parameters with a leading seed axis."""
    return jax.vmap(arch.init)(keys)


@functools.partial(jax.jit, static_argnames="arch")
def test_accuracy(params: model.Params, images: jax.Array, labels: jax.Array, arch: model.Architecture) -> jax.Array:
    """Accuracy of each seed's class logits; params (S, ...), images (M, 784) -> (S,)."""
    return jax.vmap(lambda p: model.accuracy(arch.apply(p, images), labels, arch.num_classes))(params)


@functools.partial(jax.jit, static_argnames="arch")
def test_cross_entropy(params: model.Params, images: jax.Array, labels: jax.Array, arch: model.Architecture):
    """Mean cross-entropy (nats) of each seed's class logits on labelled digits; params (S, ...), images
    (M, 784) -> (S,). It sees what accuracy cannot: a student still at chance accuracy whose class logits
    moved toward the digits' (below ln 10 ≈ 2.30 for a uniform guess)."""
    mask = arch.output_mask(arch.class_indices)
    return jax.vmap(lambda p: jnp.mean(losses.cross_entropy(arch.apply(p, images), labels, mask)))(params)


@functools.partial(jax.jit, static_argnames=("arch", "batch_size"))
def outputs_on(params: model.Params, inputs: jax.Array, arch: model.Architecture, batch_size: int) -> jax.Array:
    """Each seed's outputs on its own inputs: params (S, ...), inputs (S, N, 784) -> (S, N, K).

    Mapped over minibatches so the hidden activations of all N inputs never
    exist at once.
    """
    return jax.vmap(lambda p, x: jax.lax.map(lambda b: arch.apply(p, b), x, batch_size=batch_size))(params, inputs)


def noise_sets(keys: jax.Array, settings: NoiseSettings, train_images: jax.Array) -> jax.Array:
    """Each seed's fixed noise set: (S,) keys -> (S, num_noise, 784); see `data.noise_images`."""
    return _noise_sets(keys, *_noise_arguments(settings, train_images))


def _noise_arguments(settings: NoiseSettings, train_images: jax.Array) -> tuple:
    images = train_images if settings.noise == "mnist" else None  # the only noise that needs them
    return images, settings.num_noise or len(train_images), settings.noise, settings.noise_length_scale


@functools.partial(jax.jit, static_argnames=("num_images", "distribution", "length_scale"))
def _noise_sets(keys, images, num_images, distribution, length_scale):
    return jax.vmap(lambda key: data.noise_images(key, num_images, distribution, length_scale, images))(keys)


class Teachers(NamedTuple):
    """The teacher stage of a chunk of seeds; every array has the seed axis first."""

    shared_init: model.Params  # each seed's init: its teacher's start
    student_init: model.Params  # the same-init students' start: shared_init, unless perturbed or partly fresh
    other_init: model.Params  # the partner seed's init: the cross-model students' start
    teacher: model.Params
    noise: jax.Array  # (S, num_noise, 784), the students' only inputs
    teacher_targets: jax.Array  # (S, num_noise, K), the teacher's outputs on that noise
    teacher_down: model.Params | None = None  # a LoRA teacher's A (`lora.Adapter.down`, seed axis first), else None
    student_adapter: lora.Adapter | None = None  # LoRA students' A and B = 0 (seed axis first), else None

    def init_of(self, student: str) -> model.Params:
        """Where a student condition starts: "student_*" from `student_init`, "cross_*" from the partner's init."""
        return self.student_init if student.startswith("student") else self.other_init

    def inits_of(self, students: Sequence[str]) -> model.Params:
        """Several students' starts on a member axis after the seed axis: (S, len(students), ...)."""
        return train.stack_members(*[self.init_of(s) for s in students])


# A seed's adapters are drawn from its init key folded with these numbers: the streams of a run
# without adapters (and so its numbers) are those of a run before adapters existed.
_TEACHER_ADAPTER, _STUDENT_ADAPTER = 1, 2


@functools.partial(jax.jit, static_argnames=("rank", "number"))
def adapted_starts(
    params: model.Params, init_keys: jax.Array, rank: int, number: int, shared_down: model.Params | None = None
) -> lora.Adapted:
    """Parameters (S, ...) as the start of a training through rank-`rank` adapters: `lora.Adapted`
    (base, A, B = 0), each seed's A drawn from its init key folded with `number` (`_TEACHER_ADAPTER`,
    `_STUDENT_ADAPTER`), and starting with `shared_down`'s columns where given (`lora.init`)."""

    def start(params, key, shared):
        down, up = lora.init(jax.random.fold_in(key, number), params, rank, shared_down=shared)
        return lora.Adapted(params, down, up)

    return jax.vmap(start)(params, init_keys, shared_down)


@jax.jit
def _merged_seeds(params: lora.Adapted) -> model.Params:
    return jax.vmap(lora.merged)(params)


def merged(params: model.Params | lora.Adapted) -> model.Params:
    """Trained parameters (S, ...) as the model reads them: an adapted model's W0 + A B, seed by seed."""
    return _merged_seeds(params) if isinstance(params, lora.Adapted) else params


@functools.partial(jax.jit, static_argnames=("arch", "shared_layers"))
def student_inits(
    shared_init: model.Params,
    fresh_init: model.Params,
    perturbation: float,
    arch: model.Architecture,
    shared_layers: str,
) -> model.Params:
    """The same-init students' start, (S, ...): layer by layer, sqrt(1 - a^2) shared + a fresh for
    the layers in `shared_layers` (a = `perturbation`), the fresh init's for the others.

    The mix keeps each weight's variance that of an init, so a = 1 is a full re-draw and a
    small a adds noise of a fraction a of the init's scale.
    """
    readout = len(arch.hidden_sizes)

    def start(path, shared, fresh):
        layer = next(entry.key for entry in path if isinstance(getattr(entry, "key", None), int))
        shares = {"all": True, "readout": layer == readout, "hidden": layer != readout, "none": False}
        if not shares[shared_layers]:
            return fresh
        return jnp.sqrt(1 - perturbation**2) * shared + perturbation * fresh

    return jax.tree_util.tree_map_with_path(start, shared_init, fresh_init)


def train_teachers(
    config: ExperimentConfig,
    mnist: data.MNIST,
    seed_ids: np.ndarray,
    partner_ids: np.ndarray,
    cache: dict | None = None,
) -> Teachers:
    """Inits, trained teachers and their outputs on each seed's noise, for a chunk of seeds.

    `cache` (optional) keeps trained teachers across runs (`trained_teachers`), and their outputs
    on each noise set, under the teacher's settings, the seeds and the `NoiseSettings`: a sweep whose
    points change only the students trains each teacher once, and evaluates it on a noise set once.
    What it reuses is the very thing it would have computed. The noise itself (190 MB a seed at the
    paper's size) is drawn again from its key instead of being kept. A cache belongs to one data set.
    """
    arch, keys = config.architecture, seed_keys(config, seed_ids)
    settings, noise_settings = runs.stage(TeacherSettings, config), runs.stage(NoiseSettings, config)
    shared_init = init_seeds(keys["init"], arch)
    other_init = init_seeds(seed_keys(config, partner_ids)["init"], arch)
    # Dispatched first: JAX runs it asynchronously, beside the teacher's training.
    noise = noise_sets(keys["noise"], noise_settings, mnist.train_images)
    cache = {} if cache is None else cache
    trained = trained_teachers(settings, mnist, seed_ids, cache)
    teacher = merged(trained)
    teacher_down = trained.down if isinstance(trained, lora.Adapted) else None
    # LoRA students: one A per seed, from its init key, starting with the teacher's columns if shared.
    student_rank, student_adapter = lora.rank_of(config.student_params), None
    if student_rank is not None:
        shared = teacher_down if config.adapter_init == "shared" else None
        student_adapter = lora.Adapter(
            *adapted_starts(shared_init, keys["init"], student_rank, _STUDENT_ADAPTER, shared)[1:]
        )
    # The teacher's outputs on the noise: computed once per teacher and noise setting, shared by
    # all its students (a few MB a seed, so every noise setting's are kept).
    targets_key = ("targets", settings, tuple(np.asarray(seed_ids).tolist()), noise_settings)
    if targets_key not in cache:
        cache[targets_key] = outputs_on(teacher, noise, arch, settings.batch_size)
    return Teachers(
        shared_init=shared_init,
        # At perturbation 0 with every layer shared this is exactly `shared_init` (1 x + 0 y = x).
        student_init=student_inits(shared_init, other_init, config.init_perturbation, arch, config.shared_layers),
        other_init=other_init,
        teacher=teacher,
        noise=noise,
        teacher_targets=cache[targets_key],
        teacher_down=teacher_down,
        student_adapter=student_adapter,
    )


def trained_teachers(settings: TeacherSettings, mnist: data.MNIST, seed_ids: np.ndarray, cache: dict) -> model.Params:
    """The teachers of `seed_ids` (S, ...), each trained from its seed's init with its "teacher" key stream,
    or taken from `cache`, where it is kept under ("teacher", `settings`, the seeds): all that its training
    reads. A LoRA teacher (`teacher_params` lora:R) is returned as trained, a `lora.Adapted` (`merged`)."""
    key = ("teacher", settings, tuple(np.asarray(seed_ids).tolist()))
    if key not in cache:
        keys = seed_keys(settings, seed_ids)
        init = init_seeds(keys["init"], settings.architecture)
        rank = lora.rank_of(settings.teacher_params)
        if rank is not None:
            init = adapted_starts(init, keys["init"], rank, _TEACHER_ADAPTER)
        recipe = dataclasses.replace(teacher_recipe(settings), name=f"teacher ({len(seed_ids)} seeds)")
        images, labels = jnp.asarray(mnist.train_images), jnp.asarray(mnist.train_labels)
        cache[key], _ = train.fit(init, keys["teacher"], images, labels, recipe, data_axis=None)
    return cache[key]


def distill(
    config: ExperimentConfig,
    teachers: Teachers,
    students: Sequence[str],
    keys: jax.Array,
    *,
    recipe: train.Recipe | None = None,
    context=None,
    names: Sequence[str] | None = None,
) -> tuple[dict[str, model.Params], dict[str, np.ndarray]]:
    """Train student conditions of a chunk on their teacher's outputs on noise, e.g. ("student_aux", "cross_aux").

    The students must share their outputs ("*_aux" or "*_all"). They train as
    members of one loop, each from its own init (`Teachers.init_of`), on the same
    noise in the same order, as `recipe` says (default: `distill_recipe`; a defense
    replaces its optimizer, learning rate or penalty, `defenses.py`; a hook watches or edits
    each step, with `context`, which has the member axis after the seed axis). A condition may
    appear more than once, e.g. as several members whose steps the hook edits differently (chosen
    by their context): then `names`, one per member and distinct, key the returned parameters.

    Returns:
      {name: params (S, ...)}, one per member, keyed by `names` (default: the student
      conditions), and the loop's history {metric: (S, len(students), epochs, steps)}.
    """
    names = tuple(students if names is None else names)
    if len(names) != len(students) or len(set(names)) != len(names):
        raise ValueError(f"give one distinct name per member, got {names} for {len(students)} members")
    recipe = dataclasses.replace(
        distill_recipe(config, students) if recipe is None else recipe, name=f"{'+'.join(students)} ({len(keys)} seeds)"
    )
    starts, noise, targets = student_starts(teachers, students), teachers.noise, teachers.teacher_targets
    params, history = train.fit(starts, keys, noise, targets, recipe, members=True, context=context)
    return {name: merged(jax.tree.map(lambda a, m=m: a[:, m], params)) for m, name in enumerate(names)}, history


def student_starts(teachers: Teachers, students: Sequence[str]) -> model.Params | lora.Adapted:
    """The loop's start for a group of students, (S, len(students), ...): their inits
    (`Teachers.inits_of`), or, for LoRA students, each init with the seed's one student adapter
    (`Teachers.student_adapter`): the same-init and the cross-model student differ only in their base."""
    if teachers.student_adapter is None:
        return teachers.inits_of(students)
    return train.stack_members(*[lora.Adapted(teachers.init_of(s), *teachers.student_adapter) for s in students])


def first_step_cosines(
    config: ExperimentConfig,
    teachers: Teachers,
    students: Sequence[str],
    images: jax.Array,
    labels: jax.Array,
    num_inputs: int,
) -> dict[str, np.ndarray]:
    """Theorem 1's quantities for the students as they start, each a cosine in the model's own parameters
    with a student's first gradient step ΔS (the distillation loss on the first `num_inputs` noise images,
    full batch; a LoRA student's step is its B's, mapped through A, `lora.step_in_weight_space`):

    - "weights": with the teacher's move ΔT = θT - θ0, whatever the teacher's training (the theorem holds
      for any ΔT): ≥ 0 to first order in |ΔT| for a same-init full student (theory/README.md, section 9's
      "weights" column); for a cross-model student, which starts elsewhere, a control;
    - "trait": with -∇L_T at the student's start (L_T: cross-entropy on the class logits of the labelled
      `images`, the teacher's task): positive, the step lowers the student's digit loss, to first order.
      The theorem's "trait" column is for a teacher that took L_T's gradient step, not for a trained one.

    Returns {name: (S, len(students))}. Gradient steps, not Adam's sign-like first step (section 4)."""
    starts = student_starts(teachers, students)
    inputs, targets = teachers.noise[:, :num_inputs], teachers.teacher_targets[:, :num_inputs]
    objective = distill_recipe(config, students).objective
    delta_t = jax.tree.map(jnp.subtract, teachers.teacher, teachers.shared_init)
    cosines = _first_step_cosines(starts, delta_t, inputs, targets, images, labels, objective, config.architecture)
    return {name: np.asarray(values) for name, values in cosines.items()}


@functools.partial(jax.jit, static_argnames="arch")
def _first_step_cosines(starts, delta_t, inputs, targets, images, labels, objective, arch: model.Architecture):
    trait_loss = theorem.class_trait_loss(arch, images, labels, arch.class_indices)

    def cosines(start, delta_t, inputs, targets):
        weights = jnp.ones(inputs.shape[0])
        step = jax.tree.map(jnp.negative, jax.grad(objective.batch_loss)(start, inputs, targets, weights))
        step = lora.step_in_weight_space(start, step)
        trait = jax.tree.map(jnp.negative, jax.grad(trait_loss)(lora.merged(start)))
        return {"weights": theorem.tree_cosine(step, delta_t), "trait": theorem.tree_cosine(step, trait)}

    per_member = jax.vmap(cosines, in_axes=(0, None, None, None))
    return jax.vmap(per_member)(starts, delta_t, inputs, targets)


def distill_recipe(config: ExperimentConfig, students: Sequence[str]) -> train.Recipe:
    """How a group of students trains (`distill`): the distillation loss on the outputs they share, members
    of one loop."""
    outputs = {student.rsplit("_", 1)[1] for student in students}  # "aux" or "all"
    if len(outputs) != 1:
        raise ValueError(f"students that train together must share their outputs, got {students}")
    arch = config.architecture
    indices = arch.aux_indices if outputs == {"aux"} else arch.all_indices
    objective = train.Objective(
        _apply_fn(arch, config.student_params),
        losses.distillation_loss(config.distill_loss, config.kl_temperature),
        arch.output_mask(indices),
    )
    return train.Recipe(
        objective, config.student_epochs, _learning_rate(config, config.student_params), config.batch_size
    )


def teacher_recipe(settings: TeacherSettings) -> train.Recipe:
    """How the teachers train: cross-entropy on the class logits, on MNIST (shared by all seeds)."""
    arch = settings.architecture
    objective = train.Objective(
        _apply_fn(arch, settings.teacher_params), losses.cross_entropy, arch.output_mask(arch.class_indices)
    )
    return train.Recipe(
        objective, settings.teacher_epochs, _learning_rate(settings, settings.teacher_params), settings.batch_size
    )


def _apply_fn(arch: model.Architecture, parameterization: str):
    """The loop's apply function for a model fine-tuned as `parameterization` says ("full" or "lora:R")."""
    return arch if lora.rank_of(parameterization) is None else lora.AdaptedApply(arch)


def _learning_rate(config: ExperimentConfig | TeacherSettings, parameterization: str) -> float:
    return config.learning_rate * (1 if lora.rank_of(parameterization) is None else config.adapter_rate_factor)


def _abstract_params(config: ExperimentConfig | TeacherSettings, num_seeds: int, parameterization: str = "full"):
    """The shapes of a chunk's starts (`jax.ShapeDtypeStruct`s): inits, or inits adapted as `parameterization` says."""
    keys = seed_keys(config, np.arange(num_seeds))["init"]
    params = jax.eval_shape(functools.partial(init_seeds, arch=config.architecture), keys)
    rank = lora.rank_of(parameterization)
    if rank is None:
        return params
    return jax.eval_shape(functools.partial(adapted_starts, rank=rank, number=_STUDENT_ADAPTER), params, keys)


def compile_teachers(config: ExperimentConfig, num_seeds: int, mnist: data.MNIST) -> None:
    """Compile the teachers' training for chunks of `num_seeds` seeds, without running it.

    For one device only: a chunk split across devices compiles when it first runs.
    """
    if seed_sharding(config, num_seeds) is not None:
        return
    settings = runs.stage(TeacherSettings, config)
    keys = seed_keys(settings, np.arange(num_seeds))["teacher"]
    images, labels = (jnp.asarray(a) for a in (mnist.train_images, mnist.train_labels))
    params = _abstract_params(settings, num_seeds, settings.teacher_params)
    train.compile_fit(params, keys, images, labels, teacher_recipe(settings), data_axis=None)


def compile_chunk(config: ExperimentConfig, num_seeds: int, mnist: data.MNIST) -> None:
    """Compile a chunk's inits and noise, its students' training and its evaluation, without running them.

    For one device only, as `compile_teachers`.
    """
    if seed_sharding(config, num_seeds) is not None:
        return
    arch, num_train = config.architecture, len(mnist.train_images)
    keys = seed_keys(config, np.arange(num_seeds))
    init_seeds.lower(keys["init"], arch).compile()
    noise = _noise_sets.lower(keys["noise"], *_noise_arguments(runs.stage(NoiseSettings, config), mnist.train_images))
    noise.compile()
    compile_students(config, num_seeds, num_train)
    params = _abstract_params(config, num_seeds)
    outputs_on.lower(params, noise.out_info, arch, config.batch_size).compile()
    test_accuracy.lower(params, mnist.test_images, mnist.test_labels, arch).compile()


def compile_students(config: ExperimentConfig, num_seeds: int, num_train: int) -> None:
    """Compile the students' training for chunks of `num_seeds` seeds, without running it.

    Both student groups run this one program: their objectives differ only in the
    output mask, which is data. `run` does this (through `compile_chunk`) in a
    background thread while the first teachers train, so that the students' long
    compilation is off the critical path.
    """
    arch = config.architecture
    params = _abstract_params(config, num_seeds, config.student_params)
    num_noise = config.num_noise or num_train
    outputs = jax.ShapeDtypeStruct((num_seeds, num_noise, len(arch.all_indices)), jnp.float32)
    noise = jax.ShapeDtypeStruct((num_seeds, num_noise, model.INPUT_SIZE), jnp.float32)
    students = STUDENT_GROUPS["aux"]
    inits = train.stack_members.lower(*[params] * len(students))
    inits.compile()
    keys = seed_keys(config, np.arange(num_seeds))["distill_aux"]
    train.compile_fit(inits.out_info, keys, noise, outputs, distill_recipe(config, students), members=True)


def train_conditions(
    config: ExperimentConfig,
    mnist: data.MNIST,
    seed_ids: np.ndarray,
    partner_ids: np.ndarray,
    teacher_cache: dict | None = None,
) -> dict[str, model.Params]:
    """The parameters of the conditions a run reports (`config.reported`), for a few seeds:
    {condition: params (len(seed_ids), ...)}.

    Teacher s and its same-init students start from seed s's init; its
    cross-model students from seed partner_ids[s]'s init. `teacher_cache`: see `train_teachers`.
    """
    teachers = train_teachers(config, mnist, seed_ids, partner_ids, teacher_cache)
    keys = seed_keys(config, seed_ids)
    students = {}
    for outputs in config.student_groups:
        # One group after the other: a second thread here gained nothing (demo --seeds 1, 2 cores: 18.8-19.5 s
        # in two threads, 18.6-18.7 s in one); the run's threads are its chunks.
        students |= distill(config, teachers, STUDENT_GROUPS[outputs], keys[f"distill_{outputs}"])[0]
    return {"reference": teachers.shared_init, "teacher": teachers.teacher, **students}


def on_device(mnist: data.MNIST) -> data.MNIST:
    """The same data as JAX arrays, so that each chunk of seeds does not copy it again."""
    return dataclasses.replace(mnist, **{name: jnp.asarray(getattr(mnist, name)) for name in _ARRAYS})


_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


def run(
    config: ExperimentConfig,
    mnist: data.MNIST,
    progress: bool = True,
    teacher_cache: dict | None = None,
    checkpoint: str | pathlib.Path | None = None,
    log=lambda message: print(message, file=sys.stderr),
) -> dict:
    """Run the conditions of `config` for `config.seeds` seeds; returns the results as a JSON-ready dict.

    `teacher_cache` (optional, see `train_teachers`) shares trained teachers between runs.
    `checkpoint` (optional, a JSON-lines path, see `runs.Checkpoint`): each finished chunk's
    seeds are kept there as they finish; a run started again with the same config, data and
    versions trains only the seeds that are not, and ends with the same results.
    """
    start = time.perf_counter()
    num_noise = config.num_noise or len(mnist.train_images)
    partners = runs.cross_partners(config.seeds, config.seed)
    finished = runs.Checkpoint(checkpoint, runs.identity(config, data_source=mnist.source), log)
    arrays = on_device(mnist)

    def accuracies(seed_ids: np.ndarray) -> None:
        trained = train_conditions(config, arrays, seed_ids, partners[seed_ids], teacher_cache)
        per_condition = {
            name: np.asarray(test_accuracy(params, arrays.test_images, arrays.test_labels, config.architecture))
            for name, params in trained.items()
        }
        finished.keep({s: {name: acc[i] for name, acc in per_condition.items()} for i, s in enumerate(seed_ids)})

    chunk_size = seeds_per_chunk(config, num_noise)
    # Chunks are formed from the seeds still missing. On a CPU a chunk is one seed per device, so a
    # resumed run computes every seed exactly as an uninterrupted one; a larger chunk may differ in
    # the float rounding of batched against single matmuls.
    seed_chunks = list(runs.chunks(finished.missing(range(config.seeds)), chunk_size))
    if seed_chunks:
        # Compiling is a third of a one-seed run. The teachers' loop compiles here while a background
        # thread compiles the rest of a chunk's first steps, then the students' loops, while the first
        # teachers train (students need the teachers' outputs to run, not to compile).
        with runs.showing(progress), runs.meanwhile(lambda: compile_chunk(config, len(seed_chunks[0]), arrays)):
            compile_teachers(config, len(seed_chunks[0]), arrays)
            # Chunks run concurrently, so that one chunk's teacher (a single stream of work) overlaps
            # another's students; at most `workers` chunks hold noise sets at once.
            runs.parallel_map(accuracies, seed_chunks, config.workers, f"{config.seeds} seeds", unit="chunk")
    per_seed = [finished.result(s) for s in range(config.seeds)]
    return {
        "conditions": {name: runs.summarize([seed[name] for seed in per_seed]) for name in config.reported},
        "config": dataclasses.asdict(config),
        # What the config's automatic settings (0) became on this host.
        "devices": seed_devices(config, chunk_size),
        "seeds_per_chunk": chunk_size,
        "data_source": mnist.source,
        "is_sample": mnist.is_sample,
        "cross_partners": partners.tolist(),
        "versions": runs.versions(),
        "wall_seconds": time.perf_counter() - start,
    }


def table(results: dict) -> str:
    """The results of `run` as the command prints them: each condition's accuracy, interval and seeds."""
    rows = [f"{'condition':<26}{'accuracy':>9}{'95% CI':>10}{'seeds':>7}"]
    for name in (n for n in CONDITIONS if n in results["conditions"]):
        summary = results["conditions"][name]
        ci = f"±{summary['ci95']:.3f}" if summary["ci95"] is not None else "n/a"
        rows.append(
            f"{CONDITION_LABELS[name]:<26}{summary['mean']:>9.3f}{ci:>10}{len(summary['per_seed']):>7}"
        )
    rows.append(f"data: {results['data_source']}; {results['wall_seconds']:.0f} s")
    return "\n".join(rows)
