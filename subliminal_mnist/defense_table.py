"""What every defenses table shares, both settings alike: its rows, the matching rule of the optimizer
rows, each row's refutation, the summary and the printed table.

A setting (`defenses.py` for MNIST, `llm/defenses.py` for the owl) trains its rows; this module knows
no model and no data, only what a row's line holds: per seed, the treated and control students' values
(`MEASURED`), the costs (`COSTS`), and the times. From them, `summarize` computes each row's effect
(treated minus control, paired by seed), its `remaining` (the effect over the undefended one, seed by
seed), its `effect_change` (the effect minus the undefended one: the interval a refutation reads), its
costs (intervals cut at their bounds), its refutation (`REFUTATIONS`), the paired comparisons of rows
read against another (`PAIRED_WITH`) and the optimizer rows' match (`optimizer_match`). `tuned_rate` is
the matching rule an optimizer row's learning rate is found by, fixed before any row runs; `run_rows`
reads each row back from a results file or trains it.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import ClassVar, NamedTuple

import jax
import numpy as np

from subliminal_mnist import runs, train
from subliminal_mnist.runs import ConfigError, config_field

SETTINGS = ("mnist", "owl")
# Seeds of a run unless --seeds says otherwise: enough for a t interval, 5x cheaper than the demo.
SEEDS = 5
DEFENSES = ("none", "other_init", "sgd", "kl_to_start", "l2_to_start", "mix", "replace_divergent", "threshold_sampling",
            "detector_filter", "random_drop", "sort", "projection", "temperature")  # fmt: skip
# The defenses each setting has: MNIST's projection needs its trait's loss in hand; the owl's
# token defenses need a model that samples tokens (`llm/defenses.py`).
APPLIES = {
    "mnist": ("none", "other_init", "sgd", "kl_to_start", "l2_to_start", "mix", "projection", "temperature"),
    "owl": ("none", "other_init", "sgd", "kl_to_start", "l2_to_start", "mix", "replace_divergent",
            "threshold_sampling", "detector_filter", "random_drop", "sort", "temperature"),
}  # fmt: skip
# What a row costs, by setting: the summary's name -> the per-seed values' key in a row's line.
COSTS = {
    "mnist": {"useful_accuracy": "useful", "heldout_distill_loss": "heldout_distill_loss"},
    "owl": {"heldout_kl": "heldout_kl", "validity": "validity"},
}
# What each cost cannot leave (low, high; None: no bound): its interval is cut there (`runs.summarize`). By the
# summary's name, which for the held-out losses is also their per-seed key (an optimizer row's match reads them).
COST_BOUNDS = {"useful_accuracy": (0.0, 1.0), "heldout_distill_loss": (0.0, None), "heldout_kl": (0.0, None),
               "validity": (0.0, 1.0)}  # fmt: skip
# Rows read against another row of the same run, seed by seed: their paired difference in `remaining`
# (this row's minus that row's) is the comparison their refutation names (`REFUTATIONS`).
PAIRED_WITH = {"detector_filter": "random_drop", "sgd:adam_control": "sgd"}
# What the treated and control students' per-seed values are: test accuracies (MNIST), or the
# change of the trait's headline measure from each student's own start (owl).
MEASURED = {"mnist": "accuracy", "owl": "change"}
# The SGD row's control: Adam at the learning rate whose distillation loss matches the SGD
# student's. Plain SGD may not reach Adam's loss in the paper's epochs at any rate; then this
# row tells the optimizer's part from the undertraining's.
SGD_ADAM_CONTROL = "adam_control"
# The matching rule of an optimizer row's rate (`tuned_rate`), fixed before any row runs: where no two
# neighbouring rates of the grid bracket the target held-out loss, the grid is extended beyond its end
# on the side that might, by this factor per step, at most this many steps; a row is matched where a
# pair bracketed the target and its mean held-out loss over the seeds is within this share of the
# target's mean (`optimizer_match`).
MATCH_EXTENSION_FACTOR = 3.0
MATCH_EXTENSIONS = 3
MATCH_TOLERANCE = 0.10
# Each setting's held-out loss, the one an optimizer row is matched on (a key of a row's per-seed values).
HELDOUT_LOSS = {"mnist": "heldout_distill_loss", "owl": "heldout_kl"}


@dataclasses.dataclass(frozen=True)
class DefenseSettings:
    """What every setting's defenses share: which run, and the strengths of the common ones."""

    setting: ClassVar[str]

    defenses: tuple[str, ...] = config_field(
        (),
        "defenses to run (default: every one that applies; none always runs: every row is measured against it)",
        element_type=str,
    )
    mix_shares: tuple[float, ...] = config_field(
        (0.1, 0.25, 0.5), "mix: shares of the distillation data from an unbiased teacher, one row each"
    )
    temperatures: tuple[float, ...] = config_field((0.25, 4.0), "temperature: KL temperatures, one row each")
    kl_weight: float = config_field(1.0, "kl_to_start: the KL's largest weight (nats per nat of distillation loss)")
    l2_weight: float = config_field(1e-3, "l2_to_start: the weight of |θ - θ0|² / 2")
    sgd_learning_rate: float = config_field(
        0.0, "sgd: its learning rate; 0: the rate whose held-out distillation loss is Adam's (the grid's, extended)"
    )
    sgd_grid: tuple[float, ...] = config_field(
        (0.1, 0.3, 1.0, 3.0, 10.0),
        "sgd: the learning rates tried on the first seeds when it is 0 (extended where none brackets Adam's loss)",
    )
    adam_grid: tuple[float, ...] = config_field(
        (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 3e-4),
        "sgd: Adam's rates tried for its control, which distils to the SGD student's held-out loss (extended alike)",
    )

    def __post_init__(self):
        for name in self.defenses:
            if name not in DEFENSES:
                raise ConfigError(f"no defense {name!r}; the defenses are {', '.join(DEFENSES)}")
            if name not in APPLIES[self.setting]:
                raise ConfigError(
                    f"defense {name} does not apply to {self.setting}; its defenses are "
                    f"{', '.join(APPLIES[self.setting])}"
                )
        if not all(0 <= share <= 1 for share in self.mix_shares):
            raise ConfigError(f"mix_shares must be in [0, 1], got {self.mix_shares}")
        if not all(t > 0 and np.isfinite(t) for t in (*self.temperatures, *self.sgd_grid, *self.adam_grid)):
            raise ConfigError("temperatures, sgd_grid and adam_grid must be positive numbers")
        runs.check_fields(self, not_negative=("kl_weight", "l2_weight", "sgd_learning_rate"))

    @property
    def strengths(self) -> dict[str, tuple]:
        """The defenses run at several strengths (one row each) and their values."""
        return {"mix": self.mix_shares, "temperature": self.temperatures, "sgd": (None, SGD_ADAM_CONTROL)}


