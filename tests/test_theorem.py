"""Tests for subliminal_mnist.theorem: Theorem 1 of the paper (Section 6, Appendix C).

Offline (the bundled MNIST sample) and fast: every network of the family runs in one compiled,
vmapped function (see `theorem.PaddedMLP`), so the whole file compiles it once, plus a few
small functions. The `report` fixture runs `theorem.run_checks` once, small, and most tests
assert one of its checks. theory/README.md maps each claim to its test here.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from subliminal_mnist import data, losses, theorem

MIN_CASES = 200


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray]:
    mnist = data.load_sample()
    return mnist.train_images, mnist.train_labels


@pytest.fixture(scope="module")
def report() -> dict:
    """All checks once, small: the tests below read their numbers (and the CLI prints the same)."""
    return theorem.run_checks(num_cases=64, key=0, sweep_draws=2)


def _describe(check: dict) -> str:
    return json.dumps(check, indent=1)


# One draw of the family: depth, 3 widths (those past the depth are ignored), ReLU?, log10 ε,
# input distribution, output subset.
_draw = st.tuples(
    st.integers(1, 3),
    st.lists(st.integers(theorem.MIN_WIDTH, theorem.MAX_WIDTH), min_size=3, max_size=3),
    st.booleans(),
    st.floats(-4.0, -2.0),
    st.integers(0, len(theorem.INPUT_KINDS) - 1),
    st.integers(0, len(theorem.SUBSETS) - 1),
)


def test_sign_is_nonnegative_for_shared_init_and_small_epsilon(sample):
    """ΔS·ΔT >= 0 (up to float64 round-off, SIGN_TOLERANCE), over >= 200 cases drawn by hypothesis.

    Depth 1-3, widths 8-256, ReLU and tanh, uniform / Gaussian / MNIST / constant inputs, aux /
    all / single-logit outputs, KL and squared error, ε in [1e-4, 1e-2]. One hypothesis example
    is a batch of CALL_SIZE draws, run as one vmapped call of the one compiled function.
    """
    images, labels = sample
    checked: set[tuple] = set()  # (seed, draw, loss); a draw is (depth, widths, relu, log10 ε, kind, subset)

    @settings(
        max_examples=-(-MIN_CASES // (theorem.CALL_SIZE * len(theorem.LOSSES))),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        draws=st.lists(_draw, min_size=theorem.CALL_SIZE, max_size=theorem.CALL_SIZE),
        seed=st.integers(0, 2**32 - 1),
    )
    def check(draws: list[tuple], seed: int) -> None:
        depth, widths, relu, log10_epsilon, kind, subset = zip(*draws)
        cases = theorem.make_cases(
            np.random.default_rng(seed),
            images,
            labels,
            depth=depth,
            widths=widths,
            relu=relu,
            epsilon=10.0 ** np.array(log10_epsilon),
            kind=kind,
            subset=subset,
        )
        results = theorem.run_cases(cases)
        cosine = results.cosine
        bad = np.argwhere(cosine < -theorem.SIGN_TOLERANCE)
        assert not bad.size, [(draws[i], theorem.LOSSES[j], cosine[i, j]) for i, j in bad]
        for seed_i, (depth_i, widths_i, *rest) in zip(cases.seeds, draws):
            for loss in theorem.LOSSES:
                checked.add((int(seed_i), (depth_i, tuple(widths_i[:depth_i]), *rest), loss))

    check()
    assert len(checked) >= MIN_CASES
    # Every value of every dimension of the family was drawn.
    draws = [draw for _, draw, _ in checked]
    assert {d[0] for d in draws} == {1, 2, 3}
    assert {d[2] for d in draws} == {False, True}
    assert {d[4] for d in draws} == set(range(len(theorem.INPUT_KINDS)))
    assert {d[5] for d in draws} == set(range(len(theorem.SUBSETS)))
    assert {loss for _, _, loss in checked} == set(theorem.LOSSES)
    widths = [w for d in draws for w in d[1]]
    assert min(widths) < 16 and max(widths) > 128


def test_first_order_error_shrinks_linearly_in_epsilon(report):
    """float64: |ΔS·ΔT - prediction| / prediction has log-log slope ~1 over ε in [1e-6, 1e-2] (tanh)."""
    check = report["checks"]["first_order"]
    assert check["passed"], _describe(check)
    for slope in check["slope_tanh"].values():
        assert theorem.SLOPE_RANGE[0] <= slope <= theorem.SLOPE_RANGE[1], _describe(check)


def test_small_student_step_lowers_the_trait_loss(report):
    """Paper's MLP, student on noise and aux logits only: L_T(θ0 + αΔS) < L_T(θ0) when prediction > 0."""
    check = report["checks"]["consequence"]
    assert check["passed"], _describe(check)
    assert check["positive_predictions"] == check["cases"], _describe(check)
    assert check["max_trait_loss_change"] < 0, _describe(check)


