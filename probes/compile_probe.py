#!/usr/bin/env python3
"""The compile probe: what one decoder layer saves for backward, eager and under
torch.compile (inductor), on a CPU.

    python3 probes/compile_probe.py --config CONFIG.json [--config ...] --out ROWS.csv \
        [--batch 1] [--seq 64]

Each config is built with `AutoModelForCausalLM.from_config` at full width and depth 1
(random init, bf16 parameters, sdpa attention, train mode, `use_cache=False`) on real CPU
tensors, twice: as is, and with its decoder layer compiled in place (`layer.compile()`,
what torchtune's `training.compile_model` does per layer). One forward with
`labels=input_ids` runs under `torch.autograd.graph.saved_tensors_hooks`; while the
layer's forward runs (module pre-/post-hooks) every packed tensor's storage is counted
once, excluding parameters and the tensors the layer receives besides its hidden
states (rotary cos/sin, masks: shared by all layers, counted outside the layers by the
estimator). The layer's input is counted when the layer saves it. Then backward runs
(the compiled graph must be usable). Written per row: the config, batch, seq, the two
byte counts and the torch / transformers versions.
"""

import argparse
import csv
import json
import os
import sys

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM


def layer_saved(cfg, batch, seq, compiled):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.train()
    layer = model.model.layers[0]
    if compiled:
        layer.compile()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    st = {"on": False, "seen": set(), "skip": set(), "bytes": 0}

    def pre(_mod, args, kwargs):
        st["on"] = True
        hidden = args[0] if args else kwargs.get("hidden_states")
        others = list(args[1:]) + [v for k, v in kwargs.items() if k != "hidden_states"]
        flat = []
        for o in others:
            flat.extend(o if isinstance(o, (tuple, list)) else [o])
        st["skip"] = {
            t.untyped_storage().data_ptr()
            for t in flat
            if isinstance(t, torch.Tensor) and t is not hidden
        }

    def post(*_a):
        st["on"] = False

    def pack(t):
        if st["on"]:
            k = t.untyped_storage().data_ptr()
            if k not in params and k not in st["skip"] and k not in st["seen"]:
                st["seen"].add(k)
                st["bytes"] += t.untyped_storage().nbytes()
        return t

    layer.register_forward_pre_hook(pre, with_kwargs=True)
    layer.register_forward_hook(post)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_ids=ids, labels=ids, use_cache=False)
    out.loss.backward()
    return st["bytes"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", action="append", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=64)
    a = ap.parse_args()
    new = not os.path.exists(a.out)
    with open(a.out, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["config", "batch", "seq", "dtype", "attn", "eager_layer_saved_bytes",
                        "compiled_layer_saved_bytes", "torch", "transformers"])
        for path in a.config:
            d = json.load(open(path))
            d["num_hidden_layers"] = 1
            d.pop("layer_types", None)
            cfg = AutoConfig.for_model(**d)
            cfg._attn_implementation = "sdpa"
            row = [os.path.basename(os.path.dirname(os.path.abspath(path))), a.batch, a.seq,
                   "bf16", "sdpa"]
            try:
                row += [layer_saved(cfg, a.batch, a.seq, False),
                        layer_saved(cfg, a.batch, a.seq, True)]
            except Exception as e:  # a config inductor cannot compile on this CPU
                print(f"{path}: {type(e).__name__}: {e}"[:300], file=sys.stderr)
                continue
            row += [torch.__version__.split("+")[0], transformers.__version__]
            w.writerow(row)
            f.flush()
            print(row, file=sys.stderr)


if __name__ == "__main__":
    main()