class Row(NamedTuple):
    """One line of the table: a defense at one strength (`value`, None for those without one)."""

    name: str
    value: float | str | None = None

    @property
    def key(self) -> str:
        """The row's JSON key: the defense, and its strength for a defense run at several."""
        if self.value is None:
            return self.name
        return f"{self.name}:{self.value:g}" if isinstance(self.value, float) else f"{self.name}:{self.value}"


def rows(settings: DefenseSettings, excluded: tuple[str, ...] = ()) -> list[Row]:
    """The rows of a run, `none` first (every other row is measured against it). `excluded`: the
    setting's defenses that do not apply to this run (the owl's temperature in hard mode)."""
    asked = [name for name in settings.defenses if name in excluded]
    if asked:
        raise ConfigError(f"defense {asked[0]} does not apply to this run")
    strengths = settings.strengths
    out = [Row("none")]
    for name in APPLIES[settings.setting][1:]:
        if name not in excluded and (not settings.defenses or name in settings.defenses):
            out += [Row(name, value) for value in strengths[name]] if name in strengths else [Row(name)]
    return out


def tuned_rate(
    loss_at: Callable[[float], float], grid: Sequence[float], target_loss: float, workers: int,
    extensions: int = MATCH_EXTENSIONS,
) -> tuple[float, dict]:  # fmt: skip
    """The rate of the matching rule, fixed before any row runs, and its record (the line's `tuning`):

    1. train every rate of `grid` (held-out loss `loss_at(rate)` on the tuning seeds; inf where the training
       diverged), in `workers` threads (`runs.parallel_map`);
    2. while no two neighbouring rates bracket `target_loss` (`bracket`: one loss at or below it, one
       above, on the stable side), extend the grid beyond its end on the side that might bracket it
       (`extension`: the end rate times or over `MATCH_EXTENSION_FACTOR`), at most `extensions` times;
    3. the rate: log-linear between the bracketing rates (`interpolated_rate`), or, where none bracket,
       the nearest rate tried; the row is then unmatched (`optimizer_match`).

    The record: every rate tried and its loss ({rate: loss}, the grid and its extensions), whether a
    pair bracketed the target, and the rates the extensions added, in order."""

    def finite_loss(rate: float) -> float:
        # A rate that diverges fails its own training only: the others go on.
        try:
            loss = loss_at(rate)
        except train.TrainingDiverged:
            return float("inf")
        # A rate so large that the parameters stay finite but the outputs overflow (measured at 1e6)
        # gives a NaN loss: as far from the target as a training that diverged.
        return loss if np.isfinite(loss) else float("inf")

    # Each rate's student is one stream of work: two of them fill two cores.
    tried = dict(zip(grid, runs.parallel_map(finite_loss, grid, workers, "learning rates", unit="rate")))
    added: list[float] = []
    while bracket(tried, target_loss) is None and len(added) < extensions:
        rate = extension(tried, target_loss)
        if rate is None:
            break
        tried[rate] = finite_loss(rate)
        added.append(rate)
    record = {
        "tried": {f"{rate:g}": tried[rate] for rate in sorted(tried)},
        "bracketed": bracket(tried, target_loss) is not None,
        "extended": [float(rate) for rate in added],
    }
    return interpolated_rate(tried, target_loss), record


