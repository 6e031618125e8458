#!/usr/bin/env bash
# One short check of the CUDA-graph training steps (issue #17, item 1) on a lent GPU (an H200):
# the gpu tests, then scripts/benchmark_speed.py --graphs at batch 256 and 4096 in 32-true and
# bf16-mixed. About 6-8 minutes, at most 9 (each part has its own timeout). Run from anywhere;
# the logs go to $OUT (or /tmp/gpu_check).
#
# The GPU image has torch, lightning, pandas, pyarrow, scikit-learn, matplotlib, tensorboard and
# torchmetrics, but not hydra-core, omegaconf, antlr4-python3-runtime (4.9.3) or astropy (with pyerfa
# and astropy-iers-data). Carry them as wheels in .whl/ (see /work/.library/device/README.md: put
# `/.whl/` in .git/info/exclude, `pip download --no-deps --only-binary=:all: --python-version 3.12
# --platform manylinux2014_x86_64 -d .whl NAME==VERSION`, name `.whl` in the run's carry); they are
# installed here with --target, never into the image.
#
# Afterwards: when (a) with graphs beats the eager bare loop (b) clearly at both batch sizes and
# precisions and the agreement table shows the losses agree, set GRAPHS_PAY_ON_CUDA = True in
# grasp_dl/engine/graph_step.py (graphs=auto then captures on CUDA) and put the tables in the README.
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
timeout 120 $PY -m pytest tests/test_graph_step.py -m gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" || status=1
for precision in 32-true bf16-mixed; do
    timeout 200 $PY scripts/benchmark_speed.py --graphs --sizes 100000 --batch-sizes 256 4096 --epochs 3 \
        --repeats 1 --no-rss --precision "$precision" 2>&1 | tee "$OUT/benchmark_graphs_$precision.md" || status=1
done
exit $status
