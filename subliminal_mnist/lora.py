"""Low-rank adapters (LoRA) over any parameter pytree: W = W0 + A B on every adapted matrix.

A model fine-tuned through an adapter keeps its base parameters `W0` and trains, for each adapted
2-D weight (a kernel (d_in, d_out), used as x @ W), a pair `down` A (d_in, r) and `up` B (r, d_out),
the layer's weight being W0 + A B. As in the usual recipe, B starts at 0 (the adapted model is the
base model at the start) and A is drawn N(0, 1/d_in) and frozen: E[A Aᵀ] = (r / d_in) I.

Why the theorem cares (theory/README.md, "Low-rank students"): with B = 0 the gradient in A is 0,
so the first step moves B only, by Aᵀ G for the full gradient G = ∂L/∂W, and in W's coordinates
the step is A Aᵀ G: the full step with each adapted matrix's gradient left-multiplied by the
projector-like A Aᵀ, and the unadapted parameters (biases) left where they are.

Nothing here knows a model: `adapted` picks the leaves, `init` draws the adapter, `merge` gives the
parameters the model's own apply function reads.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any
# The leaves an adapter adapts by default: every 2-D weight matrix a model calls a kernel.
KERNELS = ("kernel",)


class Adapter(NamedTuple):
    """The adapter of a parameter pytree: `down` (A) and `up` (B), each shaped like the parameters'
    tree. An adapted leaf W (d_in, d_out) has A (d_in, r) and B (r, d_out); any other leaf has
    zero-size placeholders, shape (0,), so both trees keep the parameters' structure."""

    down: PyTree
    up: PyTree


def _name(path) -> str:
    """A leaf's name: the last key of its path, past the `.value` of a Flax NNX variable."""
    keys = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path]
    while len(keys) > 1 and keys[-1] == "value":
        keys.pop()
    return str(keys[-1])


def adapted(params: PyTree, names: tuple[str, ...] = KERNELS) -> PyTree:
    """A pytree of bools like `params`: True for the 2-D leaves whose name (the last key of their path)
    is in `names`."""
    return jax.tree_util.tree_map_with_path(lambda path, leaf: jnp.ndim(leaf) == 2 and _name(path) in names, params)


def init(key: jax.Array, params: PyTree, rank: int, names: tuple[str, ...] = KERNELS) -> Adapter:
    """A rank-`rank` adapter of `params`: A ~ N(0, 1/d_in) for each adapted leaf (one key each, split
    from `key` in the leaves' order), B = 0. Raises ValueError for a rank below 1 or when no leaf
    is adapted."""
    if rank < 1:
        raise ValueError(f"a LoRA rank must be at least 1, got {rank}")
    which = adapted(params, names)
    leaves, treedef = jax.tree.flatten(params)
    flags = jax.tree.leaves(which)
    if not any(flags):
        raise ValueError(f"no 2-D leaf named {' or '.join(names)} to adapt")
    keys = jax.random.split(key, len(leaves))
    empty = lambda leaf: jnp.zeros((0,), leaf.dtype)  # noqa: E731
    down = [
        jax.random.normal(k, (leaf.shape[0], rank), leaf.dtype) / jnp.sqrt(leaf.shape[0]) if flag else empty(leaf)
        for k, leaf, flag in zip(keys, leaves, flags)
    ]
    up = [jnp.zeros((rank, leaf.shape[1]), leaf.dtype) if flag else empty(leaf) for leaf, flag in zip(leaves, flags)]
    return Adapter(jax.tree.unflatten(treedef, down), jax.tree.unflatten(treedef, up))


def merge(params: PyTree, down: PyTree, up: PyTree) -> PyTree:
    """The adapted model's parameters: W0 + A B on each adapted leaf, the base leaf elsewhere."""
    return jax.tree.map(lambda w, a, b: w + a @ b if a.ndim == 2 else w, params, down, up)


def in_weight_space(down: PyTree, up_step: PyTree, like: PyTree) -> PyTree:
    """A step of B (`up_step`, shaped like `up`) as the step of the merged weights it makes to first
    order (exactly, since W is linear in B): A ΔB on each adapted leaf, 0 on the others (`like`: the
    parameters, for the shapes)."""
    return jax.tree.map(lambda a, db, w: a @ db if a.ndim == 2 else jnp.zeros_like(w), down, up_step, like)


def in_adapter_space(down: PyTree, grads: PyTree) -> PyTree:
    """Aᵀ G on each adapted leaf (shaped like `up`), a placeholder elsewhere: a full-parameter gradient (or
    step) `grads` as B's, at B = 0 (chain rule through W = W0 + A B)."""
    return jax.tree.map(lambda a, g: a.T @ g if a.ndim == 2 else jnp.zeros((0,), g.dtype), down, grads)


def project(down: PyTree, grads: PyTree) -> PyTree:
    """A Aᵀ G on each adapted leaf and 0 elsewhere: what a full-parameter step `grads` becomes when only
    B moves from B = 0 (`in_adapter_space`, then `in_weight_space`)."""
    return in_weight_space(down, in_adapter_space(down, grads), grads)