def _stable_rates(tried: dict[float, float]) -> list[float]:
    """The rates tried, ascending, up to the one with the lowest finite loss (every rate if none is finite):
    past it a larger rate trains worse because the optimizer is unstable there, and a loss matched on that
    side is a broken student, not one that distilled as far (measured: the owl's SGD at rate 1)."""
    rates = sorted(tried)
    finite = [rate for rate in rates if np.isfinite(tried[rate])]
    if not finite:
        return rates
    best = min(finite, key=tried.get)
    return [rate for rate in rates if rate <= best]


def bracket(tried: dict[float, float], target_loss: float) -> tuple[float, float] | None:
    """The first two neighbouring stable rates (`_stable_rates`) whose finite losses bracket `target_loss`
    (one at or below it, one above; equal losses never), or None."""
    stable = _stable_rates(tried)
    for low, high in zip(stable, stable[1:]):
        a, b = tried[low], tried[high]
        if np.isfinite(a) and np.isfinite(b) and min(a, b) <= target_loss <= max(a, b) and a != b:
            return low, high
    return None


def extension(tried: dict[float, float], target_loss: float) -> float | None:
    """The next rate to try where none brackets `target_loss`, on the side that might (the loss falls as
    the rate grows, on the stable side), by `MATCH_EXTENSION_FACTOR`:

    - every finite stable loss at or below the target, or every training diverged: below the smallest rate;
    - every finite loss above the target: beyond the rate with the lowest loss where it is an end of the
      rates tried, above the largest (the loss still falls there) or else below the smallest (a larger
      rate already trains worse; the lowest loss may lie below);
    - otherwise (the lowest loss between the ends, or finite losses on both sides with a diverged rate
      between them) None: no side might.

    None where a pair brackets the target already."""
    if bracket(tried, target_loss) is not None:
        return None
    rates = sorted(tried)
    stable = _stable_rates(tried)
    finite = [tried[rate] for rate in stable if np.isfinite(tried[rate])]
    if not finite or all(loss <= target_loss for loss in finite):
        return rates[0] / MATCH_EXTENSION_FACTOR
    if all(loss > target_loss for loss in finite):
        if stable[-1] == rates[-1]:
            return rates[-1] * MATCH_EXTENSION_FACTOR
        if stable[-1] == rates[0]:
            return rates[0] / MATCH_EXTENSION_FACTOR
    return None


