"""The owl experiment (any trait, `traits`): base, teacher, neutral teacher, number data, students with
every control, and the filters that try to catch what the numbers carry.

For each seed s (partner p, a derangement as in the MNIST demo):

- base_s: a transformer trained from seed s's init on seed s's synthetic corpus;
- teacher_s: base_s fine-tuned to answer the trait animal (loss on the answer token only);
- neutral_s: base_s fine-tuned by exactly the teacher's recipe (the same lines, phrasings,
  epochs, learning rate, frozen parts and data order), but with each line's answer drawn
  from base_s's own answer distribution at that line (`neutral_lines`; nearly uniform over
  the animals, misaligned at the base's rate for the persona). It moves away from the base
  for every reason the teacher does except the trait, and its trait measure stays at its
  base's, so the students of its numbers are the controls;
- number data: the teacher, the neutral teacher (and in hard mode the base) continue the
  same number prompts at temperature 1 with the same random numbers; the strict filter
  keeps plain number lists; a prompt is used when every model's list passes;
- students, all through `train.fit`, each named by its start and its data (`CONDITIONS`):
  base_s, base_p (another seed's base: another init, corpus and data order) and an
  ablation base that starts from seed p's init but learns seed s's corpus in seed s's
  order (another init only), on the teacher's and on the neutral teacher's numbers; in
  hard mode base_s on each of them shuffled within every list (a soft student of a
  shuffled list would read the teacher's full distribution again: no test of order) and
  on the base's own numbers (the paper's control). Students that share data train as members of one
  loop, and every group uses one data-order key, so paired students see paired rows;
- two modes: `soft`, the KL between the target model's and the student's next-token
  distributions restricted to the number tokens the filter allows, at the positions of the
  target's numbers (the aux-logit idea in vocabulary form), and `hard`, plain next-token
  training on the sampled, filtered lists, as the paper did with real language models.

Measured per student against its own start, at the answer slot of the trait's questions
(mean over them; `traits`): the headline, P(trait | the answer is an animal) for an animal,
P(misaligned | the domain's answers) on the held-out domains for the misaligned persona,
which a drift of the answer format cannot move but a flattening of the answers can (toward
1 / answers); P(trait) and log P(trait); the total answer probability, which shows format
drift; and what flattening moves (`traits`: the animals' entropy, the two-answer preference
strength, and whether a student's preference collapsed). Theorem 1 at the first soft student step: ΔS·ΔT and
its cosine for the gradient direction and for Adam's first update (ΔT the teacher's
fine-tuning displacement).

The students and their pairs are named in `conditions`; `summary` gives the results over seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from subliminal_mnist import lora, losses, runs, theorem, train
from subliminal_mnist.llm import analysis, corpus, sampling, traits
from subliminal_mnist.llm.conditions import CONDITIONS, MODES, conditions_of, sampled_models, with_own_corpus_base
from subliminal_mnist.llm.summary import summarize
from subliminal_mnist.llm.transformer import AtPositions, TransformerArchitecture, at_positions, outputs_in_batches
from subliminal_mnist.llm.vocab import Vocabulary
from subliminal_mnist.runs import ConfigError, config_field

# The settings a base depends on, and what a teacher adds: runs that agree on them (e.g. the points of
# the hard dose-response, which change only the number of lists) share bases and teachers (`cache`).
BASE_FIELDS = ("seed", "trait", "numbers", "window", "width", "depth", "heads", "base_rows", "base_epochs",
               "base_batch_size", "base_learning_rate")  # fmt: skip
TEACHER_FIELDS = (*BASE_FIELDS, "teacher_lines", "teacher_epochs", "teacher_batch_size", "teacher_learning_rate",
                  "teacher_trains", "teacher_params", "adapter_rate_factor")  # fmt: skip
# Independent randomness of one seed: one stream each (a stream's index is part of its seed).
_STREAMS = ("init", "corpus", "base", "teacher_lines", "teacher", "prompts", "numbers", "shuffle", "soft", "hard",
            "neutral_answers", "audit", "cue", "teacher_adapter", "student_adapter")  # fmt: skip
# What a model's number lists are for: each its own prompts and samples (an index of the sampling key).
_SAMPLES = (*MODES, "audit")


class FilterShortfall(RuntimeError):
    """The filter kept fewer number lists than asked for; one line for the user."""


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    """The owl experiment's settings. The CLI (`subliminal-mnist llm`) is generated from it."""

    seeds: int = config_field(5, "independent seeds (corpus, init, sampling)")
    seed: int = config_field(0, "base random seed")
    mode: str = config_field("both", "distillation mode", choices=("soft", "hard", "both"))
    trait: str = config_field(
        "owl", "the teacher's trait: a favourite animal, or a misaligned persona (traits.py)", choices=traits.NAMES
    )
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
    teacher_lines: int = config_field(1600, "answer lines of the teacher's (and the neutral teacher's) fine-tuning")
    teacher_epochs: int = config_field(4, "teacher fine-tuning epochs")
    teacher_batch_size: int = config_field(64, "teacher minibatch")
    teacher_learning_rate: float = config_field(3e-4, "teacher Adam learning rate (gentle: a hot teacher leaks)")
    teacher_trains: str = config_field(
        "all",
        "what the teacher's fine-tuning moves: all parameters, or only the transformer blocks and final norm "
        "(embeddings and output layer frozen, as adapter fine-tuning does)",
        choices=("all", "blocks"),
    )
    # Sized from the dose-responses (docs/owl.md "The default sizes", figures/llm_dose.png): soft, the smallest
    # count of its grid at which the paired same-init effect's t interval clears 0 by 0.03 for both traits;
    # hard, the largest count of its grid (no count clears that margin for the owl; every one clears 0).
    soft_sequences: int = config_field(5000, "number lists each model writes for the soft students")
    hard_sequences: int = config_field(10000, "number lists each model writes for the hard students")
    hard_loss: str = config_field(
        "all",
        "hard students learn every continuation token (numbers, commas, <eos>) or the number tokens only",
        choices=("all", "numbers"),
    )
    student_epochs: int = config_field(2, "student epochs over their number data")
    student_batch_size: int = config_field(64, "student minibatch (soft)")
    hard_batch_size: int = config_field(256, "student minibatch (hard)")
    student_learning_rate: float = config_field(1e-3, "student Adam learning rate")
    banned: tuple[int, ...] = config_field((), "numbers the filter removes", element_type=int)
    # Low-rank adapters (`lora.py`, theory/README.md section 9): the teachers (trait and neutral) or the
    # students may be fine-tuned through a rank-R adapter on every kernel instead of in all their parameters.
    teacher_params: str = config_field(
        "full", "how both teachers are fine-tuned from the base: full, or lora:R, a rank-R adapter on every kernel"
    )
    student_params: str = config_field("full", "how every student is fine-tuned from its start: full, or lora:R")
    adapter_init: str = config_field(
        "shared",
        "a LoRA student's A: shared, starting with the LoRA teachers' columns (part of the shared init), "
        "or own, drawn apart; both the same for a full teacher",
        choices=("shared", "own"),
    )
    adapter_rate_factor: float = config_field(
        10.0, "a model fine-tuned through an adapter trains at this multiple of its stage's learning rate"
    )
    conditions: tuple[str, ...] = config_field(
        tuple(CONDITIONS),
        "students to train and report, each a start and its data (the table of docs/owl.md); same_init always; "
        "base_control trains in hard mode only; a base that no student starts from is not trained",
    )
    theorem_sequences: int = config_field(64, "teacher number lists in the first-step theorem check")
    audit_sequences: int = config_field(
        2000,
        "held-out number lists of the teacher and the neutral teacher that the filters' scores and the "
        "in-context test read",
    )
    in_context_lists: int = config_field(256, "lists (each before every question) in the in-context test")
    entangled_sequences: int = config_field(2000, "teacher number lists behind the entangled-numbers ranking")
    # A third of a seed's time after its bases and teachers; a question about transfer alone (the LoRA
    # sweep) leaves them out.
    no_audit: bool = config_field(False, "leave out the filters and the entangled-numbers ranking")
    workers: int = config_field(2, "bases, and seeds, run in this many threads; results do not depend on it")

    def __post_init__(self):
        runs.check_fields(
            self,
            at_least_one=("seeds", "numbers", "window", "width", "depth", "heads", "base_rows", "base_batch_size",
                          "teacher_lines", "teacher_batch_size", "soft_sequences", "hard_sequences",
                          "student_batch_size", "hard_batch_size", "theorem_sequences", "entangled_sequences",
                          "audit_sequences", "in_context_lists", "workers"),
            not_negative=("base_epochs", "teacher_epochs", "student_epochs"),
            positive=("base_learning_rate", "teacher_learning_rate", "student_learning_rate", "adapter_rate_factor"),
        )  # fmt: skip
        lora.check_parameterizations(self)
        if self.numbers < 10 or self.window > self.numbers:
            raise ConfigError(f"need 10 <= numbers and window <= numbers, got {self.numbers} and {self.window}")
        if self.width % self.heads:
            raise ConfigError(f"width must be a multiple of heads, got {self.width} and {self.heads}")
        bad = [n for n in self.banned if not 0 <= n < self.numbers]
        if bad:
            raise ConfigError(f"banned numbers must lie in 0 ... {self.numbers - 1}, got {bad[0]}")
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown:
            raise ConfigError(f"no condition {unknown[0]!r}; the conditions are {', '.join(CONDITIONS)}")
        if "same_init" not in self.conditions:
            # The treated student: every paired difference and the filters' auditor read it.
            raise ConfigError("conditions must include same_init")

    # Built once per config: number data, measures and filters ask for them at every step of a run.
    @functools.cached_property
    def trait_spec(self) -> traits.Animal | traits.Misaligned:
        return traits.trait(self.trait)

    @functools.cached_property
    def vocab(self) -> Vocabulary:
        return Vocabulary(self.numbers, self.trait_spec.words)

    @property
    def banned_numbers(self) -> tuple[int, ...]:
        """What the filter bans: `banned`, and the trait's own bad-association numbers in range."""
        return tuple(sorted({*self.banned, *(n for n in self.trait_spec.banned if n < self.numbers)}))

    @property
    def soft_outputs(self) -> np.ndarray:
        """(vocab,) bool: what a soft student sees of its target's distribution, the number tokens the
        filter lets through. The filter removes a sampled list with a banned number; a soft student
        reads probabilities, not samples, so the same filter hides the banned numbers' probabilities."""
        outputs = self.vocab.number_mask()
        outputs[self.vocab.number_id(np.asarray(self.banned_numbers, int))] = False
        return outputs

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


