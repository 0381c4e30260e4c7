#!/usr/bin/env bash
# Regenerates every committed figure and its results JSON (full MNIST needed: --data-dir or SUBLIMINAL_MNIST_DIR).
set -euo pipefail
cd "$(dirname "$0")"
subliminal-mnist demo --seeds 25 --out demo.json --figure demo.png "$@"
subliminal-mnist alignment --seeds 5 --project-out --out alignment.json --figure alignment.png "$@"
# The owl experiment (no MNIST needed). Soft mode only for now: hard mode at its scale is issue 9's open part.
subliminal-mnist llm --seeds 5 --mode soft --out llm.json --figure llm.png
subliminal-mnist llm --seeds 5 --mode hard --hard-sequences 20000 --out llm_hard.json --figure llm_hard.png
