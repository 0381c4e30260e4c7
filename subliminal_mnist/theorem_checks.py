"""Theorem 1 checked on many networks: the sampled family, the checks, and worked examples.

`theorem` holds the mathematics (the teacher's step, the student's direction, the
exact identity and the first-order prediction). This module checks the statement,
its consequence and its conditions on a sampled family of MLPs (`PaddedMLP`,
`sample_cases`, `run_cases`), in float64 (see SIGN_TOLERANCE), offline (it needs
only the bundled MNIST sample), and on small worked examples a class can follow by
hand. `run_checks` runs every check and `format_table` prints the result.

Every check fails on a value that is not finite: a NaN is never a pass.
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
from jax.flatten_util import ravel_pytree

from subliminal_mnist import data, lora, model, theorem, train
from subliminal_mnist.theorem import LOSSES, Alignment, PyTree

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
        size = sum(m * n for m, n in self.layer_shapes)
        flat = jax.random.normal(key, (size,), jnp.float32).astype(jax.dtypes.canonicalize_dtype(jnp.float64))
        params, offset = [], 0
        for (rows, cols), fan_in, fan_out in zip(self.layer_shapes, *self.fans(widths)):
            exists = (jnp.arange(rows)[:, None] < fan_in) & (jnp.arange(cols)[None, :] < fan_out)
            kernel = flat[offset : offset + rows * cols].reshape(rows, cols) / jnp.sqrt(fan_in)
            params.append({"kernel": jnp.where(exists, kernel, 0.0), "bias": jnp.zeros(cols, flat.dtype)})
            offset += rows * cols
        return tuple(params)

    def fans(self, widths: jax.Array) -> tuple[list[jax.Array], jax.Array]:
        """Each layer's real fan-in and fan-out in the member `widths` (a missing layer, of fan-out 0, passes
        its input on: the next layer's fan-in is the last existing one's fan-out)."""
        fan_outs = jnp.concatenate([widths, jnp.array([self.num_outputs])])
        fan_ins, fan_in = [], jnp.array(model.INPUT_SIZE)
        for fan_out in fan_outs:
            fan_ins.append(fan_in)
            fan_in = jnp.where(fan_out > 0, fan_out, fan_in)
        return fan_ins, fan_outs

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

    def zero_preactivations(self, params: PyTree, inputs: jax.Array, widths: jax.Array) -> jax.Array:
        """How many (input, existing hidden unit) pairs have a pre-activation of exactly 0.

        Where a ReLU unit's pre-activation is exactly 0, the network is not differentiable
        in θ (a bias moved up turns the unit on, moved down leaves it off), and `jax.jvp`
        and `jax.grad` take the derivative 0 there instead of a directional derivative: the
        theorem's smoothness assumption fails. With zero biases this happens when a whole
        layer is inactive on an input, so the next layer's pre-activations are all exactly 0.
        Missing units (padding) are not counted: their pre-activation is 0 by construction.
        """
        x, count = inputs, jnp.zeros((), jnp.int32)
        for i, (layer, width) in enumerate(zip(params[:-1], widths)):
            z = x @ layer["kernel"] + layer["bias"]
            exists = jnp.arange(z.shape[-1]) < width  # all False for a missing layer
            count += jnp.sum((z == 0) & exists)
            # The first layer always exists; a missing later layer passes its input on.
            x = jax.nn.relu(z) if i == 0 else jnp.where(width > 0, jax.nn.relu(z), x)
        return count


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
    rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, *, depth: Sequence[int],
    widths: Sequence[Sequence[int]], relu: Sequence[bool], epsilon: Sequence[float], kind: Sequence[int],
    subset: Sequence[int], alpha: float = 1.0, shared: bool = True,
) -> Cases:  # fmt: skip
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
    rng: np.random.Generator, num: int, images: np.ndarray, labels: np.ndarray,
    log10_epsilon: tuple[float, float] = (-4.0, -2.0), shared: bool = True,
) -> Cases:  # fmt: skip
    """`num` random draws: depth 1-3, widths log-uniform in [8, 256], ReLU or tanh, ε log-uniform in
    10**log10_epsilon. Input distribution and output subset run through their 12 pairs from a
    random start, so any 12 consecutive draws cover them all. `shared`: see `Cases`."""
    num_pairs = len(INPUT_KINDS) * len(SUBSETS)
    pair = (rng.integers(num_pairs) + np.arange(num)) % num_pairs
    return make_cases(
        rng, images, labels,
        depth=rng.integers(1, 4, num),
        widths=np.exp(rng.uniform(math.log(MIN_WIDTH), math.log(MAX_WIDTH + 1), (num, 3))).astype(int),
        relu=rng.random(num) < 0.5,
        epsilon=10 ** rng.uniform(*log10_epsilon, num),
        kind=pair % len(INPUT_KINDS),
        subset=pair // len(INPUT_KINDS),
        shared=shared,
    )  # fmt: skip


def repeat_over_epsilon(cases: Cases, epsilons: Sequence[float]) -> Cases:
    """Every draw of `cases` once per ε in `epsilons`, draw-major: n draws -> n * len(epsilons)."""
    repeated = jax.tree.map(lambda x: np.repeat(x, len(epsilons), axis=0), cases)
    return repeated._replace(epsilon=np.tile(np.asarray(epsilons, np.float64), len(cases.seeds)))


class Results(NamedTuple):
    """What `run_cases` measures for n draws."""

    alignment: Alignment  # numpy fields (n, len(LOSSES))
    zero_preactivations: np.ndarray  # (n,) int: exactly-0 pre-activations (see PaddedMLP.zero_preactivations)


def _one_case(network: PaddedMLP, case: Cases) -> tuple[Alignment, jax.Array]:
    """`alignment_report` for one draw, for each loss in LOSSES (fields (len(LOSSES),)), and its kinks."""
    # θ0 and the student's own init in one vmapped call: one copy of the random number generator.
    keys = jax.random.split(jax.random.key(case.seeds))
    both = jax.vmap(network.init, in_axes=(0, None))(keys, case.widths)
    params, own = (jax.tree.map(lambda x, i=i: x[i], both) for i in range(2))
    student = jax.tree.map(lambda a, b: jnp.where(case.shared, a, b), params, own)
    dtype = params[0]["kernel"].dtype
    apply_fn = functools.partial(network.apply, widths=case.widths, relu=case.relu)
    inputs, trait_images = case.inputs.astype(dtype), case.trait_images.astype(dtype)
    trait_loss = theorem.class_trait_loss(apply_fn, trait_images, case.trait_labels)
    epsilon, alpha = case.epsilon.astype(dtype), case.alpha.astype(dtype)
    reports = [
        theorem.alignment_report(params, trait_loss, apply_fn, inputs, epsilon, alpha, loss, case.mask, student)
        for loss in LOSSES
    ]
    # Where the derivatives are taken: the student's inputs at θ0 and at the student's start, and
    # L_T's digits at θ0. Tanh is smooth everywhere; only ReLU kinks count.
    kinks = sum(network.zero_preactivations(p, x, case.widths) for p, x in ((params, inputs), (student, inputs)))
    kinks += network.zero_preactivations(params, trait_images, case.widths)
    return jax.tree.map(lambda *xs: jnp.stack(xs, axis=-1), *reports), jnp.where(case.relu, kinks, 0)


@functools.partial(jax.jit, static_argnums=0)
def _run_cases(network: PaddedMLP, cases: Cases) -> tuple[Alignment, jax.Array]:
    return jax.vmap(functools.partial(_one_case, network))(cases)


def run_cases(cases: Cases, network: PaddedMLP = PaddedMLP(), float64: bool = True) -> Results:
    """`alignment_report` for every draw in `cases` and loss in LOSSES, and each draw's kinks.

    Vmapped and compiled once per (n, precision), whatever the depths, widths, activations,
    seeds, ε, input distributions and output subsets. In float64 by default (see
    SIGN_TOLERANCE for why); the weights are drawn in float32 either way, so the two precisions
    compute the same networks.
    """
    with jax.enable_x64(float64):
        report, kinks = _run_cases(network, cases)
        return Results(Alignment(*(np.asarray(x) for x in report)), np.asarray(kinks))


def meets_assumptions(cases: Cases, results: Results) -> np.ndarray:
    """(n,) bool: the draw is smooth where the theorem differentiates (tanh, or ReLU without kinks)."""
    return ~cases.relu | (results.zero_preactivations == 0)


def finite(alignment: Alignment) -> np.ndarray:
    """(n, len(LOSSES)) bool: every number a check reads is finite. A NaN is a failure, never a pass."""
    fields = (alignment.dot, alignment.cosine, alignment.identity, alignment.prediction, alignment.trait_loss_change)
    return np.logical_and.reduce([np.isfinite(f) for f in fields])


# Round-off allowance for "ΔS·ΔT >= 0", relative to |ΔS||ΔT|, in float64. Float64 is needed:
# the student's targets differ from its outputs by ε J ΔT, computed as the difference of two
# rounded outputs f_θT - f_θ0, which loses digits when ε |J ΔT| << |f|. In float32 this moved
# the cosine of ΔS and ΔT by up to 8e-5 (over 768 cases against float64 reruns; a single-logit
# squared-error case), far above a 1e-6 allowance. The same errors in float64 are 2**29 times
# smaller, about 1.5e-13, so 1e-9 has a margin of about 7000. The smallest nonzero cosine seen
# at small ε is about 7e-3, so no verdict depends on the allowance.
SIGN_TOLERANCE = 1e-9


# ----------------------------------------------------------------------------------------------
# The checks on the family. Each returns a JSON-able dict with "passed" and the numbers behind it.

CALL_SIZE = 32  # draws per compiled call: all calls share this shape, so one compilation serves all
SWEEP_EPSILONS = 10.0 ** np.arange(-3.0, 5.0, 0.5)  # 16 values, 1e-3 to 10**4.5
OTHER_INIT_MIN_SHARE = 0.2


def family_results(
    rng: np.random.Generator, num_draws: int, images: np.ndarray, labels: np.ndarray, shared: bool = True
) -> tuple[Cases, Results]:
    """`num_draws` (rounded up to CALL_SIZE) draws of `sample_cases`, run, concatenated."""
    calls = [sample_cases(rng, CALL_SIZE, images, labels, shared=shared) for _ in range(-(-num_draws // CALL_SIZE))]
    return _concatenate(calls), _concatenate([run_cases(cases) for cases in calls])


def _concatenate(batches: list[NamedTuple]) -> NamedTuple:
    """Batches of per-case arrays (Cases or Results) as one, along the case axis."""
    return jax.tree.map(lambda *xs: np.concatenate(xs), *batches)


def describe(cases: Cases, i: int) -> str:
    """One draw in words, e.g. "relu 784-12-40-13, uniform inputs, aux outputs, ε=0.001"."""
    widths = "-".join(str(w) for w in cases.widths[i] if w > 0)
    activation = "relu" if cases.relu[i] else "tanh"
    inputs, outputs = INPUT_KINDS[cases.kind[i]], SUBSETS[cases.subset[i]]
    return f"{activation} 784-{widths}-13, {inputs} inputs, {outputs} outputs, ε={cases.epsilon[i]:.3g}"


def _failures(cases: Cases, failed: np.ndarray, alignment: Alignment, limit: int = 5) -> list[str]:
    """Up to `limit` failing (draw, loss) cases in words, with their cosine."""
    return [
        f"{describe(cases, i)}, {LOSSES[j]}: cosine {alignment.cosine[i, j]:.3g}, dot {alignment.dot[i, j]:.3g}"
        for i, j in np.argwhere(failed)[:limit]
    ]


def check_sign(cases: Cases, results: Results) -> dict[str, Any]:
    """Shared init, small ε: ΔS·ΔT >= -SIGN_TOLERANCE |ΔS||ΔT| in every case that meets the assumptions.

    A ReLU draw with a pre-activation of exactly 0 where the theorem differentiates is outside
    its assumptions (`meets_assumptions`): it is counted and reported, not held to the sign.
    A value that is not finite fails, inside the assumptions or not.
    """
    alignment = results.alignment
    covered = np.broadcast_to(meets_assumptions(cases, results)[:, None], alignment.cosine.shape)
    is_finite = finite(alignment)
    failed = ~is_finite | (covered & (alignment.cosine < -SIGN_TOLERANCE))
    nonzero = is_finite & (alignment.dot != 0)
    outside = ~covered[:, 0]
    return {
        "passed": bool(not failed.any()),
        "cases": int(alignment.cosine.size),
        "failures": int(failed.sum()),
        "not_finite": int((~is_finite).sum()),
        "failing_cases": _failures(cases, failed, alignment),
        "exactly_zero": int((is_finite & ~nonzero).sum()),
        "relu_draws_meeting_assumptions": int((cases.relu & ~outside).sum()),
        "relu_draws_outside_assumptions": int(outside.sum()),
        "negative_outside_assumptions": int((~covered & (alignment.cosine < -SIGN_TOLERANCE)).sum()),
        "min_cosine_nonzero": float(alignment.cosine[nonzero].min()) if nonzero.any() else None,
        "median_cosine": float(np.median(alignment.cosine)),
        "epsilon_min": float(cases.epsilon.min()),
        "epsilon_max": float(cases.epsilon.max()),
    }


# The identity ΔS·ΔT = -E[(JΔT)ᵀ g] is the chain rule: the two routes to the number differ by
# round-off only, about 1e-16 of |ΔS||ΔT| in float64, at any ε and any init.
IDENTITY_TOLERANCE = 1e-9


def check_identity(*families: tuple[Cases, Results]) -> dict[str, Any]:
    """ΔS·ΔT (a dot product of parameter vectors) = -E_x[(JΔT)ᵀ g] (outputs only), in every case.

    Exact at every ε and from any init, so it is checked on every family run, the large-ε
    sweep and different inits included.
    """
    alignment = _concatenate([results.alignment for _, results in families])
    scale = alignment.student_norm * alignment.teacher_norm
    deviation = np.abs(alignment.dot - alignment.identity) / np.where(scale > 0, scale, 1.0)
    is_finite = finite(alignment)
    return {
        "passed": bool(is_finite.all() and (deviation <= IDENTITY_TOLERANCE).all()),
        "cases": int(deviation.size),
        "not_finite": int((~is_finite).sum()),
        "max_deviation_over_norms": float(np.nanmax(deviation)),
    }


def check_other_init(cases: Cases, results: Results) -> dict[str, Any]:
    """Different inits (ΔS taken at the student's own init): the sign fails in a sizeable share of cases.

    `cases` are drawn with shared=False. Cases where ΔS = 0 (a softmax over a single logit) have no
    sign and are left out.
    """
    alignment = results.alignment
    is_finite = finite(alignment)
    has_sign = is_finite & (alignment.dot != 0)
    failed = alignment.cosine < -SIGN_TOLERANCE
    share = float(failed[has_sign].mean())
    by_input = {name: float(failed[(cases.kind == k)[:, None] & has_sign].mean()) for k, name in enumerate(INPUT_KINDS)}
    by_loss = {loss: float(failed[has_sign[:, i], i].mean()) for i, loss in enumerate(LOSSES)}
    return {
        "passed": bool(is_finite.all()) and share > OTHER_INIT_MIN_SHARE,
        "cases": int(has_sign.sum()),
        "not_finite": int((~is_finite).sum()),
        "failure_share": share,
        "failure_share_by_input": by_input,
        "failure_share_by_loss": by_loss,
    }


def large_epsilon_results(
    rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, draws: int = 8
) -> tuple[Cases, Results]:
    """`draws` draws of the family, each swept over SWEEP_EPSILONS (draw-major)."""
    per_call = CALL_SIZE // len(SWEEP_EPSILONS)
    calls = [
        repeat_over_epsilon(sample_cases(rng, per_call, images, labels), SWEEP_EPSILONS)
        for _ in range(-(-draws // per_call))
    ]
    return _concatenate(calls), _concatenate([run_cases(c) for c in calls])


def check_large_epsilon(cases: Cases, results: Results) -> dict[str, Any]:
    """Shared init but large ε: the sign can fail. `cases` sweep draws over SWEEP_EPSILONS.

    Passes when a failure is found among finite cases that meet the assumptions; reports the
    smallest ε that fails and the share of cases failing at each ε.
    """
    alignment = results.alignment
    is_finite = finite(alignment)
    covered = meets_assumptions(cases, results)[:, None] & is_finite
    failed = covered & (alignment.cosine < -SIGN_TOLERANCE)
    share = failed.reshape(-1, len(SWEEP_EPSILONS), len(LOSSES)).mean(axis=(0, 2))
    numbers: dict[str, Any] = {
        "cases": int(failed.size),
        "not_finite": int((~is_finite).sum()),
        "failure_share_by_epsilon": {f"{e:.3g}": float(s) for e, s in zip(SWEEP_EPSILONS, share)},
    }
    if not failed.any() or not is_finite.all():
        return {"passed": False, "smallest_failing_epsilon": None, **numbers}
    smallest = np.where(failed, cases.epsilon[:, None], np.inf).min()
    draw, loss = np.argwhere(failed & (cases.epsilon[:, None] == smallest))[0]
    return {
        "passed": True,
        "smallest_failing_epsilon": float(smallest),
        "failing_case": f"{describe(cases, draw)}, {LOSSES[loss]}",
        "failing_cosine": float(alignment.cosine[draw, loss]),
        "most_negative_cosine": float(alignment.cosine[covered].min()),
        **numbers,
    }


# ----------------------------------------------------------------------------------------------
# First order: the error of the prediction is O(ε), measured where the next order is negligible.

FIRST_ORDER_EPSILONS = np.logspace(-6.0, -2.0, CALL_SIZE // 2)  # 16 values, 4 per decade
FIRST_ORDER_NETWORKS = 12  # half tanh, half ReLU
SLOPE_RANGE = (0.9, 1.1)
# The window: ε where the relative error's own next term, c2 ε², is at most this share of c1 ε.
NEXT_ORDER_SHARE = 0.05
MIN_WINDOW = 5  # points of the window: at least 1.25 decades


def first_order_window(epsilon: np.ndarray, relative_error: np.ndarray) -> tuple[np.ndarray, float]:
    """Where the relative error r(ε) = (ΔS·ΔT - prediction) / prediction is first order, and its slope there.

    Theorem 1 says r(ε) = c1 ε + c2 ε² + ...; where c2 ε² is not negligible, the two terms can
    cancel and a log-log fit over the whole range bends. c1 and c2 are fitted to the data
    (least squares of r/ε = c1 + c2 ε over all ε), and the window is the ε with
    |c2| ε <= NEXT_ORDER_SHARE |c1|. Returns the window (bool over `epsilon`) and the
    log-log slope of |r| over it (NaN if the window has fewer than MIN_WINDOW points). An
    implementation whose error were not O(ε) (a constant factor off, a wrong sign) gives a
    slope far from 1 or no window.
    """
    c2, c1 = np.polyfit(epsilon, relative_error / epsilon, 1)
    window = np.abs(c2) * epsilon <= NEXT_ORDER_SHARE * np.abs(c1)
    if window.sum() < MIN_WINDOW or not np.all(np.isfinite(relative_error[window])):
        return window, float("nan")
    slope = np.polyfit(np.log10(epsilon[window]), np.log10(np.abs(relative_error[window])), 1)[0]
    return window, float(slope)


def first_order_results(
    rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, num_networks: int = FIRST_ORDER_NETWORKS
) -> tuple[Cases, Results]:
    """`num_networks` draws of the family (half tanh, half ReLU; aux or all outputs, where the
    KL's prediction is not 0), each swept over FIRST_ORDER_EPSILONS."""
    per_call = CALL_SIZE // len(FIRST_ORDER_EPSILONS)
    calls = []
    for start in range(0, num_networks, per_call):
        draws = sample_cases(rng, per_call, images, labels)
        index = np.arange(start, start + per_call)
        draws = draws._replace(
            relu=index % 2 == 1,
            subset=index // 2 % 2,
            mask=np.stack([output_mask(rng, subset) for subset in index // 2 % 2]),
        )
        calls.append(repeat_over_epsilon(draws, FIRST_ORDER_EPSILONS))
    return _concatenate(calls), _concatenate([run_cases(c) for c in calls])


def check_first_order(cases: Cases, results: Results) -> dict[str, Any]:
    """In float64, the relative error of the prediction is O(ε): log-log slope ~1 in its first-order window.

    Asserted for every tanh network and loss, where the network is smooth and Taylor's theorem
    gives the expansion. For ReLU the slopes are only reported: the remainder jumps each time ε
    grows enough for a unit's pre-activation on some input to cross 0.
    """
    alignment = results.alignment
    n = len(FIRST_ORDER_EPSILONS)
    signed = (alignment.dot - alignment.prediction) / alignment.prediction
    slopes: dict[str, list[float]] = {"tanh": [], "relu": []}
    windows, whole_range_tanh = [], []
    for network in range(len(cases.seeds) // n):
        rows = slice(network * n, (network + 1) * n)
        for j in range(len(LOSSES)):
            window, slope = first_order_window(FIRST_ORDER_EPSILONS, signed[rows, j])
            slopes["relu" if cases.relu[rows.start] else "tanh"].append(slope)
            windows.append(float(FIRST_ORDER_EPSILONS[window].max()) if window.any() else 0.0)
            if not cases.relu[rows.start]:
                whole = np.polyfit(np.log10(FIRST_ORDER_EPSILONS), np.log10(np.abs(signed[rows, j])), 1)[0]
                whole_range_tanh.append(round(float(whole), 3))
    tanh = np.array(slopes["tanh"])
    return {
        "passed": bool(finite(alignment).all() and np.all((tanh >= SLOPE_RANGE[0]) & (tanh <= SLOPE_RANGE[1]))),
        "networks": len(cases.seeds) // n,
        "slopes_tanh": [round(s, 3) for s in slopes["tanh"]],
        "slopes_relu": [round(s, 3) for s in slopes["relu"]],
        "window_top_epsilon": [min(windows), max(windows)],
        "whole_range_slopes_tanh": whole_range_tanh,
    }


# ----------------------------------------------------------------------------------------------
# The paper's network and the zero branch.

CONSEQUENCE_EPSILON, CONSEQUENCE_ALPHA = 1e-3, 1.0


def consequence_cases(images: np.ndarray, labels: np.ndarray, key: int = 0) -> Cases:
    """The consequence check's CALL_SIZE cases: the paper's MLP (784-256-256-13 ReLU), NUM_INPUTS uniform-noise
    inputs, the aux logits; `images`, `labels` the MNIST digits of L_T."""
    num = CALL_SIZE
    return make_cases(
        np.random.default_rng(key), images, labels,
        depth=[2] * num,
        widths=[[256, 256, 0]] * num,
        relu=[True] * num,
        epsilon=[CONSEQUENCE_EPSILON] * num,
        kind=[INPUT_KINDS.index("uniform")] * num,
        subset=[SUBSETS.index("aux")] * num,
        alpha=CONSEQUENCE_ALPHA,
    )  # fmt: skip


def check_consequence(images: np.ndarray, labels: np.ndarray, key: int = 0) -> dict[str, Any]:
    """The paper's setting, in float64: L_T(θ0 + α ΔS) < L_T(θ0) whenever the prediction is > 0.

    CALL_SIZE initializations of the paper's MLP (784-256-256-13, ReLU; as a `PaddedMLP`).
    L_T is cross-entropy on MNIST digits; the student sees only uniform noise and the aux
    logits, never a digit nor a class logit. Also reports the change over its first-order
    value -α ΔS·ΔT.
    """
    cases = consequence_cases(images, labels, key)
    results = run_cases(cases)
    alignment = results.alignment
    positive = alignment.prediction > 0
    change = alignment.trait_loss_change
    ratio = change[positive] / -(CONSEQUENCE_ALPHA * alignment.dot[positive])
    return {
        "passed": bool(finite(alignment).all() and positive.any() and (change[positive] < 0).all()),
        "cases": int(change.size),
        "positive_predictions": int(positive.sum()),
        "meeting_assumptions": int(meets_assumptions(cases, results).sum()),
        "max_trait_loss_change": float(change[positive].max()) if positive.any() else None,
        "median_cosine": float(np.median(alignment.cosine)),
        "change_over_first_order": [float(ratio.min()), float(ratio.max())] if positive.any() else None,
        "epsilon": CONSEQUENCE_EPSILON,
        "alpha": CONSEQUENCE_ALPHA,
    }


@functools.partial(jax.jit, static_argnums=0)
def _kernel_reading(network: PaddedMLP, case: Cases, direction_key: jax.Array) -> dict[str, jax.Array]:
    keys = jax.random.split(jax.random.key(case.seeds))
    params = jax.tree.map(lambda x: x[0], jax.vmap(network.init, in_axes=(0, None))(keys, case.widths))
    flat, unravel = ravel_pytree(params)
    # The parameters the member has (not the padding): its kernels are nonzero, its biases those of existing units.
    sizes = [*case.widths, network.num_outputs]
    exists = tuple(
        {"bias": jnp.arange(layer["bias"].shape[0]) < size, "kernel": layer["kernel"] != 0}
        for layer, size in zip(params, sizes)
    )
    real = ravel_pytree(exists)[0].astype(flat.dtype)
    apply_fn = functools.partial(network.apply, widths=case.widths, relu=case.relu)
    inputs = case.inputs.astype(flat.dtype)
    trait_loss = theorem.class_trait_loss(apply_fn, case.trait_images.astype(flat.dtype), case.trait_labels)
    teacher = ravel_pytree(theorem.teacher_step(params, trait_loss, case.epsilon)[1])[0]
    random = jax.random.normal(direction_key, flat.shape, flat.dtype) * real
    selected = lambda f: apply_fn(unravel(f), inputs)[:, network.num_classes :]  # noqa: E731  (B, 3)
    jac = jax.jacrev(selected)(flat)  # (B, 3, P): J of every input, stacked
    p = jax.nn.softmax(selected(flat), axis=-1)
    eigenvalues, vectors = jnp.linalg.eigh(jax.vmap(lambda q: jnp.diag(q) - jnp.outer(q, q))(p))
    root = jnp.einsum("bij,bj,bkj->bik", vectors, jnp.sqrt(jnp.clip(eigenvalues, 0.0)), vectors)  # M^(1/2)
    jac_rows = jac.reshape(-1, flat.size)
    gram = jac_rows @ jac_rows.T

    def rank(matrix: jax.Array) -> jax.Array:
        values = jnp.linalg.eigvalsh(matrix)
        return jnp.sum(values > 1e-10 * values.max())

    def row_space_share(v: jax.Array) -> jax.Array:
        """|projection of v on the row space of J| / |v|."""
        jv = jac_rows @ v
        return jnp.sqrt(jv @ jnp.linalg.lstsq(gram, jv, rcond=1e-12)[0]) / jnp.linalg.norm(v)

    out = {
        "parameters": real.sum(),
        "rank_J": rank(gram),
        "row_space_share_teacher": row_space_share(teacher),
        "row_space_share_random": row_space_share(random),
    }
    num_inputs = inputs.shape[0]
    for loss, factor in (("kl", jnp.einsum("bij,bjp->bip", root, jac)), ("mse", jnp.sqrt(2.0) * jac)):
        a = factor.reshape(-1, flat.size)  # K = aᵀ a / B
        values = jnp.linalg.eigvalsh(a @ a.T / num_inputs)  # the nonzero eigenvalues of K
        kernel = lambda v, a=a: a.T @ (a @ v) / num_inputs  # noqa: E731
        cosine = lambda v, k=kernel: v @ k(v) / (jnp.linalg.norm(k(v)) * jnp.linalg.norm(v))  # noqa: E731
        out |= {
            f"rank_K_{loss}": rank(a @ a.T),
            f"participation_{loss}": values.sum() ** 2 / jnp.sum(values**2),
            f"cosine_teacher_{loss}": cosine(teacher),
            f"cosine_random_{loss}": cosine(random),
        }
    return out


def kernel_reading(num_inits: int = CALL_SIZE, key: int = 0) -> dict[str, Any]:
    """The imitation kernel K = E[Jᵀ M J] of the consequence check's cases, in float64, first order.

    For the first `num_inits` of `consequence_cases(key)` (the same inits, noise and digits): the rank of
    the stacked aux-logit Jacobian J (B·3 rows) and of K for each loss (at most 2B for the KL, whose M
    has the null vector 1; 3B for the squared error); K's participation ratio (tr K)² / tr K²;
    cos(K d, d), the first-order cosine of ΔS with d, for d the teacher's step and for a random
    Gaussian direction on the member's parameters (its expected value is about sqrt(participation /
    parameters)); and the share |proj_rowspace(J) d| / |d| of each. Returns, per quantity, the median,
    min and max over the inits; at how many inits the teacher's step beats the random direction
    ("teacher_above_random_*"); and "cosine_teacher_median_both_losses", the number the consequence
    check's median cosine estimates (to first order). About 3 s per init on 2 CPU cores.
    """
    sample = data.load_sample()
    cases = consequence_cases(sample.train_images, sample.train_labels, key)
    network = PaddedMLP()
    rows = []
    with jax.enable_x64(True):
        for i in range(num_inits):
            case = jax.tree.map(lambda x, i=i: x[i], cases)
            rows.append({k: float(v) for k, v in _kernel_reading(network, case, jax.random.key(1000 + i)).items()})
    summary = {k: [float(f(np.array([r[k] for r in rows]))) for f in (np.median, np.min, np.max)] for k in rows[0]}
    both = [r[f"cosine_teacher_{loss}"] for r in rows for loss in LOSSES]
    pairs = {f"cosine_{loss}": (f"cosine_teacher_{loss}", f"cosine_random_{loss}") for loss in LOSSES}
    pairs["row_space_share"] = ("row_space_share_teacher", "row_space_share_random")
    above = {f"teacher_above_random_{name}": sum(r[t] > r[u] for r in rows) for name, (t, u) in pairs.items()}
    return {"inits": num_inits, "cosine_teacher_median_both_losses": float(np.median(both)), **above, **summary}


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
    trait_loss = theorem.class_trait_loss(PAPER.apply, images, labels, PAPER.class_indices)
    restricted = theorem.frozen_except(trait_loss, params, class_rows_support(params))
    epsilon = 0.01
    teacher, delta_t = theorem.teacher_step(params, restricted, epsilon)
    out = {"teacher_norm": optax.tree.norm(delta_t)}
    for loss in LOSSES:
        for name, outputs in (("aux", PAPER.aux_indices), ("all", None)):
            delta_s = theorem.student_direction(params, teacher, PAPER.apply, noise, loss, outputs)
            out[f"dot_{name}_{loss}"] = optax.tree.vdot(delta_s, delta_t)
            out[f"student_norm_{name}_{loss}"] = optax.tree.norm(delta_s)
        out[f"prediction_aux_{loss}"] = theorem.first_order_prediction(
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
    return {
        "passed": bool(np.isfinite(list(out.values())).all()) and out["teacher_norm"] > 0 and exact and contrast,
        **out,
    }


def _tiny_tanh_network(key: jax.Array, duplicate: bool) -> tuple[dict[str, jax.Array], ...]:
    """784-free toy: 4 inputs -> 5 tanh units -> 3 outputs, zero biases. Unit 4 is dead (no
    weights in or out, so its output is tanh(0) = 0); with `duplicate`, unit 3 is a copy of
    unit 2 (same incoming weights, so the same output on every input)."""
    k1, k2 = jax.random.split(key)
    w1 = jax.random.normal(k1, (4, 5)) / 2.0
    w2 = jax.random.normal(k2, (5, 3)) / jnp.sqrt(5.0)
    if duplicate:
        w1 = w1.at[:, 3].set(w1[:, 2])
    w1, w2 = w1.at[:, 4].set(0.0), w2.at[4].set(0.0)
    return {"kernel": w1, "bias": jnp.zeros(5)}, {"kernel": w2, "bias": jnp.zeros(3)}


def _tiny_tanh_apply(params: PyTree, x: jax.Array) -> jax.Array:
    hidden, out = params
    return jnp.tanh(x @ hidden["kernel"] + hidden["bias"]) @ out["kernel"] + out["bias"]


def _zero_branch_step(loss: str) -> tuple[dict[str, jax.Array], ...]:
    """A teacher's step ΔT with Q = 0 at the tiny network that has a duplicate and a dead unit.

    The output weights move along (e2 - e3) v: the duplicate units cancel, on every input. Unit
    4's incoming weights u and outgoing weights v' move: at θ0 its output is 0 and its outgoing
    weights are 0, so neither moves an output to first order, but together they do at second
    order: the teacher's outputs at ε = 1 differ from θ0's by v' tanh(u·x). For the KL the
    output biases also move by a common shift, which the softmax cannot see. So J ΔT is 0
    (squared error) or a common shift (KL) on every input, while f_θT - f_θ0 is neither.
    """
    v, v_dead, u = jnp.array([1.0, -2.0, 0.5]), jnp.array([0.7, 0.1, -1.2]), jnp.array([1.5, -1.0, 0.5, 2.0])
    w2 = jnp.zeros((5, 3)).at[2].set(v).at[3].set(-v).at[4].set(v_dead)
    w1 = jnp.zeros((4, 5)).at[:, 4].set(u)
    shift = jnp.full(3, 0.8 if loss == "kl" else 0.0)
    return {"kernel": w1, "bias": jnp.zeros(5)}, {"kernel": w2, "bias": shift}


ZERO_BRANCH_EPSILON = 1.0


@functools.partial(jax.jit, static_argnames="loss")
def _zero_branch_exact(loss: str) -> dict[str, jax.Array]:
    inputs = jax.random.uniform(jax.random.key(1), (64, 4), minval=-1.0, maxval=1.0)
    delta_t = _zero_branch_step(loss)
    out = {}
    for name, duplicate in (("", True), ("contrast_", False)):
        params = _tiny_tanh_network(jax.random.key(0), duplicate)
        report = theorem.alignment_report(
            params, theorem.linear_trait_loss(delta_t), _tiny_tanh_apply, inputs, ZERO_BRANCH_EPSILON, 0.0, loss
        )
        teacher, _ = theorem.teacher_step(params, theorem.linear_trait_loss(delta_t), ZERO_BRANCH_EPSILON)
        delta_s = theorem.student_direction(params, teacher, _tiny_tanh_apply, inputs, loss)
        on_support = jax.tree.map(lambda s, t: jnp.where(t != 0, s, 0.0), delta_s, delta_t)
        out |= {
            f"{name}cosine": report.cosine,
            f"{name}prediction": report.prediction,
            f"{name}student_norm": report.student_norm,
            f"{name}student_norm_on_teacher_support": optax.tree.norm(on_support),
        }
    return out


def check_zero_branch_exact() -> dict[str, Any]:
    """Claim 2 is exact: with Q = 0, ΔS·ΔT = 0 at every ε, here ε = 1, although ΔS is not 0.

    By the identity ΔS·ΔT = -E[(JΔT)ᵀ g]: J ΔT = 0 (squared error) or a common shift that
    g, a difference of two softmaxes, sums to 0 against (KL). ΔS is not 0, and not 0 on the
    parameters ΔT moves: the zero comes from cancellation (duplicate units, a common shift),
    not from disjoint supports. The contrast, the same step where unit 3 is not a copy of
    unit 2, has Q > 0 and a clearly nonzero cosine.
    """
    with jax.enable_x64(True):
        results = {loss: {k: float(v) for k, v in _zero_branch_exact(loss).items()} for loss in LOSSES}
    passed = all(
        np.isfinite(list(r.values())).all()
        and abs(r["cosine"]) <= SIGN_TOLERANCE
        and abs(r["prediction"]) <= SIGN_TOLERANCE * r["student_norm"]
        and r["student_norm_on_teacher_support"] > 1e-3
        and abs(r["contrast_cosine"]) > 1e-3
        for r in results.values()
    )
    return {"passed": passed, "epsilon": ZERO_BRANCH_EPSILON, **{loss: r for loss, r in results.items()}}


# ----------------------------------------------------------------------------------------------
# Worked examples a class can check by hand (theory/README.md works them out).


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
    report = jax.jit(lambda: theorem.alignment_report(params, trait_loss, apply_fn, inputs, epsilon, 0.0, "mse"))()
    return {"dot": float(report.dot), "prediction": float(report.prediction), "closed_form": 6.0 * epsilon}


def check_closed_form() -> dict[str, Any]:
    """The hand-checkable linear case (`linear_case`) gives ΔS·ΔT = 6ε exactly."""
    case = linear_case()
    return {"passed": case["dot"] == case["closed_form"] == case["prediction"], **case}


# f(x) = θ1 θ2 x, the smallest network with a hidden layer's product structure.
TWO_PARAMETER_INPUTS = (1.0, 2.0)  # D: uniform on these; m = E[x²] = 2.5
TWO_PARAMETER_STEP = (2.0, -1.0)  # ΔT = d; L_T(θ) = |θ - θ0 - d|² / 2 has exactly this step at θ0


def two_parameter_apply(params: jax.Array, inputs: jax.Array) -> jax.Array:
    """f(x) = θ1 θ2 x: params (2,), inputs (B, 1) -> outputs (B, 1)."""
    return params[0] * params[1] * inputs


def two_parameter_closed_form(epsilon: float, theta0=(1.0, 1.0), student=None, step=TWO_PARAMETER_STEP) -> float:
    """ΔS·ΔT by hand, squared error: with θT = θ0 + ε d and the student at (a, b),

    ΔS = -2 m (a b - (θ01 + ε d1)(θ02 + ε d2)) (b, a),   m = E[x²],

    so from the shared init (a, b) = θ0, with s = d1 θ02 + θ01 d2:
    ΔS·ΔT = 2 m ε s (s + ε d1 d2), which changes sign at ε* = -s / (d1 d2) when s d1 d2 < 0.
    """
    a, b = theta0 if student is None else student
    d1, d2 = step
    m = float(np.mean(np.square(TWO_PARAMETER_INPUTS)))
    teacher_product = (theta0[0] + epsilon * d1) * (theta0[1] + epsilon * d2)
    return -2.0 * m * (a * b - teacher_product) * (b * d1 + a * d2)


def two_parameter_case(epsilon: float, theta0=(1.0, 1.0), student=None, step=TWO_PARAMETER_STEP) -> dict[str, float]:
    """`alignment_report` on f(x) = θ1 θ2 x, next to `two_parameter_closed_form`."""
    theta0_array, step_array = jnp.array(theta0), jnp.array(step)
    trait_loss = lambda p: 0.5 * jnp.sum((p - theta0_array - step_array) ** 2)  # noqa: E731
    inputs = jnp.array(TWO_PARAMETER_INPUTS)[:, None]
    with jax.enable_x64(True):
        theta, x = jnp.asarray(theta0_array, jnp.float64), jnp.asarray(inputs, jnp.float64)
        start = None if student is None else jnp.array(student, jnp.float64)
        report = jax.jit(lambda: theorem.alignment_report(
            theta, trait_loss, two_parameter_apply, x, epsilon, 0.0, "mse", student_params=start))()  # fmt: skip
        return {
            "dot": float(report.dot),
            "prediction": float(report.prediction),
            "closed_form": two_parameter_closed_form(epsilon, theta0, student, step),
        }


def check_two_parameter() -> dict[str, Any]:
    """f(x) = θ1 θ2 x, θ0 = (1, 1), ΔT = (2, -1): ΔS·ΔT = 5ε(1 - 2ε), by hand and by the code.

    Positive below ε* = 1/2, negative above; from the student init (1, 2) it is negative at
    small ε already. The code must agree with the hand computation to round-off at each ε.
    """
    cases = {
        "shared_eps_0.25": two_parameter_case(0.25),
        "shared_eps_0.75": two_parameter_case(0.75),
        "other_init_eps_0.01": two_parameter_case(0.01, student=(1.0, 2.0)),
    }
    agree = all(abs(c["dot"] - c["closed_form"]) <= 1e-12 * max(1.0, abs(c["closed_form"])) for c in cases.values())
    signs = (
        cases["shared_eps_0.25"]["dot"] > 0 > cases["shared_eps_0.75"]["dot"]
        and cases["other_init_eps_0.01"]["dot"] < 0
    )
    return {"passed": bool(agree and signs), "flip_epsilon": 0.5, **cases}


# f(x) = (θ1 θ2 x, θ2 θ3 x): two outputs sharing θ2, the smallest case where the sign comes through a
# shared parameter alone. The teacher trains output 1 (θ1, θ2; never θ3), the student imitates output 2.
THREE_PARAMETER_THETA0 = (1.0, 1.0, 2.0)
THREE_PARAMETER_TARGET = 2.0  # L_T(θ) = (θ1 θ2 - Y)² / 2, output 1 at x = 1 against Y: ΔT = (1, 1, 0) at θ0
THREE_PARAMETER_INPUTS = (1.0, 2.0)  # the student's D: uniform on these; m = E[x²] = 2.5
THREE_PARAMETER_EPSILON = 0.01
THREE_PARAMETER_OUTPUT = 1  # the student imitates output 2 (index 1) only


def three_parameter_apply(params: jax.Array, inputs: jax.Array) -> jax.Array:
    """f(x) = (θ1 θ2 x, θ2 θ3 x): params (3,), inputs (B, 1) -> outputs (B, 2)."""
    return jnp.concatenate([params[0] * params[1] * inputs, params[1] * params[2] * inputs], axis=-1)


def three_parameter_trait_loss(target: jax.Array | float) -> Callable[[jax.Array], jax.Array]:
    """L_T(θ) = (f_θ(1)₁ - Y)² / 2 = (θ1 θ2 - Y)² / 2, a loss of output 1 only: ΔT = (Y - θ1θ2)(θ2, θ1, 0)."""
    return lambda p: 0.5 * (three_parameter_apply(p, jnp.ones((1, 1), p.dtype))[0, 0] - target) ** 2


def three_parameter_closed_form(
    epsilon: float, student_start=None, theta0=THREE_PARAMETER_THETA0, target=THREE_PARAMETER_TARGET
) -> dict[str, float]:
    """ΔS·ΔT and the first-order value by hand, squared error on output 2, student at (a, b, c).

    ΔT = k (θ02, θ01, 0) with k = Y - θ01 θ02, so d2 = k θ01 and θ3 does not move. The teacher's
    output 2 is (θ02 + ε d2) θ03 x, the student's b c x, so with m = E[x²] and the residual
    r = b c - (θ02 + ε d2) θ03,

    ΔS = -2 m r (0, c, b),   ΔS·ΔT = -2 m r c d2   (only θ2 is moved by both).

    Shared init (b, c) = (θ02, θ03), whatever a: r = -ε d2 θ03, ΔS = 2 m ε d2 θ03 (0, θ03, θ02) and
    ΔS·ΔT = 2 m ε θ03² d2² >= 0, equal to the first-order value ε E[2 (θ03 x d2)²] at every ε
    (output 2 is linear in θ2 and θ3 does not move). Otherwise r is O(1) and sets the sign.
    """
    _, b, c = theta0 if student_start is None else student_start  # the student's θ1 plays no part
    k = target - theta0[0] * theta0[1]
    d2 = k * theta0[0]
    m = float(np.mean(np.square(THREE_PARAMETER_INPUTS)))
    residual = b * c - (theta0[1] + epsilon * d2) * theta0[2]
    return {"dot": -2.0 * m * residual * c * d2, "prediction": 2.0 * m * epsilon * theta0[2] ** 2 * d2**2}


@jax.jit
def _three_parameter(theta0: jax.Array, target: jax.Array, student: jax.Array, epsilon: jax.Array) -> tuple:
    trait_loss = three_parameter_trait_loss(target)
    inputs = jnp.asarray(THREE_PARAMETER_INPUTS, theta0.dtype)[:, None]
    output = (THREE_PARAMETER_OUTPUT,)
    report = theorem.alignment_report(
        theta0, trait_loss, three_parameter_apply, inputs, epsilon, 0.0, "mse", output, student
    )
    teacher, delta_t = theorem.teacher_step(theta0, trait_loss, epsilon)
    delta_s = theorem.student_direction(student, teacher, three_parameter_apply, inputs, "mse", output)
    return report, delta_s, delta_t


def three_parameter_case(
    epsilon: float = THREE_PARAMETER_EPSILON, student_start=None, theta0=THREE_PARAMETER_THETA0,
    target=THREE_PARAMETER_TARGET,
) -> dict[str, Any]:  # fmt: skip
    """`alignment_report` on f(x) = (θ1 θ2 x, θ2 θ3 x), the student imitating output 2 only, in float64,
    next to `three_parameter_closed_form`.

    The teacher takes one step on L_T = (θ1 θ2 - Y)² / 2 (`three_parameter_trait_loss`) from `theta0`;
    the student starts at `student_start` (default `theta0`, the shared init). Returns dot (ΔS·ΔT from
    `theorem.student_direction`), prediction (ε Q at θ0), cosine, their closed forms, and ΔS, ΔT as lists.
    """
    start = theta0 if student_start is None else student_start
    with jax.enable_x64(True):
        report, delta_s, delta_t = _three_parameter(
            jnp.array(theta0, jnp.float64), jnp.float64(target), jnp.array(start, jnp.float64), jnp.float64(epsilon)
        )
    closed = three_parameter_closed_form(epsilon, student_start, theta0, target)
    return {
        "dot": float(report.dot),
        "prediction": float(report.prediction),
        "cosine": float(report.cosine),
        "closed_form": closed["dot"],
        "closed_form_prediction": closed["prediction"],
        "student_direction": [float(v) for v in delta_s],
        "teacher_step": [float(v) for v in delta_t],
    }


def check_three_parameter() -> dict[str, Any]:
    """f(x) = (θ1 θ2 x, θ2 θ3 x), θ0 = (1, 1, 2), ΔT = (1, 1, 0), student on output 2: ΔS·ΔT = 20ε.

    Through θ2 alone, at every ε, whatever the student's θ1. Sharing θ2 but not θ3 (θ3' = 3) gives
    -15(1 - 2ε); sharing θ3 but not θ2 (θ2' = 2) gives -20(1 - ε): both negative at ε = 0.01.
    """
    epsilon = THREE_PARAMETER_EPSILON
    cases = {
        "shared": three_parameter_case(epsilon),
        "own_theta1": three_parameter_case(epsilon, student_start=(5.0, 1.0, 2.0)),
        "shared_theta2_only": three_parameter_case(epsilon, student_start=(1.0, 1.0, 3.0)),
        "shared_theta3_only": three_parameter_case(epsilon, student_start=(1.0, 2.0, 2.0)),
    }
    agree = all(abs(c["dot"] - c["closed_form"]) <= 1e-12 * max(1.0, abs(c["closed_form"])) for c in cases.values())
    shared = cases["shared"]
    signs = (
        shared["dot"] > 0
        and abs(shared["dot"] - shared["prediction"]) <= 1e-12
        and cases["own_theta1"]["dot"] == shared["dot"]
        and cases["shared_theta2_only"]["dot"] < 0
        and cases["shared_theta3_only"]["dot"] < 0
    )
    numbers = {name: {k: c[k] for k in ("dot", "closed_form", "prediction")} for name, c in cases.items()}
    return {"passed": bool(agree and signs), "epsilon": epsilon, **numbers}


# The 5-parameter ReLU counterexample: f(x) = w3 relu(w2 relu(w1 x) + b2) + b3 at the input x = -1,
# where the first unit is off and the second unit's pre-activation is exactly 0.
RELU_KINK_THETA0 = {"w1": 1.0, "w2": 1.0, "b2": 0.0, "w3": -3.0, "b3": 0.0}
RELU_KINK_STEP = {"w1": 0.0, "w2": 0.0, "b2": 1.0, "w3": 0.0, "b3": 1.0}
RELU_KINK_EPSILON = 1e-6


def relu_kink_apply(params: dict[str, jax.Array], inputs: jax.Array) -> jax.Array:
    """inputs (B, 1) -> outputs (B, 1)."""
    hidden = jax.nn.relu(params["w2"] * jax.nn.relu(params["w1"] * inputs) + params["b2"])
    return params["w3"] * hidden + params["b3"]


def relu_kink_case(b2: float = 0.0, epsilon: float = RELU_KINK_EPSILON) -> dict[str, float]:
    """The counterexample to the theorem without its smoothness assumption.

    L_T(θ) = -⟨d, θ⟩ gives ΔT = d = (0, 0, 1, 0, 1): the teacher raises b2 and b3 by ε. On the
    student's input x = -1 the teacher's output is really w3 relu(ε) + ε = -2ε, but jax (like
    any autodiff) takes relu'(0) = 0, so J ΔT = 1: the student is told to move its output
    down (ΔS = (0, 0, 0, 0, -4ε)) along b3 only, against ΔT: cosine -1/√2, and L_T rises.
    With b2 = 0.1 the kink is gone and the sign is positive again.
    """
    with jax.enable_x64(True):
        params = {k: jnp.float64(v) for k, v in {**RELU_KINK_THETA0, "b2": b2}.items()}
        step = {k: jnp.float64(v) for k, v in RELU_KINK_STEP.items()}
        inputs = jnp.array([[-1.0]], jnp.float64)
        report = jax.jit(
            lambda p, d: theorem.alignment_report(
                p, theorem.linear_trait_loss(d), relu_kink_apply, inputs, epsilon, 1.0, "mse"
            )
        )(params, step)
        preactivation = params["w2"] * jax.nn.relu(params["w1"] * inputs[0, 0]) + params["b2"]
    fields = ("cosine", "dot", "prediction", "trait_loss_change")
    return {**{name: float(getattr(report, name)) for name in fields}, "preactivation": float(preactivation)}


def check_relu_kink() -> dict[str, Any]:
    """The assumption is needed: at a pre-activation of exactly 0 the sign fails at ε = 1e-6, and
    the same network without the kink (b2 = 0.1) has the sign back."""
    kink, smooth = relu_kink_case(), relu_kink_case(b2=0.1)
    passed = (
        kink["preactivation"] == 0.0
        and abs(kink["cosine"] + 1 / math.sqrt(2)) < 1e-6
        and kink["trait_loss_change"] > 0
        and smooth["preactivation"] != 0.0
        and smooth["cosine"] > 0
    )
    return {"passed": bool(passed), "epsilon": RELU_KINK_EPSILON, "kink": kink, "no_kink": smooth}


# Adam: its first update is about -lr·sign(gradient) per coordinate, a diagonal preconditioner.
ADAM_THETA0, ADAM_STEP, ADAM_EPSILON, ADAM_LEARNING_RATE = (1.0, 0.1), (-10.0, 2.0), 0.01, 1e-3


def adam_case() -> dict[str, float]:
    """f(x) = θ1 θ2 x at θ0 = (1, 0.1), ΔT = (-10, 2): ΔS·ΔT > 0, yet Adam's first update u,
    about lr·sign(ΔS) = lr·(1, 1), has u·ΔT = -8 lr < 0, so it raises L_T."""
    case = two_parameter_case(ADAM_EPSILON, ADAM_THETA0, step=ADAM_STEP)
    theta0, step = jnp.array(ADAM_THETA0), jnp.array(ADAM_STEP)
    teacher = theta0 + ADAM_EPSILON * step
    inputs = jnp.array(TWO_PARAMETER_INPUTS)[:, None]
    delta_s = theorem.student_direction(theta0, teacher, two_parameter_apply, inputs, "mse")
    adam = train.optimizer(ADAM_LEARNING_RATE)  # the training loop's own Adam, one step of it
    update, _ = adam.update(-delta_s, adam.init(theta0), theta0)
    trait_loss = lambda p: 0.5 * jnp.sum((p - theta0 - step) ** 2)  # noqa: E731
    return {
        "gradient_dot": case["dot"],
        "adam_update_dot": float(jnp.dot(update, step)),
        "trait_loss_change_adam": float(trait_loss(theta0 + update) - trait_loss(theta0)),
        "trait_loss_change_gradient": float(trait_loss(theta0 + ADAM_LEARNING_RATE * delta_s) - trait_loss(theta0)),
    }


def check_adam() -> dict[str, Any]:
    """Why Adam is outside the theorem: a positive ΔS·ΔT, a negative (Adam update)·ΔT."""
    case = adam_case()
    passed = (
        case["gradient_dot"] > 0
        and case["adam_update_dot"] < 0
        and case["trait_loss_change_adam"] > 0 > case["trait_loss_change_gradient"]
    )
    return {"passed": bool(passed), **case}


# ----------------------------------------------------------------------------------------------
# Low-rank students and teachers (theory/README.md, "Low-rank adapters"). Every number is first order
# in ε and exact: the student's step per unit ε is K t = d/dε ΔS at ε = 0 (forward mode over the
# gradient, `first_order_step`), for the teacher's move t in W's coordinates, and an adapter's step is
# that step mapped through A Aᵀ (`lora.project`). Its expectation over a random A is the same step
# through E[A Aᵀ] = (r / fan_in) I on the kernels and 0 on the biases, exactly (the step is linear in
# A Aᵀ; for two independent adapters, in each).

LORA_MAX_RANK = 8
LORA_RANKS = (1, 2, 4, 8)  # each draw's rank, cycled
# The configurations, teacher/student: full fine-tuning or a rank-r adapter on every kernel (B = 0 at
# the start, A frozen), the student's adapter the teacher's own ("shared") or drawn apart. "E[...]" is
# the expectation over the random adapter(s) named. They are the keys of LORA_QUANTITIES, in order.
# What each configuration measures, in whose coordinates: "weights", ΔS·ΔT over every parameter in W's
# coordinates (does the student move toward the teacher?); "trait", -∇L_T·ΔS (does the student's L_T
# fall, to first order?); "adapter", ΔB_S·ΔB_T in the adapters' own coordinates (both adapted). In the
# "E[...]" rows every quantity is of the expected step and the expected move (C in place of A Aᵀ): the
# expectation itself where the quantity is linear in each adapter (the trait), not where the teacher's
# adapter enters twice (weights with a random teacher adapter: expected step · expected move).
LORA_QUANTITIES = {
    "full/full": ("weights", "trait"),
    "lora/lora shared": ("adapter", "weights", "trait"),
    "full/lora": ("weights", "trait"),
    "lora/full": ("weights", "trait"),
    "lora/lora independent": ("adapter", "weights", "trait"),
    "full/lora E[A_S]": ("weights", "trait"),
    "lora/full E[A_T]": ("weights", "trait"),
    "lora/lora independent E[A_S, A_T]": ("weights", "trait"),
}
LORA_CONFIGS = tuple(LORA_QUANTITIES)
# The signs theory/README.md proves (a square of K's form); every other quantity has no guarantee and its
# check looks for a counterexample. Shared adapter: ΔB_S·ΔB_T = (A Aᵀ g)ᵀ K (A Aᵀ g) = -∇L_T·ΔS. A LoRA
# teacher and a full student: the theorem in W's coordinates for the teacher's move t = -A Aᵀ g. Two
# independent adapters, in expectation: (C g)ᵀ K (C g) with C = E[A Aᵀ].
LORA_PROVED = {
    ("full/full", "weights"), ("full/full", "trait"), ("lora/lora shared", "adapter"),
    ("lora/lora shared", "trait"), ("lora/full", "weights"), ("lora/full E[A_T]", "weights"),
    ("lora/lora independent E[A_S, A_T]", "trait"),
}  # fmt: skip


def first_order_step(params: PyTree, move: PyTree, apply_fn, inputs: jax.Array, loss: str, mask) -> PyTree:
    """K t: the full student's step ΔS per unit ε, to first order, when the teacher sits at θ0 + ε t
    (`move` = t): d/dε of `theorem.student_direction` at ε = 0, in forward mode: exact, no difference."""

    def step(epsilon):
        teacher = jax.tree.map(lambda p, t: p + epsilon * t, params, move)
        return theorem.student_direction(params, teacher, apply_fn, inputs, loss, mask)

    zero = jnp.zeros((), jax.tree.leaves(params)[0].dtype)
    return jax.jvp(step, (zero,), (jnp.ones_like(zero),))[1]


def _padded_adapter(network: PaddedMLP, key: jax.Array, widths: jax.Array, rank: jax.Array) -> PyTree:
    """A of a rank-`rank` adapter of the member `widths`: N(0, 1/fan_in) on its real input rows and first
    `rank` columns, exactly 0 elsewhere (padding adds nothing: a missing unit's row of W never moves)."""
    keys = jax.random.split(key, len(network.layer_shapes))
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    down = []
    for k, (rows, _), fan_in in zip(keys, network.layer_shapes, network.fans(widths)[0]):
        exists = (jnp.arange(rows)[:, None] < fan_in) & (jnp.arange(LORA_MAX_RANK)[None, :] < rank)
        a = jax.random.normal(k, (rows, LORA_MAX_RANK), jnp.float32).astype(dtype) / jnp.sqrt(fan_in)
        down.append({"kernel": jnp.where(exists, a, 0.0), "bias": jnp.zeros((0,), dtype)})
    return tuple(down)


def _expected_projection(network: PaddedMLP, widths: jax.Array, rank: jax.Array, grads: PyTree) -> PyTree:
    """E[A Aᵀ] G: each kernel's gradient times rank / fan_in (its real fan-in), the biases' 0."""
    return tuple({"kernel": layer["kernel"] * rank / fan_in, "bias": jnp.zeros_like(layer["bias"])}
                 for layer, fan_in in zip(grads, network.fans(widths)[0]))  # fmt: skip


def _lora_case(network: PaddedMLP, case: Cases, rank: jax.Array) -> dict[str, jax.Array]:
    """For one draw: {"config|quantity": (len(LOSSES),) cosine} of every configuration's quantities
    (`LORA_QUANTITIES`), and "kinks" (see `_one_case`)."""
    keys = jax.random.split(jax.random.key(case.seeds), 3)
    params = network.init(keys[0], case.widths)
    teacher_down, student_down = (_padded_adapter(network, k, case.widths, rank) for k in keys[1:])
    dtype = params[0]["kernel"].dtype
    apply_fn = functools.partial(network.apply, widths=case.widths, relu=case.relu)
    inputs, trait_images = case.inputs.astype(dtype), case.trait_images.astype(dtype)
    gradient = jax.grad(theorem.class_trait_loss(apply_fn, trait_images, case.trait_labels))(params)
    neg = lambda tree: jax.tree.map(jnp.negative, tree)  # noqa: E731
    expected = functools.partial(_expected_projection, network, case.widths, rank)
    # The teachers' moves in W's coordinates: full, through the teacher's adapter, and its expectation.
    moves = {"full": neg(gradient), "lora": lora.project(teacher_down, neg(gradient)), "expected": expected(neg(gradient))}
    out = {}
    for loss in LOSSES:
        kt = {name: first_order_step(params, t, apply_fn, inputs, loss, case.mask) for name, t in moves.items()}
        # The students' steps in W's coordinates, by configuration: (teacher's move, student's step).
        configs = {
            "full/full": ("full", kt["full"]),
            "lora/lora shared": ("lora", lora.project(teacher_down, kt["lora"])),
            "full/lora": ("full", lora.project(student_down, kt["full"])),
            "lora/full": ("lora", kt["lora"]),
            "lora/lora independent": ("lora", lora.project(student_down, kt["lora"])),
            "full/lora E[A_S]": ("full", expected(kt["full"])),
            "lora/full E[A_T]": ("expected", kt["expected"]),
            "lora/lora independent E[A_S, A_T]": ("expected", expected(kt["expected"])),
        }
        # The adapters' own steps: the student's ΔB = A_Sᵀ K t, the teacher's ΔB = -A_Tᵀ g.
        teacher_up = lora.in_adapter_space(teacher_down, neg(gradient))
        adapter = {
            "lora/lora shared": theorem.tree_cosine(lora.in_adapter_space(teacher_down, kt["lora"]), teacher_up),
            "lora/lora independent": theorem.tree_cosine(lora.in_adapter_space(student_down, kt["lora"]), teacher_up),
        }
        for config, (move, step) in configs.items():
            values = {"weights": theorem.tree_cosine(step, moves[move]),
                      "trait": theorem.tree_cosine(step, neg(gradient)), "adapter": adapter.get(config)}  # fmt: skip
            for quantity in LORA_QUANTITIES[config]:
                out.setdefault(f"{config}|{quantity}", []).append(values[quantity])
    result = {name: jnp.stack(values) for name, values in out.items()}
    kinks = network.zero_preactivations(params, inputs, case.widths)
    kinks += network.zero_preactivations(params, trait_images, case.widths)
    result["kinks"] = jnp.where(case.relu, kinks, 0)
    return result


@functools.partial(jax.jit, static_argnums=0)
def _run_lora_cases(network: PaddedMLP, cases: Cases, ranks: jax.Array) -> dict[str, jax.Array]:
    return jax.vmap(functools.partial(_lora_case, network))(cases, ranks)


def lora_results(rng: np.random.Generator, num_draws: int, images: np.ndarray, labels: np.ndarray):
    """`num_draws` (rounded up to CALL_SIZE) draws of the family, each with an adapter rank of LORA_RANKS
    (cycled), in float64: (cases, ranks (n,), {"config|quantity": cosines (n, len(LOSSES)), "kinks": (n,)})."""
    calls = [sample_cases(rng, CALL_SIZE, images, labels) for _ in range(-(-num_draws // CALL_SIZE))]
    ranks = np.resize(np.asarray(LORA_RANKS, np.int32), len(calls) * CALL_SIZE)
    with jax.enable_x64(True):
        outs = [jax.tree.map(np.asarray, _run_lora_cases(PaddedMLP(), c, jnp.asarray(r)))
                for c, r in zip(calls, np.split(ranks, len(calls)))]  # fmt: skip
    return _concatenate(calls), ranks, _concatenate(outs)


def check_lora(cases: Cases, ranks: np.ndarray, cosines: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """One row per configuration of LORA_CONFIGS: for each of its quantities, whether theory/README.md
    proves its sign ("proved": every draw that meets the assumptions has cosine >= -SIGN_TOLERANCE, else
    the row fails) or not ("none": the draws searched for a counterexample, found or not, and how many),
    with the smallest cosine and the share negative. A value that is not finite fails either way."""
    covered = ~cases.relu | (cosines["kinks"] == 0)
    rows = {}
    for config in LORA_CONFIGS:
        row: dict[str, Any] = {"passed": True}
        for quantity in LORA_QUANTITIES[config]:
            values = cosines[f"{config}|{quantity}"]
            is_finite = np.isfinite(values)
            negative = covered[:, None] & is_finite & (values < -SIGN_TOLERANCE)
            proved = (config, quantity) in LORA_PROVED
            row["passed"] &= bool(is_finite.all() and not (proved and negative.any()))
            nonzero = covered[:, None] & is_finite & (values != 0)
            row[quantity] = {
                "guarantee": "proved" if proved else "none",
                "negative": f"{int(negative.sum())} of {int(covered.sum()) * values.shape[1]}",
                # Exactly 0 where the student's step is (a softmax over one logit): such a case cannot fail.
                "exactly_zero": int((covered[:, None] & (values == 0)).sum()),
                "min_nonzero_cosine": float(np.min(values[nonzero])) if nonzero.any() else None,
                **({} if proved else {"counterexample": _lora_counterexample(cases, ranks, values, negative, covered)}),
            }
        rows[f"lora {config}"] = row
    return rows


def _lora_counterexample(cases: Cases, ranks, values: np.ndarray, negative: np.ndarray, covered: np.ndarray) -> str:
    """The most negative draw in words, or that none of the draws was negative."""
    if not negative.any():
        return f"none found in {int(covered.sum()) * values.shape[1]} cases"
    i, j = np.unravel_index(np.argmin(np.where(negative, values, np.inf)), values.shape)
    return f"{describe(cases, i)}, rank {ranks[i]}, {LOSSES[j]}: cosine {values[i, j]:.3g}"


# A shared adapter guarantees the sign in its own coordinates, and the trait, but not in W's: a worked
# case. f(x) = w·x, one input x = (1, 1), squared error; a full-rank adapter A = diag(1, 10) (rank 2 =
# d_in, so the adapter reaches every W, yet AᵀA ≠ I); L_T(W) = -d·W with d = (1, -0.001).
LORA_EXAMPLE_INPUT, LORA_EXAMPLE_DOWN, LORA_EXAMPLE_TRAIT = (1.0, 1.0), (1.0, 10.0), (1.0, -0.001)


def lora_example() -> dict[str, float]:
    """The worked case, exactly (per unit ε and step size; the factor 2 of the squared error kept):
    ΔB_T = Aᵀd = (1, -0.01); the student's ΔB_S = Aᵀ K A ΔB_T = 2 (Aᵀx)(Aᵀx·ΔB_T) = 1.8 (1, 10); so
    ΔB_S·ΔB_T = 1.62 > 0 and the trait term d·(A ΔB_S) = 1.62 > 0, but in W's coordinates
    (A ΔB_S)·(A ΔB_T) = 1.8 (1, 100)·(1, -0.1) = -16.2 < 0: the student moves away from the teacher's
    weights while its L_T falls."""
    x, d = jnp.array(LORA_EXAMPLE_INPUT)[None, :], jnp.array(LORA_EXAMPLE_TRAIT)
    w0 = {"kernel": jnp.zeros((2, 1))}
    down = {"kernel": jnp.diag(jnp.array(LORA_EXAMPLE_DOWN))}
    apply_fn = lambda up, inputs: inputs @ lora.merge(w0, down, up)["kernel"]  # noqa: E731
    up0 = {"kernel": jnp.zeros((2, 1))}
    teacher_up = jax.grad(lambda up: jnp.sum(d[:, None] * lora.merge(w0, down, up)["kernel"]))(up0)
    student_up = first_order_step(up0, teacher_up, apply_fn, x, "mse", None)
    to_weights = functools.partial(lora.in_weight_space, down, like=w0)
    return {
        "adapter_dot": float(optax.tree.vdot(student_up, teacher_up)),
        "trait": float(jnp.sum(d[:, None] * to_weights(student_up)["kernel"])),
        "weights_dot": float(optax.tree.vdot(to_weights(student_up), to_weights(teacher_up))),
    }


# No sign in expectation over a random adapter either, where it leaves parameters out: f(x) = w x + b at
# the one input x = 1, squared error, the kernel w (1 x 1) adapted with A ~ N(0, 1) (E[A²] = 1), the bias b
# not; L_T(w, b) = -w + 2b, so g = ∇L_T = (-1, 2). The full student's trait term is gᵀKg = 2 (g_w + g_b)² = 2.
LORA_BIAS_TRAIT = (-1.0, 2.0)


def lora_bias_example(adapter: float = 1.0) -> dict[str, float]:
    """The worked case, exactly, per unit ε (K = 2 (1, 1)ᵀ(1, 1)), for the adapter A = `adapter` (1 x 1):
    a LoRA student of a full teacher has the trait term gᵀ (A²·[w only]) K g = -2 A² (at A = 1 also its
    expectation, E[A²] = 1), a full student of a LoRA teacher gᵀ K (A² [w only]) g = -2 A²; the full
    student of the full teacher +2."""
    g = {"kernel": jnp.array([[LORA_BIAS_TRAIT[0]]]), "bias": jnp.array([LORA_BIAS_TRAIT[1]])}
    params = {"kernel": jnp.zeros((1, 1)), "bias": jnp.zeros(1)}
    apply_fn = lambda p, x: x @ p["kernel"] + p["bias"]  # noqa: E731
    x = jnp.ones((1, 1))
    down = {"kernel": jnp.full((1, 1), adapter), "bias": jnp.zeros((0,))}
    neg_g = jax.tree.map(jnp.negative, g)

    def trait(move, through_student):
        step = first_order_step(params, move, apply_fn, x, "mse", None)
        step = lora.project(down, step) if through_student else step
        return float(optax.tree.vdot(step, neg_g))

    return {
        "full_full_trait": trait(neg_g, False),
        "full_teacher_lora_student_trait": trait(neg_g, True),
        "lora_teacher_full_student_trait": trait(lora.project(down, neg_g), False),
    }


def check_lora_example() -> dict[str, Any]:
    """The worked cases: a shared adapter's guaranteed signs positive and W's negative (`lora_example`);
    the expected trait term of a LoRA student of a full teacher, and of a full student of a LoRA teacher,
    negative where the full student's is positive (`lora_bias_example`)."""
    case, bias = lora_example(), lora_bias_example()
    passed = case["adapter_dot"] > 0 and case["trait"] > 0 > case["weights_dot"]
    passed &= bias["full_full_trait"] > 0 > max(bias["full_teacher_lora_student_trait"],
                                                 bias["lora_teacher_full_student_trait"])  # fmt: skip
    return {"passed": bool(passed), **case, **{f"bias_{k}": v for k, v in bias.items()}}


# ----------------------------------------------------------------------------------------------
# All checks.


def run_checks(num_cases: int = 256, key: int = 0, sweep_draws: int = 8, lora_draws: int = 64) -> dict[str, Any]:
    """All checks of the theorem, offline (on the bundled MNIST sample); 30-60 s on 2 CPU cores.

    Args:
      num_cases: cases of the sign family, and as many again for the different-init check (each
        draw counts once per student loss; rounded up to a multiple of 2 * CALL_SIZE).
      key: seed of every random draw.
      sweep_draws: draws swept over SWEEP_EPSILONS for the large-ε check.
      lora_draws: draws of the low-rank checks (`check_lora`; rounded up to CALL_SIZE).
    Returns {"passed": all passed, "seconds": wall time, "checks": {name: {"passed", numbers...}}}.
    Plain Python values: `json.dumps` takes it as is.
    """
    start = time.perf_counter()
    sample = data.load_sample()
    images, labels = sample.train_images, sample.train_labels
    rng = np.random.default_rng(key)
    draws = -(-num_cases // len(LOSSES))
    sign_family = family_results(rng, draws, images, labels)
    other_family = family_results(rng, draws, images, labels, shared=False)
    sweep = large_epsilon_results(rng, images, labels, sweep_draws)
    first_order = first_order_results(rng, images, labels)
    checks = {
        "sign": check_sign(*sign_family),
        "identity": check_identity(sign_family, other_family, sweep, first_order),
        "first_order": check_first_order(*first_order),
        "consequence": check_consequence(images, labels),
        "other_init": check_other_init(*other_family),
        "large_epsilon": check_large_epsilon(*sweep),
        "zero_branch": check_zero_branch(images, labels),
        "zero_branch_exact": check_zero_branch_exact(),
        "relu_kink": check_relu_kink(),
        "two_parameter": check_two_parameter(),
        "three_parameter": check_three_parameter(),
        "adam": check_adam(),
        "closed_form": check_closed_form(),
        **check_lora(*lora_results(rng, lora_draws, images, labels)),
        "lora_example": check_lora_example(),
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
