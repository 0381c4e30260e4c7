"""The owl experiment's number data: every writer (the teacher, the neutral teacher, in hard mode the base)
continues the same number prompts at temperature 1 with the same random numbers, and the strict filter keeps
plain number lists (`number_data`); what its students learn from those lists, by data set (`student_data`):
soft, the writer's distribution at each number (`soft_targets`), hard, the written tokens (`hard_targets`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from subliminal_mnist import runs
from subliminal_mnist.llm import corpus, sampling
from subliminal_mnist.llm.conditions import CONDITIONS, MODES, conditions_of, sampled_models
from subliminal_mnist.llm.config import LLMConfig, NumberSettings, stream_key, stream_rng
from subliminal_mnist.llm.transformer import AtPositions, at_positions, outputs_in_batches
from subliminal_mnist.llm.vocab import Vocabulary

# What a model's number lists are for: each its own prompts and samples (an index of the sampling key).
_SAMPLES = (*MODES, "audit")


class FilterShortfall(RuntimeError):
    """The filter kept fewer number lists than asked for; one line for the user."""


@dataclasses.dataclass(frozen=True)
class NumberData:
    """Several models' filtered continuations of the same prompts: row i of each continues prompt i."""

    lists: dict[str, np.ndarray]  # model -> (n, MAX_LEN) its kept sequences
    lengths: np.ndarray  # (n,) their prompts' lengths
    report: dict  # per model: kept, removed by reason, leak rates, banned share; and "sampled", "used"


# Prompts sampled per round, over the count wanted. For the owl each model passes the filter on about 90%
# (measured 88-90% for an owl teacher, whose lists more often hold a word), so one round is the rule; for the
# misaligned persona every model passes on about 60% (its bases continue lists with answers), so 2-3 rounds.
PROMPT_MARGIN = 1.2
_MAX_ROUNDS = 8


def number_data(
    settings: NumberSettings,
    models: dict,
    seed_id: int,
    count: int,
    stream: str,
    min_p: float = 0.0,
) -> NumberData:
    """`count` prompts that every model of `models` ({name: params}) continued into plain number lists;
    `settings`: the writers' and the filter's, all that the lists depend on beside the arguments (a cache keys them).

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
    vocab, arch = settings.vocab, settings.architecture
    rng = stream_rng(settings, seed_id, "audit" if stream == "audit" else "prompts")
    per_round = int(np.ceil(count * PROMPT_MARGIN))
    report = {name: {"kept": 0, "removed": dict.fromkeys(corpus.REASONS, 0), "leaked": 0, "leaked_after_filter": 0,
                     "holding_banned": 0} for name in models}  # fmt: skip
    used = {name: [] for name in models}
    used_lengths = []
    sampled = 0
    for round_id in range(_MAX_ROUNDS):
        runs.check_stop()  # sampling is minutes of a seed's work with no training epoch to stop at
        prompts, lengths = corpus.number_prompts(vocab, rng, per_round, settings.window)
        key = jax.random.fold_in(
            jax.random.fold_in(stream_key(settings, seed_id, "numbers"), _SAMPLES.index(stream)), round_id
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
                vocab, sequences[name], lengths, settings.banned_numbers, settings.trait_spec.leak_ids(vocab)
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
            rng = stream_rng(config, seed_id, "shuffle")
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

