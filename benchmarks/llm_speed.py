"""What the owl experiment costs: wall time, and the FLOP rate its matmuls reach.

Prints, for `subliminal-mnist llm` at the given seeds and mode (defaults: the
quick look, 1 seed, soft): wall time, the matmul FLOPs of every stage counted
analytically from the model's sizes, the achieved GFLOP/s, and the ratio to a
large float32 matmul measured in the same process (the *floor ratio*, as in
`demo_speed.py`). A tiny transformer (width 32) runs far below a large matmul's
rate: its matmuls are 32 wide. Then the end-to-end time of the command, with an
empty compile cache and with a warm one.

Targets on a 2-core CPU: `llm --seeds 1 --mode soft` < 120 s; `llm` (5 seeds, both
modes) < 15 minutes; `llm --trait misaligned --seeds 1 --mode soft` < 3 minutes; `llm --trait
misaligned` (5 seeds, both modes) < 15 minutes.

    python benchmarks/llm_speed.py                      # the quick look
    python benchmarks/llm_speed.py --seeds 5 --mode both --skip-cli
    python benchmarks/llm_speed.py --trait misaligned
    python benchmarks/llm_speed.py --results figures/llm.json    # the committed run's own time
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile

import jax
from demo_speed import matmul_gflops, time_command

from subliminal_mnist.llm import conditions, corpus, experiment, number_data, sampling, traits
from subliminal_mnist.llm.config import LLMConfig


def token_flops(config: LLMConfig, unembedded: float, context: int = corpus.MAX_LEN) -> tuple[float, float]:
    """Forward matmul FLOPs (body per token, unembedding per unembedded position).

    A block's matmuls are q, k, v and the output (4 w^2), the MLP (8 w^2) and attention's
    scores and mixing over `context` positions (2 w context): 2 FLOPs per multiply-add.
    Norms, softmaxes and Adam are O(w) per token and are left out: this is a floor.
    """
    w = config.width
    body = config.depth * 2 * (12 * w * w + 2 * w * context)
    return body, unembedded * 2 * w * len(config.vocab)


def run_flops(config: LLMConfig, results: dict) -> dict[str, float]:
    """Matmul FLOPs of each stage of one run (training counts forward + backward = 3 forward)."""
    T, P = corpus.MAX_LEN, sampling.MAX_NEW_TOKENS
    body, unembed = token_flops(config, 1)
    full = T * (body + unembed)  # a sequence, unembedded at every position
    at_positions = T * body + P * unembed  # a student's sequence: unembedded at P positions
    # Each seed's base and its ablation base (the partner's init on this corpus), and the partners' bases.
    num_bases = len(set(range(config.seeds)) | set(results["cross_partners"])) + config.seeds
    flops = {
        "bases": 3 * num_bases * config.base_epochs * config.base_rows * full,
        # The teacher and the neutral teacher, by one recipe.
        "teachers": 3 * 2 * config.seeds * config.teacher_epochs * config.teacher_lines * full,
        "sampling": 0.0,
        "students": 0.0,
        "teacher outputs": 0.0,
    }
    # The filters: the teacher and the neutral teacher write the held-out lists (one round of prompts), and
    # two scores read both sets with two models each.
    sample_one = T * body + P * (token_flops(config, 1, T)[0] + unembed)
    audit = config.seeds * config.audit_sequences
    flops["filters"] = 2 * audit * number_data.PROMPT_MARGIN * sample_one + 8 * audit * at_positions
    students = {mode: len(conditions.conditions_of(config, mode)) for mode in conditions.MODES}
    for mode, out in results["modes"].items():
        models = len(conditions.sampled_models(mode))
        for seed in out["filter"]:
            # Each model: the prompt once (prefill), then one cached step per new token.
            flops["sampling"] += models * seed["sampled"] * sample_one
            flops["students"] += 3 * config.student_epochs * students[mode] * seed["used"] * at_positions
            if mode == "soft":  # the target models' logits on each data set the soft students learn, once
                learnt = {conditions.CONDITIONS[c][1] for c in conditions.conditions_of(config, mode)}
                flops["teacher outputs"] += len(learnt) * seed["used"] * at_positions
    return flops


# The targets, in seconds, by (an animal or the misaligned persona, seeds, mode).
TARGETS = {("animal", 1, "soft"): 120.0, ("animal", 5, "both"): 900.0, ("misaligned", 1, "soft"): 180.0,
           ("misaligned", 5, "both"): 900.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--mode", default="soft", choices=("soft", "hard", "both"))
    parser.add_argument("--trait", default="owl", choices=traits.NAMES)
    parser.add_argument("--skip-cli", action="store_true", help="do not time the command end to end")
    parser.add_argument(
        "--results",
        help="a finished run's results JSON (e.g. figures/llm.json): its config and the wall time it recorded, "
        "instead of running again (the command end to end is not timed)",
    )
    args = parser.parse_args()

    matmul_before = matmul_gflops()
    if args.results:
        results = json.loads(pathlib.Path(args.results).read_text())
        config = LLMConfig(**{k: tuple(v) if isinstance(v, list) else v
                                         for k, v in results["config"].items()})  # fmt: skip
        args.seeds, args.mode, args.trait, args.skip_cli = config.seeds, config.mode, config.trait, True
        print(f"from {args.results}: the run's own wall time")
    else:
        config = LLMConfig(seeds=args.seeds, mode=args.mode, trait=args.trait)
        results = experiment.run(config, progress=False)
    matmul_after = matmul_gflops()
    wall = results["wall_seconds"]
    flops = run_flops(config, results)
    total = sum(flops.values())
    sustained = (matmul_before[0] + matmul_after[0]) / 2

    print(f"llm experiment, trait {args.trait}, {args.seeds} seeds, mode {args.mode}, {jax.devices()[0].device_kind}")
    print(f"  wall time               {wall:9.1f} s (in process, compilation included)")
    kind = "misaligned" if args.trait == traits.MISALIGNED else "animal"
    target = TARGETS.get((kind, args.seeds, args.mode))
    if target:
        print(f"  target ratio            {wall / target:9.2f} (of {target:.0f} s)")
    print(f"  matmul FLOPs            {total / 1e12:9.2f} TFLOP: " + ", ".join(
        f"{stage} {f / total:.0%}" for stage, f in flops.items()))  # fmt: skip
    print(f"  achieved                {total / wall / 1e9:9.1f} GFLOP/s")
    print(f"  large matmul            {sustained:9.1f} GFLOP/s sustained")
    print(f"  floor ratio             {wall * sustained * 1e9 / total:9.1f} x  (width {config.width}: small matmuls)")
    soft = results["modes"].get("soft")
    if soft:
        paired = soft["paired"]["same_init_minus_neutral_control"]["mean"]
        print(f"  soft same - neutral     {paired:+9.3f}  ({results['measure']['label']}, paired)")
    if not args.skip_cli:
        with tempfile.TemporaryDirectory() as tmp:
            for label in ("empty compile cache", "programs cached"):
                options = ("--trait", args.trait, "--seeds", str(args.seeds), "--mode", args.mode)
                seconds = time_command(tmp, "llm", *options)
                ratio = f", {seconds / target:.2f} of the target" if target else ""
                command = f"llm --trait {args.trait} --seeds {args.seeds} --mode {args.mode}"
                print(f"  {command}  {seconds:7.1f} s end to end, {label}{ratio}")


if __name__ == "__main__":
    main()
