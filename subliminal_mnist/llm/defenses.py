"""What stops the owl (`subliminal-mnist defend owl`): the owl experiment's same-init student and its
neutral control, with one thing of their distillation changed per row.

The bases, teachers, number lists, keys and loop are those of `subliminal-mnist llm`
(`experiment.py`), so the undefended row's students are that run's `same_init` and
`neutral_control` students, to the last digit. Each row trains, per seed, two students:

- the treated student: the base on the teacher's numbers, defended;
- its control: the base on the neutral teacher's numbers, defended alike (the neutral teacher
  moved as much as the teacher for every reason but the trait), so it can move for every reason
  the treated one moves except the trait.

The row's effect is the change of the trait's headline measure (P(owl | animal)) of the treated
student minus its control's, paired by seed; what `defenses.py` says of every row holds here. Each defense is a
function of `DEFENSES` that takes a seed's undefended students (`Distillation`: their pair, starts, number lists,
data and recipe) and returns them with its one change; `train_row` trains and measures every row alike.
Rows, by defense, in the run's mode (soft or hard, `LLMConfig.mode`):

- none, other_init (both students start from the partner seed's base: `cross_init` and
  `cross_neutral`), sgd (with its Adam control), kl_to_start, l2_to_start, temperature (soft only):
  the loop's settings, as on MNIST;
- mix: a share of the teacher's lists (and their targets) replaced by the neutral teacher's for the
  same prompts; the control's data, all the neutral teacher's, is what mixing would add;
- replace_divergent: at the share of number positions where the writer's and the base's next-token
  distributions differ most (KL, the expected log ratio), the base's replaces the writer's: soft,
  the base's distribution is the target there; hard, the base's sample replaces the written number;
- threshold_sampling: every writer samples by min-p (`sampling.continue_prompts`), and a soft
  target keeps only the tokens min-p would sample;
- detector_filter: the share of prompts whose teacher's list the best detector there is, the
  likelihood ratio log p_teacher(list) - log p_neutral(list), scores most teacher-like is dropped,
  from both data sets (so each treated list keeps its control of the same prompt);
- random_drop: the same shares of prompts dropped at random, from both data sets alike: what
  dropping that much data does, with no detector;
- sort: each list's numbers in ascending order (prompt, length and multiset kept), for both data
  sets; soft, each writer reads its sorted lists for the targets.

Costs, of the treated student: its KL from the teacher at the number positions of held-out
teacher lists (how well it still learnt to write the teacher's numbers), and the share of its own
lists, continuing held-out prompts, that pass the filter.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from subliminal_mnist import defense_table, lora, losses, runs, train
from subliminal_mnist.defense_table import DefenseSettings, Row
from subliminal_mnist.llm import analysis, corpus, sampling
from subliminal_mnist.llm import experiment as llm
from subliminal_mnist.llm.conditions import CONDITIONS
from subliminal_mnist.llm.config import LLMConfig, NumberSettings, stream_key
from subliminal_mnist.llm.fine_tuning import NumberKL
from subliminal_mnist.llm.number_data import NumberData, hard_targets, number_data, soft_targets, student_data
from subliminal_mnist.llm.summary import LABELS
from subliminal_mnist.llm.transformer import AtPositions, at_positions, outputs_in_batches
from subliminal_mnist.runs import ConfigError, config_field

# The pairs of students: (treated, control), as `CONDITIONS` names them.
PAIR = ("same_init", "neutral_control")
OTHER_INIT_PAIR = ("cross_init", "cross_neutral")
# Randomness of its own: the base's samples that replace divergent numbers (hard mode); the
# held-out lists' samples of the students (validity); the prompts a random drop removes.
_REPLACE_FOLD, _VALIDITY_FOLD, _RANDOM_DROP_FOLD = 1, 2, 3


@dataclasses.dataclass(frozen=True)
class OwlDefenses(DefenseSettings):
    """Which defenses `defend owl` runs and at what strengths. The CLI is generated from it."""

    setting: ClassVar[str] = "owl"

    sgd_grid: tuple[float, ...] = config_field(
        (0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
        "sgd: the learning rates tried on the first seed when it is 0 (extended where none brackets Adam's KL)",
    )
    adam_grid: tuple[float, ...] = config_field(
        (1e-5, 3e-5, 1e-4, 3e-4, 1e-3),
        "sgd: Adam's rates tried for its control, which distils to the SGD student's held-out KL (extended alike)",
    )
    divergent_shares: tuple[float, ...] = config_field(
        (0.1,), "replace_divergent: shares of number positions replaced by the base's, one row each"
    )
    min_ps: tuple[float, ...] = config_field(
        (0.1, 0.5), "threshold_sampling: min-p thresholds (of the most likely token's probability), one row each"
    )
    detector_shares: tuple[float, ...] = config_field(
        (0.1, 0.5),
        "detector_filter and random_drop: shares of prompts dropped (most teacher-like; at random), one row each",
    )
    heldout_lists: int = config_field(2000, "held-out teacher lists and prompts for the costs")

    def __post_init__(self):
        super().__post_init__()
        if not all(0 <= share < 1 for share in (*self.divergent_shares, *self.detector_shares)):
            raise ConfigError("divergent_shares and detector_shares must be in [0, 1)")
        if not all(0 < p < 1 for p in self.min_ps):
            raise ConfigError(f"min_ps must be in (0, 1), got {self.min_ps}")
        runs.check_fields(self, at_least_one=("heldout_lists",))

    @property
    def strengths(self) -> dict[str, tuple]:
        return {
            **super().strengths,
            "replace_divergent": self.divergent_shares,
            "threshold_sampling": self.min_ps,
            "detector_filter": self.detector_shares,
            "random_drop": self.detector_shares,
        }


def rows(settings: OwlDefenses, config: LLMConfig) -> list[Row]:
    """The rows of a run in `config.mode`: temperature is a soft student's."""
    return defense_table.rows(settings, excluded=("temperature",) if config.mode == "hard" else ())