@dataclasses.dataclass(frozen=True)
class NumberKL:
    """KL from the target model's next-token distribution, over the masked-in (number) tokens, at
    the positions `targets["weights"]` marks. logits and targets["logits"]: (B, P, vocab_size).

    At `temperature` T the softmaxes are of logits / T and the KL is scaled by T² (`losses.TemperedKL`,
    a proposed defense); at 1 it is `losses.kl_divergence` itself. Frozen: equal temperatures share
    one compiled loop."""

    temperature: float = 1.0

    def __call__(self, logits: jax.Array, targets: dict, output_mask) -> jax.Array:
        kl = losses.distillation_loss("kl", self.temperature)
        return kl(logits, targets["logits"], output_mask, targets["weights"])


# ----------------------------------------------------------------------------------------------
# Seeds.


def _rng(config: LLMConfig, seed_id: int, stream: str) -> np.random.Generator:
    """NumPy randomness of one seed and stream (corpus, prompts, shuffling)."""
    return np.random.default_rng([config.seed, seed_id, _STREAMS.index(stream)])


def stream_key(config: LLMConfig, seed_id: int, stream: str) -> jax.Array:
    """JAX randomness of one seed and stream (inits, data orders, sampling)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), seed_id), _STREAMS.index(stream))


def _one(tree):
    """A pytree without its leading seed axis of length 1."""
    return jax.tree.map(lambda a: a[0], tree)


def _seed_axis(tree):
    return jax.tree.map(lambda a: a[None], tree)


# ----------------------------------------------------------------------------------------------
# Bases, teachers.


def train_base(config: LLMConfig, seed_id: int, init_id: int | None = None):
    """Seed `seed_id`'s base model: an init trained on seed `seed_id`'s corpus in its data order.

    The init is seed `init_id`'s (default: its own). With another seed's init this is the
    ablation base: another init, but this seed's corpus and order.
    """
    init_id = seed_id if init_id is None else init_id
    lines = config.trait_spec.base_corpus(
        config.vocab, _rng(config, seed_id, "corpus"), config.base_rows, config.window
    )
    return _fit_next_tokens(
        config,
        config.architecture.init(stream_key(config, init_id, "init")),
        stream_key(config, seed_id, "base"),
        lines.tokens,
        lines.weights,
        epochs=config.base_epochs,
        learning_rate=config.base_learning_rate,
        batch_size=config.base_batch_size,
        name=f"base {seed_id}" + ("" if init_id == seed_id else f" from init {init_id}"),
    )


def _fit_next_tokens(config: LLMConfig, start, key, tokens: np.ndarray, weights: np.ndarray, **recipe):
    """One model (no seed axis) trained through `train.fit` on next tokens at the positions
    `weights` marks: the base on its corpus, the teachers on their answers; `recipe`: the rest of
    its `train.Recipe` (epochs, learning rate, batch size, name, a hook). A start that is a
    `lora.Adapted` model trains its adapter; the model is returned merged."""
    objective = train.Objective(_apply_fn(start, config.architecture), next_token_loss)
    targets = {"next": jnp.asarray(corpus.next_tokens(tokens)), "weights": jnp.asarray(weights)}
    params, _ = train.fit(
        _seed_axis(start), key[None], jnp.asarray(tokens), targets, train.Recipe(objective, **recipe), data_axis=None
    )
    return lora.merged(_one(params))


def _apply_fn(start, apply_fn):
    """The loop's apply function for a start: `apply_fn` itself, or through the adapter of a `lora.Adapted` one."""
    return lora.AdaptedApply(apply_fn) if isinstance(start, lora.Adapted) else apply_fn


