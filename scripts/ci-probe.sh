#!/usr/bin/env bash
# CI check of the probe pipeline: calibrate from probes/cpu-smoke.toml into a temporary
# folder and validate what it wrote (schema, finite α and β, confidence intervals).
# Usage: scripts/ci-probe.sh [path/to/llm-mem]   (default: builds the debug binary)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-}
if [ -z "$bin" ]; then
  cargo build --quiet --bin llm-mem
  bin="${CARGO_TARGET_DIR:-target}/debug/llm-mem"
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
start=$(date +%s)
"$bin" probe calibrate --plan probes/cpu-smoke.toml --out "$out" --quiet
secs=$(( $(date +%s) - start ))
echo "probe calibrate (cpu-smoke): ${secs}s"
[ "$secs" -le 60 ] || { echo "cpu-smoke took ${secs}s > 60s" >&2; exit 1; }
ls "$out"/results/cpu-smoke-cpu-*.csv >/dev/null
python3 - "$out/calibration/cpu-candle.json" <<'PY'
import json, math, sys
f = json.load(open(sys.argv[1]))
assert f["schema_version"] == 1, f["schema_version"]
assert f["device"] == "cpu" and f["runtime"] == "candle", (f["device"], f["runtime"])
fams = f["families"]
assert {"llama", "gpt2"} <= set(fams), sorted(fams)
for name, e in list(fams.items()) + ([("fallback", f["fallback"])] if f.get("fallback") else []):
    for k in ("alpha", "beta_bytes", "r2", "loo_max_rel_err"):
        assert isinstance(e[k], (int, float)) and math.isfinite(e[k]), (name, k, e[k])
    for k in ("alpha_ci", "beta_ci"):
        lo, hi = e[k]
        assert math.isfinite(lo) and math.isfinite(hi) and lo <= hi, (name, k, e[k])
    assert e["alpha_ci"][0] <= e["alpha"] <= e["alpha_ci"][1], (name, e)
    assert e["n_points"] >= 4, (name, e["n_points"])
    assert abs(e["alpha"] - 1) < 0.03, (name, e["alpha"])
print("calibration file ok:", ", ".join(f"{n} α={e['alpha']:.4f}" for n, e in fams.items()))
PY
