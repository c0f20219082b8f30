#!/usr/bin/env bash
# Install poisonbench on a GPU machine that has its own Python and torch but no package index (issue 65): the wheels
# of benchmarks/gpu_wheels.txt from $WHEELS (default .whl) without their dependencies (the machine's own torch,
# numpy, ... stay as they are), then the project itself, editable, without build isolation (that would ask an index
# for setuptools; setuptools >= 70.1 builds it, the carried one where the machine's is older).
#
#   PYTHON=python3 WHEELS=.whl benchmarks/gpu_install.sh
#
# Used by benchmarks/gpu_run.sh and experiments/rem_official_gpu.sh. Exit status: pip's.
set -u
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
wanted=$(grep -v '^#' benchmarks/gpu_wheels.txt | cut -d'#' -f1 | xargs)
if $PY -c 'import setuptools, sys; sys.exit(tuple(map(int, setuptools.__version__.split(".")[:2])) < (70, 1))' \
    2>/dev/null; then
    wanted=$(echo "$wanted" | tr ' ' '\n' | grep -v '^setuptools==' | xargs)  # a new enough one is there
fi
echo "+ pip install --no-index --no-deps --find-links $WHEELS $wanted"
$PY -m pip install -q --no-index --no-deps --find-links "$WHEELS" $wanted || exit $?
echo "+ pip install --no-index --no-build-isolation --no-deps -e ."
$PY -m pip install -q --no-index --no-build-isolation --no-deps -e . || exit $?
$PY -m pip list 2>/dev/null | grep -iE '^(torch|torchvision|kornia|kornia.rs|mlxtend|submitit|dp.accounting|setuptools|numpy) '
