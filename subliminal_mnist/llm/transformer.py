"""A tiny causal transformer (Flax NNX) as a pure init / apply pair, with cached decoding.

Pre-norm blocks (RMS norm, causal multi-head attention, a GELU MLP), learned token
and position embeddings, an untied unembedding (so each token has its own output
row, which `experiment` compares with the trait's row). Like `model.Architecture`,
`TransformerArchitecture` is frozen and hashable: it is the apply function handed to
the training loop, and parameters are a plain pytree, so seeds are a `vmap` axis.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

_init = nnx.initializers.normal(0.02)
_MASKED = -1e9  # attention score of a masked position: exp underflows to exactly 0


class Attention(nnx.Module):
    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
        self.heads = heads
        self.qkv = nnx.Linear(width, 3 * width, use_bias=False, kernel_init=_init, rngs=rngs)
        self.out = nnx.Linear(width, width, use_bias=False, kernel_init=_init, rngs=rngs)

    def _project(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x (..., width) -> q, k, v each (..., heads, width // heads)."""
        shape = (*x.shape[:-1], self.heads, -1)
        return tuple(part.reshape(shape) for part in jnp.split(self.qkv(x), 3, axis=-1))

    def _attend(self, q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array) -> jax.Array:
        """q (..., Q, H, D), k and v (..., K, H, D), allowed (Q, K) bool -> (..., Q, H*D)."""
        scores = jnp.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(q.shape[-1])
        weights = jax.nn.softmax(jnp.where(allowed, scores, _MASKED), axis=-1)
        mixed = jnp.einsum("...hqk,...khd->...qhd", weights, v)
        return self.out(mixed.reshape(*mixed.shape[:-2], -1))

    def __call__(self, x: jax.Array, allowed: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """x (B, T, width), allowed (B, 1, T, T) -> (B, T, width), and the keys and values
        (B, T, H, D) for decoding."""
        q, k, v = self._project(x)
        return self._attend(q, k, v, allowed), (k, v)

    def step(self, x: jax.Array, cache: tuple[jax.Array, jax.Array], position: jax.Array):
        """One sequence's token at `position`: x (width,), cache (T, H, D) each -> (width,), new cache."""
        q, k, v = self._project(x)
        keys, values = cache[0].at[position].set(k), cache[1].at[position].set(v)
        allowed = (jnp.arange(keys.shape[0]) <= position)[None, :]
        return self._attend(q[None], keys, values, allowed)[0], (keys, values)


class Block(nnx.Module):
    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
        self.attention_norm = nnx.RMSNorm(width, rngs=rngs)
        self.attention = Attention(width, heads, rngs=rngs)
        self.mlp_norm = nnx.RMSNorm(width, rngs=rngs)
        self.mlp_in = nnx.Linear(width, 4 * width, kernel_init=_init, rngs=rngs)
        self.mlp_out = nnx.Linear(4 * width, width, kernel_init=_init, rngs=rngs)

    def _mlp(self, x: jax.Array) -> jax.Array:
        return self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(x))))

    def __call__(self, x: jax.Array, allowed: jax.Array):
        mixed, cache = self.attention(self.attention_norm(x), allowed)
        x = x + mixed
        return x + self._mlp(x), cache

    def step(self, x: jax.Array, cache, position: jax.Array):
        mixed, cache = self.attention.step(self.attention_norm(x), cache, position)
        x = x + mixed
        return x + self._mlp(x), cache


class Transformer(nnx.Module):
    """tokens (B, T) -> next-token logits (B, T, vocab_size)."""

    def __init__(self, vocab_size: int, max_len: int, width: int, depth: int, heads: int, bos: int, *, rngs: nnx.Rngs):
        self.bos = bos
        self.token_embedding = nnx.Embed(vocab_size, width, embedding_init=_init, rngs=rngs)
        self.position_embedding = nnx.Embed(max_len, width, embedding_init=_init, rngs=rngs)
        self.blocks = nnx.List([Block(width, heads, rngs=rngs) for _ in range(depth)])
        self.final_norm = nnx.RMSNorm(width, rngs=rngs)
        self.unembedding = nnx.Linear(width, vocab_size, use_bias=False, kernel_init=_init, rngs=rngs)

    def hidden(self, tokens: jax.Array):
        """tokens (B, T) -> final hidden states (B, T, width) and each block's keys and values.

        A row may hold several lines, each starting with <bos> (packed training rows): a
        token attends only to its own line, and positions count from its line's start,
        so each line is computed exactly as if it were alone in its row.
        """
        allowed, positions = _lines(tokens, self.bos)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        caches = []
        for block in self.blocks:
            x, cache = block(x, allowed)
            caches.append(cache)
        return self.final_norm(x), caches

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return self.unembedding(self.hidden(tokens)[0])

    def step(self, token: jax.Array, position: jax.Array, caches):
        """One sequence: the token at `position` -> logits (vocab_size,) of the next, new caches."""
        x = self.token_embedding(token) + self.position_embedding(position)
        new = []
        for block, cache in zip(self.blocks, caches):
            x, cache = block.step(x, cache, position)
            new.append(cache)
        return self.unembedding(self.final_norm(x)), new