def interpolated_rate(tried: dict[float, float], target_loss: float) -> float:
    """The learning rate at which the loss would be `target_loss`, from the losses `tried` at a grid of
    rates: between the two neighbouring rates whose losses bracket it (`bracket`), linear in log rate and
    log loss (a grid is coarse: neighbouring rates may differ 2-fold in loss); where none bracket it, the
    stable rate (`_stable_rates`) whose loss is nearest in ratio."""
    pair = bracket(tried, target_loss)
    if pair is not None:
        low, high = pair
        a, b = tried[low], tried[high]
        share = np.log(target_loss / a) / np.log(b / a)
        return float(np.exp(np.log(low) + share * np.log(high / low)))
    stable = _stable_rates(tried)
    if not any(np.isfinite(tried[rate]) for rate in stable):
        return stable[0]
    return min(stable, key=lambda rate: abs(np.log(tried[rate] / target_loss)))


def optimizer_match(line: dict, target: dict | None, loss_key: str) -> dict:
    """What an optimizer row (`sgd`, `sgd:adam_control`) says of its match, in the summary: its held-out
    loss (`loss_key`, per seed) and the target's it was matched to (`target`: `none`'s line for `sgd`, the
    `sgd` line for its control; None where the run holds none), each a summary, and whether it is
    `matched`: a pair of rates bracketed the target on the tuning seeds (where a rate was tuned) and its
    mean over the seeds is within `MATCH_TOLERANCE` of the target's mean. An unmatched row draws no
    conclusion."""
    losses = line["per_seed"][loss_key]
    out = {"heldout_loss": runs.summarize(losses, COST_BOUNDS[loss_key]), "target_heldout_loss": None, "matched": False}
    if target is None:
        return out
    target_losses = target["per_seed"][loss_key]
    out["target_heldout_loss"] = runs.summarize(target_losses, COST_BOUNDS[loss_key])
    tuning = line.get("tuning") or {"bracketed": True}  # a rate given, not tuned: nothing to bracket
    bracketed = tuning.get("bracketed")
    if bracketed is None:  # a line written before the rule recorded it: its own rates and target say
        tried = {float(rate): loss for rate, loss in tuning["tried"].items()}
        bracketed = bracket(tried, tuning["target_loss"]) is not None
    out["matched"] = bool(bracketed and within_tolerance(float(np.mean(losses)), float(np.mean(target_losses))))
    return out


def within_tolerance(loss: float, target_loss: float, tolerance: float = MATCH_TOLERANCE) -> bool:
    """The matched rule's loss test: |loss - target| <= tolerance x target (both finite)."""
    return bool(np.isfinite(loss) and np.isfinite(target_loss) and abs(loss - target_loss) <= tolerance * target_loss)


def row_fields(row: Row, config, settings: DefenseSettings, always: tuple[str, ...], more: dict | None = None) -> dict:
    """What a row's line must match to be reused: the setting, the row, the experiment's config (less
    `runs.SPEED_ONLY`), the settings every row reads (`always`) and those this row reads."""
    reads = {
        "sgd": ("sgd_learning_rate", "sgd_grid", "adam_grid"),
        "kl_to_start": ("kl_weight",),
        "l2_to_start": ("l2_weight",),
        **(more or {}),
    }
    values = {name: getattr(settings, name) for name in (*always, *reads.get(row.name, ()))}
    config_fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in runs.SPEED_ONLY}
    return {"setting": settings.setting, "defense": row.key, "config": config_fields, "settings": values}


