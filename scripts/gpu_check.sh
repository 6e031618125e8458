#!/usr/bin/env bash
# One short check of what the product does on a lent GPU (about 7 minutes, each part with its own
# timeout): the gpu-marked tests; the default model (model=xd, EM in the Lightning loop) trained on a
# simulated cone of 10^6 stars on the GPU and on the CPU; the deep path's paired speed
# (scripts/benchmark_speed.py) at batch 256 and 4096 in 32-true and bf16-mixed. Run from anywhere;
# the logs go to $OUT (or /tmp/gpu_check). The numbers go to docs/src/speed.md with this command.
#
# The GPU image has torch, lightning, pandas, pyarrow, scikit-learn, matplotlib, tensorboard and
# torchmetrics, but not hydra-core, omegaconf, antlr4-python3-runtime (4.9.3) or astropy (with pyerfa
# and astropy-iers-data). Carry them as wheels in .whl/ (the device tool's README says how); they are
# installed here with --target, never into the image.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
$PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())" \
    | tee "$OUT/versions.txt" || exit 1
status=0
timeout 120 $PY -m pytest tests -m gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" || status=1
# model=xd on 10^6 stars: the whole train command's wall time, GPU against CPU
for trainer in gpu cpu; do
    /usr/bin/env time -f "xd 1e6 trainer=$trainer: %e s wall, %M KiB peak RSS" timeout 240 $PY -m grasp_dl.cli train \
        data=m4 data.simulate.n_stars=1000000 model=xd trainer=$trainer callbacks=none logger=csv \
        hydra.run.dir="$OUT/xd_$trainer" 2>&1 | tail -n 5 | tee -a "$OUT/xd_1e6.log" || status=1
done
for precision in 32-true bf16-mixed; do
    timeout 150 $PY scripts/benchmark_speed.py --sizes 100000 --batch-sizes 256 4096 --epochs 3 \
        --repeats 1 --no-rss --precision "$precision" 2>&1 | tee "$OUT/benchmark_speed_$precision.md" || status=1
done
exit $status
