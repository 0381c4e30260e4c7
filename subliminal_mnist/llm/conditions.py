"""The owl experiment's students and comparisons, as names: the modes, each student's start and data
(`CONDITIONS`), the students a mode leaves out (`HARD_ONLY`), the paired differences read seed by seed
(`PAIRS`, `GAP_DIFFERENCES`), and which students and writers a config's run has.

Knowing no model, this module is what the experiment (`experiment`), its summary (`summary`) and the
defenses (`defenses`) share about who learns what.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotations only: the config imports this module
    from subliminal_mnist.llm.config import LLMConfig

MODES = ("soft", "hard")
# Each student: (its start, its data). Starts: "base" (this seed's), "cross_base" (the partner
# seed's), "own_corpus_base" (the partner's init trained on this seed's corpus, in this seed's
# order). Data: a model's filtered number lists ("teacher", "neutral", "base"), or the
# teacher's and the neutral teacher's shuffled within each list.
CONDITIONS = {
    "same_init": ("base", "teacher"),
    "neutral_control": ("base", "neutral"),
    "cross_init": ("cross_base", "teacher"),
    "cross_neutral": ("cross_base", "neutral"),
    "cross_init_own_corpus": ("own_corpus_base", "teacher"),
    "cross_neutral_own_corpus": ("own_corpus_base", "neutral"),
    "shuffled_within": ("base", "teacher_shuffled"),
    "neutral_shuffled_within": ("base", "neutral_shuffled"),
    "base_control": ("base", "base"),
}
# In soft mode a student distilled toward the base's own logits on the base's own lists has
# a loss of 0 and an expected gradient of 0: it cannot move, so it is no control there. A soft
# student of a shuffled list reads its writer's distributions at the shuffled list's positions,
# the writer's full distributions again, so no difference from the unshuffled student can show
# whether order carries anything: the shuffles test order in hard mode only.
HARD_ONLY = ("base_control", "shuffled_within", "neutral_shuffled_within")
# Paired differences, seed by seed: (treated, its control, which differs only by the trait).
PAIRS = {
    "same_init_minus_neutral_control": ("same_init", "neutral_control"),
    "cross_init_minus_cross_neutral": ("cross_init", "cross_neutral"),
    "cross_init_own_corpus_minus_cross_neutral_own_corpus": ("cross_init_own_corpus", "cross_neutral_own_corpus"),
    "shuffled_within_minus_neutral_shuffled_within": ("shuffled_within", "neutral_shuffled_within"),
    "same_init_minus_base_control": ("same_init", "base_control"),
    # The shared init, isolated: the same corpus and data order, only the init differs (teacher's numbers).
    "same_init_minus_own_corpus": ("same_init", "cross_init_own_corpus"),
    # Order inside a list (hard): its interval's half-width against the effect is the test's power.
    "same_init_minus_shuffled_within": ("same_init", "shuffled_within"),
}
# Differences of two paired gaps, seed by seed: what the shared init adds to the trait's paired effect.
GAP_DIFFERENCES = {
    "gap_minus_own_corpus_gap": (
        "same_init_minus_neutral_control",
        "cross_init_own_corpus_minus_cross_neutral_own_corpus",
    ),
}


def conditions_of(config: LLMConfig, mode: str) -> tuple[str, ...]:
    """The students of a mode that `config` asks for, in the order of `CONDITIONS`."""
    return tuple(c for c in CONDITIONS if c in config.conditions and (mode == "hard" or c not in HARD_ONLY))


def with_own_corpus_base(config: LLMConfig) -> bool:
    """Whether a student starts from the ablation base (the partner's init on this seed's corpus)."""
    return any(CONDITIONS[c][0] == "own_corpus_base" for mode in config.modes for c in conditions_of(config, mode))


def sampled_models(mode: str) -> tuple[str, ...]:
    """The models whose number lists a mode's students learn from. All of them write lists whatever
    `conditions` asks for: a prompt is used when every model's list passes the filter, so the
    students kept learn the very data they learn in the whole run."""
    return ("teacher", "neutral", "base") if mode == "hard" else ("teacher", "neutral")
