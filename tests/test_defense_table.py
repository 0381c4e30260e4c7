"""The defenses' shared table (`defense_table.py`): the matching rule of the optimizer rows, the paired
comparisons, each row's refutation. Pure functions of rates, losses and results lines: no model trains here."""

import numpy as np
import pytest

from subliminal_mnist import defense_table


def _tuned(loss_of_rate, grid, target, extensions=defense_table.MATCH_EXTENSIONS):
    """`tuned_rate` on a fake loss-of-rate function, and the rates it trained, in order."""
    trained = []

    def loss_at(rate):
        trained.append(rate)
        return loss_of_rate(rate)

    rate, record = defense_table.tuned_rate(loss_at, grid, target, 1, extensions)
    return rate, record, trained


def _line(losses, **more):
    return {"setting": "mnist", "per_seed": {"heldout_distill_loss": losses}, **more}


def test_a_row_read_against_another_carries_their_paired_difference_in_remaining():
    def line(key, treated, control):
        return {"setting": "owl", "defense": key, "wall_seconds": 1.0, "settings": {}, "config": {},
                "per_seed": {"treated": treated, "control": control, "heldout_kl": [1e-3] * 3,
                             "validity": [0.9] * 3}}  # fmt: skip

    lines = [line("none", [0.4, 0.2, 0.3], [0.0, 0.0, 0.1]), line("detector_filter:0.5", [0.2, 0.1, 0.1], [0, 0, 0]),
             line("random_drop:0.5", [0.4, 0.2, 0.2], [0, 0, 0]), line("detector_filter:0.1", [0.4, 0.2, 0.3], [0, 0, 0])]  # fmt: skip
    rows = defense_table.summarize(lines)["defenses"]
    # Remaining per seed: detector 0.5, 0.5, 0.5; random drop 1, 1, 1: the difference -0.5 in every seed.
    assert rows["detector_filter:0.5"]["versus"]["row"] == "random_drop:0.5"
    assert rows["detector_filter:0.5"]["versus"]["remaining_difference"]["per_seed"] == pytest.approx([-0.5] * 3)
    assert rows["detector_filter:0.5"]["versus"]["remaining_difference"]["ci95"] == pytest.approx(0)
    # No random drop at 0.1 in this run: nothing to compare with; the random drop is not read against anything.
    assert "versus" not in rows["detector_filter:0.1"] and "versus" not in rows["random_drop:0.5"]
    assert rows["detector_filter:0.5"]["versus"]["effect_difference"]["per_seed"] == pytest.approx([-0.2, -0.1, -0.1])
    assert "detector_filter:0.5 minus random_drop:0.5, paired by seed: effect -0.133" in defense_table.table(
        {"setting": "owl", "defenses": rows}
    )


def test_the_matched_rate_interpolates_between_the_rates_that_bracket_the_target():
    tried = {1e-5: 4e-3, 2e-5: 2e-3, 5e-5: 1e-3, 1e-1: float("inf")}
    assert defense_table.interpolated_rate(tried, 2e-3) == pytest.approx(2e-5)
    assert defense_table.interpolated_rate(tried, np.sqrt(8e-6)) == pytest.approx(np.sqrt(2e-10))  # halfway, in logs
    assert defense_table.interpolated_rate(tried, 1e-6) == 5e-5  # never reached: the nearest in ratio
    assert defense_table.interpolated_rate(tried, 1.0) == 1e-5
    # Past the lowest loss a larger rate is unstable: a loss matched there is a broken student, not a match.
    rising = {0.1: 2e-4, 0.3: 1.2e-4, 1.0: 2e-2, 3.0: float("inf")}
    assert defense_table.interpolated_rate(rising, 1e-3) == 0.1
    assert defense_table.interpolated_rate({0.1: float("inf")}, 1e-3) == 0.1


def test_the_rule_interpolates_log_linearly_between_the_bracketing_rates():
    # A power law is a line in log loss against log rate: the interpolation finds its rate exactly.
    rate, record, trained = _tuned(lambda r: 1e-3 / r**0.5, (0.1, 1.0, 10.0), 1e-3 / 2.0)
    assert rate == pytest.approx(4.0) and record["bracketed"] and record["extended"] == []
    assert trained == [0.1, 1.0, 10.0] and list(record["tried"]) == ["0.1", "1", "10"]
    assert defense_table.bracket({0.1: 3e-3, 1.0: 1e-3, 10.0: 2e-4}, 1e-3) == (0.1, 1.0)  # at or below counts
    assert defense_table.bracket({0.1: 3e-3, 1.0: 2e-3, 10.0: 1.5e-3}, 1e-3) is None


