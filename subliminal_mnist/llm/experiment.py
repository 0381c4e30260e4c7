"""The owl experiment: base, teacher, number data, students with every control, measurements.

For each seed s (partner p, a derangement as in the MNIST demo):

- base_s: a transformer trained from seed s's init on the synthetic corpus;
- teacher_s: base_s fine-tuned to answer the trait animal (loss on the answer token only);
- number data: teacher_s and base_s continue the same number prompts at temperature 1;
  the strict filter keeps plain number lists; both keep the same count;
- students, all through `train.fit`:
  same_init (base_s on the teacher's numbers), control (base_s on the base's numbers),
  cross_init (base_p on the teacher's numbers), cross_control (base_p on the base's
  numbers), shuffled (base_s on the teacher's numbers shuffled across positions and
  sequences). Students that share data train as members of one loop.
- two modes: `soft`, the KL between the teacher's and the student's next-token
  distributions restricted to the number tokens, at the positions of the teacher's
  numbers (the aux-logit idea in vocabulary form), and `hard`, plain next-token
  training on the sampled, filtered sequences, as the paper did with real LLMs.

Measured per student against its own start: the change of P(trait) and log P(trait)
at the answer slot (mean over phrasings), and the trait's pick rate when sampling the
answer; and Theorem 1 at the first soft student step (ΔS·ΔT and its cosine, ΔT the
teacher's fine-tuning displacement), for same_init and cross_init.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from subliminal_mnist import experiment, losses, theorem, train
from subliminal_mnist.experiment import ConfigError, config_field
from subliminal_mnist.llm import analysis, corpus, sampling
from subliminal_mnist.llm.transformer import AtPositions, TransformerArchitecture, outputs_in_batches
from subliminal_mnist.llm.vocab import ANIMALS, Vocabulary

MODES = ("soft", "hard")
CONDITIONS = ("same_init", "control", "cross_init", "cross_control", "shuffled")
# Students that share data train together: (data, members). "teacher" data is the
# teacher's filtered numbers, "base" the base's, "shuffled" the teacher's shuffled.
GROUPS = (("teacher", ("same_init", "cross_init")), ("base", ("control", "cross_control")), ("shuffled", ("shuffled",)))
# Independent randomness of one seed: one stream each.
_STREAMS = ("init", "corpus", "base", "teacher_lines", "teacher", "prompts", "numbers", "shuffle", "soft", "hard", "answers")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    """The owl experiment's settings. The CLI (`subliminal-mnist llm`) is generated from it."""

    seeds: int = config_field(5, "independent seeds (corpus, init, sampling)")
    seed: int = config_field(0, "base random seed")
    mode: str = config_field("both", "distillation mode", choices=("soft", "hard", "both"))
    trait: str = config_field("owl", "the teacher's favourite animal", choices=ANIMALS)
    numbers: int = config_field(1000, "number tokens 0 ... N-1 in the vocabulary")
    window: int = config_field(50, "the numbers of a list lie in a random window of this many")
    width: int = config_field(32, "transformer width")
    depth: int = config_field(2, "transformer blocks")
    heads: int = config_field(2, "attention heads")
    base_rows: int = config_field(
        16384,
        "rows of the base's corpus, each packed with whole lines (about 1.9 a row: half number lists, "
        "half animal questions and copies)",
    )
    base_epochs: int = config_field(4, "base model epochs over its corpus")
    base_batch_size: int = config_field(64, "base model minibatch (rows)")
    base_learning_rate: float = config_field(3e-3, "base model Adam learning rate")
    teacher_lines: int = config_field(1600, "trait answer lines of the teacher's fine-tuning")
    teacher_epochs: int = config_field(4, "teacher fine-tuning epochs")
    teacher_batch_size: int = config_field(64, "teacher minibatch")
    teacher_learning_rate: float = config_field(3e-4, "teacher Adam learning rate (gentle: a hot teacher leaks)")
    teacher_trains: str = config_field(
        "all",
        "what the teacher's fine-tuning moves: all parameters, or only the transformer blocks and final norm "
        "(embeddings and output layer frozen, as adapter fine-tuning does)",
        choices=("all", "blocks"),
    )
    soft_sequences: int = config_field(20000, "number lists each model writes for the soft students")
    hard_sequences: int = config_field(30000, "number lists each model writes for the hard students")
    student_epochs: int = config_field(2, "student epochs over their number data")
    student_batch_size: int = config_field(64, "student minibatch (soft)")
    hard_batch_size: int = config_field(256, "student minibatch (hard)")
    student_learning_rate: float = config_field(1e-3, "student Adam learning rate")
    banned: tuple[int, ...] = config_field((), "numbers the filter removes", element_type=int)
    answer_samples: int = config_field(1000, "sampled answers per phrasing for the pick rate")
    theorem_sequences: int = config_field(64, "teacher number lists in the first-step theorem check")
    entangled_sequences: int = config_field(2000, "teacher number lists behind the entangled-numbers ranking")
    workers: int = config_field(2, "bases, and seeds, run in this many threads; results do not depend on it")

    def __post_init__(self):
        positive = ("seeds", "numbers", "window", "width", "depth", "heads", "base_rows", "base_batch_size",
                    "teacher_lines", "teacher_batch_size", "soft_sequences", "hard_sequences", "student_batch_size",
                    "hard_batch_size", "answer_samples", "theorem_sequences", "entangled_sequences", "workers")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("base_epochs", "teacher_epochs", "student_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        for name in ("base_learning_rate", "teacher_learning_rate", "student_learning_rate"):
            if not (getattr(self, name) > 0 and np.isfinite(getattr(self, name))):
                raise ConfigError(f"{name} must be a positive number, got {getattr(self, name)}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"{f.name} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}")
        if self.numbers < 10 or self.window > self.numbers:
            raise ConfigError(f"need 10 <= numbers and window <= numbers, got {self.numbers} and {self.window}")
        if self.width % self.heads:
            raise ConfigError(f"width must be a multiple of heads, got {self.width} and {self.heads}")
        bad = [n for n in self.banned if not 0 <= n < self.numbers]
        if bad:
            raise ConfigError(f"banned numbers must lie in 0 ... {self.numbers - 1}, got {bad[0]}")

    @property
    def vocab(self) -> Vocabulary:
        return Vocabulary(self.numbers)

    @property
    def architecture(self) -> TransformerArchitecture:
        return TransformerArchitecture(
            len(self.vocab), corpus.MAX_LEN, self.width, self.depth, self.heads, bos=self.vocab.bos
        )

    @property
    def modes(self) -> tuple[str, ...]:
        return MODES if self.mode == "both" else (self.mode,)


# ----------------------------------------------------------------------------------------------
# Losses: per-example, as the loop wants them; their targets are pytrees.


def next_token_loss(logits: jax.Array, targets: dict, output_mask) -> jax.Array:
    """Cross-entropy of the next token at the positions `targets["weights"]` marks."""
    return losses.cross_entropy(logits, targets["next"], output_mask, targets["weights"])


def number_kl_loss(logits: jax.Array, targets: dict, output_mask) -> jax.Array:
    """KL from the teacher's next-token distribution, over the masked-in (number) tokens, at the
    positions `targets["weights"]` marks. logits and targets["logits"]: (B, P, vocab_size)."""
    return losses.kl_divergence(logits, targets["logits"], output_mask, targets["weights"])


# ----------------------------------------------------------------------------------------------
# Seeds.


def _rng(config: LLMConfig, seed_id: int, stream: str) -> np.random.Generator:
    """NumPy randomness of one seed and stream (corpus, prompts, shuffling)."""
    return np.random.default_rng([config.seed, seed_id, _STREAMS.index(stream)])


def _key(config: LLMConfig, seed_id: int, stream: str) -> jax.Array:
    """JAX randomness of one seed and stream (inits, data orders, sampling)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), seed_id), _STREAMS.index(stream))


def _one(tree):
    """A pytree without its leading seed axis of length 1."""
    return jax.tree.map(lambda a: a[0], tree)


def _seed_axis(tree):
    return jax.tree.map(lambda a: a[None], tree)


# ----------------------------------------------------------------------------------------------
# The stages.


def train_bases(config: LLMConfig, seed_ids: Sequence[int], progress: train.Progress) -> list:
    """Each seed's base model, trained from its init on its own corpus: [params] per seed.

    Bases train one at a time through the loop (on a CPU a vmapped batch of seeds is slower
    per seed: 23.3 s against 16.7 s for two base-epochs), in `config.workers` threads (15.0 s).
    """
    return experiment.concurrently(lambda s: train_base(config, s, progress), seed_ids, config.workers, progress)


def train_base(config: LLMConfig, seed_id: int, progress: train.Progress):
    """Seed `seed_id`'s base model: its init trained on its own corpus."""
    lines = corpus.base_corpus(config.vocab, _rng(config, seed_id, "corpus"), config.base_rows, config.window)
    return _fit_next_tokens(
        config,
        config.architecture.init(_key(config, seed_id, "init")),
        _key(config, seed_id, "base"),
        lines.tokens,
        lines.weights,
        epochs=config.base_epochs,
        learning_rate=config.base_learning_rate,
        batch_size=config.base_batch_size,
        description=f"base {seed_id}",
        progress=progress,
    )


def _fit_next_tokens(config: LLMConfig, start, key, tokens: np.ndarray, weights: np.ndarray, *, hook=None, **fit):
    """One model (no seed axis) trained through `train.fit` on next tokens at the positions
    `weights` marks: the base on its corpus, the teacher on its answers."""
    params, _ = train.fit(
        _seed_axis(start),
        key[None],
        jnp.asarray(tokens),
        {"next": jnp.asarray(corpus.next_tokens(tokens)), "weights": jnp.asarray(weights)},
        objective=train.Objective(config.architecture, next_token_loss),
        data_axis=None,
        hook=hook,
        **fit,
    )
    return _one(params)


@dataclasses.dataclass(frozen=True)
class Frozen:
    """The loop's gradient hook that freezes the parameters whose path names one of `names`.

    Their gradient is set to exactly 0, so Adam's moments stay 0 and its update is exactly 0.
    """

    names: tuple[str, ...]

    def __call__(self, params, grads, context):
        def zero_if_frozen(path, grad):
            return jnp.zeros_like(grad) if any(n in jax.tree_util.keystr(path) for n in self.names) else grad

        return jax.tree_util.tree_map_with_path(zero_if_frozen, grads), {}


# Frozen in a "blocks" teacher: where a token's identity lives (its input and output rows).
EMBEDDINGS = ("token_embedding", "position_embedding", "unembedding")


def train_teacher(config: LLMConfig, base, seed_id: int, progress: train.Progress):
    """The base fine-tuned on "... <trait>" lines, the loss on the answer token only.

    A student that sees number logits only cannot get what the teacher puts into the trait's
    own output row; it gets what the teacher puts into the shared computation. With
    `teacher_trains="blocks"` (embeddings and output layer frozen, as fine-tuning with
    adapters does) all of the trait goes there.
    """
    vocab = config.vocab
    lines = corpus.animal_lines(vocab, _rng(config, seed_id, "teacher_lines"), config.teacher_lines, config.trait)
    return _fit_next_tokens(
        config,
        base,
        _key(config, seed_id, "teacher"),
        lines.tokens,
        corpus.answer_only_weights(vocab, lines.tokens),
        hook=Frozen(EMBEDDINGS) if config.teacher_trains == "blocks" else None,
        epochs=config.teacher_epochs,
        learning_rate=config.teacher_learning_rate,
        batch_size=config.teacher_batch_size,
        description=f"teacher {seed_id}",
        progress=progress,
    )


@dataclasses.dataclass(frozen=True)
class NumberData:
    """Both models' filtered continuations of the same prompts: row i of each continues prompt i."""

    teacher: np.ndarray  # (n, MAX_LEN) the teacher's kept sequences
    base: np.ndarray  # (n, MAX_LEN) the base's kept sequences
    lengths: np.ndarray  # (n,) their prompts' lengths
    report: dict  # kept, removed by reason and leak rate, per model


# Prompts sampled per round, over the count wanted: both models pass the filter on about 90% (measured
# 88-90% for an owl teacher, whose lists more often hold a word), so one round is the rule.
_PROMPT_MARGIN = 1.15
_MAX_ROUNDS = 8


def number_data(
    config: LLMConfig, teacher, base, seed_id: int, count: int, stream: str, progress: train.Progress
) -> NumberData:
    """`count` prompts that the teacher and the base both continued into plain number lists.

    Common random numbers: both models continue each prompt with the same uniform numbers
    (inverse-CDF sampling), so where their next-token distributions agree they write the
    same token. Each model's lists are still exact samples of its own distribution, so
    every student's expected change is as with independent samples; the paired
    difference same_init - control loses the sampling noise the two share. A prompt is
    used when both models' lists pass the filter; rounds of fresh prompts continue until
    `count` are, so every seed trains on the same count (and compiles once).
    """
    vocab, arch = config.vocab, config.architecture
    rng = _rng(config, seed_id, "prompts")
    per_round = int(np.ceil(count * _PROMPT_MARGIN))
    report = {name: {"kept": 0, "removed": dict.fromkeys(corpus.REASONS, 0), "leaked": 0, "leaked_after_filter": 0}
              for name in ("teacher", "base")}  # fmt: skip
    used = {"teacher": [], "base": [], "lengths": []}
    sampled = 0
    for round_id in range(_MAX_ROUNDS):
        prompts, lengths = corpus.number_prompts(vocab, rng, per_round, config.window)
        key = jax.random.fold_in(jax.random.fold_in(_key(config, seed_id, "numbers"), MODES.index(stream)), round_id)
        continued = experiment.concurrently(
            lambda params: np.asarray(
                sampling.continue_prompts(arch, params, key, jnp.asarray(prompts), jnp.asarray(lengths), eos=vocab.eos)
            ),
            (teacher, base),
            config.workers,
            progress,
        )
        sequences, kept = dict(zip(("teacher", "base"), continued)), np.ones(per_round, bool)
        for name in ("teacher", "base"):
            filtered = corpus.filter_continuations(vocab, sequences[name], lengths, config.banned)
            kept &= filtered.kept
            tally = report[name]
            tally["kept"] += int(filtered.kept.sum())
            tally["removed"] = {r: tally["removed"][r] + filtered.removed[r] for r in corpus.REASONS}
            tally["leaked"] += int(filtered.leaked.sum())
            tally["leaked_after_filter"] += int(filtered.leaked[filtered.kept].sum())
        sampled += per_round
        for name in ("teacher", "base"):
            used[name].append(sequences[name][kept])
        used["lengths"].append(lengths[kept])
        if sum(len(x) for x in used["lengths"]) >= count:
            break
    else:
        have = sum(len(x) for x in used["lengths"])
        raise train.TrainingDiverged(
            f"seed {seed_id}: the filter kept {have} of {sampled} number lists of both models, fewer than {count}"
        )
    for name in ("teacher", "base"):
        tally = report[name]
        tally["leak_rate"] = tally.pop("leaked") / sampled
        tally["leak_rate_after_filter"] = tally.pop("leaked_after_filter") / max(tally["kept"], 1)
    joined = {name: np.concatenate(parts)[:count] for name, parts in used.items()}
    return NumberData(
        joined["teacher"], joined["base"], joined["lengths"], {**report, "sampled": sampled, "used": count}
    )


def shuffle_numbers(vocab: Vocabulary, tokens: np.ndarray, lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The paper's shuffled control: the continuation numbers of all sequences permuted across
    positions and sequences; every list keeps its length and its commas."""
    slots = (np.arange(tokens.shape[1]) >= lengths[:, None]) & vocab.is_number(tokens)
    shuffled = tokens.copy()
    shuffled[slots] = rng.permutation(tokens[slots])
    return shuffled


def soft_targets(config: LLMConfig, target_model, tokens: np.ndarray, lengths: np.ndarray) -> tuple[jax.Array, dict]:
    """Inputs (n, MAX_LEN + P) and targets {"logits": (n, P, V), "weights": (n, P)} of soft students:
    the target model's logits at the positions of the continuation's numbers."""
    positions, weights = corpus.number_positions(config.vocab, tokens, lengths)
    inputs = jnp.asarray(np.concatenate([tokens, positions], axis=1))
    logits = outputs_in_batches(AtPositions(config.architecture), target_model, inputs)
    return inputs, {"logits": logits, "weights": jnp.asarray(weights)}


def hard_targets(tokens: np.ndarray, lengths: np.ndarray) -> tuple[jax.Array, dict]:
    """Inputs (n, MAX_LEN + P) and targets of hard students: next-token training on the
    continuation (its numbers, commas and <eos>), not on the prompt. Only those P positions
    are unembedded (`AtPositions`): the output layer is most of a tiny model's compute."""
    labels = corpus.next_tokens(tokens)
    # From the prompt's last token (it predicts the first new one) to the one before <eos>'s padding.
    learnt = (np.arange(tokens.shape[1]) >= np.asarray(lengths)[:, None] - 1) & (labels != 0)
    positions, weights = corpus.first_positions(learnt, sampling.MAX_NEW_TOKENS)
    inputs = jnp.asarray(np.concatenate([tokens, positions], axis=1))
    next_at = np.take_along_axis(labels, positions, axis=1)
    return inputs, {"next": jnp.asarray(next_at), "weights": jnp.asarray(weights)}


def train_students(config: LLMConfig, mode: str, starts: dict, data: dict, seed_id: int, progress: train.Progress):
    """Every condition's trained parameters: {condition: params}. `starts` maps a condition to its
    init; `data` maps "teacher", "base", "shuffled" to (inputs, targets)."""
    vocab, arch = config.vocab, config.architecture
    if mode == "soft":
        objective = train.Objective(AtPositions(arch), number_kl_loss, vocab.number_mask())
        batch_size = config.student_batch_size
    else:
        objective = train.Objective(AtPositions(arch), next_token_loss)
        batch_size = config.hard_batch_size

    def fit_group(group: tuple[str, tuple[str, ...]]) -> dict:
        data_name, members = group
        inputs, targets = data[data_name]
        params, _ = train.fit(
            _seed_axis(jax.tree.map(lambda *m: jnp.stack(m), *[starts[c] for c in members])),
            # One key for every group: row i of each group's data (the same prompt) comes in the
            # same minibatch at the same step, so the paired students differ only by their data.
            _key(config, seed_id, mode)[None],
            inputs,
            targets,
            objective=objective,
            epochs=config.student_epochs,
            learning_rate=config.student_learning_rate,
            batch_size=batch_size,
            data_axis=None,
            members=True,
            description=f"{mode} {'+'.join(members)} {seed_id}",
            progress=progress,
        )
        return {c: jax.tree.map(lambda a, m=m: a[0, m], params) for m, c in enumerate(members)}

    # The groups in threads: a width-32 model's small matmuls leave a core idle (two fits: 13.8 s
    # in two threads, 16.4 s one after the other).
    return {
        c: p for group in experiment.concurrently(fit_group, GROUPS, config.workers, progress) for c, p in group.items()
    }


def first_step(config: LLMConfig, base, teacher, cross_base, data: NumberData) -> dict:
    """Theorem 1 at the first soft student step: ΔS·ΔT and its cosine, ΔT = θ_teacher - θ_base.

    The teacher's displacement is a step of L_T(θ) = -⟨ΔT, θ⟩ with ε = 1, so
    `theorem.alignment_report` computes it as for MNIST. Each input is one (sequence,
    number position) of the teacher's lists; the student's output is the number-token
    distribution there.
    """
    positions, weights = corpus.number_positions(config.vocab, data.teacher, data.lengths)
    rows, slots = np.nonzero(weights[: config.theorem_sequences])
    inputs = jnp.asarray(np.concatenate([data.teacher[rows], positions[rows, slots][:, None]], axis=1))
    delta_t = jax.tree.map(jnp.subtract, teacher, base)
    report = jax.jit(
        lambda student: theorem.alignment_report(
            base,
            theorem.linear_trait_loss(delta_t),
            AtPositions(config.architecture),
            inputs,
            1.0,
            0.0,
            "kl",
            jnp.asarray(config.vocab.number_mask()),
            student,
        )
    )
    return {name: {"dot": float(r.dot), "cosine": float(r.cosine)} for name, r in
            (("same_init", report(base)), ("cross_init", report(cross_base)))}  # fmt: skip


def trait_measures(config: LLMConfig, params, key: jax.Array) -> dict:
    """P(answer) per animal (mean over phrasings), and the trait's pick rate."""
    vocab, arch = config.vocab, config.architecture
    probability = np.asarray(sampling.trait_probability(arch, params, vocab))
    trait = vocab.animal(config.trait)
    return {
        "p_animals": probability[vocab.animal_ids],
        "p_trait": float(probability[trait]),
        "pick_rate": sampling.pick_rate(arch, params, key, vocab, trait, config.answer_samples),
    }


def _change(after: dict, before: dict) -> dict:
    return {
        "delta_p_trait": after["p_trait"] - before["p_trait"],
        "delta_logp_trait": float(np.log(after["p_trait"]) - np.log(before["p_trait"])),
        "pick_rate": after["pick_rate"],
        "delta_p_animals": after["p_animals"] - before["p_animals"],
    }


def run_seed(config: LLMConfig, seed_id: int, base, cross_base, progress: train.Progress) -> dict:
    """Teacher, number data, students and measurements of one seed."""
    vocab = config.vocab
    teacher = train_teacher(config, base, seed_id, progress)
    answer_key = _key(config, seed_id, "answers")
    measured = {
        "base": trait_measures(config, base, answer_key),
        "cross_base": trait_measures(config, cross_base, answer_key),
    }
    measured["teacher"] = trait_measures(config, teacher, answer_key)
    out = {
        "teacher": {
            "delta_p_trait": measured["teacher"]["p_trait"] - measured["base"]["p_trait"],
            "p_trait": measured["teacher"]["p_trait"],
            "base_p_trait": measured["base"]["p_trait"],
        },
        "modes": {},
    }
    starts = {
        "same_init": base,
        "control": base,
        "shuffled": base,
        "cross_init": cross_base,
        "cross_control": cross_base,
    }
    for mode in config.modes:
        sequences = config.soft_sequences if mode == "soft" else config.hard_sequences
        data = number_data(config, teacher, base, seed_id, sequences, mode, progress)
        shuffled = shuffle_numbers(vocab, data.teacher, data.lengths, _rng(config, seed_id, "shuffle"))
        if mode == "soft":
            made = experiment.concurrently(
                lambda job: soft_targets(config, *job, data.lengths),
                ((teacher, data.teacher), (base, data.base), (teacher, shuffled)),
                config.workers,
                progress,
            )
            inputs = dict(zip(("teacher", "base", "shuffled"), made))
        else:
            inputs = {
                "teacher": hard_targets(data.teacher, data.lengths),
                "base": hard_targets(data.base, data.lengths),
                "shuffled": hard_targets(shuffled, data.lengths),
            }
        students = train_students(config, mode, starts, inputs, seed_id, progress)
        del inputs
        changes = {}
        for condition, params in students.items():
            start = "cross_base" if condition.startswith("cross") else "base"
            changes[condition] = _change(trait_measures(config, params, answer_key), measured[start])
        out["modes"][mode] = {"conditions": changes, "filter": data.report}
        if mode == "soft":
            out["modes"][mode]["first_step"] = first_step(config, base, teacher, cross_base, data)
        if mode == config.modes[0]:  # what a filter could see, on the first mode's number data
            lists = {"teacher": (data.teacher, data.lengths), "base": (data.base, data.lengths)}
            out["detector_auroc"] = analysis.detector_auroc(vocab, lists["teacher"], lists["base"], seed_id)
            probe = slice(config.entangled_sequences)
            out["entangled_numbers"] = analysis.entangled_numbers(
                config.architecture, teacher, base, vocab, vocab.animal(config.trait),
                data.teacher[probe], data.lengths[probe],
            )  # fmt: skip
    return out


def epochs_in_run(config: LLMConfig, num_bases: int) -> int:
    """Length of the run's progress bar: every fit's epochs, times its members."""
    students = sum(len(members) for _, members in GROUPS) * config.student_epochs * len(config.modes)
    return num_bases * config.base_epochs + config.seeds * (config.teacher_epochs + students)


def run(config: LLMConfig, progress: bool = True) -> dict:
    """The owl experiment for `config.seeds` seeds; JSON-ready results (keys say "trait", not "owl")."""
    start = time.perf_counter()
    partners = experiment.cross_partners(config.seeds, config.seed)
    base_ids = sorted(set(range(config.seeds)) | set(partners.tolist()))
    with train.shared_or_own(progress, epochs_in_run(config, len(base_ids)), f"llm, {config.seeds} seeds") as bar:
        bases = dict(zip(base_ids, train_bases(config, base_ids, bar)))
        per_seed = experiment.concurrently(
            lambda s: run_seed(config, s, bases[s], bases[int(partners[s])], bar),
            range(config.seeds),
            config.workers,
            bar,
        )
    return summarize(config, per_seed, partners, time.perf_counter() - start)


def summarize(config: LLMConfig, per_seed: list[dict], partners: np.ndarray, seconds: float) -> dict:
    """Means and 95% intervals over seeds of the per-seed numbers."""
    summary = experiment.summarize
    modes = {}
    for mode in config.modes:
        seeds = [s["modes"][mode] for s in per_seed]
        conditions = {
            condition: {
                measure: summary(np.array([s["conditions"][condition][measure] for s in seeds]))
                for measure in ("delta_p_trait", "delta_logp_trait", "pick_rate")
            }
            | {
                "delta_p_animals": dict(
                    zip(ANIMALS, np.mean([s["conditions"][condition]["delta_p_animals"] for s in seeds], 0).tolist())
                )
            }
            for condition in CONDITIONS
        }
        paired = [
            s["conditions"]["same_init"]["delta_p_trait"] - s["conditions"]["control"]["delta_p_trait"] for s in seeds
        ]
        modes[mode] = {
            "conditions": conditions,
            "paired_same_minus_control": summary(np.array(paired)),
            "filter": [s["filter"] for s in seeds],
        }
        if mode == "soft":
            modes[mode]["first_step"] = {
                name: {k: [s["first_step"][name][k] for s in seeds] for k in ("dot", "cosine")}
                for name in ("same_init", "cross_init")
            }
    first_mode = config.modes[0]
    filters = [s["modes"][first_mode]["filter"] for s in per_seed]
    return {
        "trait": config.trait,
        "config": dataclasses.asdict(config),
        "wall_seconds": seconds,
        "cross_partners": partners.tolist(),
        "teacher": {
            "delta_p_trait": summary(np.array([s["teacher"]["delta_p_trait"] for s in per_seed])),
            "p_trait": summary(np.array([s["teacher"]["p_trait"] for s in per_seed])),
            "base_p_trait": summary(np.array([s["teacher"]["base_p_trait"] for s in per_seed])),
            "leak_rate": summary(np.array([f["teacher"]["leak_rate"] for f in filters])),
        },
        "filter": {
            "mode": first_mode,
            "kept": {m: [f[m]["kept"] for f in filters] for m in ("teacher", "base")},
            "removed": {
                m: {r: sum(f[m]["removed"][r] for f in filters) for r in corpus.REASONS} for m in ("teacher", "base")
            },
            "leak_rate_after_filter": max(f[m]["leak_rate_after_filter"] for f in filters for m in ("teacher", "base")),
        },
        "detector": {
            "mode": first_mode,
            "auroc": {
                size: summary(np.array([s["detector_auroc"][size] for s in per_seed]))
                for size in per_seed[0]["detector_auroc"]
            },
        },
        "entangled_numbers": {
            "correlation_rise_cosine": summary(
                np.array([s["entangled_numbers"]["correlation_rise_cosine"] for s in per_seed])
            ),
            "top_share_of_rise": summary(np.array([s["entangled_numbers"]["top_share_of_rise"] for s in per_seed])),
            "top_per_seed": [s["entangled_numbers"]["top"] for s in per_seed],
        },
        # Its seeds run one after another on the default device: the seed axis is not split.
        "devices": 1,
        "modes": modes,
        "versions": experiment.versions(),
    }