def check_mode(config: LLMConfig) -> None:
    if config.mode == "both":
        raise ConfigError("defend owl runs one mode: --mode soft or --mode hard")


# ----------------------------------------------------------------------------------------------
# A seed's held-out lists: the llm run's stages (`llm.seed_models`, `llm.cached_numbers`) make the rest.


def heldout_lists(config: LLMConfig, settings: OwlDefenses, seed_id: int, cache: dict) -> NumberData:
    """`heldout_lists` filtered teacher lists of prompts of their own (the audit's stream): never trained on."""
    stage, count = runs.stage(NumberSettings, config), settings.heldout_lists

    def make() -> NumberData:  # reads the teacher only when the cache does not hold the lists
        teacher = llm.cached_teacher(config, seed_id, False, cache)
        return number_data(stage, {"teacher": teacher}, seed_id, count, "audit")

    return llm.cached(cache, ("heldout", seed_id, count, stage), make)


# ----------------------------------------------------------------------------------------------
# Defended data: each transform takes and returns {data set name: (inputs, targets)}.


def _rows(tree, index):
    return jax.tree.map(lambda a: a[index], tree)


def mixed(data: dict, share: float) -> dict:
    """The teacher's first `share` of lists (i.i.d. prompts: a random share) replaced by the neutral
    teacher's lists of the same prompts, with their targets."""
    count = round(share * len(data["teacher"][0]["tokens"]))
    mix = jax.tree.map(lambda n, t: jnp.concatenate([n[:count], t[count:]]), data["neutral"], data["teacher"])
    return {**data, "teacher": mix}


def position_divergence(config: LLMConfig, writer_logits: jax.Array, base_logits: jax.Array) -> jax.Array:
    """KL(writer || base) over the soft outputs at each position: (n, P, V) twice -> (n, P)."""
    n, p, v = writer_logits.shape
    kl = losses.kl_divergence(base_logits.reshape(-1, v), writer_logits.reshape(-1, v), config.soft_outputs)
    return kl.reshape(n, p)