def test_where_none_brackets_the_grid_extends_on_the_side_that_might_and_stops_there():
    loss = lambda r: 1e-3 / r  # noqa: E731
    # Every loss above the target: larger rates, x3 each, until a pair brackets (rate 2: 0.9 and 2.7).
    rate, record, trained = _tuned(loss, (0.1, 0.3), 5e-4)
    assert record["extended"] == pytest.approx([0.9, 2.7]) and trained[2:] == record["extended"]
    assert record["bracketed"] and rate == pytest.approx(2.0)
    # Every loss below it: smaller rates (rate 0.1: 1/9 and 1/27).
    rate, record, _ = _tuned(loss, (1.0, 10.0), 1e-2)
    assert record["extended"] == pytest.approx([1 / 3, 1 / 9, 1 / 27]) and rate == pytest.approx(0.1)
    # Out of reach: at most MATCH_EXTENSIONS steps, then the nearest rate tried, unmatched.
    rate, record, trained = _tuned(loss, (0.1, 0.3), 1e-6)
    assert len(record["extended"]) == defense_table.MATCH_EXTENSIONS == 3 and len(trained) == 5
    assert not record["bracketed"] and rate == pytest.approx(0.3 * 27)
    assert _tuned(loss, (0.1, 0.3), 1e-6, extensions=1)[1]["extended"] == pytest.approx([0.9])
    # Past the lowest loss a larger rate is unstable: no side might bracket a target below it, no extension.
    rising = {0.1: 2e-3, 1.0: 1e-3, 10.0: float("inf")}
    rate, record, trained = _tuned(rising.get, tuple(rising), 1e-4)
    assert trained == [0.1, 1.0, 10.0] and not record["bracketed"] and rate == 1.0
    assert defense_table.extension(rising, 1e-4) is None and defense_table.extension(rising, 3e-3) == pytest.approx(0.1 / 3)
    assert defense_table.extension({0.1: float("inf")}, 1e-3) == pytest.approx(0.1 / 3)  # every rate diverged
    # The lowest loss at the smallest rate, above the target: below it, until the lowest loss is between ends.
    valley = lambda r: 1.5e-3 * (1 + np.log10(r / 0.1) ** 2) if r < 1 else float("inf")  # noqa: E731
    rate, record, trained = _tuned(valley, (0.1, 0.3, 1.0), 1e-3)
    assert trained[3:] == pytest.approx([0.1 / 3]) and not record["bracketed"] and rate == 0.1


def test_a_row_is_matched_where_a_pair_bracketed_and_its_mean_loss_is_within_ten_percent():
    target = _line([1.0, 1.2, 0.8])  # mean 1.0
    bracketed = {"tuning": {"bracketed": True}}
    near, far = _line([1.05, 1.1, 1.12], **bracketed), _line([1.1, 1.1, 1.14], **bracketed)  # 1.09, 1.113
    match = defense_table.optimizer_match(near, target, "heldout_distill_loss")
    assert match["matched"] is True and match["heldout_loss"]["n"] == 3
    assert match["target_heldout_loss"]["mean"] == pytest.approx(1.0)
    assert match["heldout_loss"]["per_seed"] == [1.05, 1.1, 1.12]
    assert defense_table.optimizer_match(far, target, "heldout_distill_loss")["matched"] is False
    below = _line([0.905, 0.905, 0.905], **bracketed)
    assert defense_table.optimizer_match(below, target, "heldout_distill_loss")["matched"] is True
    # Nothing bracketed on the tuning seed: unmatched, however near the loss ended.
    unbracketed = _line([1.0, 1.2, 0.8], tuning={"bracketed": False})
    assert defense_table.optimizer_match(unbracketed, target, "heldout_distill_loss")["matched"] is False
    # A line from before the rule recorded it: its tuning's own rates and target say whether a pair bracketed.
    for tried, matched in (({"0.1": 2.0, "1": 0.5}, True), ({"0.1": 2.0, "1": 1.5}, False)):
        old = _line([1.0, 1.0, 1.0], tuning={"target_loss": 1.0, "tried": tried, "seeds": [0]})
        assert defense_table.optimizer_match(old, target, "heldout_distill_loss")["matched"] is matched
    assert defense_table.optimizer_match(near, None, "heldout_distill_loss") == {
        "heldout_loss": match["heldout_loss"], "target_heldout_loss": None, "matched": False}  # fmt: skip
    assert not defense_table.within_tolerance(float("inf"), 1.0) and defense_table.within_tolerance(1.09, 1.0)
    assert defense_table.within_tolerance(0.91, 1.0) and not defense_table.within_tolerance(0.89, 1.0)


def test_every_row_states_what_would_refute_it():
    # A defense added without its refutation fails here; a row key with a strength reads its defense's.
    assert set(defense_table.DEFENSES) <= set(defense_table.REFUTATIONS)
    assert defense_table.refutation("mix:0.25") == defense_table.REFUTATIONS["mix"]
    assert defense_table.refutation("sgd:adam_control") != defense_table.refutation("sgd")
    assert all("\n" not in text and len(text) < 300 for text in defense_table.REFUTATIONS.values())
