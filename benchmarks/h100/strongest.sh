#!/bin/bash
# Run on one H100 through the device tool after check.sh (same set-up), once the preset had 80 epochs.
# The preset as it now stands (80 distillation epochs), 25 seeds, on one GPU.
set -o pipefail
rm -rf /tmp/site; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/site/subliminal_mnist-0.1.0.dist-info
printf 'Metadata-Version: 2.1\nName: subliminal-mnist\nVersion: 0.1.0\n' > /tmp/site/subliminal_mnist-0.1.0.dist-info/METADATA
export PYTHONPATH=/tmp/site:$PWD SUBLIMINAL_MNIST_DIR=$PWD/.mnist PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=/tmp/xla
/usr/bin/time -f "strongest wall %e s" python3 -m subliminal_mnist.cli demo --preset strongest --seeds 25 --no-progress --out $OUT 2>&1 | tee $OUT/log80