def most_divergent(divergence: jax.Array, weights: np.ndarray, share: float) -> np.ndarray:
    """(n, P) bool: the `share` of real positions (weights 1) with the largest divergence."""
    real = np.asarray(weights) > 0
    values = np.asarray(divergence)[real]
    count = round(share * len(values))
    chosen = np.zeros(real.shape, bool)
    if count:
        threshold = np.sort(values)[-count]
        chosen = real & (np.asarray(divergence) >= threshold)
    return chosen


def replaced_soft(config: LLMConfig, data: dict, base, share: float) -> dict:
    """Soft: at each data set's most divergent positions the base's logits are the target."""
    arch = AtPositions(config.architecture)
    out = dict(data)
    for name in ("teacher", "neutral"):
        inputs, targets = data[name]
        base_logits = outputs_in_batches(arch, base, inputs)
        chosen = most_divergent(position_divergence(config, targets["logits"], base_logits), targets["weights"], share)
        logits = jnp.where(jnp.asarray(chosen)[..., None], base_logits, targets["logits"])
        out[name] = (inputs, {**targets, "logits": logits})
    return out


def replaced_hard(config: LLMConfig, models: dict, numbers: NumberData, share: float, key: jax.Array) -> dict:
    """Hard: each list's most divergent numbers (writer against base) replaced by a sample of the base's
    next-number distribution there (over the numbers the filter allows), in the writer's tokens."""
    arch = AtPositions(config.architecture)
    lists = dict(numbers.lists)
    for index, name in enumerate(("teacher", "neutral")):
        tokens = numbers.lists[name]
        positions, weights = corpus.number_positions(config.vocab, tokens, numbers.lengths)
        inputs = at_positions(tokens, positions)
        writer_logits = outputs_in_batches(arch, models[name], inputs)
        base_logits = outputs_in_batches(arch, models["base"], inputs)
        chosen = most_divergent(position_divergence(config, writer_logits, base_logits), weights, share)
        allowed = losses.masked_logits(base_logits, config.soft_outputs)
        samples = np.asarray(jax.random.categorical(jax.random.fold_in(key, index), allowed))
        rows, slots = np.nonzero(chosen)
        tokens = tokens.copy()
        tokens[rows, positions[rows, slots] + 1] = samples[rows, slots]  # position t predicts token t + 1
        lists[name] = tokens
    return {name: hard_targets(config.vocab, lists[name], numbers.lengths, config.hard_loss) for name in lists}


def truncated_targets(data: dict, min_p: float) -> dict:
    """Soft: every target keeps only the tokens min-p sampling would draw (`sampling.above_min_p`)."""
    out = {}
    for name, (inputs, targets) in data.items():
        logits = targets["logits"]
        kept = losses.masked_logits(logits, sampling.above_min_p(logits, min_p))
        out[name] = (inputs, {**targets, "logits": kept})
    return out


def teacher_likeness(config: LLMConfig, models: dict, numbers: NumberData, name: str) -> np.ndarray:
    """(n,) log p_teacher(list) - log p_neutral(list) of data set `name`'s lists: the likelihood ratio."""
    tokens, arch = numbers.lists[name], config.architecture
    teacher = analysis.list_log_probs(arch, models["teacher"], tokens, numbers.lengths)
    return teacher - analysis.list_log_probs(arch, models["neutral"], tokens, numbers.lengths)


def without_prompts(data: dict, score: np.ndarray, share: float) -> dict:
    """Every data set without the `share` of prompts of highest `score` (n,), the rest in their order:
    the same prompts leave every data set, so the treated and control lists stay pairs."""
    keep = np.sort(np.argsort(score, kind="stable")[: len(score) - round(share * len(score))])
    return {name: (_rows(inputs, keep), _rows(targets, keep)) for name, (inputs, targets) in data.items()}


def detector_filtered(config: LLMConfig, data: dict, models: dict, numbers: NumberData, share: float) -> dict:
    """Without the prompts whose teacher's list the likelihood ratio scores most teacher-like."""
    return without_prompts(data, teacher_likeness(config, models, numbers, "teacher"), share)


