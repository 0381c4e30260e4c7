"""Sampling from the transformer: number-list continuations; the answer slot's distribution.

Continuations decode one token at a time from cached keys and values (prefill the
prompt once, then one position per step), at temperature 1 as in the paper.
Prompts of different lengths decode together: each row writes at its own position.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from subliminal_mnist.llm import corpus
from subliminal_mnist.llm.transformer import TransformerArchitecture

# After the prompt: up to 10 numbers, 9 commas and <eos>.
MAX_NEW_TOKENS = 2 * corpus.MAX_CONTINUATION


@functools.partial(jax.jit, static_argnames=("arch", "eos", "max_new", "batch_size", "min_p"))
def continue_prompts(
    arch: TransformerArchitecture,
    params,
    key: jax.Array,
    prompts: jax.Array,
    lengths: jax.Array,
    *,
    eos: int,
    max_new: int = MAX_NEW_TOKENS,
    temperature: float = 1.0,
    batch_size: int = 2048,
    min_p: float = 0.0,
) -> jax.Array:
    """Sampled continuations: prompts (N, T) with `lengths` (N,) -> sequences (N, T).

    Each row samples up to `max_new` tokens after its prompt and stops after <eos>
    (padding after it). Rows are processed in batches of `batch_size` to bound the
    cache's memory; each row's randomness is its own key, so results do not depend
    on the batching. With `min_p` > 0 a token is drawn only among those whose probability is at
    least `min_p` times the most likely one's (min-p sampling, a proposed defense).
    """
    num = prompts.shape[0]
    keys = jax.random.split(key, num)
    batches = -(-num // batch_size)

    def batched(x: jax.Array) -> jax.Array:  # (N, ...) -> (batches, batch_size, ...), padded
        x = jnp.concatenate([x, jnp.repeat(x[:1], batches * batch_size - num, axis=0)])
        return x.reshape(batches, batch_size, *x.shape[1:])

    def one_batch(batch):
        return _continue(arch, params, *batch, eos, max_new, temperature, min_p)

    out = jax.lax.map(one_batch, (batched(keys), batched(prompts), batched(lengths)))
    return out.reshape(-1, prompts.shape[1])[:num]


def _continue(arch, params, keys, prompts, lengths, eos, max_new, temperature, min_p):
    rows = jnp.arange(prompts.shape[0])
    logits, caches = arch.prefill(params, prompts, jnp.clip(lengths - 1, 0, prompts.shape[1] - 1))
    state = (prompts, logits, caches, jnp.zeros(prompts.shape[0], bool))

    def step(state, offset):
        tokens, next_logits, caches, done = state
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, offset)
        logits = next_logits / temperature
        if min_p:
            logits = jnp.where(above_min_p(logits, min_p), logits, -jnp.inf)
        sampled = _sample(step_keys, logits)
        sampled = jnp.where(done, 0, sampled)
        position = jnp.minimum(lengths + offset, prompts.shape[1] - 1)
        inside = lengths + offset < prompts.shape[1]
        tokens = tokens.at[rows, position].set(jnp.where(inside, sampled, tokens[rows, position]))
        done = done | (sampled == eos)
        next_logits, caches = arch.step(params, sampled, position, caches)
        return (tokens, next_logits, caches, done), None

    (tokens, _, _, _), _ = jax.lax.scan(step, state, jnp.arange(max_new))
    return tokens


def above_min_p(logits: jax.Array, min_p: float) -> jax.Array:
    """(..., V) bool: the tokens whose probability is at least `min_p` times the most likely one's
    (min-p sampling keeps them). Compares logits: p_i >= min_p * p_max <=> l_i >= l_max + log(min_p)."""
    return logits >= jnp.max(logits, axis=-1, keepdims=True) + jnp.log(min_p)


def _sample(keys: jax.Array, logits: jax.Array) -> jax.Array:
    """One token per row from softmax(logits) (B, V), by inverting the cumulative distribution
    with one uniform number per row (the Gumbel trick would draw V random numbers per row)."""
    cumulative = jnp.cumsum(jax.nn.softmax(logits, axis=-1), axis=-1)
    uniform = jax.vmap(jax.random.uniform)(keys) * cumulative[:, -1]
    return jnp.minimum(jnp.sum(cumulative < uniform[:, None], axis=-1), logits.shape[-1] - 1)


@functools.partial(jax.jit, static_argnames="arch")
def answer_log_probs(arch: TransformerArchitecture, params, prompts: jax.Array, positions: jax.Array) -> jax.Array:
    """log P(next token) at the answer slot of each prompt: (P, vocab_size)."""
    return jax.nn.log_softmax(arch.logits_at(params, prompts, positions[:, None])[:, 0], axis=-1)
