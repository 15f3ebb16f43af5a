#!/usr/bin/env python3
"""Checks the trace probe's fake engine against real execution.

    python3 probes/trace_check.py --config NAME=PATH [...] [--out DIR]

For each config, runs probes/trace_probe.py twice on the same scaled-down model
(`--scale-down`: hidden 64, 4 heads, vocab 256, MLP 128; depth 1 and 2) over eager/sdpa ×
no/full checkpointing × full/LoRA all-linear × bf16/AMP, once on fake tensors and once on
real CPU tensors, and requires every measured column to be identical. Exit status 1 on
any difference, listing it. Needs torch, transformers and peft.
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
METRICS = [
    "saved_bytes_storage", "saved_bytes_tensors", "live_after_fwd_bytes", "peak_fwd_bytes",
    "peak_bwd_bytes", "peak_bwd_excl_grads", "grads_bytes", "trainable_params", "n_saved",
    "n_saved_storages", "saved_embed", "saved_layers", "saved_final_norm", "saved_lm_head",
    "saved_top", "saved_rope", "saved_fp32_bytes", "saved_bf16_bytes",
    "saved_otherdtype_bytes", "params_total", "param_bytes", "peak_opt_bytes", "opt_state_bytes",
]
KEY = ["model", "layers", "batch", "seq", "dtype", "attn_impl", "grad_ckpt", "mode"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", action="append", required=True)
    p.add_argument("--out", default=None)
    p.add_argument("--grid", default="--attn eager,sdpa --grad-ckpt none,nonreentrant "
                   "--mode full,lora_all --dtype bf16,amp_bf16 --layers 1,2 --batch 2 --seq 32")
    a = p.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="trace-check-")
    os.makedirs(out, exist_ok=True)
    rows = {}
    for engine in ("fake", "real"):
        path = os.path.join(out, f"{engine}.csv")
        if os.path.exists(path):
            os.remove(path)
        cmd = [sys.executable, os.path.join(HERE, "trace_probe.py"), "--engine", engine,
               "--scale-down", "--optimizer", "--out", path] + a.grid.split()
        for c in a.config:
            cmd += ["--config", c]
        subprocess.run(cmd, check=True)
        rows[engine] = {tuple(r[k] for k in KEY): r for r in csv.DictReader(open(path))}
    bad, same, errors = [], 0, 0
    for key, f in rows["fake"].items():
        r = rows["real"].get(key)
        if r is None or f["status"] != "ok" or r["status"] != "ok":
            errors += 1
            bad.append(f"{key}: fake {f['status']} {f['error']} / real {r and r['status']} {r and r['error']}")
            continue
        diff = [(m, f[m], r[m]) for m in METRICS if f[m] != r[m]]
        if diff:
            bad.append(f"{key}: " + ", ".join(f"{m} fake {x} real {y}" for m, x, y in diff))
        else:
            same += 1
    print(f"trace_check: {same} of {len(rows['fake'])} cells identical on all "
          f"{len(METRICS)} metrics ({errors} not run); rows in {out}")
    for b in bad:
        print("  " + b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
