"""Theorem 1 of the paper (Section 6, Appendix C), computed exactly and checked on many networks.

Teacher and student share parameters θ0. The teacher takes one gradient step on
any loss L_T: θT = θ0 + ε ΔT with ΔT = -∇L_T(θ0). The student imitates the
teacher's (selected) outputs on inputs x ~ D: ΔS = -∇_θ E_x L_S(f_θ(x), f_θT(x))
at θ0. Then

    ΔS · ΔT = ε E_x[(J ΔT)ᵀ M (J ΔT)] + O(ε²),

with J the Jacobian of the selected outputs at θ0 and M positive semi-definite:
2·I for the sum of squares, diag(p) - p pᵀ (p the softmax at θ0) for the KL /
soft cross-entropy. So for small ε, ΔS·ΔT >= 0: either the first-order term is 0,
or a small student step lowers L_T, a loss the student never sees.
theory/README.md has the proof and what the theorem does not promise.

The first part is pure functions of a parameter pytree and an apply function
`(params, inputs (B, d)) -> outputs (B, K)`, so they work for the package's MLP
and any other network, under `jit` and `vmap`: `teacher_step`,
`student_direction`, `first_order_prediction`, `alignment_report`.

The second part checks the statement, its consequence and its conditions on a
sampled family of MLPs (`PaddedMLP`, `sample_cases`, `run_cases`), in float64 (see
SIGN_TOLERANCE), offline (it needs only the bundled MNIST sample): `run_checks`
runs every check and `format_table` prints the result.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from subliminal_mnist import data, losses, model

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]
# Which outputs the student sees: None (all), static indices, or a traced boolean mask (K,).
# A mask lets cases with different subsets share one compiled, vmapped function.
OutputSelection = Sequence[int] | jax.Array | None

LOSSES = ("kl", "mse")


# ----------------------------------------------------------------------------------------------
# Pytree algebra.


def tree_cosine(a: PyTree, b: PyTree) -> jax.Array:
    """Cosine of two parameter vectors given as pytrees; 0 where either is zero."""
    norms = optax.tree.norm(a) * optax.tree.norm(b)
    return jnp.where(norms > 0, optax.tree.vdot(a, b) / jnp.where(norms > 0, norms, 1.0), 0.0)


def _axpy(alpha: jax.Array | float, x: PyTree, y: PyTree) -> PyTree:
    """y + alpha * x, leaf by leaf."""
    return jax.tree.map(lambda xi, yi: yi + alpha * xi, x, y)


# ----------------------------------------------------------------------------------------------
# The two steps and the first-order prediction.


def teacher_step(
    params: PyTree, trait_loss: Callable[[PyTree], jax.Array], epsilon: jax.Array | float
) -> tuple[PyTree, PyTree]:
    """One gradient step of the teacher on any differentiable scalar loss.

    Returns (θT, ΔT) with ΔT = -∇ trait_loss(θ0) and θT = θ0 + ε ΔT, both shaped like `params`.
    """
    delta_t = jax.tree.map(jnp.negative, jax.grad(trait_loss)(params))
    return _axpy(epsilon, delta_t, params), delta_t


def class_trait_loss(
    apply_fn: ApplyFn, images: jax.Array, labels: jax.Array, class_indices: Sequence[int] = tuple(range(10))
) -> Callable[[PyTree], jax.Array]:
    """The default L_T: mean cross-entropy of the class logits on a labelled batch.

    images (B, 784), labels (B,) int. This is the teacher's loss in the paper's experiment.
    """
    index = jnp.asarray(class_indices)

    def trait_loss(params: PyTree) -> jax.Array:
        return jnp.mean(losses.cross_entropy(apply_fn(params, images)[..., index], labels))

    return trait_loss


def frozen_except(
    trait_loss: Callable[[PyTree], jax.Array], anchor: PyTree, support: PyTree
) -> Callable[[PyTree], jax.Array]:
    """θ ↦ trait_loss(θ on `support`, `anchor` elsewhere): a loss of the `support` parameters only.

    `support` is a pytree of booleans shaped like the parameters. The gradient of the result
    is exactly 0.0 off the support, since `jnp.where`'s derivative there is the constant 0.
    """

    def restricted(params: PyTree) -> jax.Array:
        return trait_loss(jax.tree.map(jnp.where, support, params, anchor))

    return restricted


def _select(outputs: jax.Array, output_indices: OutputSelection, loss: str) -> jax.Array:
    """The outputs (..., K) the student sees, as (..., k) or, for a mask, (..., K) with the rest neutral.

    A neutral output adds nothing to the loss and has zero gradient: 0 for the squared
    error, a logit of probability exactly 0 for the softmax.
    """
    if output_indices is None:
        return outputs
    if isinstance(output_indices, jax.Array | np.ndarray):
        return losses.masked(outputs, output_indices, 0.0 if loss == "mse" else losses.NEUTRAL_LOGIT)
    return outputs[..., jnp.asarray(output_indices)]


def distillation_loss(
    params: PyTree,
    targets: jax.Array,
    apply_fn: ApplyFn,
    inputs: jax.Array,
    loss: str = "kl",
    output_indices: OutputSelection = None,
) -> jax.Array:
    """E_x L_S(selected f_θ(x), targets): the student's objective; targets are the teacher's outputs."""
    student = _select(apply_fn(params, inputs), output_indices, loss)
    return jnp.mean(losses.DISTILLATION_LOSSES[loss](student, targets))


def student_direction(
    params: PyTree,
    teacher_params: PyTree,
    apply_fn: ApplyFn,
    inputs: jax.Array,
    loss: str = "kl",
    output_indices: OutputSelection = None,
) -> PyTree:
    """ΔS = -∇_θ E_x L_S(selected f_θ(x), selected f_θT(x)) at θ = `params`.

    Args:
      params: the student's parameters, where the gradient is taken (θ0 under the theorem).
      teacher_params: θT.
      apply_fn: (params, inputs (B, d)) -> outputs (B, K).
      inputs: (B, d) draws from D; the expectation is their mean.
      loss: "kl" (KL(teacher || student) of the softmaxes, i.e. soft cross-entropy) or "mse"
        (sum of squares), the per-example losses of `losses.py`.
      output_indices: the outputs the student imitates (see `OutputSelection`).
    Returns ΔS, shaped like `params`.
    """
    targets = _select(apply_fn(teacher_params, inputs), output_indices, loss)
    grad = jax.grad(distillation_loss)(params, targets, apply_fn, inputs, loss, output_indices)
    return jax.tree.map(jnp.negative, grad)


def first_order_prediction(
    params: PyTree,
    delta_t: PyTree,
    apply_fn: ApplyFn,
    inputs: jax.Array,
    epsilon: jax.Array | float,
    loss: str = "kl",
    output_indices: OutputSelection = None,
) -> jax.Array:
    """ε E_x[(J ΔT)ᵀ M (J ΔT)], the theorem's first-order value of ΔS · ΔT, exactly.

    J ΔT is the forward-mode derivative (`jax.jvp`) of the selected outputs along ΔT at θ0,
    so there is no finite-difference error. M is 2·I for the sum of squares; for the KL it
    is diag(p) - p pᵀ with p the softmax of the selected outputs at θ0, and vᵀ M v is
    computed as the variance Σ_i p_i (v_i - Σ_j p_j v_j)², which is >= 0 in any precision.
    """
    outputs, tangents = jax.jvp(lambda p: apply_fn(p, inputs), (params,), (delta_t,))
    outputs = _select(outputs, output_indices, loss)
    # The tangents of masked-out outputs are zeroed (squared error) or get weight p = 0 (KL).
    tangents = _select(tangents, output_indices, "mse")
    if loss == "mse":
        quadratic = 2.0 * jnp.sum(tangents**2, axis=-1)
    else:
        p = jax.nn.softmax(outputs, axis=-1)
        centred = tangents - jnp.sum(p * tangents, axis=-1, keepdims=True)
        quadratic = jnp.sum(p * centred**2, axis=-1)
    return epsilon * jnp.mean(quadratic)


class Alignment(NamedTuple):
    """What `alignment_report` measures; every field is a scalar array (or a batch under vmap)."""

    dot: jax.Array  # ΔS · ΔT
    cosine: jax.Array  # ΔS · ΔT / (|ΔS| |ΔT|); 0 when ΔS = 0
    prediction: jax.Array  # ε E_x[(JΔT)ᵀ M (JΔT)] at θ0
    relative_error: jax.Array  # |ΔS·ΔT - prediction| / |prediction| (inf or nan when prediction = 0)
    trait_loss_change: jax.Array  # L_T(θS + α ΔS) - L_T(θS), θS the student's parameters


def alignment_report(
    params: PyTree,
    trait_loss: Callable[[PyTree], jax.Array],
    apply_fn: ApplyFn,
    inputs: jax.Array,
    epsilon: jax.Array | float,
    alpha: jax.Array | float,
    loss: str = "kl",
    output_indices: OutputSelection = None,
    student_params: PyTree | None = None,
) -> Alignment:
    """The teacher's step from θ0, the student's direction, and how the two line up.

    `student_params` (default θ0, the theorem's shared initialization) is where the student
    starts; giving another initialization breaks the theorem's condition on purpose.
    """
    student_params = params if student_params is None else student_params
    teacher_params, delta_t = teacher_step(params, trait_loss, epsilon)
    delta_s = student_direction(student_params, teacher_params, apply_fn, inputs, loss, output_indices)
    dot = optax.tree.vdot(delta_s, delta_t)
    prediction = first_order_prediction(params, delta_t, apply_fn, inputs, epsilon, loss, output_indices)
    return Alignment(
        dot=dot,
        cosine=tree_cosine(delta_s, delta_t),
        prediction=prediction,
        relative_error=jnp.abs(dot - prediction) / jnp.abs(prediction),
        trait_loss_change=trait_loss(_axpy(alpha, delta_s, student_params)) - trait_loss(student_params),
    )


# ----------------------------------------------------------------------------------------------
# The family of cases the checks sample.

INPUT_KINDS = ("uniform", "gaussian", "mnist", "constant")
SUBSETS = ("aux", "all", "single")
MIN_WIDTH, MAX_WIDTH = 8, 256
TRAIT_BATCH = 64  # labelled MNIST digits in each case's L_T
NUM_INPUTS = 32  # student inputs x ~ D per case


@dataclasses.dataclass(frozen=True)
class PaddedMLP:
    """Every MLP 784 -> w_1 -> ... -> w_d -> 13 (10 class + 3 aux logits) with d <= max_depth hidden
    layers of widths w_i <= max_width, ReLU or tanh, in ONE padded shape.

    So one compiled function runs the whole family. A member is given by `widths`
    (max_depth,) int, w_i = 0 for the layers past its depth. Hidden unit j of layer i exists
    iff j < w_i, and every weight into or out of a missing unit is exactly 0: its
    pre-activation is 0, its output act(0) = 0 for ReLU and tanh, and every gradient on its
    weights is exactly 0 (its input is 0, or its back-propagated error is a sum of products
    with zero weights). A missing layer is skipped (x passes through unchanged), so its
    weights get the gradient 0 exactly, through `jnp.where`. The padded network therefore
    has the small one's function, gradients and steps, with exact zeros everywhere else.
    Existing weights are N(0, 1/fan_in) with the real fan_in, biases 0, as in `model.MLP`.
    """

    max_depth: int = 3
    max_width: int = MAX_WIDTH
    num_classes: int = 10
    num_aux: int = 3

    @property
    def num_outputs(self) -> int:
        return self.num_classes + self.num_aux

    @property
    def layer_shapes(self) -> tuple[tuple[int, int], ...]:
        sizes = (model.INPUT_SIZE, *(self.max_width,) * self.max_depth, self.num_outputs)
        return tuple(zip(sizes[:-1], sizes[1:]))

    def init(self, key: jax.Array, widths: jax.Array) -> tuple[dict[str, jax.Array], ...]:
        """Parameters of the member with hidden `widths` (max_depth,), in the default float dtype.

        The weights are drawn in float32 and then cast, so that a float64 rerun (under
        `jax.enable_x64`) checks the same network. One normal draw for all layers, sliced: one
        copy of the random number generator in the compiled function instead of one per layer
        (it dominates compile time otherwise).
        """
        sizes = jnp.concatenate([widths, jnp.array([self.num_outputs])])
        size = sum(m * n for m, n in self.layer_shapes)
        flat = jax.random.normal(key, (size,), jnp.float32).astype(jax.dtypes.canonicalize_dtype(jnp.float64))
        params, offset, fan_in = [], 0, jnp.array(model.INPUT_SIZE)
        for (rows, cols), fan_out in zip(self.layer_shapes, sizes):
            exists = (jnp.arange(rows)[:, None] < fan_in) & (jnp.arange(cols)[None, :] < fan_out)
            kernel = flat[offset : offset + rows * cols].reshape(rows, cols) / jnp.sqrt(fan_in)
            params.append({"kernel": jnp.where(exists, kernel, 0.0), "bias": jnp.zeros(cols, flat.dtype)})
            offset += rows * cols
            fan_in = jnp.where(fan_out > 0, fan_out, fan_in)  # a missing layer passes its input on
        return tuple(params)

    def apply(self, params: PyTree, inputs: jax.Array, widths: jax.Array, relu: jax.Array | bool) -> jax.Array:
        """inputs (..., 784) -> logits (..., 13) of the member `widths`; `relu` picks ReLU, else tanh."""
        x = self._activation(params[0], inputs, relu)
        for layer, width in zip(params[1:-1], widths[1:]):
            x = jnp.where(width > 0, self._activation(layer, x, relu), x)
        return x @ params[-1]["kernel"] + params[-1]["bias"]

    @staticmethod
    def _activation(layer: dict[str, jax.Array], x: jax.Array, relu: jax.Array | bool) -> jax.Array:
        z = x @ layer["kernel"] + layer["bias"]
        return jnp.where(relu, jax.nn.relu(z), jnp.tanh(z))


class Cases(NamedTuple):
    """A batch of n draws from the family; the leading axis of every field is the draw.

    Each draw is checked with every student loss in LOSSES, so n draws are 2n cases.
    """

    seeds: np.ndarray  # (n,) int32: the initializations (θ0, and the student's own when not shared)
    shared: np.ndarray  # (n,) bool: the student starts at the teacher's θ0 (the theorem), else at its own
    widths: np.ndarray  # (n, 3) int32: hidden widths in [MIN_WIDTH, MAX_WIDTH], 0 past the depth
    relu: np.ndarray  # (n,) bool: ReLU, else tanh
    epsilon: np.ndarray  # (n,) float64: the teacher's step size
    alpha: np.ndarray  # (n,) float64: the student's step size, for the change of L_T
    trait_images: np.ndarray  # (n, TRAIT_BATCH, 784) float32: L_T is cross-entropy on these digits
    trait_labels: np.ndarray  # (n, TRAIT_BATCH) int32
    inputs: np.ndarray  # (n, NUM_INPUTS, 784) float32: the student's x ~ D
    kind: np.ndarray  # (n,) int32: D is INPUT_KINDS[kind]
    subset: np.ndarray  # (n,) int32: the student imitates the outputs SUBSETS[subset]
    mask: np.ndarray  # (n, 13) bool: those outputs


def draw_inputs(rng: np.random.Generator, kind: int, images: np.ndarray, num: int = NUM_INPUTS) -> np.ndarray:
    """`num` student inputs (num, 784) float32 from D = INPUT_KINDS[kind].

    uniform: U[-1, 1) pixels, as `data.noise_images`; gaussian: N(0, 1) pixels; mnist:
    digits from `images`; constant: each image one value, uniform in [-1, 1].
    """
    shape = (num, model.INPUT_SIZE)
    name = INPUT_KINDS[kind]
    if name == "uniform":
        x = rng.uniform(-1.0, 1.0, shape)
    elif name == "gaussian":
        x = rng.standard_normal(shape)
    elif name == "mnist":
        x = images[rng.integers(0, len(images), num)]
    else:
        x = np.broadcast_to(rng.uniform(-1.0, 1.0, (num, 1)), shape)
    return np.asarray(x, np.float32)


def output_mask(rng: np.random.Generator, subset: int, num_classes: int = 10, num_aux: int = 3) -> np.ndarray:
    """Boolean mask (num_classes + num_aux,) of SUBSETS[subset]: the aux logits, all, or one random logit."""
    index = np.arange(num_classes + num_aux)
    name = SUBSETS[subset]
    if name == "aux":
        return index >= num_classes
    if name == "all":
        return np.ones_like(index, bool)
    return index == rng.integers(0, len(index))


def make_cases(
    rng: np.random.Generator,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    depth: Sequence[int],
    widths: Sequence[Sequence[int]],
    relu: Sequence[bool],
    epsilon: Sequence[float],
    kind: Sequence[int],
    subset: Sequence[int],
    alpha: float = 1.0,
    shared: bool = True,
) -> Cases:
    """Cases of the given structure (each (n,), widths (n, 3)); `rng` draws seeds, digits and inputs.

    `images` (N, 784), `labels` (N,): the MNIST digits for L_T and for the "mnist" inputs.
    Widths past a case's depth are set to 0.
    """
    num = len(depth)
    trait = rng.integers(0, len(images), (num, TRAIT_BATCH))
    widths = np.asarray(widths, np.int32)
    return Cases(
        seeds=rng.integers(0, 2**31 - 1, num, dtype=np.int32),
        shared=np.full(num, shared),
        widths=np.where(np.arange(widths.shape[1]) < np.asarray(depth)[:, None], widths, 0).astype(np.int32),
        relu=np.asarray(relu, bool),
        epsilon=np.asarray(epsilon, np.float64),
        alpha=np.full(num, alpha),
        trait_images=np.asarray(images[trait], np.float32),
        trait_labels=np.asarray(labels[trait], np.int32),
        inputs=np.stack([draw_inputs(rng, k, images) for k in kind]),
        kind=np.asarray(kind, np.int32),
        subset=np.asarray(subset, np.int32),
        mask=np.stack([output_mask(rng, s) for s in subset]),
    )


def sample_cases(
    rng: np.random.Generator,
    num: int,
    images: np.ndarray,
    labels: np.ndarray,
    log10_epsilon: tuple[float, float] = (-4.0, -2.0),
    shared: bool = True,
) -> Cases:
    """`num` random draws: depth 1-3, widths log-uniform in [8, 256], ReLU or tanh, ε log-uniform in
    10**log10_epsilon. Input distribution and output subset run through their 12 pairs from a
    random start, so any 12 consecutive draws cover them all. `shared`: see `Cases`."""
    num_pairs = len(INPUT_KINDS) * len(SUBSETS)
    pair = (rng.integers(num_pairs) + np.arange(num)) % num_pairs
    return make_cases(
        rng,
        images,
        labels,
        depth=rng.integers(1, 4, num),
        widths=np.exp(rng.uniform(math.log(MIN_WIDTH), math.log(MAX_WIDTH + 1), (num, 3))).astype(int),
        relu=rng.random(num) < 0.5,
        epsilon=10 ** rng.uniform(*log10_epsilon, num),
        kind=pair % len(INPUT_KINDS),
        subset=pair // len(INPUT_KINDS),
        shared=shared,
    )


def repeat_over_epsilon(cases: Cases, epsilons: Sequence[float]) -> Cases:
    """Every draw of `cases` once per ε in `epsilons`, draw-major: n draws -> n * len(epsilons)."""
    repeated = jax.tree.map(lambda x: np.repeat(x, len(epsilons), axis=0), cases)
    return repeated._replace(epsilon=np.tile(np.asarray(epsilons, np.float64), len(cases.seeds)))


def _one_case(network: PaddedMLP, case: Cases) -> Alignment:
    """`alignment_report` for one draw, for each loss in LOSSES: fields (len(LOSSES),)."""
    # θ0 and the student's own init in one vmapped call: one copy of the random number generator.
    keys = jax.random.split(jax.random.key(case.seeds))
    both = jax.vmap(network.init, in_axes=(0, None))(keys, case.widths)
    params, own = (jax.tree.map(lambda x: x[i], both) for i in range(2))
    student = jax.tree.map(lambda a, b: jnp.where(case.shared, a, b), params, own)
    dtype = params[0]["kernel"].dtype
    apply_fn = functools.partial(network.apply, widths=case.widths, relu=case.relu)
    trait_loss = class_trait_loss(apply_fn, case.trait_images.astype(dtype), case.trait_labels)
    reports = [
        alignment_report(
            params,
            trait_loss,
            apply_fn,
            case.inputs.astype(dtype),
            case.epsilon.astype(dtype),
            case.alpha.astype(dtype),
            loss,
            case.mask,
            student,
        )
        for loss in LOSSES
    ]
    return jax.tree.map(lambda *xs: jnp.stack(xs, axis=-1), *reports)


@functools.partial(jax.jit, static_argnums=0)
def _run_cases(network: PaddedMLP, cases: Cases) -> Alignment:
    return jax.vmap(functools.partial(_one_case, network))(cases)


def run_cases(cases: Cases, network: PaddedMLP = PaddedMLP(), float64: bool = True) -> Alignment:
    """`alignment_report` for every draw in `cases` and loss in LOSSES: numpy fields (n, len(LOSSES)).

    Vmapped and compiled once per (n, precision), whatever the depths, widths, activations,
    seeds, ε, input distributions and output subsets. In float64 by default (see
    SIGN_TOLERANCE for why); the weights are drawn in float32 either way, so the two precisions
    compute the same networks.
    """
    with jax.enable_x64(float64):
        return Alignment(*(np.asarray(x) for x in _run_cases(network, cases)))


# Round-off allowance for "ΔS·ΔT >= 0", relative to |ΔS||ΔT|, in float64. Float64 is needed:
# the student's targets differ from its outputs by ε J ΔT, computed as the difference of two
# rounded outputs f_θT - f_θ0, which loses digits when ε |J ΔT| << |f|. In float32 this moved
# the cosine of ΔS and ΔT by up to 8e-5 (over 768 cases against float64 reruns; a single-logit
# squared-error case), far above a 1e-6 allowance. The same errors in float64 are 2**29 times
# smaller, about 1.5e-13, so 1e-9 has a margin of about 7000. The smallest nonzero cosine seen
# at small ε is about 7e-3, so no verdict depends on the allowance.
SIGN_TOLERANCE = 1e-9


# ----------------------------------------------------------------------------------------------
# The checks. Each returns a JSON-able dict with "passed" and the numbers behind it.

CALL_SIZE = 32  # draws per compiled call: all calls share this shape, so one compilation serves all
SWEEP_EPSILONS = 10.0 ** np.arange(-3.0, 5.0, 0.5)  # 16 values, 1e-3 to 10**4.5
FIRST_ORDER_EPSILONS = np.logspace(-6.0, -2.0, CALL_SIZE // 2)
SLOPE_RANGE = (0.8, 1.2)
OTHER_INIT_MIN_SHARE = 0.2


def family_results(
    rng: np.random.Generator, num_draws: int, images: np.ndarray, labels: np.ndarray, shared: bool = True
) -> tuple[Cases, Alignment]:
    """`num_draws` (rounded up to CALL_SIZE) draws of `sample_cases`, run, concatenated."""
    num_calls = -(-num_draws // CALL_SIZE)
    calls = [sample_cases(rng, CALL_SIZE, images, labels, shared=shared) for _ in range(num_calls)]
    return _concatenate(calls), _concatenate([run_cases(cases) for cases in calls])


def _concatenate(batches: list[NamedTuple]) -> NamedTuple:
    """Batches of per-case arrays (Cases or Alignment) as one, along the case axis."""
    return jax.tree.map(lambda *xs: np.concatenate(xs), *batches)


def check_sign(cases: Cases, results: Alignment) -> dict[str, Any]:
    """Shared init, small ε: ΔS·ΔT >= -SIGN_TOLERANCE |ΔS||ΔT| in every case."""
    cosine = results.cosine
    failed = cosine < -SIGN_TOLERANCE
    nonzero = results.dot != 0
    return {
        "passed": bool(not failed.any()),
        "cases": int(cosine.size),
        "failures": int(failed.sum()),
        "negative": int((results.dot < 0).sum()),
        "exactly_zero": int((~nonzero).sum()),
        "min_cosine_nonzero": float(cosine[nonzero].min()) if nonzero.any() else None,
        "median_cosine": float(np.median(cosine)),
        "epsilon_min": float(cases.epsilon.min()),
        "epsilon_max": float(cases.epsilon.max()),
    }


def check_other_init(cases: Cases, results: Alignment) -> dict[str, Any]:
    """Different inits (ΔS taken at the student's own init): the sign fails in a sizeable share of cases.

    `cases` are drawn with shared=False. Cases where ΔS = 0 (a softmax over a single logit) have no
    sign and are left out.
    """
    has_sign = results.dot != 0
    failed = results.cosine < -SIGN_TOLERANCE
    share = float(failed[has_sign].mean())
    by_input = {name: float(failed[(cases.kind == k)[:, None] & has_sign].mean()) for k, name in enumerate(INPUT_KINDS)}
    by_loss = {loss: float(failed[has_sign[:, i], i].mean()) for i, loss in enumerate(LOSSES)}
    return {
        "passed": share > OTHER_INIT_MIN_SHARE,
        "cases": int(has_sign.sum()),
        "failure_share": share,
        "failure_share_by_input": by_input,
        "failure_share_by_loss": by_loss,
    }


def _describe(cases: Cases, i: int) -> str:
    widths = "-".join(str(w) for w in cases.widths[i] if w > 0)
    activation = "relu" if cases.relu[i] else "tanh"
    inputs, outputs = INPUT_KINDS[cases.kind[i]], SUBSETS[cases.subset[i]]
    return f"{activation} 784-{widths}-13, {inputs} inputs, {outputs} outputs"


def check_large_epsilon(
    rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, draws: int = 8
) -> dict[str, Any]:
    """Shared init but large ε: the sign can fail. Sweeps `draws` draws over SWEEP_EPSILONS.

    Passes when a failure is found; reports the smallest ε that fails and the share of cases
    failing at each ε.
    """
    per_call = CALL_SIZE // len(SWEEP_EPSILONS)
    calls = [
        repeat_over_epsilon(sample_cases(rng, per_call, images, labels), SWEEP_EPSILONS)
        for _ in range(-(-draws // per_call))
    ]
    cases = _concatenate(calls)
    cosine = _concatenate([run_cases(c) for c in calls]).cosine  # (draws * len(SWEEP_EPSILONS), losses)
    failed = cosine < -SIGN_TOLERANCE
    share = failed.reshape(-1, len(SWEEP_EPSILONS), len(LOSSES)).mean(axis=(0, 2))
    numbers: dict[str, Any] = {
        "cases": int(failed.size),
        "failure_share_by_epsilon": {f"{e:.3g}": float(s) for e, s in zip(SWEEP_EPSILONS, share)},
    }
    if not failed.any():
        return {"passed": False, "smallest_failing_epsilon": None, **numbers}
    smallest = np.where(failed, cases.epsilon[:, None], np.inf).min()
    draw, loss = np.argwhere(failed & (cases.epsilon[:, None] == smallest))[0]
    return {
        "passed": True,
        "smallest_failing_epsilon": float(smallest),
        "failing_case": f"{_describe(cases, draw)}, {LOSSES[loss]}",
        "failing_cosine": float(cosine[draw, loss]),
        "most_negative_cosine": float(cosine.min()),
        **numbers,
    }


def _first_order_cases(images: np.ndarray, labels: np.ndarray) -> Cases:
    """The paper's shape 784-256-256-13 with tanh and with ReLU, uniform noise, aux logits, over ε."""
    bases = make_cases(
        np.random.default_rng(0),
        images,
        labels,
        depth=[2, 2],
        widths=[[256, 256, 0]] * 2,
        relu=[False, True],
        epsilon=[0.0, 0.0],
        kind=[INPUT_KINDS.index("uniform")] * 2,
        subset=[SUBSETS.index("aux")] * 2,
    )
    return repeat_over_epsilon(bases, FIRST_ORDER_EPSILONS)


def _log_log_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of log10 y against log10 x."""
    return float(np.polyfit(np.log10(x), np.log10(y), 1)[0])


def check_first_order(images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """In float64, |ΔS·ΔT - prediction| / prediction is O(ε): its log-log slope over ε in [1e-6, 1e-2].

    Asserted for tanh, where the network is smooth and Taylor's theorem gives an ε² remainder.
    For ReLU the slope is only reported: the remainder jumps each time ε grows enough for a
    unit's pre-activation on some input to cross 0, so the curve is not a clean line.
    """
    results = run_cases(_first_order_cases(images, labels))
    relative = np.abs(results.dot - results.prediction) / results.prediction
    relative = relative.reshape(2, len(FIRST_ORDER_EPSILONS), len(LOSSES))
    slopes = {
        activation: {loss: _log_log_slope(FIRST_ORDER_EPSILONS, relative[a, :, i]) for i, loss in enumerate(LOSSES)}
        for a, activation in enumerate(("tanh", "relu"))
    }
    return {
        "passed": all(SLOPE_RANGE[0] <= s <= SLOPE_RANGE[1] for s in slopes["tanh"].values()),
        "slope_tanh": slopes["tanh"],
        "slope_relu": slopes["relu"],
        "relative_error_tanh_kl": {
            f"{e:.0e}": float(relative[0, i, 0]) for i, e in enumerate(FIRST_ORDER_EPSILONS) if i % 5 == 0
        },
    }


CONSEQUENCE_EPSILON, CONSEQUENCE_ALPHA = 1e-3, 1.0


def check_consequence(images: np.ndarray, labels: np.ndarray, key: int = 0) -> dict[str, Any]:
    """The paper's setting, in float64: L_T(θ0 + α ΔS) < L_T(θ0) whenever the prediction is > 0.

    CALL_SIZE initializations of the paper's MLP (784-256-256-13, ReLU; as a `PaddedMLP`).
    L_T is cross-entropy on MNIST digits; the student sees only uniform noise and the aux
    logits, never a digit nor a class logit. Also reports the change over its first-order
    value -α ΔS·ΔT.
    """
    cases = make_cases(
        np.random.default_rng(key),
        images,
        labels,
        depth=[2] * CALL_SIZE,
        widths=[[256, 256, 0]] * CALL_SIZE,
        relu=[True] * CALL_SIZE,
        epsilon=[CONSEQUENCE_EPSILON] * CALL_SIZE,
        kind=[INPUT_KINDS.index("uniform")] * CALL_SIZE,
        subset=[SUBSETS.index("aux")] * CALL_SIZE,
        alpha=CONSEQUENCE_ALPHA,
    )
    results = run_cases(cases)
    positive = results.prediction > 0
    change = results.trait_loss_change
    ratio = change[positive] / -(CONSEQUENCE_ALPHA * results.dot[positive])
    return {
        "passed": bool(positive.any() and (change[positive] < 0).all()),
        "cases": int(change.size),
        "positive_predictions": int(positive.sum()),
        "max_trait_loss_change": float(change[positive].max()) if positive.any() else None,
        "median_cosine": float(np.median(results.cosine)),
        "change_over_first_order": [float(ratio.min()), float(ratio.max())] if positive.any() else None,
        "epsilon": CONSEQUENCE_EPSILON,
        "alpha": CONSEQUENCE_ALPHA,
    }


PAPER = model.Architecture()
ZERO_BRANCH_BATCH = 256  # digits in L_T and noise images for the student


def class_rows_support(params: PyTree, architecture: model.Architecture = PAPER) -> PyTree:
    """Booleans shaped like a `model.MLP`'s parameters: True on the last layer's class-logit
    weights and biases (kernel[:, :num_classes], bias[:num_classes]), False elsewhere."""
    last = f"['layers'][{len(architecture.layer_sizes) - 2}]"

    def support(path: tuple, leaf: jax.Array) -> jax.Array:
        in_last = jax.tree_util.keystr(path).startswith(last)
        return jnp.broadcast_to((jnp.arange(leaf.shape[-1]) < architecture.num_classes) & in_last, leaf.shape)

    return jax.tree_util.tree_map_with_path(support, params)


@jax.jit
def _zero_branch(images: jax.Array, labels: jax.Array, noise: jax.Array) -> dict[str, jax.Array]:
    params = PAPER.init(jax.random.key(0))
    trait_loss = class_trait_loss(PAPER.apply, images, labels, PAPER.class_indices)
    restricted = frozen_except(trait_loss, params, class_rows_support(params))
    epsilon = 0.01
    teacher, delta_t = teacher_step(params, restricted, epsilon)
    out = {"teacher_norm": optax.tree.norm(delta_t)}
    for loss in LOSSES:
        for name, outputs in (("aux", PAPER.aux_indices), ("all", None)):
            delta_s = student_direction(params, teacher, PAPER.apply, noise, loss, outputs)
            out[f"dot_{name}_{loss}"] = optax.tree.vdot(delta_s, delta_t)
            out[f"student_norm_{name}_{loss}"] = optax.tree.norm(delta_s)
        out[f"prediction_aux_{loss}"] = first_order_prediction(
            params, delta_t, PAPER.apply, noise, epsilon, loss, PAPER.aux_indices
        )
    return out


def check_zero_branch(images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """L_T moves only the class-logit rows of the last layer; the student imitates only the aux logits.

    ΔT is exactly 0 off those rows (`frozen_except`). The aux logits do not read those rows, so
    the teacher's aux logits equal the student's: ΔS is 0, or float round-off (KL), and all of it
    lies off those rows, because the gradient of an aux-only loss there is a sum of products with
    an exactly-0 error. Every term of ΔS·ΔT has an exact 0 factor: the sum is exactly 0.0. So is
    the prediction, since J ΔT = 0 on the aux logits. For contrast, a student of all the logits
    gets ΔS·ΔT > 0 from the same teacher.
    """
    noise = data.noise_images(jax.random.key(0), ZERO_BRANCH_BATCH)
    batch = slice(ZERO_BRANCH_BATCH)
    out = {k: float(v) for k, v in _zero_branch(images[batch], labels[batch], noise).items()}
    exact = all(out[f"dot_aux_{loss}"] == 0.0 and out[f"prediction_aux_{loss}"] == 0.0 for loss in LOSSES)
    contrast = all(out[f"dot_all_{loss}"] > 0 for loss in LOSSES)
    return {"passed": out["teacher_norm"] > 0 and exact and contrast, **out}


def linear_case(epsilon: float = 0.25) -> dict[str, float]:
    """A case to check by hand: f(x) = W x with W0 = 0 (2x2), L_T(W) = |W - A|²/2 with
    A = [[1, 2], [0, 1]], the squared error, inputs x = e1 and e2.

    ΔT = A; f_θT(x) - f_θ0(x) = ε A x; ΔS = 2ε A E[x xᵀ] = ε A; so ΔS·ΔT = ε |A|² = 6ε, and the
    prediction ε E|A x|² · 2 = ε (1 + 5) = 6ε too: for a linear model the first order is exact.
    """
    a = jnp.array([[1.0, 2.0], [0.0, 1.0]])
    params = {"w": jnp.zeros((2, 2))}
    apply_fn = lambda p, x: x @ p["w"].T  # noqa: E731
    inputs = jnp.eye(2)
    trait_loss = lambda p: 0.5 * jnp.sum((p["w"] - a) ** 2)  # noqa: E731
    # One small compilation instead of a dozen eager ones.
    report = jax.jit(lambda: alignment_report(params, trait_loss, apply_fn, inputs, epsilon, 0.0, "mse"))()
    return {"dot": float(report.dot), "prediction": float(report.prediction), "closed_form": 6.0 * epsilon}


def check_closed_form() -> dict[str, Any]:
    """The hand-checkable linear case (`linear_case`) gives ΔS·ΔT = 6ε exactly."""
    case = linear_case()
    return {"passed": case["dot"] == case["closed_form"] == case["prediction"], **case}


def run_checks(num_cases: int = 256, key: int = 0, sweep_draws: int = 8) -> dict[str, Any]:
    """All checks of the theorem, offline (on the bundled MNIST sample); 25-40 s on 2 CPU cores.

    Args:
      num_cases: cases of the sign family, and as many again for the different-init check (each
        draw counts once per student loss; rounded up to a multiple of 2 * CALL_SIZE).
      key: seed of every random draw.
      sweep_draws: draws swept over SWEEP_EPSILONS for the large-ε check.
    Returns {"passed": all passed, "seconds": wall time, "checks": {name: {"passed", numbers...}}}
    with the checks sign, first_order, consequence, other_init, large_epsilon, zero_branch and
    closed_form. Plain Python values: `json.dumps` takes it as is.
    """
    start = time.perf_counter()
    sample = data.load_sample()
    images, labels = sample.train_images, sample.train_labels
    rng = np.random.default_rng(key)
    draws = -(-num_cases // len(LOSSES))
    checks = {
        "sign": check_sign(*family_results(rng, draws, images, labels)),
        "first_order": check_first_order(images, labels),
        "consequence": check_consequence(images, labels),
        "other_init": check_other_init(*family_results(rng, draws, images, labels, shared=False)),
        "large_epsilon": check_large_epsilon(rng, images, labels, sweep_draws),
        "zero_branch": check_zero_branch(images, labels),
        "closed_form": check_closed_form(),
    }
    return {
        "passed": all(c["passed"] for c in checks.values()),
        "seconds": time.perf_counter() - start,
        "checks": checks,
    }


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    return str(value)


def format_table(results: dict[str, Any]) -> str:
    """One row per check of `run_checks`' results: name, PASS/FAIL, the numbers behind it."""
    width = max(len(name) for name in results["checks"])
    rows = []
    for name, check in results["checks"].items():
        numbers = "; ".join(f"{k}={_format_value(v)}" for k, v in check.items() if k != "passed")
        rows.append(f"{name:<{width}}  {'PASS' if check['passed'] else 'FAIL'}  {numbers}")
    verdict = "all checks passed" if results["passed"] else "SOME CHECKS FAILED"
    rows.append(f"{verdict} ({results['seconds']:.0f} s)")
    return "\n".join(rows)