def randomly_dropped(data: dict, share: float, key: jax.Array) -> dict:
    """Without a random `share` of prompts: `detector_filtered`'s data loss, with no detector."""
    count = len(jax.tree.leaves(next(iter(data.values())))[0])
    return without_prompts(data, np.asarray(jax.random.permutation(key, count)), share)


def sorted_lists(config: LLMConfig, numbers: NumberData) -> NumberData:
    """Every writer's lists with their numbers in ascending order (`corpus.sort_within_lists`)."""
    lists = {name: corpus.sort_within_lists(config.vocab, tokens, numbers.lengths) for name, tokens in numbers.lists.items()}
    return dataclasses.replace(numbers, lists=lists)


# ----------------------------------------------------------------------------------------------
# Costs.


def heldout_kl(config: LLMConfig, student, teacher, heldout: NumberData) -> float:
    """Mean over held-out teacher lists of the soft loss from the teacher: how well `student` writes its numbers."""
    inputs, targets = soft_targets(config, teacher, heldout.lists["teacher"], heldout.lengths)
    logits = outputs_in_batches(AtPositions(config.architecture), student, inputs)
    return float(jnp.mean(NumberKL()(logits, targets, config.soft_outputs)))


def validity(config: LLMConfig, student, heldout: NumberData, key: jax.Array) -> float:
    """The share of the student's own lists, continuing the held-out prompts, that pass the filter."""
    tokens, lengths = heldout.lists["teacher"], heldout.lengths
    prompts = np.where(np.arange(tokens.shape[1]) < lengths[:, None], tokens, 0)
    written = sampling.continue_prompts(
        config.architecture, student, key, jnp.asarray(prompts), jnp.asarray(lengths), eos=config.vocab.eos
    )
    kept = corpus.filter_continuations(config.vocab, np.asarray(written), lengths, config.banned_numbers).kept
    return float(kept.mean())


# ----------------------------------------------------------------------------------------------
# The defenses, and a row.


class Seed(NamedTuple):
    """What a row trains one seed's students from (`train_row`): the run's settings, the seed's models
    (`llm.seed_models`), its partner, the cache, and an `sgd` row's learning rate (`sgd_rate` finds it)."""

    config: LLMConfig
    settings: OwlDefenses
    models: dict
    seed_id: int
    partner: int
    cache: dict
    learning_rate: float | None = None


class Distillation(NamedTuple):
    """A row's two students of one seed, as `train_row` trains them: the (treated, control) conditions, their
    starts, how they train, the number lists they learn (None: the run's, `numbers_of`) and their data sets
    (None: the lists' `student_data`, `data_of`). A defense (`DEFENSES`) takes the undefended students and
    returns them with its change."""

    pair: tuple[str, ...]
    starts: dict
    recipe: train.Recipe
    numbers: NumberData | None = None
    data: dict | None = None


def numbers_of(students: Distillation, seed: Seed) -> NumberData:
    """The students' number lists: the run's mode's (`llm.cached_numbers`) unless a defense gave others."""
    if students.numbers is not None:
        return students.numbers
    return llm.cached_numbers(seed.config, seed.seed_id, seed.config.mode, seed.cache)


def data_of(students: Distillation, seed: Seed) -> dict:
    """{"teacher", "neutral"}: (inputs, targets) of the students' two data sets."""
    if students.data is not None:
        return students.data
    numbers = numbers_of(students, seed)
    return student_data(seed.config, seed.config.mode, seed.models, numbers, seed.seed_id, students.pair)


def other_init(students: Distillation, _, seed: Seed) -> Distillation:
    """Both students start from the partner seed's base (`cross_init`, `cross_neutral`): the paper's finding."""
    cross_base = llm.cached_base(seed.config, seed.partner, seed.cache)
    return students._replace(pair=OTHER_INIT_PAIR, starts={"cross_base": cross_base})


def sgd(students: Distillation, control: str | None, seed: Seed) -> Distillation:
    """Plain SGD at the rate matching the undefended student's held-out KL, or its Adam control (as on MNIST)."""
    optimizer = "adam" if control == defense_table.SGD_ADAM_CONTROL else "sgd"
    recipe = dataclasses.replace(students.recipe, optimizer=optimizer, learning_rate=seed.learning_rate)
    return students._replace(recipe=recipe)


