#!/usr/bin/env bash
# The prepared GPU check: list the device, calibrate the candle probe on it, run the
# PyTorch probe on the same plan, fit both, write the reports, print a summary table.
#
#   scripts/gpu-check.sh [--device cuda:0|cpu] [--binary PATH] [--out DIR] [--plan FILE]
#
# Defaults: --device cuda:0, --binary .cuda-bin/llm-mem (else llm-mem on PATH),
# --out gpu-check-out, --plan probes/gpu-default.toml (probes/cpu-smoke.toml on cpu).
#
# On the GPU machine (driver 580, CUDA 13.0, no cargo, no network) the binary comes from
# scripts/build-cuda.sh, copied to .cuda-bin/llm-mem. It links libcuda.so.1,
# libcublas.so.13, libcurand.so.10 and libcudart.so.13; its RUNPATH already names
# /usr/local/cuda/lib64, /usr/local/nvidia/lib64 and torch's CUDA 13 wheels, and this
# script also puts every such folder that exists on LD_LIBRARY_PATH.
#
# Writes under OUT:
#   results/<plan>-<device>-<date>.csv        candle measurements (+ ...-torch-<date>.csv)
#   calibration/<gpu>-candle.json             (+ <gpu>-torch.json)
#   results/report-<stem>.{md,csv,svg}        per runtime
#   summary.txt                               the table printed last
# With --device cpu (CI) the candle part runs on the CPU and the torch probe runs as a
# dry run (no torch needed; its rows are `skipped`, so there is no torch calibration).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

device=cuda:0 bin= out=gpu-check-out plan=
while [ $# -gt 0 ]; do
    case $1 in
    --device) device=$2; shift 2 ;;
    --binary) bin=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --plan) plan=$2; shift 2 ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $device in
cpu) plan=${plan:-probes/cpu-smoke.toml} ;;
cuda | cuda:[0-9]*) plan=${plan:-probes/gpu-default.toml} ;;
*) echo "gpu-check: --device $device: accepted: cpu, cuda or cuda:N" >&2; exit 2 ;;
esac
if [ -z "$bin" ]; then
    if [ -x .cuda-bin/llm-mem ]; then bin=.cuda-bin/llm-mem; else bin=$(command -v llm-mem || true); fi
