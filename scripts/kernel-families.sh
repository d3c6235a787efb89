#!/usr/bin/env bash
# The numerically sensitive tests (pytest marker `numerics`) under every CPU kernel family this machine can
# emulate. PyTorch picks its kernels at run time from the CPU (ATen's vectorisation level, oneDNN's ISA), and each
# family sums in its own order: a tolerance that holds on one CPU and not another is a property of the CPU, not of
# the code (tests/numerics.py says how the tests compare instead). The README test command calls this after pytest.
#   native                         whatever this CPU offers (AVX-512, AMX, ...)
#   ONEDNN_MAX_CPU_ISA=AVX2        oneDNN's matmuls and convolutions as on an AVX2-only CPU
#   ATEN_CPU_CAPABILITY=avx2       ATen's vectorised kernels (reductions, softmax, elementwise) at AVX2
#   ATEN_CPU_CAPABILITY=default    ATen's scalar fallback (no vector ISA)
# Usage: bash scripts/kernel-families.sh [pytest args]   (e.g. -x, or a test file to narrow it)
#   FAMILIES="ATEN_CPU_CAPABILITY=default" bash scripts/kernel-families.sh   # some of them (scripts/test.sh skips
#   native, which its own pytest run just covered)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
failed=()
for family in ${FAMILIES:-native ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 ATEN_CPU_CAPABILITY=default}; do
  if [ "$family" = native ]; then env_args=(); else env_args=("$family"); fi
  echo "== kernel family: $family"
  t0=$SECONDS
  if env "${env_args[@]}" "$PY" -m pytest -q -m numerics -p no:cacheprovider -o addopts="--strict-markers" "$@"; then
    echo "== $family: passed in $((SECONDS - t0)) s"
  else
    echo "== $family: FAILED"
    failed+=("$family")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "numerics tests failed under: ${failed[*]}" >&2
  exit 1
fi
echo "numerics tests passed under: ${FAMILIES:-all four kernel families}"
