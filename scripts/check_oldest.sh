#!/usr/bin/env bash
# The oldest supported versions, checked without a GPU (issue: "a supported range"):
#   a. every Triton kernel compiles for sm_90 with triton 3.0.0 (the triton of torch 2.4), installed alone into a
#      side folder and put first on the path of the project's venv (no second torch);
#   b. in a side venv with torch 2.4.1 / torchvision 0.19.1 the package imports and the CPU tests pass, run against
#      this checkout (PYTHONPATH); its tdann_fast._C, built for the project's torch, must fail to import there with
#      ImportError, and the package falls back to the Python swap backend;
#   c. the C++ extension builds against torch 2.4.1 (in a temporary copy) and its tests pass with it.
# Idempotent: downloads are kept under .cache/oldest/ (delete that folder for a cold run).
# Usage: bash scripts/check_oldest.sh [compile] [torch] [extension]   (no argument: all three)
# Environment: VENV (the project's venv, default .venv), PYTHON (base interpreter of the side venv, default
# python3; torch 2.4.1 has wheels for Python 3.8-3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=$ROOT/.cache/oldest
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

TRITON_OLD=3.0.0
# numpy<2: the triton 3.0 interpreter (the Triton tests on CPU) silently computes nothing with numpy 2 (its compiled
# part predates numpy 2), and raises on numpy >= 2.4. The GPU path of triton 3.0 is not affected.
SIDE_REQS=(torch==2.4.1 torchvision==0.19.1 "numpy<2" scipy pyyaml tqdm scikit-image matplotlib
           av scikit-video tensorboard pytest ninja)
# Part b: the CPU loss tests first, then the other CPU tests that read no video file and build no wheel. Left out:
# test_triton_compile (part a), test_install (builds and installs wheels), test_check_gpu (the GPU acceptance
# script), test_optional_deps and test_swap_cpp (they import the checkout's _C, built for the other torch; part c),
# and the tests that decode videos or train on them (data, CLI, DDP, pipeline), to keep CI short; OLDEST_ALL_TESTS=1
# adds them. (Importing torchvision 0.19 sets av.logging to ERROR, and PyAV's log callback then deadlocked a threaded
# decode when the decoder was freed, PyAV-Org/PyAV#751, #909: test_data_video.py hung in 2 of 4 runs until
# tdann_fast/data/decode.py turned that logging off again.)
TORCH_TESTS=(
    tests/test_loss_reference.py tests/test_loss_cpu_paths.py tests/test_loss_injection.py tests/test_layouts.py
    tests/test_spatial_loss_module.py tests/test_dropin.py
    tests/test_sheet.py tests/test_numerics_edges.py tests/test_triton_loss.py
    tests/test_swap_reference.py tests/test_swap_cuda.py tests/test_taps.py tests/test_presets.py tests/test_moco.py
    tests/test_train_config.py tests/test_analysis_tuning.py tests/test_analysis_pinwheels.py
    tests/test_simclr.py tests/test_image_augment.py tests/test_analysis_v1.py
)
if [ "${OLDEST_ALL_TESTS:-0}" = 1 ]; then
    TORCH_TESTS+=(tests/test_readme_examples.py tests/test_analysis_report.py tests/test_cli_errors.py
                  tests/test_data_faults.py tests/test_data_video.py tests/test_train_ddp.py
                  tests/test_run_reliability.py tests/test_train_pipeline.py)
fi
# the interpreter of triton 3.0 converts 1-element arrays to scalars, deprecated since numpy 1.25: thousands of lines.
# A test that hangs (a deadlock in C can hold the GIL, so no Python-level timeout fires) ends pytest after
# TEST_HANG_S (tests/conftest.py, TDANN_TEST_HANG_S) and the script then prints where each thread stood and, last,
# the test's name (scripts/hang_report.sh); `timeout` (TEST_LIMIT) is the backstop for the whole run.
PYTEST_OPTS=(-q -p no:cacheprovider -W "ignore::DeprecationWarning:triton.runtime.interpreter")
TEST_HANG_S=300
TEST_LIMIT=1200

PARTS=("$@")
[ ${#PARTS[@]} -gt 0 ] || PARTS=(compile torch extension)
for part in "${PARTS[@]}"; do
    case $part in compile | torch | extension) ;; *) echo "unknown part '$part' (compile, torch, extension)" >&2; exit 2 ;; esac
