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
parameters the model's own apply function reads. To train through an adapter, the training loop is not
changed: its parameters are an `Adapted` model (base, A, B) and its apply function an `AdaptedApply`,
which lets gradients reach B only, so that Adam (or SGD) leaves the base and A exactly where they are.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from subliminal_mnist.runs import ConfigError

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


def init(
    key: jax.Array, params: PyTree, rank: int, names: tuple[str, ...] = KERNELS, shared_down: PyTree = None
) -> Adapter:
    """A rank-`rank` adapter of `params`: A ~ N(0, 1/d_in) for each adapted leaf (one key each, split
    from `key` in the leaves' order), B = 0. Raises ValueError for a rank below 1 or when no leaf
    is adapted.

    `shared_down` (optional): another adapter's A over the same parameters (a teacher's, when the adapter
    is part of the shared init). Each adapted leaf's A then starts with its first min(rank, its rank)
    columns, and only the rest are drawn: an adapter of the same rank is that adapter's A exactly, a
    larger one contains its span, a smaller one a part of it."""
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
    if shared_down is not None:
        shared = jax.tree.leaves(shared_down)
        down = [jnp.concatenate([s[:, :rank], a[:, s.shape[1] :]], axis=1) if flag else a
                for a, s, flag in zip(down, shared, flags)]  # fmt: skip
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


class Adapted(NamedTuple):
    """A model fine-tuned through an adapter, as the training loop's parameters: the frozen `base`
    parameters and `down` (A), and the trained `up` (B). With `AdaptedApply` as the apply function only
    `up` receives a gradient."""

    base: PyTree
    down: PyTree
    up: PyTree


@dataclasses.dataclass(frozen=True)
class AdaptedApply:
    """A model's apply function over `Adapted` parameters: the model on W0 + A B, with the base and A
    behind `stop_gradient`, so their gradient is exactly 0 and an optimizer leaves them unchanged
    (Adam's update of a parameter whose gradient was always 0 is 0). Plain parameters (a fully
    fine-tuned teacher beside an adapted student) are read as they are. Frozen and compared by value:
    two of the same model share one compiled training loop."""

    apply_fn: Callable[[PyTree, Any], jax.Array]

    def __call__(self, params: Adapted | PyTree, inputs) -> jax.Array:
        if not isinstance(params, Adapted):
            return self.apply_fn(params, inputs)
        base, down = jax.lax.stop_gradient((params.base, params.down))
        return self.apply_fn(merge(base, down, params.up), inputs)


def step_in_weight_space(params: Adapted | PyTree, step: Adapted | PyTree) -> PyTree:
    """A step of the loop's parameters as the step of the model's parameters: for an `Adapted` model, its
    B's step through A (`in_weight_space`; the frozen parts do not move); any other step as it is."""
    if not isinstance(params, Adapted):
        return step
    return in_weight_space(params.down, step.up, params.base)


def merged(params: PyTree) -> PyTree:
    """Parameters as the model reads them: an `Adapted` model merged (W0 + A B, `merge`), any other parameters
    as they are."""
    return merge(params.base, params.down, params.up) if isinstance(params, Adapted) else params


PARAMETERIZATION_FIELDS = ("teacher_params", "student_params", "adapter_init")


def pair_setting(text: str) -> dict[str, str]:
    """A teacher and a student parameterization as written in a sweep, "TEACHER/STUDENT[/shared|/own]"
    (each "full" or "lora:R", e.g. "full/lora:16", "lora:4/lora:4/own"), as the config fields it sets
    (`PARAMETERIZATION_FIELDS`). The third part, whether the student's A starts with the teacher's
    columns, is for a LoRA teacher and a LoRA student only (default: shared). Raises `ConfigError`, one line."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("shared", "own")):
        raise ConfigError(f"{text!r} is not TEACHER/STUDENT[/shared|/own]")
    try:
        ranks = [rank_of(part) for part in parts[:2]]
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if len(parts) == 3 and None in ranks:
        raise ConfigError(f"{text!r}: only a LoRA student of a LoRA teacher can share its adapter")
    return dict(zip(PARAMETERIZATION_FIELDS, (*parts[:2], parts[2] if len(parts) == 3 else "shared")))


def check_parameterizations(config) -> None:
    """Raises `ConfigError` (one line, naming the field) unless `config`'s `teacher_params` and
    `student_params` are each "full" or "lora:R"."""
    for name in PARAMETERIZATION_FIELDS[:2]:
        try:
            rank_of(getattr(config, name))
        except ValueError as e:
            raise ConfigError(f"{name}: {e}") from None


def require_full(config, command: str) -> None:
    """Raises `ConfigError` (one line) unless both of `config`'s models are fully fine-tuned: `command`
    trains no adapter."""
    for name in PARAMETERIZATION_FIELDS[:2]:
        if getattr(config, name) != "full":
            raise ConfigError(
                f"{command} fine-tunes every parameter; {name} lora:R is for demo, sweep lora, llm and llm-lora"
            )


def rank_of(parameterization: str) -> int | None:
    """The LoRA rank a parameterization names ("lora:R" -> R), None for "full". Raises ValueError
    (one line) for anything else or a rank below 1."""
    if parameterization == "full":
        return None
    name, _, rank = parameterization.partition(":")
    if name != "lora" or not rank.isdigit() or int(rank) < 1:
        raise ValueError(
            f"{parameterization!r} is not a parameterization: give full or lora:R with a rank R of at least 1"
        )
    return int(rank)
