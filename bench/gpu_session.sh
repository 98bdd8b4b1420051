#!/usr/bin/env bash
# The checks that need a GPU, as one run on a lent machine (the device tool): the GPU-marked tests,
# bench_kernels.py --gpu-only, the kernels' launch-configuration sweeps, bench_rerank.py on the GPU, a
# torch.profiler run of the rerankers (profile_rerank.py), then the whole kernel test file on the GPU (it
# compiles many kernel variants). The least-needed step comes last, so a run that reaches its limit loses it
# first. The default steps (below) took 338 s on an H100 at df050f3, with the build (install 44, tests 90 at
# their limit, kernels 65, probe 33, sweep-one-loop 25, kernel tests 81). There the kernel test file ran on 8
# processes with pytest-xdist, which the GPU image holds: 379 tests in 74 s (serially, 339 tests took 179 s at
# ea1b624, bound by the host's Triton compiles). The GPU-marked tests ran serially there and reached their limit
# of 90 s after 11 tests; on 8 processes they took 41 s at 06aa860 (16 tests). On an H200 at d786c64 the default
# steps took 277 s (install 34, tests 47, kernels 61, probe 30, sweep-one-loop 22, kernel tests 82; 384 kernel
# tests). Earlier step times: on an H200,
# all but the profile took 280 s with the build (build 30, tests 25, kernels 30, sweep 30 with 9 configurations,
# rerank 100, kernel tests 65); on an H100 (8265aa6, 158d652) rerank 118 and profile 38. Each step has its own
# time limit (a step that runs out is reported and the next one starts); a second call on the still-warm machine
# can run steps again without the build:
# `IRFORGE_SKIP_INSTALL=1 bash bench/gpu_session.sh sweep`.
# Results land in $OUT: RESULTS.md (the tree's bench/RESULTS.md with the GPU sections written in, copied
# after every step) and one log per step (install.log also names the card and versions): 8 files, the most
# a device run brings back. Copy the GPU sections back into bench/RESULTS.md.
#
# Here first:  python bench/gpu_prepare.py      (.gpu/: SciFact and SmolLM2's tokenizer)
# There:       bash bench/gpu_session.sh [STEP ...]   (device run with carry [".gpu"], timeout_s 600)
#              STEP: tests, kernels, sweep-one-loop, sweep, probe, rerank, profile, kernel-tests (default: tests,
#              kernels, probe, sweep-one-loop, kernel-tests: what issue #4 still needs, 338 s on an H100 at
#              df050f3; the rerankers' steps ran on an H100 at 8265aa6 and are asked for by name)
#
# The machine reaches no network: irforge is built from the tree with the image's own torch, triton,
# transformers, pybind11, scikit-build-core, cmake and ninja (pip --no-index --no-build-isolation).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
cp bench/RESULTS.md "$OUT/RESULTS.md"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(tests kernels probe sweep-one-loop kernel-tests)
say() { echo "== $1 ($(date -u +%T))"; }
limited() {  # seconds, log name, command...
  local secs=$1 log=$2
  shift 2
  timeout "$secs" "$@" >"$OUT/$log" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && echo "(stopped after $secs s)" | tee -a "$OUT/$log"
  tail -25 "$OUT/$log"
}

[ -f .gpu/commit ] && export IRFORGE_GIT=$(cat .gpu/commit)
gpu_tests=(tests/test_kernels.py tests/test_rerank.py)
parallel=()  # the kernel test file on 8 processes (one GPU, 16 host cores) where pytest-xdist is installed
python3 -c "import xdist" 2>/dev/null && parallel=(-n 8 --dist worksteal)
say install
if [ -n "${IRFORGE_SKIP_INSTALL:-}" ]; then  # a second call on the still-warm machine: irforge is installed
  echo "install skipped (IRFORGE_SKIP_INSTALL)" | tee "$OUT/install.log"
elif ! python3 -m pip install -q --no-index --no-build-isolation --no-deps . >"$OUT/install.log" 2>&1; then
  tail -30 "$OUT/install.log"
  # The kernels need no C++: a package holding only them still runs the kernel tests and benchmark.
  echo "C++ build failed: kernel steps only"
  mkdir -p /tmp/irforge_kernels_only/irforge
  : >/tmp/irforge_kernels_only/irforge/__init__.py
  ln -sfn "$PWD/kernels" /tmp/irforge_kernels_only/irforge/kernels
  export PYTHONPATH=/tmp/irforge_kernels_only
  steps=($(printf '%s\n' "${steps[@]}" | grep -v -e '^rerank$' -e '^profile$'))
  gpu_tests=(tests/test_kernels.py)
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
} | tee -a "$OUT/install.log"

# the kernel test file leaves out its GPU-marked tests where the tests step runs them (they ran in both steps)
not_gpu=()
printf '%s\n' "${steps[@]}" | grep -qx tests && not_gpu=(-m "not gpu")
for step in "${steps[@]}"; do
  say "$step"
  case $step in
    tests) limited 150 tests.log python3 -m pytest -q -p no:cacheprovider "${parallel[@]}" -m gpu "${gpu_tests[@]}" ;;
    kernels) limited 200 kernels.log python3 bench/bench_kernels.py --gpu-only --write bench/RESULTS.md ;;
    rerank) IRFORGE_DATA=.gpu/data limited 180 rerank.log python3 bench/bench_rerank.py --device cuda --dtype bfloat16 \
              --model random:mistral-7b --tokenizer .gpu/tokenizer --queries 5 --max-doc-tokens 100 --write bench/RESULTS.md ;;
    profile) IRFORGE_DATA=.gpu/data limited 150 profile.log python3 bench/profile_rerank.py --device cuda \
               --dtype bfloat16 --model random:mistral-7b --tokenizer .gpu/tokenizer --queries 3 ;;
    kernel-tests) limited 240 kernel_tests.log python3 -m pytest -q -p no:cacheprovider "${parallel[@]}" \
                    "${not_gpu[@]}" tests/test_kernels.py ;;
    sweep) limited 120 sweep.log python3 bench/bench_kernels.py --sweep --write bench/RESULTS.md ;;
    probe) limited 150 probe.log python3 bench/probe_kernels.py --write bench/RESULTS.md ;;
    sweep-one-loop) limited 90 sweep_one_loop.log python3 bench/bench_kernels.py --sweep-one-loop --write bench/RESULTS.md ;;
    *) echo "unknown step $step" ;;
  esac
  cp bench/RESULTS.md "$OUT/RESULTS.md"
done
say done
