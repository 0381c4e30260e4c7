"""How a model of the owl experiment fine-tunes, whatever its stage: its losses (next tokens; a soft
student's KL on the number tokens), its start (all its parameters, or a low-rank adapter of the seed's,
`adapted`, trained at `rate_factor` times its stage's rate), the parameters a teacher may freeze (`Frozen`),
and the fit of one model on next tokens (`fit_next_tokens`: the bases and the teachers).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from subliminal_mnist import lora, losses, train
from subliminal_mnist.llm import corpus
from subliminal_mnist.llm.config import LLMConfig, TeacherSettings, stream_key
from subliminal_mnist.llm.transformer import TransformerArchitecture

# Frozen in a "blocks" teacher: where a token's identity lives (its input and output rows).
EMBEDDINGS = ("token_embedding", "position_embedding", "unembedding")


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


def adapted(settings: TeacherSettings | LLMConfig, params, seed_id: int, who: str):
    """`params` as the start of a fine-tuning of `who` ("teacher": both teachers; "student": every student),
    as `settings.{who}_params` says: `params` itself for "full", else `lora.Adapted` (params, A, B = 0) with A
    from the seed's `{who}_adapter` stream. So the trait's and the neutral teacher share one A, and every
    student of a seed another, which starts with the teachers' columns when `adapter_init` is "shared"."""
    rank = lora.rank_of(getattr(settings, f"{who}_params"))
    if rank is None:
        return params
    teacher_rank, shared = lora.rank_of(settings.teacher_params), None
    if who == "student" and settings.adapter_init == "shared" and teacher_rank is not None:
        shared = lora.init(stream_key(settings, seed_id, "teacher_adapter"), params, teacher_rank).down
    key = stream_key(settings, seed_id, f"{who}_adapter")
    return lora.Adapted(params, *lora.init(key, params, rank, shared_down=shared))


def rate_factor(settings: TeacherSettings | LLMConfig, who: str) -> float:
    """What a stage's learning rate is multiplied by: `adapter_rate_factor` for a model trained through an adapter."""
    return 1.0 if getattr(settings, f"{who}_params") == "full" else settings.adapter_rate_factor


def apply_for(start, apply_fn):
    """The loop's apply function for a start: `apply_fn` itself, or through the adapter of a `lora.Adapted` one."""
    return lora.AdaptedApply(apply_fn) if isinstance(start, lora.Adapted) else apply_fn


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


def fit_next_tokens(
    architecture: TransformerArchitecture, start, key, tokens: np.ndarray, weights: np.ndarray, **recipe
):
    """One model (no seed axis) trained through `train.fit` on next tokens at the positions
    `weights` marks: the base on its corpus, the teachers on their answers; `recipe`: the rest of
    its `train.Recipe` (epochs, learning rate, batch size, name, a hook). A start that is a
    `lora.Adapted` model trains its adapter; the model is returned merged."""
    objective = train.Objective(apply_for(start, architecture), next_token_loss)
    targets = {"next": jnp.asarray(corpus.next_tokens(tokens)), "weights": jnp.asarray(weights)}
    params, _ = train.fit(
        jax.tree.map(lambda a: a[None], start),  # the loop's seed axis, of length 1
        key[None],
        jnp.asarray(tokens),
        targets,
        train.Recipe(objective, **recipe),
        data_axis=None,
    )
    return lora.merged(jax.tree.map(lambda a: a[0], params))