def _lines(tokens: jax.Array, bos: int) -> tuple[jax.Array, jax.Array]:
    """tokens (B, T) -> which keys each query may attend to (B, 1, T, T): earlier or the same
    position of its own line (a line starts at a <bos>); and each token's position in its
    line (B, T). A row of one line (or none) gets the plain causal mask and 0 ... T-1."""
    t = jnp.arange(tokens.shape[-1])
    starts = tokens == bos
    line = jnp.cumsum(starts, axis=-1)
    positions = t - jax.lax.cummax(jnp.where(starts, t, 0), axis=tokens.ndim - 1)
    same_line = line[..., :, None] == line[..., None, :]
    return (same_line & (t[:, None] >= t[None, :]))[..., None, :, :], positions


@dataclasses.dataclass(frozen=True)
class TransformerArchitecture:
    """Sizes of the transformer, and its pure functions. Frozen and hashable: a static argument."""

    vocab_size: int
    max_len: int = 40
    width: int = 32
    depth: int = 2
    heads: int = 2
    bos: int = 1  # the token that starts a line (the vocabulary's <bos>)

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")

    def init(self, key: jax.Array) -> nnx.State:
        """Fresh parameters for one seed; `jax.vmap` it over a batch of keys."""
        return nnx.state(self._module(nnx.Rngs(params=key)))

    def _module(self, rngs: nnx.Rngs) -> Transformer:
        return Transformer(self.vocab_size, self.max_len, self.width, self.depth, self.heads, self.bos, rngs=rngs)

    def _merge(self, params: nnx.State) -> Transformer:
        # The structure only, built abstractly at trace time; the arrays come from `params`.
        return nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: self._module(nnx.Rngs(0)))), params)

    def apply(self, params: nnx.State, tokens: jax.Array) -> jax.Array:
        """tokens (B, T) int -> logits (B, T, vocab_size)."""
        return self._merge(params)(tokens)

    # The architecture itself is the loop's apply function (hashable by value).
    __call__ = apply

    def logits_at(self, params: nnx.State, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        """tokens (B, T), positions (B, P) int -> logits (B, P, vocab_size) at those positions only.

        The unembedding is most of a tiny model's compute (width x vocabulary per token), so
        students that learn at a few positions of each sequence unembed only those.
        """
        module = self._merge(params)
        hidden = jnp.take_along_axis(module.hidden(tokens)[0], positions[..., None], axis=1)
        return module.unembedding(hidden)

    def prefill(self, params: nnx.State, tokens: jax.Array, positions: jax.Array):
        """tokens (B, T), positions (B,) -> next-token logits (B, vocab_size) at those positions,
        and the keys and values of every position, for `step`."""
        module = self._merge(params)
        hidden, caches = module.hidden(tokens)
        return module.unembedding(hidden[jnp.arange(tokens.shape[0]), positions]), caches

    def step(self, params: nnx.State, tokens: jax.Array, positions: jax.Array, caches):
        """Cached decoding: tokens (B,) at positions (B,) -> next-token logits (B, vocab_size)."""
        module = self._merge(params)
        return jax.vmap(module.step)(tokens, positions, caches)

    def unembedding_rows(self, params: nnx.State) -> jax.Array:
        """(vocab_size, width): the output row of each token."""
        return self._merge(params).unembedding.kernel[...].T


def at_positions(tokens, positions) -> dict:
    """The inputs of `AtPositions`: {"tokens": (B, T) int, "positions": (B, P) int}."""
    return {"tokens": jnp.asarray(tokens), "positions": jnp.asarray(positions)}


@dataclasses.dataclass(frozen=True)
class AtPositions:
    """The loop's apply function for students that learn at some positions of each sequence.

    inputs {"tokens": (B, T), "positions": (B, P)} (`at_positions`) -> logits (B, P, vocab_size).
    """

    architecture: TransformerArchitecture

    def __call__(self, params: nnx.State, inputs: dict) -> jax.Array:
        return self.architecture.logits_at(params, inputs["tokens"], inputs["positions"])


@functools.partial(jax.jit, static_argnames=("apply_fn", "batch_size"))
def outputs_in_batches(apply_fn, params: nnx.State, inputs, batch_size: int = 256) -> jax.Array:
    """apply_fn(params, inputs) for many rows (N, ...), `batch_size` rows at a time to bound the
    memory of the activations; `inputs` may be a pytree of such arrays. Compiled once per apply
    function and shape."""
    one_row = lambda row: apply_fn(params, jax.tree.map(lambda a: a[None], row))[0]  # noqa: E731
    return jax.lax.map(one_row, inputs, batch_size=batch_size)
