"""The owl experiment's settings (`LLMConfig`; the command line is generated from it), the part of them each
cached stage reads (`BaseSettings`, `TeacherSettings`, `NumberSettings`), and each seed's random streams.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from subliminal_mnist import lora, runs
from subliminal_mnist.llm import corpus, traits
from subliminal_mnist.llm.conditions import CONDITIONS, MODES
from subliminal_mnist.llm.transformer import TransformerArchitecture
from subliminal_mnist.llm.vocab import Vocabulary
from subliminal_mnist.runs import ConfigError, config_field

# Independent randomness of one seed: one stream each (a stream's index is part of its seed).
_STREAMS = ("init", "corpus", "base", "teacher_lines", "teacher", "prompts", "numbers", "shuffle", "soft", "hard",
            "neutral_answers", "audit", "cue", "teacher_adapter", "student_adapter")  # fmt: skip


class ModelSettings:
    """The trait, vocabulary and architecture of every model, from the fields `trait`, `numbers`, `width`,
    `depth` and `heads`: a mixin (no fields) of `LLMConfig` and of every stage's settings."""

    # Built once per value: number data, measures and filters ask for them at every step of a run.
    @functools.cached_property
    def trait_spec(self) -> traits.Animal | traits.Misaligned:
        return traits.trait(self.trait)

    @functools.cached_property
    def vocab(self) -> Vocabulary:
        return Vocabulary(self.numbers, self.trait_spec.words)

    @property
    def architecture(self) -> TransformerArchitecture:
        return TransformerArchitecture(
            len(self.vocab), corpus.MAX_LEN, self.width, self.depth, self.heads, bos=self.vocab.bos
        )


class FilterSettings(ModelSettings):
    """And what the filter removes, from `banned` too."""

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


@dataclasses.dataclass(frozen=True)
class LLMConfig(FilterSettings):
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
    workers: int = config_field(
        2,
        "threads for each stage's independent work (bases, teachers, number lists, groups of students, seeds' "
        "measures, a defense's seeds and grid rates), one stage after another; results do not depend on it",
    )

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

    @property
    def modes(self) -> tuple[str, ...]:
        return MODES if self.mode == "both" else (self.mode,)


# ----------------------------------------------------------------------------------------------
# The stages' settings: each the fields of `LLMConfig` that its stage reads, built by `runs.stage`. Runs that
# agree on one (e.g. the points of the hard dose-response, which change only the number of lists) share
# what it trains: a field that changes the stage is in it, since the stage's functions read nothing else.


@dataclasses.dataclass(frozen=True)
class BaseSettings(ModelSettings):
    """All that a base depends on (`experiment.train_base`): streams, corpus, transformer, training."""

    seed: int
    trait: str
    numbers: int
    window: int
    width: int
    depth: int
    heads: int
    base_rows: int
    base_epochs: int
    base_batch_size: int
    base_learning_rate: float


@dataclasses.dataclass(frozen=True)
class TeacherSettings(BaseSettings):
    """All that a teacher depends on (`experiment.train_teacher`): its base's settings and its fine-tuning's."""

    teacher_lines: int
    teacher_epochs: int
    teacher_batch_size: int
    teacher_learning_rate: float
    teacher_trains: str
    teacher_params: str
    adapter_rate_factor: float | None  # None for full teachers, which read no adapter's rate

    def __post_init__(self):
        # So configs that differ only in the students' adapter rate share their full teachers (and lists).
        if self.teacher_params == "full":
            object.__setattr__(self, "adapter_rate_factor", None)


@dataclasses.dataclass(frozen=True)
class NumberSettings(TeacherSettings, FilterSettings):
    """All that a seed's number lists depend on (`number_data.number_data`): their writers' and the filter's."""

    banned: tuple[int, ...]


def stream_rng(settings: BaseSettings | LLMConfig, seed_id: int, stream: str) -> np.random.Generator:
    """NumPy randomness of one seed and stream (corpus, prompts, shuffling)."""
    return np.random.default_rng([settings.seed, seed_id, _STREAMS.index(stream)])


def stream_key(settings: BaseSettings | LLMConfig, seed_id: int, stream: str) -> jax.Array:
    """JAX randomness of one seed and stream (inits, data orders, sampling)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(settings.seed), seed_id), _STREAMS.index(stream))