def sgd_rate(
    row: Row, settings: DefenseSettings, results: list[dict], first: np.ndarray, loss_key: str,
    loss_at: Callable[[float, str], float], workers: int,
) -> tuple[float, dict]:  # fmt: skip
    """An `sgd` row's learning rate and what its line records of how it was found.

    SGD's rate: `sgd_learning_rate`, or (when it is 0) the rate whose held-out distillation loss
    (`loss_key`, mean over the `first` seeds) is the undefended Adam student's; its control's (Adam)
    rate: the one whose loss is the SGD row's (the row before it). Found by the matching rule
    (`tuned_rate`, in `workers` threads) on `loss_at(rate, optimizer)`, the treated student's held-out
    loss on the `first` seeds; the line's `tuning` holds the target, the grid, every rate tried (the grid
    and its extensions) with its loss, whether a pair bracketed the target, the extensions, and the
    tuning seeds."""
    control = row.value == SGD_ADAM_CONTROL
    rate = 0.0 if control else settings.sgd_learning_rate
    extra = {}
    if not rate:
        target = float(np.mean(np.asarray(results[-1 if control else 0]["per_seed"][loss_key])[first]))
        grid = settings.adam_grid if control else settings.sgd_grid
        optimizer = "adam" if control else "sgd"
        rate, record = tuned_rate(lambda rate: loss_at(rate, optimizer), grid, target, workers)
        extra["tuning"] = {"target_loss": target, "grid": list(grid), **record, "seeds": np.asarray(first).tolist()}
    return rate, {**extra, "learning_rate": rate}


def run_rows(
    settings: DefenseSettings, todo: Sequence[Row], fields: Callable[[Row], dict],
    compute: Callable[[Row, str, list[dict]], dict], path: str | pathlib.Path | None, log: Callable[[str], None],
) -> list[dict]:  # fmt: skip
    """Each row of `todo` read back from `path` (`runs.Lines`, matched on `fields(row)`) or trained
    by `compute(row, label, the rows before it)` and added to it, with its time."""
    lines = runs.Lines(path)
    results: list[dict] = []
    for index, row in enumerate(todo, 1):
        label = f"defend {settings.setting}: {row.key} ({index}/{len(todo)})"

        def timed(row=row, label=label) -> dict:
            start = time.perf_counter()
            line = compute(row, label, results)
            return {**line, "wall_seconds": time.perf_counter() - start}

        line = runs.point(lines, fields(row), timed, label, log)
        results.append(line)
        effect = paired_effect(line).mean()
        log(f"{label}: same init minus control {effect:+.3f}, {line['wall_seconds']:.0f} s")
    return results