fi
[ -n "$bin" ] && [ -x "$bin" ] || { echo "gpu-check: no llm-mem binary (give --binary PATH)" >&2; exit 2; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
mkdir -p "$out"
out=$(cd "$out" && pwd)
step() { echo; echo "== $*"; }
t_start=$(date +%s)

# Python with torch + transformers (the GPU image keeps them in /opt/torch/.venv).
py=${PYTHON:-python3}
has_torch=no
if [ "$device" != cpu ]; then
    for p in "$py" /opt/torch/.venv/bin/python python3; do
        if command -v "$p" >/dev/null 2>&1 && "$p" -c "import torch, transformers" 2>/dev/null; then
            py=$p has_torch=yes
            break
        fi
    done
fi

if [ "$device" != cpu ]; then
    # The CUDA libraries: driver (libcuda, libnvidia-ml), toolkit, torch's wheels.
    libs=
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu \
        /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
        [ -d "$d" ] && libs=$libs:$d
    done
    if [ $has_torch = yes ]; then
        nv=$("$py" -c "import nvidia,os;print(os.path.join(list(nvidia.__path__)[0],'cu13','lib'))" 2>/dev/null || true)
        [ -n "$nv" ] && [ -d "$nv" ] && libs=$libs:$nv
        for d in "$("$py" -c 'import torch,os;print(os.path.dirname(torch.__file__))' 2>/dev/null)"/lib; do
            [ -d "$d" ] && libs=$libs:$d
        done
    fi
    export LD_LIBRARY_PATH=${libs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    step "GPU"
    nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,memory.used --format=csv || true
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    ldd "$bin" | grep -E 'not found|libcuda|libcublas|libcurand|libcudart' || true
fi

step "binary"
"$bin" --version
step "probe devices"
"$bin" probe devices

step "candle: probe calibrate --plan $plan --device $device"
t0=$(date +%s)
"$bin" probe calibrate --plan "$plan" --device "$device" --out "$out" --quiet | tee "$out/calibrate-candle.txt"
echo "candle calibration: $(($(date +%s) - t0)) s"
cal_candle=$(head -1 "$out/calibrate-candle.txt" | sed 's/: .*//')
plan_name=$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$plan" | head -1)
dev_slug=${device//:/}
[ "$device" = cuda ] && dev_slug=cuda0
csv_candle=$(ls -t "$out"/results/"$plan_name"-"$dev_slug"-[0-9]*.csv | head -1)

step "candle: probe report"
"$bin" probe report --from "$csv_candle" --calibration "$cal_candle" --out "$out"

torch_status=skipped cal_torch= csv_torch=
if [ "$device" = cpu ]; then
    step "torch probe (dry run: the CPU has no CUDA allocator to measure)"
    "${PYTHON:-python3}" probes/torch_probe.py --plan "$plan" --binary "$bin" --out "$out" --dry-run
    csv_torch=$(ls -t "$out"/results/"$plan_name"-"$dev_slug"-torch-*.csv | head -1)
    torch_status="dry run ($(($(wc -l <"$csv_torch") - 1)) rows)"
elif [ $has_torch = yes ]; then
    step "torch probe: $py probes/torch_probe.py --plan $plan --device $device"
    t0=$(date +%s)
    if "$py" probes/torch_probe.py --plan "$plan" --binary "$bin" --out "$out" --device "$device"; then
        csv_torch=$(ls -t "$out"/results/"$plan_name"-"$dev_slug"-torch-*.csv | head -1)
        echo "torch probe: $(($(date +%s) - t0)) s"
        step "torch: probe calibrate --from $csv_torch"
        if "$bin" probe calibrate --from "$csv_torch" --out "$out" --quiet | tee "$out/calibrate-torch.txt"; then
            cal_torch=$(head -1 "$out/calibrate-torch.txt" | sed 's/: .*//')
            "$bin" probe report --from "$csv_torch" --calibration "$cal_torch" --out "$out"
            torch_status=ok
        else
            torch_status="calibration failed"
        fi
    else
        torch_status="torch probe failed"
    fi
else
    torch_status="skipped (python3 cannot import torch, transformers)"
fi

# The summary table, last.
"${PYTHON:-python3}" - "$out" "$cal_candle" "$csv_candle" "${cal_torch:-}" "${csv_torch:-}" "$torch_status" \
    "$(($(date +%s) - t_start))" >"$out/summary.txt" <<'PY'
import csv, json, os, sys
out, cal_c, csv_c, cal_t, csv_t, torch_status, secs = sys.argv[1:8]
def rows(report):
    with open(report, newline="") as f:
        return list(csv.DictReader(f))
def report_of(m):
    return os.path.join(out, "results", "report-" + os.path.splitext(os.path.basename(m))[0] + ".csv")
print(f"gpu-check summary ({secs} s); outputs under {out}")
print(f"{'runtime':<7} {'family':<10} {'alpha':>8} {'beta MiB':>9} {'n':>3} {'oom':>4} {'max|err| before':>16} {'after':>8}")
for runtime, cal, meas in (("candle", cal_c, csv_c), ("torch", cal_t, csv_t)):
    if not cal or not os.path.exists(cal):
        continue
    c = json.load(open(cal))
    rs = rows(report_of(meas))
    fams = dict(c["families"])
    if c.get("fallback"):
        fams["(all)"] = c["fallback"]
    for fam, e in fams.items():
        sel = [r for r in rs if fam == "(all)" or r["family"] == fam]
        ok = [r for r in sel if r["status"] == "ok"]
        oom = sum(r["status"] == "oom" for r in sel)
        mb = max((abs(float(r["error_before"])) for r in ok if r["error_before"]), default=float("nan"))
        ma = max((abs(float(r["error_after"])) for r in ok if r["error_after"]), default=float("nan"))
        print(f"{runtime:<7} {fam:<10} {e['alpha']:>8.4f} {e['beta_bytes']/2**20:>9.1f} {e['n_points']:>3} {oom:>4} {mb*100:>15.2f}% {ma*100:>7.2f}%")
    print(f"{runtime:<7} calibration: {cal}")
print(f"torch   {torch_status}")
PY
step "summary"
cat "$out/summary.txt"
case $torch_status in ok | skipped* | "dry run"*) ;; *) exit 1 ;; esac