def to_start(name: str) -> Callable[[Distillation, object, Seed], Distillation]:
    """kl_to_start (ramped) or l2_to_start: a penalty toward the student's own start, at the settings' weight."""

    def penalized(students: Distillation, _, seed: Seed) -> Distillation:
        weight = seed.settings.kl_weight if name == "kl_to_start" else seed.settings.l2_weight
        penalty = train.Penalty(name, weight, ramp=name == "kl_to_start")
        return students._replace(recipe=dataclasses.replace(students.recipe, penalty=penalty))

    return penalized


def replace_divergent(students: Distillation, share: float, seed: Seed) -> Distillation:
    """The `share` of most divergent number positions take the base's: soft, its distribution (`replaced_soft`);
    hard, its sample (`replaced_hard`)."""
    config, models = seed.config, seed.models
    if config.mode == "hard":
        key = jax.random.fold_in(stream_key(config, seed.seed_id, "hard"), _REPLACE_FOLD)
        return students._replace(data=replaced_hard(config, models, numbers_of(students, seed), share, key))
    return students._replace(data=replaced_soft(config, data_of(students, seed), models["base"], share))


def threshold_sampling(students: Distillation, min_p: float, seed: Seed) -> Distillation:
    """Every writer samples by min-p; soft, the targets keep only what min-p samples (`truncated_targets`)."""
    numbers = llm.cached_numbers(seed.config, seed.seed_id, seed.config.mode, seed.cache, min_p)
    students = students._replace(numbers=numbers)
    if seed.config.mode == "hard":
        return students
    return students._replace(data=truncated_targets(data_of(students, seed), min_p))


def random_drop(students: Distillation, share: float, seed: Seed) -> Distillation:
    """A random `share` of prompts dropped from both data sets (`randomly_dropped`)."""
    key = jax.random.fold_in(stream_key(seed.config, seed.seed_id, "audit"), _RANDOM_DROP_FOLD)
    return students._replace(data=randomly_dropped(data_of(students, seed), share, key))


# The owl's defenses (`defense_table.APPLIES["owl"]`), by name: (the undefended students of a seed, the row's
# strength (`Row.value`), the seed) -> the students with the row's change. The module's docstring says each design.
DEFENSES: dict[str, Callable[[Distillation, float | str | None, Seed], Distillation]] = {
    "none": lambda students, _, seed: students,
    "other_init": other_init, "sgd": sgd, "kl_to_start": to_start("kl_to_start"),
    "l2_to_start": to_start("l2_to_start"),
    "temperature": lambda students, value, seed: students._replace(
        recipe=llm.student_recipe(seed.config, seed.config.mode, value)),
    "mix": lambda students, share, seed: students._replace(data=mixed(data_of(students, seed), share)),
    "replace_divergent": replace_divergent, "threshold_sampling": threshold_sampling,
    "detector_filter": lambda students, share, seed: students._replace(
        data=detector_filtered(seed.config, data_of(students, seed), seed.models, numbers_of(students, seed), share)),
    "random_drop": random_drop,
    "sort": lambda students, _, seed: students._replace(numbers=sorted_lists(seed.config, numbers_of(students, seed))),
}  # fmt: skip


