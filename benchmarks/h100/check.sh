#!/bin/bash
# Run on one H100 through this project's device tool, 2026-11-27: the working tree with pooch and platformdirs
# wheels in .whl/ and the four MNIST files in .mnist/ (neither committed); the GPU image supplies jax, flax, optax.
# GPU check: the demo's seeds chosen and trained together on one accelerator; a sweep's time.
# (log.txt is that run's: --out then named the results file, gpu_demo.json and gpu_strongest.json.)
set -o pipefail
rm -rf /tmp/site; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/site/subliminal_mnist-0.1.0.dist-info
printf 'Metadata-Version: 2.1\nName: subliminal-mnist\nVersion: 0.1.0\n' > /tmp/site/subliminal_mnist-0.1.0.dist-info/METADATA
export PYTHONPATH=/tmp/site:$PWD SUBLIMINAL_MNIST_DIR=$PWD/.mnist PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=/tmp/xla
python3 -c "import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices(), jax.local_devices()[0].memory_stats().get('bytes_limit'))" 2>&1 | tee $OUT/log
nvidia-smi --query-gpu=name,memory.total --format=csv | tee -a $OUT/log
/usr/bin/time -f "demo wall %e s" python3 -m subliminal_mnist.cli demo --seeds 25 --no-progress --out $OUT 2>&1 | tee -a $OUT/log
/usr/bin/time -f "sweep wall %e s" python3 -m subliminal_mnist.cli sweep init_perturbation --seeds 25 --no-progress --out $OUT 2>&1 | tee -a $OUT/log
/usr/bin/time -f "strongest wall %e s" python3 -m subliminal_mnist.cli demo --preset strongest --seeds 25 --no-progress --out $OUT 2>&1 | tee -a $OUT/log