def test_sign_fails_often_with_different_inits(report):
    """ΔS taken at the student's own init: the sign is near a coin flip, fails in > 20% of cases."""
    check = report["checks"]["other_init"]
    assert check["failure_share"] > theorem.OTHER_INIT_MIN_SHARE, _describe(check)


def test_sign_can_fail_for_large_epsilon(report):
    """Shared init but large ε: a failure exists, far beyond round-off, and never at ε <= 0.1."""
    check = report["checks"]["large_epsilon"]
    assert check["passed"], _describe(check)
    assert check["failing_cosine"] < -1e3 * theorem.SIGN_TOLERANCE, _describe(check)
    assert check["smallest_failing_epsilon"] > 0.1, _describe(check)


def test_zero_branch_is_exactly_zero(report):
    """L_T on the class rows of the last layer only, student on the aux logits: ΔS·ΔT == 0.0 exactly."""
    check = report["checks"]["zero_branch"]
    for loss in theorem.LOSSES:
        assert check[f"dot_aux_{loss}"] == 0.0, _describe(check)
        assert check[f"prediction_aux_{loss}"] == 0.0, _describe(check)
        assert check[f"dot_all_{loss}"] > 0, _describe(check)  # the same teacher, all logits: not 0
    assert check["teacher_norm"] > 0, _describe(check)


def test_frozen_except_has_exactly_zero_gradient_off_support():
    """The tool behind the zero branch: a loss of the support's parameters only has gradient 0.0 elsewhere."""
    params = {"a": jnp.arange(3.0), "b": jnp.ones((2, 2))}
    support = {"a": jnp.array([True, False, True]), "b": jnp.zeros((2, 2), bool)}
    loss = theorem.frozen_except(lambda p: jnp.sum(p["a"] ** 3) + jnp.sum(jnp.sin(p["b"])), params, support)
    grad = jax.grad(loss)(params)
    assert grad["a"].tolist() == [0.0, 0.0, 12.0]
    assert not grad["b"].any()


@pytest.mark.parametrize("epsilon", [0.25, 1e-3, 7.0])
def test_linear_case_matches_closed_form(epsilon):
    """f(x) = Wx, W0 = 0, L_T = |W - A|²/2, squared error, x = e1, e2: ΔS·ΔT = ε|A|² = 6ε at any ε."""
    case = theorem.linear_case(epsilon)
    assert case["dot"] == pytest.approx(6.0 * epsilon, rel=1e-6)
    assert case["prediction"] == pytest.approx(6.0 * epsilon, rel=1e-6)


def test_closed_form_check_is_exact(report):
    """The closed_form row of `subliminal-mnist theorem`: 6ε at ε = 0.25 is 1.5, exactly, in float32."""
    check = report["checks"]["closed_form"]
    assert check["passed"] and check["dot"] == 1.5, _describe(check)


