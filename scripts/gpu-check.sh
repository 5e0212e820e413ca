#!/usr/bin/env bash
# The first check on a GPU machine that has PyTorch (CUDA), cuda-python, nvcc and NVRTC but no
# TensorRT and no package index. Run from a copy of the working tree; nothing is installed.
#
#   bash scripts/gpu-check.sh [OUT_DIR]     # results: OUT_DIR/gpu-<device>.json and .md (default bench/results)
#
# 1. the device, driver and library versions (no GPU: stops here, exit 2);
# 2. the gpu-marked tests, judged from their junit report: any failure, a skipped kernel or CUDA
#    memory test, or no test passed at all fails the step;
# 3. python -m pdsn gpu-check: PyTorch eager FP32/FP16, torch.compile and the fused FDM
#    kernel against the inlined body, side by side.
# Steps 2 and 3 both run even if one fails, so one run reports all it can; each has its own
# timeout, under 8 minutes in all. The exit status is non-zero, naming the failed steps, if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT_DIR=${1:-bench/results}
PYTHON=${PYTHON:-$(command -v python || command -v python3 || true)}
if [[ -z "$PYTHON" ]]; then
    echo "gpu-check: FAILED: no python on PATH (set PYTHON=...)" >&2
    exit 2
fi

# `pdsn` importable without installing it: the repository root is the package. `pdsn gpu-check` imports
# only what it needs (torch, numpy, cuda-python), not the runtime's libraries.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ln -s "$REPO" "$WORK/pdsn"
export PYTHONPATH="$WORK:$REPO/tests${PYTHONPATH:+:$PYTHONPATH}"
# cuda-python finds NVRTC through CUDA_HOME when it is not installed as a wheel.
if [[ -z "${CUDA_HOME:-}" ]] && command -v nvcc >/dev/null; then
    CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
    export CUDA_HOME
fi

FAILED=()
section() { echo; echo "=== gpu-check: $1 ==="; }
# step NAME SECONDS COMMAND...: run COMMAND under a timeout and record NAME if it fails.
step() {
    local name=$1 seconds=$2 rc=0
    shift 2
    timeout --kill-after=5 "$seconds" "$@" || rc=$?
    if ((rc == 124 || rc == 137)); then
        echo "gpu-check: FAILED: step '$name' timed out after $seconds s" >&2
        FAILED+=("$name (timed out after $seconds s)")
    elif ((rc != 0)); then
        echo "gpu-check: FAILED: step '$name' (exit status $rc)" >&2
        FAILED+=("$name (exit status $rc)")
    fi
}

section "1. device"
if command -v nvidia-smi >/dev/null; then
    timeout 10 nvidia-smi -L || true
    timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
else
    echo "nvidia-smi: not on PATH"
fi
echo "nvcc: $(nvcc --version 2>/dev/null | tail -n 1 || echo 'not on PATH')"
rc=0
timeout --kill-after=5 30 "$PYTHON" - <<'PY' || rc=$?
import importlib
import sys

def version(name):
    try:
        return getattr(importlib.import_module(name), "__version__", "unknown")
    except Exception as error:
        return f"not importable ({type(error).__name__}: {error})"

print(f"python {sys.version.split()[0]}; pytest {version('pytest')}; cupy {version('cupy')}; "
      f"cuda-python {version('cuda.bindings')}")
seen = []
try:
    import torch

    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); torch.cuda.is_available() = {torch.cuda.is_available()}")
    if torch.cuda.is_available():
        seen += [f"torch: {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
except Exception as error:
    print(f"torch: not importable ({type(error).__name__}: {error})")
try:
    from cuda.bindings import nvrtc, runtime

    status, count = runtime.cudaGetDeviceCount()
    print(f"cuda-python: cudaGetDeviceCount -> {status!r}, {count}")
    if int(status) == 0 and count > 0:
        seen.append(f"cuda-python: {count} device(s)")
        print("NVRTC version: {}.{}".format(*nvrtc.nvrtcVersion()[1:]))
except Exception as error:
    print(f"cuda-python: no device ({type(error).__name__}: {error})")
if not seen:
    sys.exit("gpu-check: no NVIDIA GPU found: neither torch nor cuda-python sees a CUDA device")
print("GPU found by " + "; ".join(seen))
PY
if ((rc != 0)); then
    echo "gpu-check: FAILED at step 1 (device): no usable NVIDIA GPU found (exit status $rc); nothing else was run" >&2
    exit 2
fi

section "2. gpu-marked tests"
REPORT="$WORK/gpu-tests.xml"
PYTEST=(-m pytest -m gpu -q -rs -p no:cacheprovider --continue-on-collection-errors --junitxml="$REPORT")
if timeout --kill-after=5 25 "$PYTHON" -c "import conftest" 2>"$WORK/conftest.err"; then
    TARGETS=(tests/)
else
    # The shared fixtures need the export extra (onnx); the kernel and CUDA memory tests do not.
    echo "gpu-check: WARNING: tests/conftest.py cannot be imported here ($(tail -n 1 "$WORK/conftest.err")):" \
        "running tests/test_fdm_kernel.py and tests/test_cuda_memory.py without it" >&2
    PYTEST+=(--noconftest)
    TARGETS=(tests/test_fdm_kernel.py tests/test_cuda_memory.py)
fi
rc=0
timeout --kill-after=5 140 "$PYTHON" "${PYTEST[@]}" "${TARGETS[@]}" || rc=$?
if ((rc == 124 || rc == 137)); then
    echo "gpu-check: pytest timed out after 140 s" >&2
fi
echo "pytest exit status $rc; the verdict on its report follows"
step "2. gpu-marked tests" 25 "$PYTHON" -m pdsn gpu-check --check-test-report "$REPORT"

section "3. measurements (pdsn gpu-check)"
step "3. measurements" 210 "$PYTHON" -m pdsn gpu-check --out "$OUT_DIR" --compile-budget-s 70

echo
if ((${#FAILED[@]})); then
    echo "gpu-check: FAILED steps:" >&2
    printf '  %s\n' "${FAILED[@]}" >&2
    exit 1
fi
echo "gpu-check: every step passed; results in $OUT_DIR"
