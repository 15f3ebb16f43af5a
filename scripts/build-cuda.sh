#!/usr/bin/env bash
# Build `llm-mem` with the `cuda` feature on a machine WITHOUT a GPU (or a CUDA toolkit).
#
#   scripts/build-cuda.sh            # prints the binary's path as its last line
#   scripts/build-cuda.sh --tests    # also compiles the test suite with the feature
#                                    # (`cargo test --release --features cuda --no-run`)
#
# What it puts in the cache folder (outside the repo; idempotent, a re-run with
# everything cached takes seconds):
#   $LLM_MEM_CUDA_CACHE (default ~/.cache/llm-mem-cuda)
#     venv/         pinned CUDA 13.0 PyPI wheels: nvcc, nvvm (cicc), crt, cudart, cccl
#     cuda  ->      the toolkit-like tree inside the venv (bin/ include/ lib/ nvvm/)
#     stubs ->      cuda/lib/stubs: link stubs for libcuda/cublas/cublasLt/curand/nvrtc,
#                   generated from cudarc's own symbol list, each with the real SONAME
#     target/       CARGO_TARGET_DIR of the CUDA build (LLM_MEM_CUDA_TARGET overrides)
#     env.sh        LLM_MEM_CUDA_BIN and LLM_MEM_CUDA_STUB_LD_PATH for scripts
#
# Why everything is pinned to CUDA 13.0: the GPU machine has driver 580 (CUDA 13.0). PTX
# from a newer nvvm does not load there, cudarc's build script panics on nvcc 13.5, and
# the sonames must match (libcublas.so.13, libcurand.so.10). nvidia-nvvm must be pinned
# explicitly, or pip pulls the newest. See shared notes "cuda-build.md".
#
# The binary links libcuda.so.1, libcublas.so.13, libcurand.so.10 and libcudart.so.13.
# Here it runs only with the stubs first on LD_LIBRARY_PATH (it then reports
# CUDA_ERROR_STUB_LIBRARY cleanly):
#   LD_LIBRARY_PATH=$LLM_MEM_CUDA_STUB_LD_PATH "$LLM_MEM_CUDA_BIN" probe devices
# On the GPU machine it finds the real libraries through its RUNPATH (build.rs).
set -euo pipefail

tests=0
for a in "$@"; do
    case $a in
    --tests) tests=1 ;;
    *) echo "build-cuda: unknown argument $a (accepted: --tests)" >&2; exit 2 ;;
    esac
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${LLM_MEM_CUDA_CACHE:-$HOME/.cache/llm-mem-cuda}
target=${LLM_MEM_CUDA_TARGET:-$cache/target}
venv=$cache/venv
python=${PYTHON:-python3}
mkdir -p "$cache"

log() { echo "build-cuda: $*" >&2; }

# 1. nvcc & co. from PyPI wheels, pinned to CUDA 13.0 (nvidia-nvvm included!).
pins="nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85"
if [ "$(cat "$venv/.llm-mem-pins" 2>/dev/null)" != "$pins" ]; then
    log "installing the CUDA 13.0 toolchain wheels into $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    # shellcheck disable=SC2086
    "$venv/bin/pip" install --quiet --disable-pip-version-check $pins >&2
    echo "$pins" >"$venv/.llm-mem-pins"
fi
cu=$("$venv/bin/python" -c "import nvidia,os;print(os.path.join(list(nvidia.__path__)[0],'cu13'))")
[ -x "$cu/bin/nvcc" ] || { log "no nvcc at $cu/bin/nvcc"; exit 1; }
ln -sfn "$cu" "$cache/cuda"
ln -sf libcudart.so.13 "$cu/lib/libcudart.so" # the wheels ship no unversioned links

# 2. Link stubs, from the symbol names of the cudarc that Cargo.lock resolves.
cudarc_dir=$(cd "$repo" && cargo metadata --format-version 1 --features cuda 2>/dev/null |
    "$python" -c 'import json,sys,os
d=json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in d["packages"] if p["name"]=="cudarc"))')
stubs=$cu/lib/stubs
if [ "$(cat "$stubs/.llm-mem-cudarc" 2>/dev/null)" != "$cudarc_dir" ]; then
    log "generating link stubs from $cudarc_dir"
    rm -rf "$stubs"
    mkdir -p "$stubs"
    gen() { # module soname linkname errcode
        local mod=$1 soname=$2 link=$3 err=$4
        local c="$stubs/$link.c"
        {
            grep -ohE 'load::<_F>\("[A-Za-z0-9_]+"\)' "$cudarc_dir/src/$mod/sys/mod.rs" |
                sed -E 's/.*\("([^"]+)"\)/\1/' | sort -u |
                grep -vxE 'cuGetErrorString|cuGetErrorName' | sed -E "s/.*/int &(void){return $err;}/"
            if [ "$mod" = driver ]; then
                echo 'int cuGetErrorString(int e,const char**p){if(p)*p="CUDA driver stub (no NVIDIA driver)";return 0;}'
                echo 'int cuGetErrorName(int e,const char**p){if(p)*p="CUDA_ERROR_STUB_LIBRARY";return 0;}'
            fi
        } >"$c"
        [ "$(wc -l <"$c")" -gt 2 ] || { log "no symbols found for $mod in $cudarc_dir"; exit 1; }
        gcc -shared -fPIC -O1 -Wl,-soname,"$soname" -o "$stubs/$link" "$c"
        rm "$c"
        ln -sf "$link" "$stubs/$soname" # so that the stub-linked binary can start here
    }
    gen driver libcuda.so.1 libcuda.so 34 # CUDA_ERROR_STUB_LIBRARY
    gen cublas libcublas.so.13 libcublas.so 1
    gen cublaslt libcublasLt.so.13 libcublasLt.so 1
    gen curand libcurand.so.10 libcurand.so 1
    gen nvrtc libnvrtc.so.13 libnvrtc.so 1
    echo "$cudarc_dir" >"$stubs/.llm-mem-cudarc"
fi
ln -sfn "$stubs" "$cache/stubs"

# 3. The build. CUDA_COMPUTE_CAP=90 (H100/H200, sm_90a) is required without a GPU, or
# candle-kernels calls nvidia-smi; CUDARC_CUDA_VERSION pins cudarc's bindings to 13.0.
export PATH="$cu/bin:$PATH"
export CUDA_ROOT="$cu"
export CUDA_PATH="$cu"
export CUDA_COMPUTE_CAP=90
export CUDARC_CUDA_VERSION=13000
export CARGO_TARGET_DIR="$target"
export CARGO_PROFILE_RELEASE_STRIP=true # 40-50 MB instead of ~100: fits a 64 MiB transfer
start=$(date +%s)
log "cargo build --release --features cuda --bin llm-mem (CARGO_TARGET_DIR=$target; cold: ~15 min on 2 cores)"
(cd "$repo" && cargo build --release --features cuda --bin llm-mem)
log "built in $(($(date +%s) - start)) s"
if [ "$tests" = 1 ]; then
    # the same profile and target folder as the binary: only the test crates compile
    log "cargo test --release --features cuda --no-run"
    (cd "$repo" && cargo test --release --features cuda --all-targets --no-run)
fi
bin=$target/release/llm-mem
[ -x "$bin" ] || { log "no binary at $bin"; exit 1; }
cat >"$cache/env.sh" <<EOF
export LLM_MEM_CUDA_BIN='$bin'
export LLM_MEM_CUDA_STUB_LD_PATH='$stubs:$cu/lib'
EOF
echo "$bin"
