#!/usr/bin/env bash
# Regenerates every committed figure and its results JSON (full MNIST needed: --data-dir or SUBLIMINAL_MNIST_DIR).
set -euo pipefail
cd "$(dirname "$0")"
subliminal-mnist demo --seeds 25 --out . "$@"
subliminal-mnist alignment --seeds 5 --project-out --out . "$@"
# The owl experiment (no MNIST needed): the defaults, 5 seeds, soft and hard distillation.
subliminal-mnist llm --out .
# The dangerous version in miniature: a misaligned persona, the same experiment and filters, 5 seeds, both modes
# (misaligned.json and .png: named by the trait).
subliminal-mnist llm --trait misaligned --out .
# The dose-responses the defaults are sized from, 5 seeds per count (a point already in llm_dose.jsonl is not
# trained again). Hard: the owl with its neutral and base controls. Soft: the owl with its neutral control, and
# the misaligned persona with the own-corpus students too. (The file also holds the hard points of 2026-11-30,
# of the earlier neutral teacher; their commands are in the git history.)
subliminal-mnist llm-dose --mode hard --counts 1000 3000 10000 --conditions same_init neutral_control base_control --out .
subliminal-mnist llm-dose --mode soft --counts 2500 5000 10000 --conditions same_init neutral_control --out .
subliminal-mnist llm-dose --trait misaligned --mode soft --counts 2500 5000 10000 \
  --conditions same_init neutral_control cross_init_own_corpus cross_neutral_own_corpus --out .
# The strongest transfer: the preset, 5 seeds, the aux-only pair (strongest.json and .png: named by the preset).
subliminal-mnist demo --preset strongest --seeds 5 --conditions student_aux --out . "$@"
# What stops it: every MNIST defense, 5 seeds, one resumable line per row in defend_mnist.jsonl.
subliminal-mnist defend mnist --out . "$@"
# The owl's defenses (no MNIST needed), 5 seeds, one set of files per mode, one resumable line per row in
# defend_owl_MODE.jsonl: soft, every defense that applies; hard (sampled tokens, the published defenses' own
# kind of data), the rows compared with published numbers.
subliminal-mnist defend owl --out .
subliminal-mnist defend owl --mode hard --out . \
  --defenses other_init mix replace_divergent threshold_sampling detector_filter random_drop sort
# Sweeps, 5 seeds per point: a point already in sweep_NAME.jsonl under the same config, versions and source
# (`runs.source_fingerprint`) is not trained again; delete the file to train every point anew.
for name in init_perturbation heads loss noise aux depth teacher_epochs student_epochs width lora; do
  subliminal-mnist sweep "$name" --out . "$@"
done
# LoRA against full fine-tuning for the owl (no MNIST needed): 11 teacher/student points, soft, 5 seeds each,
# the treated student paired with its neutral control (docs/lora.md).
subliminal-mnist llm-lora --out .
subliminal-mnist llm-lora --mode hard --values full/full full/lora:4 full/lora:16 lora:4/full \
  lora:4/lora:4/shared lora:4/lora:4/own --out .
