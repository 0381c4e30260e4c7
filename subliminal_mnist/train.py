"""The one training loop: Adam on minibatches, for the teacher, every student and the LLM.

It knows nothing about MLPs or MNIST. What it fits is an `Objective`: an apply
function, a per-example loss and a mask of the outputs the loss sees. How it fits
it is a `Recipe`: the objective, epochs, learning rate, batch size, optimizer, and
optionally a penalty and a gradient hook. The teacher is cross-entropy on the class
logits against labels; a student is a distillation loss on the auxiliary (or all)
logits against the teacher's outputs on noise; a defense is
`dataclasses.replace(recipe, ...)`.

Seeds are the leading axis of every array the loop carries (parameters,
optimizer state, keys), and one epoch of all of them is a single jitted,
`vmap`-ped `lax.scan` over minibatches. Optionally a second axis holds several
*members* per seed, models that share the seed's data and data order. The
Python loop is over epochs only: it shows its bar, stops at the first non-finite
loss, and stops when its run asks it to (`runs.check_stop`: another item of the
run failed, or Ctrl-C).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from subliminal_mnist import losses, runs

PyTree = Any


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@functools.partial(jax.tree_util.register_dataclass, data_fields=["output_mask"], meta_fields=["apply_fn", "loss_fn"])
@dataclasses.dataclass(frozen=True, eq=False)  # an array field: equal and hashed by identity
class Objective:
    """What to minimise: a model's outputs, a per-example loss, and which outputs the loss sees.

    A pytree: the functions are static under `jit`, the mask is data. So objectives
    that differ only in their outputs (the aux-only and the all-logits students)
    run one compiled loop.

    Attributes:
      apply_fn: (params, inputs) -> outputs (B, ..., K). Inputs are an array (B, ...) or a
        pytree of them (e.g. a language model's tokens and the positions it is read at),
        each with the example axis first.
      loss_fn: (outputs (B, ..., K), targets, output_mask) -> per-example loss (B,); see
        `losses.py`. Targets are an array (B, ...) or a pytree of them (e.g. next tokens and
        per-position weights for a language model), each with the example axis first.
      output_mask: (K,) bool, the outputs the loss sees; None for all of them.
    """

    apply_fn: Callable[[PyTree, jax.Array], jax.Array]
    loss_fn: Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]
    output_mask: jax.Array | np.ndarray | None = None

    def batch_loss(self, params: PyTree, inputs: PyTree, targets: jax.Array, weights: jax.Array) -> jax.Array:
        """Weighted mean of the per-example losses; weights (B,) are 0 for padding."""
        losses = self.loss_fn(self.apply_fn(params, inputs), targets, self.output_mask)
        return jnp.sum(weights * losses) / jnp.sum(weights)


# A per-step look at the gradient, static under `jit`: (params, grads, context) ->
# (grads to apply, {name: scalar}). `context` is any pytree with the seed axis (data
# the hook needs, e.g. a batch for a second loss). It may edit the gradient (e.g.
# project a direction out of it) and returns metrics the loop records at every step.
GradientHook = Callable[[PyTree, PyTree, PyTree], tuple[PyTree, dict[str, jax.Array]]]


class TrainState(NamedTuple):
    params: PyTree
    opt_state: PyTree


# The loop's optimizers. Adam is the paper's and the default; plain SGD (no momentum) is a
# proposed defense against subliminal transfer (`defenses.py`), so the one loop offers it too.
OPTIMIZERS = ("adam", "sgd")


def optimizer(learning_rate: float, name: str = "adam") -> optax.GradientTransformation:
    """The loop's optimizer: Adam with PyTorch's defaults (b1=0.9, b2=0.999, eps=1e-8), as the
    paper's code, or plain SGD. Public so that an analysis of Adam's steps
    (`theorem_checks.adam_case`) uses this very optimizer, not a copy of it."""
    if name not in OPTIMIZERS:
        raise ValueError(f"no optimizer {name!r}; the optimizers are {', '.join(OPTIMIZERS)}")
    return optax.adam(learning_rate) if name == "adam" else optax.sgd(learning_rate)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["weight"], meta_fields=["kind", "ramp"])
@dataclasses.dataclass(frozen=True)
class Penalty:
    """A term added to the objective at every step that pulls a model toward where its training started.

    A pytree: its kind and schedule are static under `jit`, its weight is data, so trainings that
    differ only in the weight (0 and 1, say) share one compiled loop.

    Attributes:
      kind: "kl_to_start", the mean over the batch of KL(softmax(start's outputs) || softmax(outputs))
        on the batch's inputs (over every output, whatever the objective's mask: the whole
        behaviour is held, not only the part the loss trains; at the positions the targets'
        "weights" mark, where targets are a dict that has them, as a language model's); or
        "l2_to_start", |θ - θ0|² / 2.
      weight: its weight against the objective's loss.
      ramp: the weight rises linearly from 0 over the first epoch, then falls linearly to 0 at
        the end of training ("liminal training"); else it is constant.
    """

    kind: str
    weight: float
    ramp: bool = False

    KINDS = ("kl_to_start", "l2_to_start")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"no penalty {self.kind!r}; the penalties are {', '.join(self.KINDS)}")

    def weight_at(self, fraction: jax.Array, epochs: jax.Array) -> jax.Array:
        """The weight after `fraction` of the training (0 to 1) of `epochs` epochs."""
        if not self.ramp:
            return jnp.asarray(self.weight, jnp.float32)
        first = 1 / epochs  # the first epoch's share of the training
        rising, falling = fraction / first, (1 - fraction) / jnp.maximum(1 - first, 1e-12)
        return self.weight * jnp.clip(jnp.where(fraction < first, rising, falling), 0.0, 1.0)

    def value(
        self, params: PyTree, start: PyTree, apply_fn: Callable, inputs: PyTree, targets: PyTree, weights: jax.Array
    ):
        """The unweighted penalty on a batch (`weights` (B,), 0 for padding)."""
        if self.kind == "l2_to_start":
            return 0.5 * optax.tree.norm(jax.tree.map(jnp.subtract, params, start), squared=True)
        start_outputs = jax.lax.stop_gradient(apply_fn(start, inputs))
        # A language model's student reads padded positions too; the targets say which are real.
        positions = targets.get("weights") if isinstance(targets, dict) else None
        per_example = losses.kl_divergence(apply_fn(params, inputs), start_outputs, None, positions)
        return jnp.sum(weights * per_example) / jnp.sum(weights)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["objective", "epochs", "learning_rate", "penalty"],
    meta_fields=["batch_size", "optimizer", "hook", "name"],
)
@dataclasses.dataclass(frozen=True)
class Recipe:
    """How the loop trains: everything but the parameters, the data and their axes.

    One value, so that a stage's recipe is built once and a variant of it is
    `dataclasses.replace(recipe, optimizer="sgd", learning_rate=...)` (a defense).
    A pytree: the numbers (epochs, learning rate, the penalty's weight) are traced,
    so trainings that differ only in them share one compiled epoch, which on a CPU
    takes longer to compile than to run; batch size, optimizer and hook are static.

    Attributes:
      objective: what to minimise (`Objective`).
      epochs: passes over the data.
      learning_rate: the optimizer's step size.
      batch_size: examples per step; the last batch of an epoch is partial (`epoch_batches`).
      optimizer: "adam" (the paper's) or "sgd" (`OPTIMIZERS`).
      penalty: optional `Penalty` toward the start, added to the loss at every step.
      hook: optional per-step look at (and edit of) each seed's gradient (`GradientHook`).
      name: what the epoch bar and the errors call this training.
    """

    objective: Objective
    epochs: int
    learning_rate: float
    batch_size: int
    optimizer: str = "adam"
    penalty: Penalty | None = None
    hook: GradientHook | None = None
    name: str = "train"

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"no optimizer {self.optimizer!r}; the optimizers are {', '.join(OPTIMIZERS)}")


@jax.jit
def stack_members(*params: PyTree) -> PyTree:
    """Several models' parameters, each with the seed axis first (S, ...), as one pytree with a member axis after
    it (S, len(params), ...): the start of a `fit` with `members`. One program (eagerly: a stack per leaf)."""
    return jax.tree.map(lambda *members: jnp.stack(members, axis=1), *params)


def epoch_batches(key: jax.Array, num_examples: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """A shuffled epoch as (indices, weights), both (steps, batch_size).

    The last batch is partial, as with PyTorch's default `drop_last=False`: it is
    padded with index 0 and weight 0, so every step has one shape for `lax.scan`
    and the padded rows change nothing.
    """
    steps = -(-num_examples // batch_size)
    padding = steps * batch_size - num_examples
    order = jax.random.permutation(key, num_examples)
    indices = jnp.concatenate([order, jnp.zeros(padding, order.dtype)])
    weights = jnp.concatenate([jnp.ones(num_examples), jnp.zeros(padding)])
    return indices.reshape(steps, batch_size), weights.reshape(steps, batch_size)


def train_epoch(
    state: TrainState,
    key: jax.Array,
    inputs: PyTree,
    targets: jax.Array,
    recipe: Recipe,
    context: PyTree = None,
    start: PyTree = None,
    epoch: jax.Array | int = 0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One epoch (number `epoch` of `recipe.epochs`) for one seed: a `lax.scan` of optimizer steps.

    With a `recipe.penalty`, each step's loss adds its weighted value, with `start` the parameters
    the training started from; the recorded "loss" stays the objective's alone, beside "penalty".
    Returns the new state and, per step, the loss and the hook's metrics: {name: (steps,)}.
    """
    objective, penalty, hook = recipe.objective, recipe.penalty, recipe.hook
    update_rule = optimizer(recipe.learning_rate, recipe.optimizer)
    indices, weights = epoch_batches(key, jax.tree.leaves(inputs)[0].shape[0], recipe.batch_size)
    steps = indices.shape[0]

    def step(state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
        batch_indices, batch_weights, step_index = batch
        batch_inputs, batch_targets = jax.tree.map(lambda t: t[batch_indices], (inputs, targets))
        metrics = {}
        if penalty is None:
            loss, grads = jax.value_and_grad(objective.batch_loss)(
                state.params, batch_inputs, batch_targets, batch_weights
            )
        else:
            fraction = (epoch * steps + step_index) / (recipe.epochs * steps)
            penalty_weight = penalty.weight_at(fraction, recipe.epochs)

            def penalized(params):
                loss = objective.batch_loss(params, batch_inputs, batch_targets, batch_weights)
                value = penalty.value(params, start, objective.apply_fn, batch_inputs, batch_targets, batch_weights)
                return loss + penalty_weight * value, (loss, value)

            (_, (loss, value)), grads = jax.value_and_grad(penalized, has_aux=True)(state.params)
            metrics = {"penalty": value, "penalty_weight": penalty_weight}
        if hook is not None:
            grads, hook_metrics = hook(state.params, grads, context)
            metrics = {**metrics, **hook_metrics}
        updates, opt_state = update_rule.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state), {"loss": loss, **metrics}

    return jax.lax.scan(step, state, (indices, weights, jnp.arange(steps)))


@functools.partial(jax.jit, static_argnames=("data_axis", "members"))
def _train_epoch_seeds(states, keys, inputs, targets, context, start, epoch, recipe, *, data_axis, members):
    def one_epoch(state, key, inputs, targets, context, start):
        return train_epoch(state, key, inputs, targets, recipe, context, start, epoch)

    if members:
        # The members of a seed share its data and data order; only their states, contexts and
        # starts differ. Unbatched inputs let XLA turn their first-layer matmuls into one wide
        # matmul, which a CPU runs faster than several narrow ones.
        one_epoch = jax.vmap(one_epoch, in_axes=(0, None, None, None, 0, 0))
    in_axes = (0, 0, data_axis, data_axis, 0, 0)
    return jax.vmap(one_epoch, in_axes=in_axes)(states, keys, inputs, targets, context, start)


def _traced(recipe: Recipe) -> Recipe:
    """The recipe as the compiled epoch reads it: its numbers as fixed-width arrays, whatever Python type they
    came as, and no name, so that trainings that differ only in their numbers or names share one program."""
    return dataclasses.replace(
        recipe, epochs=np.int32(recipe.epochs), learning_rate=np.float32(recipe.learning_rate), name=""
    )


# The two small steps around the epochs are jitted too: run eagerly, each of their
# primitives would compile a program of its own, on the critical path of a short run.
@functools.partial(jax.jit, static_argnames=("members", "optimizer_name"))
def _initial_states(params: PyTree, members: bool, optimizer_name: str = "adam") -> TrainState:
    # The optimizer's state does not depend on the learning rate.
    init = jax.vmap(lambda p: TrainState(p, optimizer(0.0, optimizer_name).init(p)))
    return jax.vmap(init)(params) if members else init(params)


@jax.jit
def _epoch_keys(keys: jax.Array, epoch: int) -> jax.Array:
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, epoch)


def compile_fit(
    params: PyTree,
    keys: jax.Array,
    inputs: PyTree,
    targets: jax.Array,
    recipe: Recipe,
    *,
    data_axis: int | None = 0,
    members: bool = False,
    context: PyTree = None,
) -> None:
    """Compile what `fit` with these arguments runs, without running it.

    Every array may be abstract (`jax.ShapeDtypeStruct`), so a stage can be
    compiled in a background thread while the stage it needs (e.g. the teacher
    whose outputs it distills) is still training. The compiled epoch lands in
    `jit`'s cache, where `fit` finds it.
    """
    initial_states = _initial_states.lower(params, members=members, optimizer_name=recipe.optimizer)
    initial_states.compile()
    epoch_keys = _epoch_keys.lower(keys, 0)
    epoch_keys.compile()
    start = None if recipe.penalty is None else params
    _train_epoch_seeds.lower(
        initial_states.out_info, epoch_keys.out_info, inputs, targets, context, start, np.int32(0), _traced(recipe),
        data_axis=data_axis, members=members,
    ).compile()  # fmt: skip


def fit(
    params: PyTree,
    keys: jax.Array,
    inputs: PyTree,
    targets: jax.Array,
    recipe: Recipe,
    *,
    data_axis: int | None = 0,
    members: bool = False,
    context: PyTree = None,
) -> tuple[PyTree, dict[str, np.ndarray]]:
    """Train S seeds at once as `recipe` says (`Recipe`: Adam by default, or plain SGD).

    Args:
      params: parameters with a leading seed axis S.
      keys: (S,) keys for the data order; epoch e uses `fold_in(key, e)`.
      inputs, targets: (N, ...) shared by all seeds if `data_axis` is None,
        else (S, N, ...), one data set per seed. Each may be a pytree of such arrays.
      recipe: the objective and how to train on it; with a penalty, toward `params`, the start,
        the history also has its value ("penalty") and weight ("penalty_weight") at every step.
      members: params (and context) have a second axis M: M models per seed,
        e.g. students from different inits, trained on the seed's same inputs,
        targets and data order. Each member's training is exactly its own
        (Adam is elementwise); sharing the inputs is only faster.
      context: the data of the recipe's hook, a pytree with the seed axis (see `GradientHook`).
    Returns:
      the trained parameters (S, [M,] ...) and, at every step, the loss and the
      hook's metrics: {"loss": (S, [M,] epochs, steps_per_epoch), ...}.
    Raises:
      TrainingDiverged: at the end of the first epoch whose loss is not finite, or at the end
        when the last step made the parameters non-finite.
      runs.Stopped: before an epoch, if the run this training is part of stopped (`runs.check_stop`).

    An epoch bar, named by the recipe, shows while it trains unless its run hides bars (`runs.showing`).
    """
    states = _initial_states(params, members=members, optimizer_name=recipe.optimizer)
    start = None if recipe.penalty is None else params  # kept only for a penalty that reads it
    traced = _traced(recipe)
    history = []
    for epoch in tqdm(range(recipe.epochs), desc=recipe.name, unit="epoch", leave=False, disable=not runs.shown()):
        runs.check_stop()
        states, metrics = _train_epoch_seeds(
            states, _epoch_keys(keys, epoch), inputs, targets, context, start, np.int32(epoch), traced,
            data_axis=data_axis, members=members,
        )  # fmt: skip
        metrics = jax.tree.map(np.asarray, metrics)
        losses = metrics["loss"]
        if not np.all(np.isfinite(losses)):
            raise TrainingDiverged(
                f"{recipe.name}: the loss became {losses[~np.isfinite(losses)][0]} in epoch {epoch + 1}; "
                "lower the learning rate"
            )
        history.append(metrics)
    # A loss is measured before its step, so a last step that diverges shows in the parameters only.
    if recipe.epochs and not all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(states.params)):
        raise TrainingDiverged(
            f"{recipe.name}: the parameters became non-finite in the last epoch; lower the learning rate"
        )
    # Epochs before steps: {name: (S, [M,] epochs, steps)}; empty for zero epochs.
    return states.params, jax.tree.map(lambda *epochs: np.stack(epochs, axis=-2), *history) if history else {}