done
wants() { [[ " ${PARTS[*]} " == *" $1 "* ]]; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$CACHE"
START=$SECONDS
step() { echo; echo "== $*"; T0=$SECONDS; }
took() { echo "-- $1: $((SECONDS - T0)) s"; }

# installs into $1 (a folder made by the command "$2 ..."), unless $1/.installed already lists the same requirements
cached() {
    local dir=$1 spec=$2; shift 2
    if [ -f "$dir/.installed" ] && [ "$(cat "$dir/.installed")" = "$spec" ]; then
        echo "cached: $dir"
        return
    fi
    rm -rf "$dir"
    "$@"
    echo "$spec" > "$dir/.installed"
}

# pytest in the side venv for part $1, with the per-test hang limit; a hang's report is summarised last
side_pytest() {
    local report=$TMP/hang-$1.txt
    shift
    TDANN_TEST_HANG_S=$TEST_HANG_S TDANN_TEST_HANG_FILE=$report timeout "$TEST_LIMIT" \
        "$SIDE/bin/python" -m pytest "${PYTEST_OPTS[@]}" "$@" ||
        { local rc=$?; bash "$ROOT/scripts/hang_report.sh" "$report"; exit $rc; }
}

side_venv() {
    "$PYTHON" -m venv "$SIDE"
    "$SIDE/bin/python" -m pip install -q --no-cache-dir "${SIDE_REQS[@]}"
}

if wants compile; then
    step "a. Triton kernels for sm_90 with triton $TRITON_OLD (side folder, the project's torch)"
    [ -x "$VENV/bin/python" ] || { echo "no $VENV/bin/python: run 'make setup' first" >&2; exit 1; }
    TDIR=$CACHE/triton-$TRITON_OLD
    cached "$TDIR" "triton==$TRITON_OLD" \
        "$VENV/bin/python" -m pip install -q --no-cache-dir --no-deps --target "$TDIR" "triton==$TRITON_OLD"
    env -u TRITON_INTERPRET TRITON_CACHE_DIR="$TMP/triton-cache" PYTHONPATH="$TDIR:$ROOT" \
        TRITON_OLD="$TRITON_OLD" "$VENV/bin/python" - <<'EOF'
import os, sys

import triton

assert triton.__version__ == os.environ["TRITON_OLD"], f"triton {triton.__version__} from {triton.__file__}"
sys.path.insert(0, "tests")
from test_triton_compile import _jobs, compile_all  # noqa: E402

n = compile_all(arch=90)
assert n == len(_jobs()), (n, len(_jobs()))
print(f"compiled {n} kernels for sm_90 with triton {triton.__version__} ({triton.__file__})")
EOF
    echo "(triton 3.0 prints 'error: operation scheduled before its operands' for the row loop of _r_tile: its" \
         "software pipeliner leaves that loop as it is; the kernel compiles and is correct, triton-lang/triton#5368)"
    took "a"
fi

SIDE=$CACHE/venv-torch2.4
if wants torch || wants extension; then
    step "side venv $SIDE: ${SIDE_REQS[*]}"
    cached "$SIDE" "${SIDE_REQS[*]}" side_venv
    "$SIDE/bin/python" -c "import sys, numpy, torch, torchvision, triton
print('python', sys.version.split()[0], '| torch', torch.__version__, '| torchvision', torchvision.__version__,
      '| triton', triton.__version__, '| numpy', numpy.__version__)
assert torch.__version__.split('+')[0] == '2.4.1' and triton.__version__ == '$TRITON_OLD', 'not the oldest versions'"
    took "side venv"
fi

if wants torch; then
    step "b. torch 2.4.1: imports and CPU tests, against this checkout"
    PYTHONPATH=$ROOT "$SIDE/bin/python" - <<'EOF'
import torch  # noqa: F401  (loads the libraries an extension links to, as the package does before importing _C)

import tdann_fast, tdann_fast.train, tdann_fast.analysis  # noqa: E401,F401

try:
    from tdann_fast import _C  # noqa: F401
    print("tdann_fast._C imported (it was built for this torch)")
except ImportError as exc:
    print(f"tdann_fast._C not imported, the package falls back (ImportError: {str(exc)[:120]})")
print("import tdann_fast, tdann_fast.train, tdann_fast.analysis: ok")
EOF
    PYTHONPATH=$ROOT side_pytest b "${TORCH_TESTS[@]}"
    took "b"
fi

if wants extension; then
    step "c. tdann_fast._C built against torch 2.4.1 (temporary copy) and its tests"
    COPY=$TMP/src
    mkdir -p "$COPY"
    cp -r setup.py pyproject.toml csrc tdann_fast "$COPY"/
    rm -f "$COPY"/tdann_fast/_C*.so
    (cd "$COPY" && PATH="$SIDE/bin:$PATH" TDANN_FAST_REQUIRE_EXT=1 "$SIDE/bin/python" setup.py -q build_ext --inplace > "$TMP/build.log" 2>&1) \
        || { tail -50 "$TMP/build.log"; exit 1; }
    # cwd = the copy: python -m puts it first on sys.path, so its tdann_fast (with the new _C) is the one imported
    (cd "$COPY" && "$SIDE/bin/python" -c "import torch; from tdann_fast import _C; print('built', _C.__file__)" &&
        side_pytest c --rootdir "$ROOT" "$ROOT/tests/test_swap_cpp.py")
    took "c"
fi

echo
du -sh "$CACHE"/* 2>/dev/null || true
echo "== check_oldest: all passed in $((SECONDS - START)) s"