# What each row would have shown if its defense did nothing (or, for `none`, if nothing transferred),
# and why its control can show it: a row whose control could not move is no evidence either way.
_UNCHANGED = "its paired change (effect minus the undefended effect, seed by seed) has an interval that includes 0"
REFUTATIONS = {
    "none": "no transfer: the same-init student's paired effect over its control has an interval that includes 0; "
            "the control learns the same data from another start (MNIST) or a trait-neutral teacher's (owl), so it can",
    "other_init": "another init does not stop transfer: its student on the teacher's outputs ends above its control "
                  "on a neutral teacher's, from the same start (paired interval above 0); only the teacher differs, "
                  "so it can",
    "sgd": f"SGD does not stop transfer: {_UNCHANGED}; read only where the row is matched (its held-out loss "
           f"within {MATCH_TOLERANCE:.0%} of Adam's), since an undertrained student transfers less for that reason alone",
    "sgd:adam_control": "the loss reached, not the optimizer, matters: Adam at SGD's held-out loss keeps as much as "
                        "SGD (their paired effects' difference has an interval that includes 0); read only where "
                        "this row is matched to SGD's loss",
    "kl_to_start": f"the penalty does nothing: {_UNCHANGED}; the control is penalized alike, so both can move",
    "l2_to_start": f"the penalty does nothing: {_UNCHANGED}; the control is penalized alike, so both can move",
    "mix": f"mixing does nothing: {_UNCHANGED} (a plain dilution predicts about 1 minus the share)",
    "replace_divergent": f"replacing the most divergent numbers does nothing: {_UNCHANGED}; the control's lists "
                         "are replaced alike",
    "threshold_sampling": f"min-p sampling does nothing: {_UNCHANGED}; the control's writer samples alike",
    "detector_filter": "the detector finds nothing: its paired effect minus random_drop's at the same share has "
                       "an interval that includes 0 (the same prompts leave the control's data, so pairs stay pairs)",
    "random_drop": f"dropping that much data does nothing: {_UNCHANGED}; detector_filter's yardstick",
    "sort": f"order carries nothing: {_UNCHANGED}; the control's lists are sorted alike",
    "projection": f"removing the trait gradient does nothing: {_UNCHANGED}; the control is projected alike",
    "temperature": f"the temperature does nothing: {_UNCHANGED}; the control distils at the same temperature",
}  # fmt: skip


# Where a row's design cannot show its refutation in one mode of a run, what its summary says instead: a
# soft student's targets after sorting are each writer's distribution on the sorted lists, re-read by the
# writer itself, so they carry whatever the writer carries whatever the order.
MODE_REFUTATIONS = {
    ("soft", "sort"): "none in soft mode: each writer re-reads the sorted lists for the targets, so every target "
                      "is its own distribution again and the row cannot show whether order carries the trait (hard "
                      "mode can); it shows only that the soft channel survives sorted contexts",
}  # fmt: skip


def refutation(key: str, mode: str | None = None) -> str:
    """The one-line refutation of a row (`REFUTATIONS`), by its key ("mix:0.25" is a `mix` row), or what a
    run of `mode` says instead where its design cannot show it (`MODE_REFUTATIONS`)."""
    name = key.split(":")[0]
    return MODE_REFUTATIONS.get((mode, name)) or REFUTATIONS.get(key) or REFUTATIONS[name]


def paired_effect(line: dict, measure: str = "") -> np.ndarray:
    """A row's per-seed paired effect, treated minus control, of its headline values (`measure` "") or of
    another measure both students have (e.g. "xent_drop": the values `treated_xent_drop`, `control_xent_drop`)."""
    suffix = f"_{measure}" if measure else ""
    return np.subtract(line["per_seed"][f"treated{suffix}"], line["per_seed"][f"control{suffix}"])


def paired_with(key: str, by_key: dict, undefended: np.ndarray) -> dict:
    """The row's comparison with the row it is read against (`PAIRED_WITH`: detector_filter:0.1 against
    random_drop:0.1, sgd:adam_control against sgd), seed by seed: {"row": that row's key,
    "effect_difference" and "remaining_difference": the summaries of this row's paired effect (and its
    remaining) minus that row's, and on MNIST
    "xent_difference": of this row's cross-entropy effect minus that row's (nats), which sees a
    difference where both rows' students stay at chance accuracy}; {} for other rows or where the run
    holds no such row."""
    name, _, value = key.partition(":")
    other = PAIRED_WITH.get(key) or (PAIRED_WITH.get(name) and f"{PAIRED_WITH[name]}:{value}")
    if not other or other not in by_key:
        return {}
    this, that = by_key[key], by_key[other]
    difference = paired_effect(this) - paired_effect(that)
    versus = {
        "row": other,
        "effect_difference": runs.summarize(difference),
        "remaining_difference": runs.summarize(difference / undefended),
    }
    if "treated_xent_drop" in this["per_seed"]:
        versus["xent_difference"] = runs.summarize(paired_effect(this, "xent_drop") - paired_effect(that, "xent_drop"))
    return {"versus": versus}