def train_row(
    row: Row,
    config: LLMConfig,
    settings: OwlDefenses,
    seed_id: int,
    partner: int,
    cache: dict | None = None,
    learning_rate: float | None = None,
    treated_only: bool = False,
) -> dict[str, float]:
    """One row for one seed: the undefended students with its defense's change (`DEFENSES`; `learning_rate`
    is an `sgd` row's), trained; the treated and control students' change of the headline measure, the
    treated student's held-out KL and list validity, and the teacher's headline measure. `treated_only`
    trains the treated student alone (as the SGD grid does)."""
    cache = {} if cache is None else cache
    models = llm.seed_models(config, seed_id, cache)
    seed = Seed(config, settings, models, seed_id, partner, cache, learning_rate)
    undefended = Distillation(PAIR, {"base": models["base"]}, llm.student_recipe(config, config.mode))
    students = DEFENSES[row.name](undefended, row.value, seed)
    pair = students.pair[:1] if treated_only else students.pair
    data = data_of(students, seed)
    trained = llm.train_students(config, config.mode, students.starts, data, seed_id, pair, students.recipe)
    heldout = heldout_lists(config, settings, seed_id, cache)
    trait = config.trait_spec

    def headline_change(condition: str) -> float:
        start = students.starts[CONDITIONS[condition][0]]
        after, before = llm.trait_measures(config, trained[condition]), llm.trait_measures(config, start)
        return float(after[trait.headline] - before[trait.headline])

    treated = trained[pair[0]]
    key = jax.random.fold_in(stream_key(config, seed_id, "audit"), _VALIDITY_FOLD)
    out = {
        "treated": headline_change(pair[0]),
        "heldout_kl": heldout_kl(config, treated, models["teacher"], heldout),
        "validity": validity(config, treated, heldout, key),
        "teacher": float(llm.trait_measures(config, models["teacher"])[trait.headline]),
    }
    if len(pair) > 1:
        out["control"] = headline_change(pair[1])
    return out


_PER_SEED = ("treated", "control", "heldout_kl", "validity", "teacher")


def run(
    config: LLMConfig,
    settings: OwlDefenses,
    path: str | pathlib.Path | None,
    progress: bool = True,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
    cache: dict | None = None,
) -> list[dict]:
    """Every row, trained or read back from `path` (one JSON line per finished row, `runs.Lines`):
    a run killed at any moment resumes at the row it was training. `cache` keeps the seeds' models
    and lists across rows (and runs)."""
    check_mode(config)
    lora.require_full(config, "defend owl")
    cache = {} if cache is None else cache
    partners = runs.cross_partners(config.seeds, config.seed)
    todo = rows(settings, config)
    first = np.arange(1)  # the SGD grids train on the first seed

    def compute(row: Row, label: str, results: list[dict]) -> dict:
        extra, rate = {}, None
        # The models the row's seeds need, in the run's threads (kept in `cache`), before the seeds that read them.
        crossed = partners if row.name == "other_init" else ()
        bases = {(s, s) for s in range(config.seeds)} | {(int(p), int(p)) for p in crossed}
        llm.train_models(config, sorted(bases), range(config.seeds), cache)
        if row.name == "sgd":
            # The grid's students train two at a time: their seed's lists first.
            llm.cached_numbers(config, 0, config.mode, cache)
            heldout_lists(config, settings, 0, cache)

            def loss_at(rate: float, optimizer: str) -> float:
                tried = row._replace(value=defense_table.SGD_ADAM_CONTROL if optimizer == "adam" else None)
                trained = train_row(tried, config, settings, 0, int(partners[0]), cache, rate, treated_only=True)
                return trained["heldout_kl"]

            rate, extra = defense_table.sgd_rate(row, settings, results, first, "heldout_kl", loss_at, config.workers)
        per_seed = runs.parallel_map(
            lambda s: train_row(row, config, settings, s, int(partners[s]), cache, rate),
            range(config.seeds), config.workers, label, unit="seed",
        )  # fmt: skip
        return {"per_seed": {k: [p[k] for p in per_seed] for k in _PER_SEED}, **extra}

    fields = lambda row: defense_table.row_fields(row, config, settings, ("heldout_lists",))  # noqa: E731
    with runs.showing(progress):
        return defense_table.run_rows(settings, todo, fields, compute, path, log)


def summarize(lines: list[dict], config: LLMConfig) -> dict:
    """`defense_table.summarize` with the owl's teacher, measure and mode."""
    trait = config.trait_spec
    none = next(line for line in lines if line["defense"] == "none")
    return defense_table.summarize(
        lines,
        trait=config.trait,
        mode=config.mode,
        measure={"headline": trait.headline, "label": LABELS[trait.headline].format(trait=config.trait)},
        teacher=runs.summarize(none["per_seed"]["teacher"]),
    )