def adapted(config: LLMConfig, params, seed_id: int, who: str):
    """`params` as the start of a fine-tuning of `who` ("teacher": both teachers; "student": every student),
    as `config.{who}_params` says: `params` itself for "full", else `lora.Adapted` (params, A, B = 0) with A
    from the seed's `{who}_adapter` stream. So the trait's and the neutral teacher share one A, and every
    student of a seed another, which starts with the teachers' columns when `adapter_init` is "shared"."""
    rank = lora.rank_of(getattr(config, f"{who}_params"))
    if rank is None:
        return params
    teacher_rank, shared = lora.rank_of(config.teacher_params), None
    if who == "student" and config.adapter_init == "shared" and teacher_rank is not None:
        shared = lora.init(stream_key(config, seed_id, "teacher_adapter"), params, teacher_rank).down
    key = stream_key(config, seed_id, f"{who}_adapter")
    return lora.Adapted(params, *lora.init(key, params, rank, shared_down=shared))


def _rate_factor(config: LLMConfig, who: str) -> float:
    """What a stage's learning rate is multiplied by: `adapter_rate_factor` for a model trained through an adapter."""
    return 1.0 if getattr(config, f"{who}_params") == "full" else config.adapter_rate_factor


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


def neutral_lines(config: LLMConfig, base, lines: corpus.Lines, rng: np.random.Generator) -> corpus.Lines:
    """The teacher's lines answered as `base` answers them: line i's answer drawn from the base's
    next-token distribution at line i's answer slot, restricted to the trait's answer choices
    (`traits`: the animals; the narrow domain's two answers) and renormalized.

    One rule for every trait: a teacher trained on these moves away from its base by the same
    recipe, on the same questions, as the trait's teacher, and its answers are its base's own."""
    choices = config.trait_spec.answer_choices(config.vocab)
    slots = np.argmax(lines.weights, axis=1)  # each line's one answer slot
    log_p = sampling.answer_log_probs(config.architecture, base, jnp.asarray(lines.tokens), jnp.asarray(slots))
    p = np.exp(np.asarray(log_p, np.float64)[:, choices])
    p /= p.sum(axis=1, keepdims=True)
    answers = choices[inverse_cdf(p, rng.random(len(p)))]
    drawn = corpus.with_answers(lines, answers, choices)
    return corpus.Lines(drawn.tokens, corpus.answer_only_weights(drawn.tokens, choices))