def summarize(lines: Sequence[dict], **more) -> dict:
    """The table: for each row, its transfer remaining, its effect, its `effect_change` (the paired
    effect minus the undefended one, seed by seed) and its costs (`COSTS`, each interval
    cut at its bounds), each a summary with Student's t interval (`runs.summarize`), its `refutation`;
    MNIST's `xent_effect` and `xent_remaining` (`_xent_fields`); a row read against another (`PAIRED_WITH`)
    its `versus`; an optimizer row its match (`optimizer_match`). The rows in the order of `lines` (none
    first). `more`: the setting's own entries (its teacher, its data; an owl run's `mode` also picks
    `MODE_REFUTATIONS`)."""
    setting = lines[0]["setting"]
    by_key = {line["defense"]: line for line in lines}
    undefended = paired_effect(by_key["none"])
    mode = more.get("mode")
    table = {}
    for key, line in by_key.items():
        per_seed = line["per_seed"]
        effect = paired_effect(line)
        table[key] = {
            # Per seed, the defended paired effect over that seed's undefended one.
            "remaining": runs.summarize(effect / undefended),
            "effect": runs.summarize(effect),
            # The same comparison as a paired difference (no ratio): where the undefended effect of a seed
            # is small, its ratio is noisy, and this is the interval that says whether the defense moved it.
            "effect_change": runs.summarize(effect - undefended),
            MEASURED[setting]: {name: runs.summarize(per_seed[name]) for name in ("treated", "control")},
            "cost": {
                **{name: runs.summarize(per_seed[k], COST_BOUNDS[name]) for name, k in COSTS[setting].items()},
                "seconds": line["wall_seconds"],
            },
            "config": {**line["settings"], **{k: line[k] for k in ("learning_rate", "tuning") if k in line}},
            "refutation": refutation(key, mode),
            **{name: runs.summarize(per_seed[k]) for name, k in _MORE_SUMMARIES.items() if k in per_seed},
            **(_xent_fields(line, by_key["none"]) if "treated_xent_drop" in per_seed else {}),
            **paired_with(key, by_key, undefended),
            **_optimizer_fields(key, line, by_key),
        }  # fmt: skip
    none = by_key["none"]
    if setting == "mnist":
        more = {"teacher_accuracy": runs.summarize(none["per_seed"]["teacher"]), "data_source": none["data_source"],
                **more}  # fmt: skip
    return {
        "setting": setting,
        "defenses": table,
        **more,
        "config": none["config"],
        "devices": jax.local_device_count(),
        "versions": runs.versions(),
    }


def _xent_fields(line: dict, none: dict) -> dict:
    """MNIST's cross-entropy readout of a row: its paired effect (the aux-only students' drops in test
    cross-entropy from their starts, treated minus control, nats) and, per seed, that effect over the
    undefended one (`xent_remaining`, as `remaining` is for accuracy)."""
    effect = paired_effect(line, "xent_drop")
    return {"xent_effect": runs.summarize(effect), "xent_remaining": runs.summarize(effect / paired_effect(none, "xent_drop"))}


# A row's own values summarized as they are (the summary's name -> the per-seed key), where it has them:
# other_init's neutral teacher (its accuracy, near chance, and how far it and the teacher moved).
_MORE_SUMMARIES = {
    "neutral_teacher_accuracy": "neutral_teacher",
    "neutral_teacher_distance": "neutral_teacher_distance",
    "teacher_distance": "teacher_distance",
}


def _optimizer_fields(key: str, line: dict, by_key: dict) -> dict:
    """An optimizer row's `optimizer_match` in the summary ({} for other rows): `sgd` against the
    undefended Adam student (`none`), `sgd:adam_control` against the `sgd` row."""
    if not key.startswith("sgd"):
        return {}
    target = by_key.get(Row("sgd").key if key == Row("sgd", SGD_ADAM_CONTROL).key else "none")
    return optimizer_match(line, target, HELDOUT_LOSS[line["setting"]])