def test_mask_selection_equals_index_selection():
    """Outputs chosen by a boolean mask (one compiled function for all subsets) = chosen by indices."""
    indices = (1, 3, 4)
    mask = np.isin(np.arange(5), indices)
    apply_fn = lambda p, x: x @ p["w"]  # noqa: E731

    @jax.jit  # one small compilation instead of many eager ones
    def directions_and_predictions(key):
        key_w, key_x = jax.random.split(key)
        params = {"w": jax.random.normal(key_w, (6, 5))}
        teacher, delta_t = {"w": params["w"] + 0.1}, {"w": jnp.ones((6, 5))}
        inputs = jax.random.normal(key_x, (7, 6))
        return {
            (loss, name): (
                theorem.student_direction(params, teacher, apply_fn, inputs, loss, outputs)["w"],
                theorem.first_order_prediction(params, delta_t, apply_fn, inputs, 0.1, loss, outputs),
            )
            for loss in theorem.LOSSES
            for name, outputs in (("indices", indices), ("mask", jnp.asarray(mask)))
        }

    out = directions_and_predictions(jax.random.key(0))
    for loss in theorem.LOSSES:
        for by_mask, by_index in zip(out[loss, "mask"], out[loss, "indices"]):
            np.testing.assert_allclose(by_mask, by_index, rtol=1e-6, atol=1e-7)


def test_student_direction_uses_the_package_losses():
    """ΔS is minus the gradient of the mean of losses.py's per-example loss, for both losses."""
    params = {"w": jnp.array([[1.0, -2.0, 0.5], [0.0, 1.0, 1.0]])}
    teacher = {"w": params["w"] * 1.5}
    apply_fn = lambda p, x: x @ p["w"]  # noqa: E731
    inputs = jnp.array([[1.0, 2.0], [-1.0, 0.5]])
    for loss, per_example in (("kl", losses.kl_divergence), ("mse", losses.squared_error)):
        targets = apply_fn(teacher, inputs)
        expected = jax.grad(lambda p: -jnp.mean(per_example(apply_fn(p, inputs), targets)))(params)
        got = theorem.student_direction(params, teacher, apply_fn, inputs, loss)
        np.testing.assert_allclose(got["w"], expected["w"], rtol=1e-6)


def test_padded_member_is_the_small_network(sample):
    """A PaddedMLP member computes the small MLP's logits, and its ΔT is exactly 0 off the small MLP."""
    images, labels = sample
    network = theorem.PaddedMLP()
    widths = jnp.array([20, 30, 0])  # 784 -> 20 -> 30 -> 13, tanh; the third hidden layer is absent

    @jax.jit
    def member(key):
        params = network.init(key, widths)
        apply_fn = lambda p, x: network.apply(p, x, widths, relu=False)  # noqa: E731
        trait_loss = theorem.class_trait_loss(apply_fn, images[:64], labels[:64])
        return params, apply_fn(params, images[:8]), theorem.teacher_step(params, trait_loss, 0.01)[1]

    params, logits, delta_t = member(jax.random.key(1))
    (w1, _), (w2, _), _, (w4, b4) = [(np.asarray(p["kernel"]), np.asarray(p["bias"])) for p in params]
    small = np.tanh(np.tanh(images[:8] @ w1[:, :20]) @ w2[:20, :30]) @ w4[:30] + b4
    np.testing.assert_allclose(logits, small, rtol=1e-4, atol=1e-5)
    # The small network's kernels, as (rows, columns) of each padded kernel; everything else is 0.
    real = [(784, 20), (20, 30), (0, 0), (30, 13)]
    for tree in (params, delta_t):
        for layer, (rows, cols) in zip(tree, real):
            outside = np.asarray(layer["kernel"]).copy()
            outside[:rows, :cols] = 0.0
            assert not outside.any()
            assert not np.asarray(layer["bias"])[cols:].any()
    np.testing.assert_allclose(np.std(w1[:, :20]) * np.sqrt(784), 1.0, rtol=0.05)  # N(0, 1/fan_in)
    np.testing.assert_allclose(np.std(w2[:20, :30]) * np.sqrt(20), 1.0, rtol=0.15)


def test_report_is_json_and_table_has_a_row_per_check(report):
    assert report["passed"], theorem.format_table(report)
    json.loads(json.dumps(report))
    table = theorem.format_table(report).splitlines()
    assert len(table) == len(report["checks"]) + 1
    for row, name in zip(table, report["checks"]):
        assert row.startswith(name) and " PASS " in row
