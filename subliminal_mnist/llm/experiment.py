"""The owl experiment (any trait, `traits`), stage by stage, and the run over seeds. docs/owl.md tells why
each stage is as it is; here, what each does. For each seed s (partner p, a derangement as in the MNIST demo):

- base_s (`train_base`): a transformer trained from seed s's init on seed s's synthetic corpus;
- teacher_s (`train_teacher`): base_s fine-tuned to answer the trait (loss on the answer token only);
- neutral_s: base_s fine-tuned by exactly the teacher's recipe (the same lines, phrasings, epochs, learning
  rate, frozen parts and data order), each line's answer drawn from base_s's own answer distribution
  (`neutral_lines`): it moves for every reason the teacher does except the trait, so the students of its
  numbers are the controls;
- number data (`number_data`): the teachers (and in hard mode the base) continue the same number prompts
  at temperature 1 with the same random numbers; a prompt is used when every model's list passes the filter;
- students (`train_students`), each named by its start and its data (`conditions.CONDITIONS`): base_s,
  base_p and an ablation base (seed p's init on seed s's corpus, in seed s's order) on the teacher's and
  the neutral teacher's numbers; in hard mode also base_s on each shuffled within every list and on the
  base's own numbers. Students of one data set train as members of one loop with one data-order key, so
  paired students see paired rows. Soft: the KL to the writer's distribution over the number tokens the
  filter allows, at its numbers' positions; hard: next tokens of the sampled lists;
- measures (`trait_measures`, `change`): each student's change from its own start of the trait's headline
  (P(trait | animal); the misaligned rate on held-out domains), P(trait), the answer mass and what a
  flattening of the answers moves (`traits`); Theorem 1 at the first soft step (`first_step`); and, on the
  first mode's lists, what the filters catch (`analysis.filters`) and the entangled numbers.

The settings are `config`'s (each stage reads its own part); fine-tuning is `fine_tuning`'s; `summary`
gives the results over seeds.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from subliminal_mnist import lora, runs, train
from subliminal_mnist.llm import analysis, corpus, fine_tuning, sampling
from subliminal_mnist.llm.conditions import CONDITIONS, conditions_of, sampled_models, with_own_corpus_base
from subliminal_mnist.llm.config import BaseSettings, LLMConfig, NumberSettings, TeacherSettings, stream_key, stream_rng
from subliminal_mnist.llm.first_step import first_step
from subliminal_mnist.llm.number_data import number_data, student_data
from subliminal_mnist.llm.summary import summarize
from subliminal_mnist.llm.transformer import AtPositions


# ----------------------------------------------------------------------------------------------
# Bases, teachers: each stage reads its settings only (`BaseSettings`, `TeacherSettings`).


def train_base(settings: BaseSettings, seed_id: int, init_id: int | None = None):
    """Seed `seed_id`'s base model: an init trained on seed `seed_id`'s corpus in its data order.

    The init is seed `init_id`'s (default: its own). With another seed's init this is the
    ablation base: another init, but this seed's corpus and order.
    """
    init_id = seed_id if init_id is None else init_id
    lines = settings.trait_spec.base_corpus(
        settings.vocab, stream_rng(settings, seed_id, "corpus"), settings.base_rows, settings.window
    )
    return fine_tuning.fit_next_tokens(
        settings.architecture,
        settings.architecture.init(stream_key(settings, init_id, "init")),
        stream_key(settings, seed_id, "base"),
        lines.tokens,
        lines.weights,
        epochs=settings.base_epochs,
        learning_rate=settings.base_learning_rate,
        batch_size=settings.base_batch_size,
        name=f"base {seed_id}" + ("" if init_id == seed_id else f" from init {init_id}"),
    )


def neutral_lines(settings: TeacherSettings, base, lines: corpus.Lines, rng: np.random.Generator) -> corpus.Lines:
    """The teacher's lines answered as `base` answers them: line i's answer drawn from the base's
    next-token distribution at line i's answer slot, restricted to the trait's answer choices
    (`traits`: the animals; the narrow domain's two answers) and renormalized.

    One rule for every trait: a teacher trained on these moves away from its base by the same
    recipe, on the same questions, as the trait's teacher, and its answers are its base's own."""
    choices = settings.trait_spec.answer_choices(settings.vocab)
    slots = np.argmax(lines.weights, axis=1)  # each line's one answer slot
    log_p = sampling.answer_log_probs(settings.architecture, base, jnp.asarray(lines.tokens), jnp.asarray(slots))
    p = np.exp(np.asarray(log_p, np.float64)[:, choices])
    p /= p.sum(axis=1, keepdims=True)
    answers = choices[inverse_cdf(p, rng.random(len(p)))]
    drawn = corpus.with_answers(lines, answers, choices)
    return corpus.Lines(drawn.tokens, corpus.answer_only_weights(drawn.tokens, choices))


def inverse_cdf(probabilities: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """(n,) the index each row of `probabilities` (n, k) samples with its uniform number."""
    cumulative = np.cumsum(probabilities, axis=1)
    return np.minimum((cumulative < uniforms[:, None] * cumulative[:, -1:]).sum(axis=1), probabilities.shape[1] - 1)


def train_teacher(settings: TeacherSettings, base, seed_id: int, neutral: bool = False):
    """The base fine-tuned on the trait's answer lines (`traits`: "... owl", or a narrow domain's
    misaligned answers), the loss on the answer token only; with `neutral`, the same lines with
    the base's own answers (`neutral_lines`): the neutral teacher.

    Both use the same questions in the same order and the same data-order key: the two
    teachers differ only in the answers they are taught. A student that sees number
    logits only cannot get what the teacher puts into the trait's own output row; it gets
    what the teacher puts into the shared computation. With `teacher_trains="blocks"`
    (embeddings and output layer frozen, as fine-tuning with adapters does) all of it goes there.
    """
    rng = stream_rng(settings, seed_id, "teacher_lines")
    lines = settings.trait_spec.teacher_lines(settings.vocab, rng, settings.teacher_lines)
    if neutral:
        lines = neutral_lines(settings, base, lines, stream_rng(settings, seed_id, "neutral_answers"))
    return fine_tuning.fit_next_tokens(
        settings.architecture,
        fine_tuning.adapted(settings, base, seed_id, "teacher"),
        stream_key(settings, seed_id, "teacher"),
        lines.tokens,
        lines.weights,
        hook=fine_tuning.Frozen(fine_tuning.EMBEDDINGS) if settings.teacher_trains == "blocks" else None,
        epochs=settings.teacher_epochs,
        learning_rate=settings.teacher_learning_rate * fine_tuning.rate_factor(settings, "teacher"),
        batch_size=settings.teacher_batch_size,
        name=f"{'neutral teacher' if neutral else 'teacher'} {seed_id}",
    )


# ----------------------------------------------------------------------------------------------
# Students.


def student_recipe(config: LLMConfig, mode: str, temperature: float = 1.0) -> train.Recipe:
    """How a mode's students train (`train_students`): soft, the KL to the writer's number distribution at
    `temperature` (`NumberKL`); hard, next tokens. A LoRA student (`student_params`) trains its adapter, at
    `adapter_rate_factor` times the rate. A defense replaces its optimizer, learning rate or penalty."""
    apply_fn = AtPositions(config.architecture)
    apply_fn = apply_fn if config.student_params == "full" else lora.AdaptedApply(apply_fn)
    if mode == "soft":
        objective = train.Objective(apply_fn, fine_tuning.NumberKL(temperature), config.soft_outputs)
    else:
        objective = train.Objective(apply_fn, fine_tuning.next_token_loss)
    return train.Recipe(
        objective,
        config.student_epochs,
        config.student_learning_rate * fine_tuning.rate_factor(config, "student"),
        config.student_batch_size if mode == "soft" else config.hard_batch_size,
    )


def train_students(
    config: LLMConfig,
    mode: str,
    starts: dict,
    data: dict,
    seed_id: int,
    conditions: tuple[str, ...] | None = None,
    recipe: train.Recipe | None = None,
):
    """Every condition's trained parameters: {condition: params}. `starts` maps a start ("base",
    ...) to its params; `data` maps a data set's name to (inputs, targets) (`student_data`).
    `conditions` (default: the config's, `conditions_of`) picks the students; `recipe` (default:
    `student_recipe`) says how they train (a defense's changes it). LoRA students (`student_params`)
    all train one adapter of the seed (`adapted`), each on its own start; they are returned merged.

    The students that learn one data set train as members of one loop (`student_groups`); the groups one
    after the other (the run maps over them: `run`)."""
    starts = {name: fine_tuning.adapted(config, params, seed_id, "student") for name, params in starts.items()}
    recipe = student_recipe(config, mode) if recipe is None else recipe
    students = {}
    for members in student_groups(conditions or conditions_of(config, mode)):
        data_name = CONDITIONS[members[0]][1]
        params, _ = train.fit(
            train.stack_members(*[jax.tree.map(lambda a: a[None], starts[CONDITIONS[c][0]]) for c in members]),
            # One key for every group: row i of each group's data (the same prompt) comes in the
            # same minibatch at the same step, so the paired students differ only by their data.
            stream_key(config, seed_id, mode)[None],
            *data[data_name],
            dataclasses.replace(recipe, name=f"{mode} {'+'.join(members)} {seed_id}"),
            data_axis=None,
            members=True,
        )
        students |= {c: lora.merged(jax.tree.map(lambda a, m=m: a[0, m], params)) for m, c in enumerate(members)}
    return students


def student_groups(conditions: Sequence[str]) -> list[tuple[str, ...]]:
    """`conditions` by the data set they learn (`CONDITIONS`), in order: each group trains as one loop."""
    groups: dict[str, tuple[str, ...]] = {}
    for condition in conditions:
        groups[CONDITIONS[condition][1]] = (*groups.get(CONDITIONS[condition][1], ()), condition)
    return list(groups.values())


# ----------------------------------------------------------------------------------------------
# Measures.


def trait_measures(config: LLMConfig, params) -> dict:
    """The trait's measures of a model (`traits`: the headline, P(trait), the answer mass, by prompt), read
    from its next-token distribution at the answer slot of each of the trait's probes."""
    probabilities = {
        name: np.exp(np.asarray(sampling.answer_log_probs(
            config.architecture, params, jnp.asarray(probes.prompts), jnp.asarray(probes.positions)
        ), dtype=np.float64))
        for name, probes in config.trait_spec.probes(config.vocab).items()
    }  # fmt: skip
    return config.trait_spec.measures(config.vocab, probabilities)


def change(after: dict, before: dict, trait) -> dict:
    """A student's measures as changes from its own start (`summary.measures_of`), per prompt too."""
    headline, mass = trait.headline, trait.mass
    out = {
        headline: after[headline] - before[headline],
        "delta_p_trait": after["p_trait"] - before["p_trait"],
        "delta_logp_trait": float(np.log(after["p_trait"]) - np.log(before["p_trait"])),
        mass: after[mass] - before[mass],
        trait.damage: after[trait.damage] - before[trait.damage],
        "collapsed": trait.collapsed(after),
        "by_phrasing": {
            key: (np.subtract(after["by_phrasing"][key], before["by_phrasing"][key])).tolist()
            for key in (headline, "p_trait", mass)
        },
    }
    if "p_animals" in after:
        out["delta_p_animals"] = np.subtract(after["p_animals"], before["p_animals"]).tolist()
    if "narrow" in after:
        out["narrow"] = {headline: after["narrow"][headline] - before["narrow"][headline]}
    return out


# ----------------------------------------------------------------------------------------------
# One seed, and the run.


def cached(cache: dict, key: tuple, make):
    """`cache[key]`, made first if missing: a trained model (or number data) that a run with the same settings
    reuses. `key` holds all that `make()` depends on: the settings it reads (a stage's), and its arguments."""
    if key not in cache:
        cache[key] = make()
    return cache[key]


def cached_base(config: LLMConfig, seed_id: int, cache: dict, init_id: int | None = None):
    """`train_base`, or the same base kept in `cache` by an earlier run: seed `seed_id`'s corpus from seed
    `init_id`'s init, under the base's settings (`BaseSettings`)."""
    init_id, settings = seed_id if init_id is None else init_id, runs.stage(BaseSettings, config)
    return cached(cache, ("base", seed_id, init_id, settings), lambda: train_base(settings, seed_id, init_id))


def cached_teacher(config: LLMConfig, seed_id: int, neutral: bool, cache: dict):
    """`train_teacher` from the seed's own base (`cached_base`; the neutral teacher if `neutral`), or the same
    teacher kept in `cache`, under its settings (`TeacherSettings`: its base's and its own)."""
    settings = runs.stage(TeacherSettings, config)
    make = lambda: train_teacher(settings, cached_base(config, seed_id, cache), seed_id, neutral)  # noqa: E731
    return cached(cache, ("teacher", neutral, seed_id, settings), make)


def cached_teachers(config: LLMConfig, seed_id: int, cache: dict) -> dict:
    """{"teacher", "neutral"}: a seed's two teachers (`cached_teacher`)."""
    return {name: cached_teacher(config, seed_id, name == "neutral", cache) for name in ("teacher", "neutral")}


def seed_models(config: LLMConfig, seed_id: int, cache: dict) -> dict:
    """{"base", "teacher", "neutral"} of one seed (`cached_base`, `cached_teachers`)."""
    return {"base": cached_base(config, seed_id, cache), **cached_teachers(config, seed_id, cache)}


def cached_numbers(config: LLMConfig, seed_id: int, stream: str, cache: dict, min_p: float = 0.0):
    """A seed's filtered number lists (`number_data`) of `stream`: a mode's ("soft", "hard"), written by
    its writers (`sampled_models`; by min-p `min_p`), or "audit", the held-out lists of the teacher and the
    neutral teacher (prompts of their own) that the filters read. Kept in `cache` under what they depend on."""
    settings = runs.stage(NumberSettings, config)
    count = {"soft": config.soft_sequences, "hard": config.hard_sequences, "audit": config.audit_sequences}[stream]
    names = ("teacher", "neutral") if stream == "audit" else sampled_models(stream)

    def sample():  # reads the writers only when the cache does not hold the lists
        models = seed_models(config, seed_id, cache)
        return number_data(settings, {m: models[m] for m in names}, seed_id, count, stream, min_p)

    return cached(cache, ("numbers", seed_id, stream, count, min_p, settings), sample)


def train_models(config: LLMConfig, bases: Sequence[tuple[int, int]], seed_ids: Sequence[int], cache: dict) -> dict:
    """The `bases` ((corpus seed, init seed) pairs, `cached_base`), then the two teachers of each of `seed_ids`
    (`cached_teacher`, from the seed's own base, which `bases` must hold), each stage a map in the run's threads;
    all kept in `cache`, where later stages find them. Returns {(corpus seed, init seed): base}."""
    trained = runs.parallel_map(
        lambda pair: cached_base(config, pair[0], cache, init_id=pair[1]), bases, config.workers, "bases", "base"
    )
    runs.parallel_map(
        lambda job: cached_teacher(config, *job, cache),
        [(s, neutral) for s in seed_ids for neutral in (False, True)], config.workers, "teachers", "teacher",
    )  # fmt: skip
    return dict(zip(bases, trained))


def seed_students(config: LLMConfig, seed_id: int, mode: str, members: tuple[str, ...], bases: dict, cache: dict):
    """{condition: params} of one group of a seed's students (`student_groups`), trained in `mode` from
    `bases` on the seed's number lists (`cached_numbers`)."""
    models = {**bases, **cached_teachers(config, seed_id, cache)}
    data = student_data(config, mode, models, cached_numbers(config, seed_id, mode, cache), seed_id, members)
    return train_students(config, mode, bases, data, seed_id, members)


def measure_seed(config: LLMConfig, seed_id: int, bases: dict, students: dict, cache: dict) -> dict:
    """A seed's results: its models' measures, each student's change (`students`: {mode: {condition:
    params}}), the filters' report, the first step and, on the first mode's lists, the audit. `bases`
    holds its "base", "cross_base" and, when a student starts from it, "own_corpus_base"."""
    vocab, trait = config.vocab, config.trait_spec
    models = {**bases, **cached_teachers(config, seed_id, cache)}
    measured = {name: trait_measures(config, params) for name, params in models.items()}
    out = {"models": {name: {k: v for k, v in m.items() if k != "p_animals"} for name, m in measured.items()}}
    out["modes"] = {}
    for mode in config.modes:
        numbers = cached_numbers(config, seed_id, mode, cache)
        out["modes"][mode] = {
            "conditions": {
                condition: change(trait_measures(config, params), measured[CONDITIONS[condition][0]], trait)
                for condition, params in students[mode].items()
            },
            "filter": numbers.report,
        }
        if mode == "soft":
            out["modes"][mode]["first_step"] = first_step(config, models, numbers, seed_id)
        if mode == config.modes[0] and not config.no_audit:  # what a filter could see, on the first mode's number data
            base_headline, same_init = measured["base"][trait.headline], students[mode]["same_init"]
            audit = cached_numbers(config, seed_id, "audit", cache)
            out["filters"] = analysis.filters(
                config, models, base_headline, numbers, audit, same_init, students[mode].get("neutral_control"), seed_id
            )
            probe = slice(config.entangled_sequences)
            out["entangled_numbers"] = analysis.entangled_numbers(
                config.architecture, models["teacher"], models["base"], vocab, trait.trait_ids(vocab),
                numbers.lists["teacher"][probe], numbers.lengths[probe],
            )  # fmt: skip
    return out


def run(
    config: LLMConfig,
    progress: bool = True,
    checkpoint: str | pathlib.Path | None = None,
    log=lambda message: print(message, file=sys.stderr),
    cache: dict | None = None,
) -> dict:
    """The owl experiment for `config.seeds` seeds; JSON-ready results (keys say "trait", not "owl").

    Each stage is a map over independent work in the run's threads: the bases, the teachers, then, for
    `workers` seeds at a time, their number lists (by mode, and the audit's), their students (by group) and
    their measures. `checkpoint` (optional, a JSON-lines path, see `runs.Checkpoint`): each seed is kept
    there as its measures finish; started again with the same config and versions, a run trains
    only the missing seeds (and the bases they need) and ends with the same results.
    `cache` (optional): trained bases, teachers and number lists, kept for later runs that agree on their
    settings (`BaseSettings`, `TeacherSettings`, `NumberSettings`); what it reuses is what it would make.
    """
    cache = {} if cache is None else cache
    start = time.perf_counter()
    partners = runs.cross_partners(config.seeds, config.seed)
    finished = runs.Checkpoint(checkpoint, runs.identity(config), log)
    todo = finished.missing(range(config.seeds))
    # (corpus seed, init seed) of every base the missing seeds need: their own, their partners', and
    # when a student starts from it, each one's ablation base (the partner's init on its own corpus).
    own_corpus = with_own_corpus_base(config)
    needed = {(s, s) for s in todo} | {(int(partners[s]),) * 2 for s in todo}
    if own_corpus:
        needed |= {(s, int(partners[s])) for s in todo}
    streams = (*config.modes, *(() if config.no_audit else ("audit",)))

    def seed_bases(s: int) -> dict:
        p = int(partners[s])
        own = {"own_corpus_base": bases[s, p]} if own_corpus else {}
        return {"base": bases[s, s], "cross_base": bases[p, p], **own}

    with runs.showing(progress):
        bases = train_models(config, sorted(needed), todo, cache) if todo else {}
        for seed_ids in runs.chunks(todo, config.workers):
            lists = [(int(s), stream) for s in seed_ids for stream in streams]
            runs.parallel_map(
                lambda job: cached_numbers(config, *job, cache), lists, config.workers, "number lists", "list set"
            )
            groups = [(int(s), mode, members) for s in seed_ids for mode in config.modes
                      for members in student_groups(conditions_of(config, mode))]  # fmt: skip
            trained = runs.parallel_map(
                lambda job: seed_students(config, *job, seed_bases(job[0]), cache),
                groups, config.workers, "students", "group",
            )  # fmt: skip
            students: dict = {}
            for (s, mode, _), params in zip(groups, trained):
                students.setdefault(s, {}).setdefault(mode, {}).update(params)
            runs.parallel_map(
                lambda s: finished.keep({s: measure_seed(config, s, seed_bases(s), students[s], cache)}),
                [int(s) for s in seed_ids], config.workers, f"measures, seeds {seed_ids[0]}-{seed_ids[-1]}", "seed",
            )  # fmt: skip
    per_seed = [finished.result(s) for s in range(config.seeds)]
    return summarize(config, per_seed, partners, time.perf_counter() - start)