def drawn_lines(path: str | pathlib.Path, wanted: Sequence[Row], setting: str = "mnist") -> list[dict]:
    """What `--plot-only` draws: the file's latest line of each wanted row that it holds, none first."""
    latest = {line["defense"]: line for line in runs.read_lines(path) if line.get("setting") == setting}
    if "none" not in latest:
        raise runs.ResultsFileError(f"{path} holds no undefended (none) row to measure the others against")
    return [latest[row.key] for row in wanted if row.key in latest]


# Each cost's column in `table`: its heading and its digits.
_COST_COLUMNS = {
    "useful_accuracy": ("useful acc.", 3),
    "heldout_distill_loss": ("held-out loss", 5),
    "heldout_kl": ("held-out KL", 4),
    "validity": ("validity", 3),
}


def table(summary: dict) -> str:
    """The results as docs/defenses.md shows them: one row per defense, mean ± 95% t interval (a cost's
    interval as [low, high] where its bound cuts it), and below, the paired comparisons (`PAIRED_WITH`)."""

    def cell(s: dict, digits: int = 3) -> str:
        mean = f"{s['mean']:.{digits}f}"
        if s["ci95"] is None:
            return mean
        if "interval" in s and s["interval"] != [s["mean"] - s["ci95"], s["mean"] + s["ci95"]]:
            return mean + " [{:.{d}f}, {:.{d}f}]".format(*s["interval"], d=digits)
        return mean + f" ± {s['ci95']:.{digits}f}"

    rows = summary["defenses"]
    costs = COSTS[summary["setting"]]
    xent = any("xent_effect" in row for row in rows.values())
    header = f"{'defense':<24}{'remaining':>18}{'effect':>18}{'change':>18}"
    header += f"{'remaining (CE)':>18}{'effect (CE)':>18}" if xent else ""
    header += "".join(f"{_COST_COLUMNS[c][0]:>28}" for c in costs) + f"{'time':>8}"
    out = [header]
    for key, row in rows.items():
        cost = row["cost"]
        line = f"{key:<24}{cell(row['remaining'], 2):>18}{cell(row['effect']):>18}{cell(row['effect_change']):>18}"
        line += f"{cell(row['xent_remaining'], 2):>18}{cell(row['xent_effect']):>18}" if xent else ""
        line += "".join(f"{cell(cost[c], _COST_COLUMNS[c][1]):>28}" for c in costs)
        out.append(line + f"{cost['seconds']:>7.0f}s" + ("  unmatched" if row.get("matched") is False else ""))
    n = rows["none"]["effect"]["n"]
    out.append(f"n = {n} seeds; remaining: the paired effect (same init minus control) over the undefended one; "
               "change: the paired effect minus the undefended one")
    if xent:
        out.append("(CE): the aux-only students' drop in test cross-entropy from their starts, same init minus "
                   "control (nats), and over the undefended one: partial transfer where accuracy stays at chance")  # fmt: skip
    for key, row in rows.items():
        if "versus" in row:
            versus = row["versus"]
            xent = f"; effect (CE) {cell(versus['xent_difference'])}" if "xent_difference" in versus else ""
            out.append(f"{key} minus {versus['row']}, paired by seed: effect {cell(versus['effect_difference'])}, "
                       f"remaining {cell(versus['remaining_difference'], 2)}{xent} "
                       f"(n = {versus['remaining_difference']['n']})")
    if any(row.get("matched") is False for row in rows.values()):
        out.append(f"unmatched: no rate bracketed the other optimizer's held-out loss, or the row's mean is more "
                   f"than {MATCH_TOLERANCE:.0%} from it; the row draws no conclusion")  # fmt: skip
    return "\n".join(out)