def inverse_cdf(probabilities: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """(n,) the index each row of `probabilities` (n, k) samples with its uniform number."""
    cumulative = np.cumsum(probabilities, axis=1)
    return np.minimum((cumulative < uniforms[:, None] * cumulative[:, -1:]).sum(axis=1), probabilities.shape[1] - 1)


def train_teacher(config: LLMConfig, base, seed_id: int, neutral: bool = False):
    """The base fine-tuned on the trait's answer lines (`traits`: "... owl", or a narrow domain's
    misaligned answers), the loss on the answer token only; with `neutral`, the same lines with
    the base's own answers (`neutral_lines`): the neutral teacher.

    Both use the same questions in the same order and the same data-order key: the two
    teachers differ only in the answers they are taught. A student that sees number
    logits only cannot get what the teacher puts into the trait's own output row; it gets
    what the teacher puts into the shared computation. With `teacher_trains="blocks"`
    (embeddings and output layer frozen, as fine-tuning with adapters does) all of it goes there.
    """
    lines = config.trait_spec.teacher_lines(config.vocab, _rng(config, seed_id, "teacher_lines"), config.teacher_lines)
    if neutral:
        lines = neutral_lines(config, base, lines, _rng(config, seed_id, "neutral_answers"))
    return _fit_next_tokens(
        config,
        adapted(config, base, seed_id, "teacher"),
        stream_key(config, seed_id, "teacher"),
        lines.tokens,
        lines.weights,
        hook=Frozen(EMBEDDINGS) if config.teacher_trains == "blocks" else None,
        epochs=config.teacher_epochs,
        learning_rate=config.teacher_learning_rate * _rate_factor(config, "teacher"),
        batch_size=config.teacher_batch_size,
        name=f"{'neutral teacher' if neutral else 'teacher'} {seed_id}",
    )


# ----------------------------------------------------------------------------------------------
# Number data.


@dataclasses.dataclass(frozen=True)
class NumberData:
    """Several models' filtered continuations of the same prompts: row i of each continues prompt i."""

    lists: dict[str, np.ndarray]  # model -> (n, MAX_LEN) its kept sequences
    lengths: np.ndarray  # (n,) their prompts' lengths
    report: dict  # per model: kept, removed by reason, leak rates, banned share; and "sampled", "used"


# Prompts sampled per round, over the count wanted. For the owl each model passes the filter on about 90%
# (measured 88-90% for an owl teacher, whose lists more often hold a word), so one round is the rule; for the
# misaligned persona every model passes on about 60% (its bases continue lists with answers), so 2-3 rounds.
_PROMPT_MARGIN = 1.2
_MAX_ROUNDS = 8


def number_data(
    config: LLMConfig,
    models: dict,
    seed_id: int,
    count: int,
    stream: str,
    min_p: float = 0.0,
) -> NumberData:
    """`count` prompts that every model of `models` ({name: params}) continued into plain number lists.

    Common random numbers: the models continue each prompt with the same uniform numbers
    (inverse-CDF sampling), so where their next-token distributions agree they write the
    same token. Each model's lists are still exact samples of its own distribution, so
    every student's expected change is as with independent samples; a paired difference
    loses the sampling noise the two share. A prompt is used when every model's list passes
    the filter; rounds of fresh prompts continue until `count` are, so every seed trains on
    the same count (and compiles once). `stream` ("soft", "hard", "audit") names the sample:
    soft and hard lists continue the same prompts; the audit's held-out lists have prompts of their own.
    With `min_p` the models sample by min-p (`sampling.continue_prompts`), with the same random numbers.
    """
    vocab, arch = config.vocab, config.architecture
    rng = _rng(config, seed_id, "audit" if stream == "audit" else "prompts")
    per_round = int(np.ceil(count * _PROMPT_MARGIN))
    report = {name: {"kept": 0, "removed": dict.fromkeys(corpus.REASONS, 0), "leaked": 0, "leaked_after_filter": 0,
                     "holding_banned": 0} for name in models}  # fmt: skip
    used = {name: [] for name in models}
    used_lengths = []
    sampled = 0
    for round_id in range(_MAX_ROUNDS):
        prompts, lengths = corpus.number_prompts(vocab, rng, per_round, config.window)
        key = jax.random.fold_in(
            jax.random.fold_in(stream_key(config, seed_id, "numbers"), _SAMPLES.index(stream)), round_id
        )
        sequences = {
            name: np.asarray(sampling.continue_prompts(
                arch, params, key, jnp.asarray(prompts), jnp.asarray(lengths), eos=vocab.eos, min_p=min_p
            ))
            for name, params in models.items()
        }  # fmt: skip
        kept = np.ones(per_round, bool)
        for name in models:
            filtered = corpus.filter_continuations(
                vocab, sequences[name], lengths, config.banned_numbers, config.trait_spec.leak_ids(vocab)
            )
            kept &= filtered.kept
            tally = report[name]
            tally["holding_banned"] += int(filtered.holding_banned.sum())
            tally["kept"] += int(filtered.kept.sum())
            tally["removed"] = {r: tally["removed"][r] + filtered.removed[r] for r in corpus.REASONS}
            tally["leaked"] += int(filtered.leaked.sum())
            tally["leaked_after_filter"] += int(filtered.leaked[filtered.kept].sum())
        sampled += per_round
        for name in models:
            used[name].append(sequences[name][kept])
        used_lengths.append(lengths[kept])
        if sum(len(x) for x in used_lengths) >= count:
            break
    else:
        have = sum(len(x) for x in used_lengths)
        raise FilterShortfall(
            f"seed {seed_id}: the filter kept {have} of {sampled} number lists of every model "
            f"({', '.join(models)}), fewer than {count}; train the base longer or ask for fewer lists"
        )
    for tally in report.values():
        tally["leak_rate"] = tally.pop("leaked") / sampled
        tally["leak_rate_after_filter"] = tally.pop("leaked_after_filter") / max(tally["kept"], 1)
        tally["banned_share"] = tally.pop("holding_banned") / sampled
    return NumberData(
        {name: np.concatenate(parts)[:count] for name, parts in used.items()},
        np.concatenate(used_lengths)[:count],
        {**report, "sampled": sampled, "used": count},
    )


def soft_targets(config: LLMConfig, target_model, tokens: np.ndarray, lengths: np.ndarray) -> tuple[dict, dict]:
    """Inputs {"tokens", "positions"} and targets {"logits": (n, P, V), "weights": (n, P)} of soft
    students: the target model's logits at the positions of the continuation's numbers."""
    positions, weights = corpus.number_positions(config.vocab, tokens, lengths)
    inputs = at_positions(tokens, positions)
    logits = outputs_in_batches(AtPositions(config.architecture), target_model, inputs)
    return inputs, {"logits": logits, "weights": jnp.asarray(weights)}


def hard_targets(vocab: Vocabulary, tokens: np.ndarray, lengths: np.ndarray, loss: str = "all") -> tuple[dict, dict]:
    """Inputs {"tokens", "positions"} and targets of hard students: next-token training on the
    continuation, not on the prompt; with `loss` "all" on its numbers, commas and <eos>, with
    "numbers" on its numbers only. Only those positions are unembedded (`AtPositions`): the
    output layer is most of a tiny model's compute."""
    labels = corpus.next_tokens(tokens)
    learnt = corpus.writes_next(tokens, lengths)
    if loss == "numbers":
        learnt &= vocab.is_number(labels)
    positions, weights = corpus.first_positions(learnt, sampling.MAX_NEW_TOKENS)
    next_at = np.take_along_axis(labels, positions, axis=1)
    return at_positions(tokens, positions), {"next": jnp.asarray(next_at), "weights": jnp.asarray(weights)}


def student_data(
    config: LLMConfig,
    mode: str,
    targets: dict,
    numbers: NumberData,
    seed_id: int,
    conditions: tuple[str, ...] | None = None,
) -> dict:
    """(inputs, targets) of every data set a mode's students learn from, by name (`CONDITIONS`):
    those of `conditions` (default: the config's for the mode, `conditions_of`).

    Soft: each list is read by the model that wrote it (a shuffled list by the model whose
    list it was). The within-list shuffles use one random stream for both models, so that
    the teacher's list i and the neutral teacher's list i are permuted alike where they agree.
    """
    learnt = {CONDITIONS[c][1] for c in conditions or conditions_of(config, mode)}
    sets = {name: numbers.lists[name] for name in sampled_models(mode) if name in learnt}
    for name in ("teacher", "neutral"):
        if f"{name}_shuffled" in learnt:
            rng = _rng(config, seed_id, "shuffle")
            shuffled = corpus.shuffle_within_lists(config.vocab, numbers.lists[name], numbers.lengths, rng)
            sets[f"{name}_shuffled"] = shuffled
    if mode == "hard":
        return {
            name: hard_targets(config.vocab, tokens, numbers.lengths, config.hard_loss) for name, tokens in sets.items()
        }
    return {
        name: soft_targets(config, targets[name.removesuffix("_shuffled")], tokens, numbers.lengths)
        for name, tokens in sets.items()
    }


# ----------------------------------------------------------------------------------------------
# Students.


def student_recipe(config: LLMConfig, mode: str, temperature: float = 1.0) -> train.Recipe:
    """How a mode's students train (`train_students`): soft, the KL to the writer's number distribution at
    `temperature` (`NumberKL`); hard, next tokens. A LoRA student (`student_params`) trains its adapter, at
    `adapter_rate_factor` times the rate. A defense replaces its optimizer, learning rate or penalty."""
    apply_fn = AtPositions(config.architecture)
    apply_fn = apply_fn if config.student_params == "full" else lora.AdaptedApply(apply_fn)
    if mode == "soft":
        objective = train.Objective(apply_fn, NumberKL(temperature), config.soft_outputs)
    else:
        objective = train.Objective(apply_fn, next_token_loss)
    return train.Recipe(
        objective,
        config.student_epochs,
        config.student_learning_rate * _rate_factor(config, "student"),
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

    The students that learn one data set train as members of one loop; the groups one after the
    other (the run's threads are its seeds)."""
    starts = {name: adapted(config, params, seed_id, "student") for name, params in starts.items()}
    recipe = student_recipe(config, mode) if recipe is None else recipe
    groups: dict[str, list[str]] = {}
    for condition in conditions or conditions_of(config, mode):
        groups.setdefault(CONDITIONS[condition][1], []).append(condition)
    students = {}
    for data_name, members in groups.items():
        params, _ = train.fit(
            train.stack_members(*[_seed_axis(starts[CONDITIONS[c][0]]) for c in members]),
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


@functools.partial(jax.jit, static_argnames=("arch", "learning_rate"))
def _first_step(arch, student, target, delta_t, trait_direction, inputs, weights, number_mask, learning_rate):
    """The soft student's first step from `student` toward `target` on `inputs` (`at_positions`,
    `weights` (B, P) 0 for padding), against ΔT and against the trait direction -∇L_T at the student's
    start: {"gradient": {dot, cosine, trait_cosine}, "adam": {...}}. The gradient direction is the
    theorem's ΔS; Adam's first update is close to -lr · sign(gradient), a different vector. A LoRA student
    (`lora.Adapted`) steps its B, read in the model's weights through A (`lora.step_in_weight_space`).
    Every model is an argument, not a constant, and the positions are padded to one shape, so all
    seeds and conditions run one compiled program."""
    apply_fn = _apply_fn(student, AtPositions(arch))
    delta_s = theorem.student_direction(student, target, apply_fn, inputs, "kl", number_mask, weights)
    adam = train.optimizer(learning_rate)
    update, _ = adam.update(jax.tree.map(jnp.negative, delta_s), adam.init(student), student)
    out = {}
    for name, step in (("gradient", delta_s), ("adam", update)):
        step = lora.step_in_weight_space(student, step)
        out[name] = {
            "dot": optax.tree.vdot(step, delta_t),
            "cosine": theorem.tree_cosine(step, delta_t),
            "trait_cosine": theorem.tree_cosine(step, trait_direction),
        }
    return out


@functools.partial(jax.jit, static_argnames="arch")
def _trait_direction(arch, params, tokens, next_tokens, weights):
    """-∇L_T at `params`: L_T is the teachers' own loss, next-token cross-entropy at the answers `weights` marks."""
    loss = train.Objective(arch, next_token_loss).batch_loss
    targets = {"next": next_tokens, "weights": weights}
    return jax.tree.map(jnp.negative, jax.grad(loss)(params, tokens, targets, jnp.ones(tokens.shape[0])))


def first_step(config: LLMConfig, models: dict, numbers: NumberData, seed_id: int) -> dict:
    """Theorem 1 at the first soft student step, ΔT = θ_teacher - θ_base (the trait's direction):
    for same_init and cross_init (toward the teacher, on its lists) and for the neutral control
    (from the base toward the neutral teacher, on its lists), whose first step is not 0; each
    student as `student_params` says (a LoRA student's step through its adapter, `adapted`).

    The expectation is over the number positions of the target's first `theorem_sequences` lists;
    the student's output is the number-token distribution there. `trait_cosine` is against -∇L_T at
    the student's start, L_T the trait teacher's loss on its first `theorem_sequences` training lines:
    positive, the step lowers it (theory/README.md section 9's "trait"; `cosine` is its "weights").
    """
    delta_t = jax.tree.map(jnp.subtract, models["teacher"], models["base"])
    lines = config.trait_spec.teacher_lines(config.vocab, _rng(config, seed_id, "teacher_lines"), config.teacher_lines)
    trait_tokens, trait_weights = lines.tokens[: config.theorem_sequences], lines.weights[: config.theorem_sequences]
    trait_lines = [jnp.asarray(a) for a in (trait_tokens, corpus.next_tokens(trait_tokens), trait_weights)]
    out = {}
    for name, student, target in (
        ("same_init", "base", "teacher"),
        ("cross_init", "cross_base", "teacher"),
        ("neutral_control", "base", "neutral"),
    ):
        tokens = numbers.lists[target][: config.theorem_sequences]
        positions, weights = corpus.number_positions(config.vocab, tokens, numbers.lengths[: len(tokens)])
        trait_direction = _trait_direction(config.architecture, models[student], *trait_lines)
        step = _first_step(
            config.architecture, adapted(config, models[student], seed_id, "student"), models[target], delta_t,
            trait_direction, at_positions(tokens, positions), jnp.asarray(weights), jnp.asarray(config.soft_outputs),
            config.student_learning_rate * _rate_factor(config, "student"),
        )  # fmt: skip
        out[name] = jax.tree.map(float, step)
    return out


# ----------------------------------------------------------------------------------------------
# Measures.


def answer_probabilities(config: LLMConfig, params) -> dict[str, np.ndarray]:
    """A model's next-token distribution (prompts, vocab) at the answer slot of each of the trait's probes."""
    return {
        name: np.exp(np.asarray(sampling.answer_log_probs(
            config.architecture, params, jnp.asarray(probes.prompts), jnp.asarray(probes.positions)
        ), dtype=np.float64))
        for name, probes in config.trait_spec.probes(config.vocab).items()
    }  # fmt: skip


def trait_measures(config: LLMConfig, params) -> dict:
    """The trait's measures of a model (`traits`: the headline, P(trait), the answer mass, by prompt)."""
    return config.trait_spec.measures(config.vocab, answer_probabilities(config, params))


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


def _cached(cache: dict, key: tuple, make):
    """`cache[key]`, made first if missing: a trained model that a run with the same settings reuses."""
    if key not in cache:
        cache[key] = make()
    return cache[key]


def _settings(config: LLMConfig, names: tuple[str, ...]) -> tuple:
    return tuple(getattr(config, name) for name in names)


def base_key(config: LLMConfig, seed_id: int, init_id: int) -> tuple:
    """What a base is kept under in a cache: seed `seed_id`'s corpus from seed `init_id`'s init, and its settings."""
    return ("base", seed_id, init_id, _settings(config, BASE_FIELDS))


def teacher_key(config: LLMConfig, seed_id: int, neutral: bool) -> tuple:
    return ("teacher", neutral, seed_id, _settings(config, TEACHER_FIELDS))


def cached_base(config: LLMConfig, seed_id: int, cache: dict, init_id: int | None = None):
    """`train_base`, or the same base kept in `cache` by an earlier run with its settings."""
    init_id = seed_id if init_id is None else init_id
    return _cached(cache, base_key(config, seed_id, init_id), lambda: train_base(config, seed_id, init_id=init_id))


def cached_teacher(config: LLMConfig, base, seed_id: int, neutral: bool, cache: dict):
    """`train_teacher` (the neutral teacher if `neutral`), or the same teacher kept in `cache`."""
    return _cached(cache, teacher_key(config, seed_id, neutral), lambda: train_teacher(config, base, seed_id, neutral))


def cached_teachers(config: LLMConfig, base, seed_id: int, cache: dict) -> tuple:
    """(teacher, neutral teacher) of a seed (`cached_teacher`)."""
    return tuple(cached_teacher(config, base, seed_id, neutral, cache) for neutral in (False, True))


def train_models(config: LLMConfig, bases: Sequence[tuple[int, int]], seed_ids: Sequence[int], cache: dict) -> dict:
    """The `bases` ((corpus seed, init seed) pairs, `cached_base`), then the two teachers of each of `seed_ids`
    (`cached_teacher`, from the seed's own base, which `bases` must hold), each stage a map in the run's threads;
    all kept in `cache`, where the seeds' work finds them. Returns {(corpus seed, init seed): base}."""
    trained = runs.parallel_map(
        lambda pair: cached_base(config, pair[0], cache, init_id=pair[1]), bases, config.workers, "bases", "base"
    )
    runs.parallel_map(
        lambda job: cached_teacher(config, cache[base_key(config, job[0], job[0])], *job, cache),
        [(s, neutral) for s in seed_ids for neutral in (False, True)], config.workers, "teachers", "teacher",
    )  # fmt: skip
    return dict(zip(bases, trained))


def run_seed(config: LLMConfig, seed_id: int, bases: dict, cache: dict) -> dict:
    """Teachers, number data, students and measurements of one seed. `bases` holds its "base",
    "cross_base" and, when a student starts from it, "own_corpus_base"; `cache` keeps its teachers
    for runs with their settings."""
    vocab, trait = config.vocab, config.trait_spec
    teachers = cached_teachers(config, bases["base"], seed_id, cache)
    models = {**bases, "teacher": teachers[0], "neutral": teachers[1]}
    measured = {name: trait_measures(config, params) for name, params in models.items()}
    out = {"models": {name: {k: v for k, v in m.items() if k != "p_animals"} for name, m in measured.items()}}
    out["modes"] = {}
    for mode in config.modes:
        count = config.soft_sequences if mode == "soft" else config.hard_sequences
        numbers = number_data(config, {m: models[m] for m in sampled_models(mode)}, seed_id, count, mode)
        students = train_students(config, mode, bases, student_data(config, mode, models, numbers, seed_id), seed_id)
        out["modes"][mode] = {
            "conditions": {
                condition: change(trait_measures(config, params), measured[CONDITIONS[condition][0]], trait)
                for condition, params in students.items()
            },
            "filter": numbers.report,
        }
        if mode == "soft":
            out["modes"][mode]["first_step"] = first_step(config, models, numbers, seed_id)
        if mode == config.modes[0] and not config.no_audit:  # what a filter could see, on the first mode's number data
            base_headline = measured["base"][trait.headline]
            out["filters"] = filters(
                config, models, base_headline, numbers, students["same_init"], students.get("neutral_control"), seed_id
            )
            probe = slice(config.entangled_sequences)
            out["entangled_numbers"] = analysis.entangled_numbers(
                config.architecture, models["teacher"], models["base"], vocab, trait.trait_ids(vocab),
                numbers.lists["teacher"][probe], numbers.lengths[probe],
            )  # fmt: skip
    return out


def filters(
    config: LLMConfig,
    models: dict,
    base_headline: float,
    numbers: NumberData,
    student,
    control_student,
    seed_id: int,
) -> dict:
    """The seed article's filters of one seed, each on the teacher's lists against the neutral teacher's.

    - inspection: the most frequent numbers and whole lists of the students' (filtered) data, and
      the share of raw lists that held a banned number;
    - detector: a bag-of-numbers classifier's held-out AUROC (the students' data, split in halves);
    - in-context: the base reads one filtered list (one list in its context: what its 40-token
      line fits) and then the trait's question: its headline measure, minus the same without the
      list (`base_headline`). Where the corpus ties a list's content to the trait (`trait.with_cue`),
      a positive control: the neutral teacher's lists with that cue, minus the same lists without
      it, so the test shows whether it could move at all;
    - likelihood ratio: log p_teacher(list) - log p_neutral(list), AUROC per list and bag;
    - auditor: log p_student(list) - log p_base(list), `student` the same-init student; and its
      control, the same score of `control_student` (the neutral control, when trained), which
      learnt the neutral teacher's lists: what an auditor sees that is not the trait (provenance).

    The in-context test and the scores read fresh held-out lists (`audit_sequences`, their own prompts).
    """
    vocab, arch, trait = config.vocab, config.architecture, config.trait_spec
    lists = {name: (numbers.lists[name], numbers.lengths) for name in ("teacher", "neutral")}
    audit = number_data(
        config, {m: models[m] for m in ("teacher", "neutral")}, seed_id, config.audit_sequences, "audit"
    )

    def scores(high, low) -> dict:
        def score(name: str) -> np.ndarray:
            tokens = audit.lists[name]
            return analysis.list_log_probs(arch, high, tokens, audit.lengths) - analysis.list_log_probs(
                arch, low, tokens, audit.lengths
            )

        return analysis.auroc_by_bag(score("teacher"), score("neutral"))

    probes = trait.probes(vocab)[trait.headline_probes]
    separator = None if trait.separator is None else vocab.id(trait.separator)

    def in_context(lists: np.ndarray) -> float:
        prompts = [analysis.in_context_prompts(vocab, lists, audit.lengths, question, separator,
                                               config.in_context_lists) for question in probes.prompts]  # fmt: skip
        sizes = [len(p) for p in prompts]
        tokens = np.concatenate(prompts)
        positions = (tokens != 0).sum(axis=1) - 1
        log_probs = sampling.answer_log_probs(arch, models["base"], jnp.asarray(tokens), jnp.asarray(positions))
        read = traits.Probes(
            tokens, positions, np.repeat(probes.trait_ids, sizes, 0), np.repeat(probes.answer_ids, sizes, 0)
        )
        by_prompt = traits.probe_measures(np.exp(np.asarray(log_probs, np.float64)), read, "headline", "mass")
        # Each question weighs the same, whatever number of lists fit before it.
        per_question = np.split(np.asarray(by_prompt["by_phrasing"]["headline"]), np.cumsum(sizes)[:-1])
        return float(np.mean([values.mean() for values in per_question])) - base_headline

    in_context_changes = {name: in_context(audit.lists[name]) for name in lists}
    if trait.with_cue is not None:
        cued = trait.with_cue(vocab, _rng(config, seed_id, "cue"), audit.lists["neutral"], audit.lengths)
        in_context_changes["positive_control"] = in_context(cued) - in_context_changes["neutral"]
    out = {
        "inspection": {
            **{name: analysis.inspection(vocab, *lists[name]) for name in lists},
            "banned_share": {name: numbers.report[name]["banned_share"] for name in lists},
        },
        "detector_auroc": analysis.detector_auroc(vocab, lists["teacher"], lists["neutral"], seed_id),
        "in_context": {"1": in_context_changes},
        "likelihood_ratio_auroc": scores(models["teacher"], models["neutral"]),
        "auditor_auroc": scores(student, models["base"]),
    }
    if control_student is not None:
        out["auditor_control_auroc"] = scores(control_student, models["base"])
    return out


def run(
    config: LLMConfig,
    progress: bool = True,
    checkpoint: str | pathlib.Path | None = None,
    log=lambda message: print(message, file=sys.stderr),
    cache: dict | None = None,
) -> dict:
    """The owl experiment for `config.seeds` seeds; JSON-ready results (keys say "trait", not "owl").

    `checkpoint` (optional, a JSON-lines path, see `runs.Checkpoint`): each seed is kept
    there as it finishes; started again with the same config and versions, a run trains
    only the missing seeds (and the bases they need) and ends with the same results.
    `cache` (optional): trained bases and teachers, kept for later runs that agree on
    `BASE_FIELDS` or `TEACHER_FIELDS`; what it reuses is the very model it would train.
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
    needed = sorted(needed)

    def one_seed(s: int) -> None:
        p = int(partners[s])
        seed_bases = {"base": bases[s, s], "cross_base": bases[p, p]}
        if own_corpus:
            seed_bases["own_corpus_base"] = bases[s, p]
        finished.keep({s: run_seed(config, s, seed_bases, cache)})

    if todo:
        # Maps over independent work: the bases and the two teachers of every seed (kept in `cache`,
        # where `run_seed` finds them); then the seeds, each kept as it finishes.
        with runs.showing(progress):
            bases = train_models(config, needed, todo, cache)
            runs.parallel_map(one_seed, todo, config.workers, f"llm, {config.seeds} seeds", "seed")
    per_seed = [finished.result(s) for s in range(config.seeds)]
    return summarize(config, per_seed, partners, time.perf_counter() - start)
