#!/usr/bin/env python3
"""The PyTorch probe: the same plan as `llm-mem probe run`, on HF transformers models.

    python3 probes/torch_probe.py --plan probes/gpu-default.toml --binary PATH/llm-mem \
        --out OUT [--device cuda:0 | fake | fake-cuda] [--dry-run]

Reads the plan TOML (schema_version 1, the schema of src/probe/mod.rs) and asks the
binary for its points (`llm-mem probe points`), so both probes run exactly the same
scaled-down shapes: the binary gives each point's scaled HF config.json, and this script
builds it with `AutoModelForCausalLM.from_config` (random init, no downloads) in the
plan's dtype. Per point: warm-up steps, then measured steps of forward → loss →
backward → AdamW (fused), each phase bracketed by `torch.cuda.reset_peak_memory_stats`
and read from `max_memory_allocated` / `max_memory_reserved` (a phase's measured bytes
are the absolute `max_memory_allocated`: what the step's start already holds beyond the
parameters and optimizer state — the two cuBLAS workspaces of forward and backward,
the inputs — is part of the peak; before 2026-12-04 the script recorded the parameters
and state plus the rise above the step's start, which left those out); NVML (pynvml, else
`nvidia-smi`) samples device and process used memory on a thread, with a baseline
before the model loads. `torch.cuda.OutOfMemoryError` → status `oom`, and the sweep
goes on. LoRA: every linear of the decoder layers (peft's all-linear), written here so
that peft is not needed.

Writes OUT/results/<plan>-<device>-torch-<date>.csv with exactly the columns of the
Rust measurement file (runtime `torch`), the estimator's prediction filled from
`llm-mem estimate --runtime torch --json`; `llm-mem probe calibrate --from FILE` fits
calibration/<gpu>-torch.json from it.

`--device fake` (or `fake-cpu`) / `fake-cuda` runs the same steps without a GPU, on
fake tensors (meter `fake-tensor`, device `fake-cpu` / `fake-cuda`): the model is built
under `FakeTensorMode` and the trace probe's tracker (trace_probe.py) follows every
storage; a phase's peak is the highest live total in it minus the live total at the
step's start, exact storage bytes with no allocator rounding. `fake-cuda` routes SDPA
and dropout to the kernels a GPU picks; its prediction is asked for with the same
device semantics and no cuBLAS workspace (`--cublas-workspace 0`). The estimator's
`loss` event covers the head and the loss, this script's forward phase runs through
the head: compare the peaks, not the forward phases.

`--dry-run` needs neither torch nor a GPU: every row is written with status `skipped`
and no measurement (CI checks plan parsing, the points and the CSV this way).
Standard library only, plus torch and transformers for a real run.
"""

import argparse
import csv
import datetime
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

# ---------------------------------------------------------------- plan (TOML)


def _parse_value(v):
    v = v.strip()
    if v.startswith('"') and v.endswith('"'):
        return v[1:-1]
    if v.startswith("[") and v.endswith("]"):
        inner = v[1:-1].strip()
        return [_parse_value(x) for x in re.split(r",\s*", inner) if x.strip()] if inner else []
    if v in ("true", "false"):
        return v == "true"
    try:
        return int(v)
    except ValueError:
        return float(v)


def parse_toml_minimal(text):
    """The subset of TOML the plans use: key = value (strings, numbers, booleans, flat
    arrays), [table] and [[array of tables]]. For Pythons without tomllib (< 3.11)."""
    root = {}
    cur = root
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip() if '"' not in raw else _strip_comment(raw)
        if not line:
            continue
        m = re.fullmatch(r"\[\[\s*([A-Za-z0-9_]+)\s*\]\]", line)
        if m:
            cur = {}
            root.setdefault(m.group(1), []).append(cur)
            continue
        m = re.fullmatch(r"\[\s*([A-Za-z0-9_]+)\s*\]", line)
        if m:
            cur = root.setdefault(m.group(1), {})
            continue
        k, sep, v = line.partition("=")
        if not sep:
            raise ValueError(f"cannot parse plan line: {raw!r}")
        cur[k.strip()] = _parse_value(v)
    return root


def _strip_comment(line):
    out, q = [], False
    for c in line:
        if c == '"':
            q = not q
        if c == "#" and not q:
            break
        out.append(c)
    return "".join(out).strip()


def load_plan(path):
    text = open(path, encoding="utf-8").read()
    try:
        import tomllib

        plan = tomllib.loads(text)
    except ImportError:
        plan = parse_toml_minimal(text)
    if plan.get("schema_version") != 1:
        raise SystemExit(f"{path}: schema_version {plan.get('schema_version')!r} is not supported; accepted: 1")
    for k in ("name", "shapes", "architectures"):
        if k not in plan:
            raise SystemExit(f"{path}: invalid probe plan: missing {k}")
    plan.setdefault("device", "cpu")
    plan.setdefault("dtype", "f32")
    plan.setdefault("methods", ["full"])
    plan.setdefault("lora_rank", 8)
    plan.setdefault("optimizer", "adamw")
    plan.setdefault("attn", "eager")
    plan.setdefault("warmup_steps", 1)
    plan.setdefault("measured_steps", 1)
    return plan


def expected_point_ids(plan):
    """`model/method/bB/sS` for every point, in the Rust order (src/probe/mod.rs)."""
    ids = []
    for a in plan["architectures"]:
        for m in a.get("methods", plan["methods"]):
            for b in plan["shapes"]["batch"]:
                for s in plan["shapes"]["seq"]:
                    ids.append(f"{a['model']}/{m}/b{b}/s{s}")
    return ids


# ---------------------------------------------------------------- the binary


def run_bin(binary, args):
    r = subprocess.run([binary] + args, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{binary} {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def torch_prediction(binary, point, dtype, optimizer, attn, cfg_dir, extra=()):
    """The estimator's `torch` prediction for a point: absolute allocated bytes at the
    peak and per phase (`extra`: more estimate flags, e.g. a fake meter's device
    semantics and no cuBLAS workspace)."""
    os.makedirs(cfg_dir, exist_ok=True)
    cfg = os.path.join(cfg_dir, "config.json")
    with open(cfg, "w") as f:
        json.dump(point["hf_config"], f)
    args = ["estimate", "--model", cfg, "--task", "train", "--method", point["method"],
            "--dtype", dtype, "--optimizer", optimizer, "--batch", str(point["batch"]),
            "--seq-len", str(point["seq"]), "--attn", attn, "--runtime", "torch", "--json"] + list(extra)
    if point["method"] == "lora":
        args += ["--lora-rank", str(point["lora_rank"]), "--lora-alpha", str(point["lora_alpha"]),
                 "--lora-targets", "all-linear"]
    d = json.loads(run_bin(binary, args))
    phases = {}
    for ev in d.get("timeline", []):
        p = ev.get("phase")
        phases[p] = max(phases.get(p, 0), int(ev.get("allocated_bytes", 0)))
    return {
        "peak": int(d["peak"]["allocated_bytes"]),
        "forward": phases.get("forward", 0),
        "loss": phases.get("loss", 0),
        "backward": phases.get("backward", 0),
        "optimizer": phases.get("optimizer", 0),
    }


# ---------------------------------------------------------------- NVML


class Nvml:
    """Device and process used memory: pynvml when importable, else nvidia-smi."""

    def __init__(self, index):
        self.index, self.pid, self.source = index, os.getpid(), None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nv, self.h = pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)
            self.source = "nvml-sampled"
        except Exception:
            self.nv = None
            try:
                subprocess.run(["nvidia-smi", "-L"], capture_output=True, check=True)
                self.source = "nvidia-smi-sampled"
            except Exception:
                self.source = None

    def read(self):
        """(device used, process used or None, how the process was matched)."""
        if self.nv is not None:
            nv = self.nv
            dev = nv.nvmlDeviceGetMemoryInfo(self.h).used
            try:
                ps = nv.nvmlDeviceGetComputeRunningProcesses(self.h)
            except Exception:
                ps = []
            return (dev,) + self._process([(p.pid, p.usedGpuMemory) for p in ps])
        if self.source is None:
            return (None, None, None)
        q = subprocess.run(["nvidia-smi", f"--id={self.index}", "--query-gpu=memory.used",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True)
        dev = int(q.stdout.split()[0]) << 20 if q.returncode == 0 and q.stdout.strip() else None
        q = subprocess.run(["nvidia-smi", f"--id={self.index}", "--query-compute-apps=pid,used_memory",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True)
        ps = []
        for line in q.stdout.splitlines():
            try:
                pid, mib = [x.strip() for x in line.split(",")]
                ps.append((int(pid), int(mib) << 20))
            except ValueError:
                pass
        return (dev,) + self._process(ps)

    def _process(self, ps):
        mine = [u for p, u in ps if p == self.pid and u is not None]
        if mine:
            return (mine[0], "nvml-process")
        if len(ps) == 1 and ps[0][1] is not None:
            return (ps[0][1], "nvml-single-process")  # pids differ inside some containers
        return (None, None)


class Sampler(threading.Thread):
    def __init__(self, nvml, every=0.002):
        super().__init__(daemon=True)
        self.nvml, self.every = nvml, every
        self.lock, self.stop_ev = threading.Lock(), threading.Event()
        self.dev = self.proc = None
        self.proc_src = None

    def run(self):
        while not self.stop_ev.is_set():
            d, p, src = self.nvml.read()
            with self.lock:
                if d is not None:
                    self.dev = max(self.dev or 0, d)
                if p is not None:
                    self.proc, self.proc_src = max(self.proc or 0, p), src
            time.sleep(self.every)

    def take(self):
        with self.lock:
            r = (self.dev, self.proc, self.proc_src)
            self.dev = self.proc = self.proc_src = None
        return r


# ---------------------------------------------------------------- the measured step


def add_lora(model, rank, alpha, torch):
    """Freeze everything, then wrap every linear of the decoder layers (nn.Linear and
    GPT-2's Conv1D; not the LM head) with a LoRA adapter as peft 0.21 runs one
    (`tuners/lora/layer.py` `Linear.forward`, lora_dropout 0, and
    `autocast_adapter_dtype=True`: fp32 adapters): result = base(x);
    result + lora_B(lora_A(x.to(fp32))) · alpha/rank, cast back to the result's dtype.
    Written here so that the probe needs no peft on a device machine."""
    nn = torch.nn
    F = torch.nn.functional

    class LoRA(nn.Module):
        def __init__(self, base, fin, fout):
            super().__init__()
            self.base, self.scale = base, alpha / rank
            p = next(base.parameters())
            self.lora_A = nn.Parameter(torch.randn(rank, fin, dtype=torch.float32, device=p.device) * 0.02)
            self.lora_B = nn.Parameter(torch.zeros(fout, rank, dtype=torch.float32, device=p.device))

        def forward(self, x):
            result = self.base(x)
            dt = result.dtype
            x = x.to(self.lora_A.dtype)
            result = result + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale
            return result.to(dt)

    for p in model.parameters():
        p.requires_grad_(False)
    targets = []
    for name, m in model.named_modules():
        if any(k in name for k in ("lm_head", "embed_out")):
            continue
        if isinstance(m, nn.Linear):
            targets.append((name, m, m.in_features, m.out_features))
        elif type(m).__name__ == "Conv1D":  # GPT-2: weight (in, out)
            targets.append((name, m, m.weight.shape[0], m.weight.shape[1]))
    for name, m, fin, fout in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRA(m, fin, fout))
    return len(targets)


def build_point(point, plan, device, torch, transformers):
    """The point's model (random init, the plan's dtype and attention, LoRA when asked),
    its parameters, the trainable ones, a fused AdamW over those, the input ids and the
    loss function: what both meters run."""
    dtype = {"f32": torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16,
             "f16": torch.float16, "fp16": torch.float16}[plan["dtype"]]
    cfg = transformers.AutoConfig.for_model(**point["hf_config"])
    cfg.use_cache = False
    attn = "sdpa" if plan["attn"] == "sdpa" else "eager"
    try:  # transformers >= 4.56 names it `dtype`; older ones `torch_dtype`
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn)
    except TypeError:
        model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=dtype, attn_implementation=attn)
    if next(model.parameters()).dtype != dtype:
        model = model.to(dtype)
    if device is not None:  # None: built where it is (fake tensors cannot be moved)
        model.to(device)
    model.train()
    if point["method"] == "lora":
        add_lora(model, point["lora_rank"], point["lora_alpha"], torch)
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    # fused AdamW: no step temporaries (the estimator's `adamw`)
    opt = torch.optim.AdamW(trainable, lr=1e-4, fused=True)
    b, s, vocab = point["batch"], point["seq"], point["vocab"]
    ids = torch.randint(0, vocab, (b, s), device=device)

    def loss_of(logits):
        fn = getattr(model, "loss_function", None)
        if fn is not None:
            return fn(logits=logits, labels=ids, vocab_size=vocab)
        sl = logits[:, :-1].float().reshape(-1, vocab)
        return torch.nn.functional.cross_entropy(sl, ids[:, 1:].reshape(-1))

    return model, params, trainable, opt, ids, loss_of


def measure_point(point, plan, device, torch, transformers, nvml):
    side = {}
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    if nvml.source:
        d, p, src = nvml.read()
        side.update(device_used_baseline_bytes=d, process_used_baseline_bytes=p)
        side["_proc_src"] = src
    model, params, trainable, opt, ids, loss_of = build_point(point, plan, device, torch, transformers)

    def step(sampler=None):
        out = []

        def phase(fn):
            if sampler is None:
                return fn()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            sampler.take()
            r = fn()
            torch.cuda.synchronize()
            out.append((torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()) + sampler.take())
            return r

        logits = phase(lambda: model(input_ids=ids).logits)
        loss = phase(lambda: loss_of(logits))
        # as HF Trainer's training_step: compute_loss returns the loss only, so the
        # model's outputs (the logits) are released before the backward
        del logits
        phase(lambda: loss.backward())
        del loss
        phase(lambda: opt.step())
        opt.zero_grad(set_to_none=True)
        return out

    for _ in range(plan["warmup_steps"]):
        step()
    nbytes = lambda ps: sum(p.numel() * p.element_size() for p in ps)  # noqa: E731
    grad_bytes = nbytes(trainable)
    static = nbytes(params) + sum(
        v.numel() * v.element_size() for st in opt.state.values() for v in st.values() if torch.is_tensor(v)
    )
    sampler = Sampler(nvml) if nvml.source else None
    if sampler:
        sampler.start()
    phases = [0, 0, 0, 0]
    alloc_peak = reserved_peak = 0
    dev_peak = proc_peak = None
    try:
        for _ in range(max(1, plan["measured_steps"])):
            torch.cuda.synchronize()
            r = step(sampler or _NoSampler())
            for i, (a, rv, d, p, src) in enumerate(r):
                # absolute: the row's measured = static + this
                phases[i] = max(phases[i], a - static)
                alloc_peak, reserved_peak = max(alloc_peak, a), max(reserved_peak, rv)
                if d is not None:
                    dev_peak = max(dev_peak or 0, d)
                if p is not None:
                    proc_peak = max(proc_peak or 0, p)
                    side["_proc_src"] = src
    finally:
        if sampler:
            sampler.stop_ev.set()
            sampler.join()
    del model, opt, params, trainable, ids
    side.update(allocator_peak_bytes=alloc_peak, reserved_peak_bytes=reserved_peak,
                device_used_peak_bytes=dev_peak, process_used_peak_bytes=proc_peak)
    return static, grad_bytes, phases, side


def measure_point_fake(point, plan, semantics, torch, transformers):
    """The same step as `measure_point`, on fake tensors (meter `fake-tensor`): the model
    is built under `FakeTensorMode` (no weights, no device memory) and every storage an
    op makes is followed to its death by the trace probe's tracker (trace_probe.py,
    weak references). Per phase: the highest live total over the phase minus the live
    total at the step's start, as `max_memory_allocated - memory_allocated` (exact
    storage bytes; no allocator rounding). `semantics` cuda routes SDPA and dropout to
    the kernels a GPU picks (trace_probe.gpu_sdpa / cuda_routing)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import trace_probe as tp

    restore = [tp.see_fake_as_real()]
    if semantics == "cuda":
        sdpa, _ = tp.gpu_sdpa()
        restore.append(tp.cuda_routing(sdpa))
    tracker = tp.Tracker()
    try:
        with FakeTensorMode(allow_non_fake_inputs=False):
            with torch.device("cpu"):
                model, params, trainable, opt, ids, loss_of = build_point(
                    point, plan, None, torch, transformers)
            for t in params + list(model.buffers()) + [ids]:
                tracker.see(t)

            def step():
                marks = [tracker.mark()]
                starts = [dict(tracker.live)]
                logits = model(input_ids=ids).logits
                marks.append(tracker.mark()), starts.append(dict(tracker.live))
                loss = loss_of(logits)
                del logits  # released before the backward, as in measure_point
                gc.collect()
                marks.append(tracker.mark()), starts.append(dict(tracker.live))
                loss.backward()
                del loss
                gc.collect()
                marks.append(tracker.mark()), starts.append(dict(tracker.live))
                opt.step()
                marks.append(tracker.mark())
                opt.zero_grad(set_to_none=True)
                gc.collect()
                return [tracker.peak_between(marks[i], marks[i + 1], starts[i]) for i in range(4)]

            with tp.make_mode(tracker):
                for _ in range(plan["warmup_steps"]):
                    step()
                phases = [0, 0, 0, 0]
                for _ in range(max(1, plan["measured_steps"])):
                    gc.collect()
                    base = tracker.live_bytes()
                    for i, peak in enumerate(step()):
                        phases[i] = max(phases[i], peak - base)
            nbytes = lambda ps: sum(p.untyped_storage().nbytes() for p in ps)  # noqa: E731
            grad_bytes = nbytes(trainable)
            static = nbytes(params) + sum(
                v.untyped_storage().nbytes() for st in opt.state.values() for v in st.values()
                if torch.is_tensor(v))
            del model, opt, params, trainable, ids
    finally:
        for r in restore:
            r()
        gc.collect()
    return static, grad_bytes, phases, {}


class _NoSampler:
    def take(self):
        return (None, None, None)


# ---------------------------------------------------------------- rows


def git_commit():
    try:
        r = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def base_row(doc, point, plan, prov):
    return {
        "schema_version": doc["csv_schema_version"],
        "plan": doc["plan"], "point": point["id"], "status": "", "message": "",
        "tool_version": doc["tool_version"], "git_commit": prov["git_commit"],
        "device": doc["device"], "device_name": prov["device_name"], "driver": prov["driver"],
        "runtime": "torch", "dtype": doc["dtype"], "family": point["family"], "model": point["model"],
        "layers": point["layers"], "hidden": point["hidden"], "heads": point["heads"],
        "kv_heads": point["kv_heads"], "head_dim": point["head_dim"],
        "intermediate": point["intermediate"], "vocab": point["vocab"], "method": point["method"],
        "lora_rank": point["lora_rank"] if point["method"] == "lora" else 0,
        "batch": point["batch"], "seq": point["seq"], "warmup_steps": doc["warmup_steps"],
        "measured_steps": doc["measured_steps"], "meter": prov["meter"], "peak_source": "",
        "static_bytes": 0, "grad_bytes": 0,
        "measured_peak_bytes": 0, "measured_forward_bytes": 0, "measured_loss_bytes": 0,
        "measured_backward_bytes": 0, "measured_optimizer_bytes": 0,
        "predicted_peak_bytes": 0, "predicted_forward_bytes": 0, "predicted_loss_bytes": 0,
        "predicted_backward_bytes": 0, "predicted_optimizer_bytes": 0,
        "seconds": 0.0, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "allocator_peak_bytes": "", "reserved_peak_bytes": "", "device_used_baseline_bytes": "",
        "device_used_peak_bytes": "", "process_used_baseline_bytes": "", "process_used_peak_bytes": "",
        "side_sources": "",
    }


# What identifies a measured point (the binary's `Row::shape_key`): resume matches
# rows on all of these, so an edited plan never skips its new shapes.
SHAPE_KEY = ["plan", "point", "device", "runtime", "dtype", "family", "model", "layers",
             "hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab", "method",
             "lora_rank", "batch", "seq", "warmup_steps", "measured_steps"]


def set_aside_torn_tail(path):
    """A last line without its newline was cut mid-write: append it to PATH.torn, cut it
    from the file (the complete rows are not touched) and say so (as the binary does)."""
    with open(path, "rb") as f:
        data = f.read()
    if not data or data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    with open(path + ".torn", "ab") as f:
        f.write(data[start:] + b"\n")
        f.flush()
        os.fsync(f.fileno())
    with open(path, "r+b") as f:
        f.truncate(start)
        os.fsync(f.fileno())
    line = data[:start].count(b"\n") + 1
    print(f"warning: {path} line {line} was cut mid-write "
          f"({len(data) - start} bytes): set aside in {path}.torn; its point is run again",
          file=sys.stderr)


class CsvOut:
    """Appends rows in the binary's column order; resumes (skips points already in it).
    `planned`: point id -> the row the plan gives it; a file of another plan, or a row
    whose shapes differ from the plan's, is refused (raw rows are never rewritten)."""

    def __init__(self, path, header, planned):
        self.path, self.header = path, header.split(",")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.done = set()
        if os.path.exists(path) and os.path.getsize(path) > 0:
            set_aside_torn_tail(path)
            with open(path, newline="") as f:
                r = csv.DictReader(f)
                if r.fieldnames != self.header:
                    raise SystemExit(f"{path}: its columns differ from this llm-mem's; write to a new file")
                for line, row in enumerate(r, start=2):
                    self.check(line, row, planned)
                    self.done.add(row["point"])
        else:
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(self.header)

    def check(self, line, row, planned):
        plan = next(iter(planned.values()))["plan"]
        if row["plan"] != plan:
            raise SystemExit(f"{self.path} line {line}: this file holds plan {row['plan']}, not {plan}; "
                             "write a new file (another --csv)")
        want = planned.get(row["point"], row)
        for k in SHAPE_KEY:
            if str(row[k]) != str(want[k]):
                raise SystemExit(f"{self.path} line {line}: point {row['point']} was measured with {k} "
                                 f"{row[k]}; the plan now gives {k} {want[k]}. Raw rows are never "
                                 "rewritten: write to a new file (another --csv), or restore the plan")

    def write(self, row):
        missing = set(self.header) - set(row)
        extra = set(row) - set(self.header)
        if missing or extra:
            raise RuntimeError(f"row columns differ from the binary's: missing {sorted(missing)}, extra {sorted(extra)}")
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow(["" if row[k] is None else row[k] for k in self.header])
            f.flush()
            os.fsync(f.fileno())


# `--device` values measured on fake tensors, and the device semantics each emulates
FAKE_DEVICES = {"fake": "cpu", "fake-cpu": "cpu", "fake-cuda": "cuda"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plan", required=True)
    ap.add_argument("--binary", default=os.environ.get("LLM_MEM", "llm-mem"), help="the llm-mem binary")
    ap.add_argument("--out", default=".", help="results/ is written under it")
    ap.add_argument("--device", default=None,
                    help="cuda:N, or fake / fake-cpu / fake-cuda: fake tensors on a CPU, no GPU "
                         "(default: the plan's)")
    ap.add_argument("--csv", default=None, help="write / resume this file instead")
    ap.add_argument("--dry-run", action="store_true", help="no torch: rows with status skipped")
    a = ap.parse_args(argv)

    plan = load_plan(a.plan)
    device = a.device or plan["device"]
    fake = device in FAKE_DEVICES
    if not a.dry_run and not device.startswith("cuda") and not fake:
        raise SystemExit(f"device {device!r}: the torch probe measures CUDA memory (cuda:N) or fake "
                         f"tensors ({', '.join(FAKE_DEVICES)}); or give --dry-run")
    semantics = FAKE_DEVICES.get(device)
    # the binary knows cpu and cuda:N; fake devices take the plan's points as they are
    args = ["probe", "points", "--plan", a.plan] + (["--device", device] if a.device and not fake else [])
    doc = json.loads(run_bin(a.binary, args))
    ids = [p["id"] for p in doc["points"]]
    if doc["plan"] != plan["name"] or sorted(ids) != sorted(expected_point_ids(plan)):
        raise SystemExit("the binary's points differ from this plan's: is the binary from this checkout?")
    if fake:
        device = f"fake-{semantics}"
    slug = device.replace(":", "")
    path = a.csv or os.path.join(a.out, "results", f"{plan['name']}-{slug}-torch-{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}.csv")

    torch = transformers = None
    prov = {"git_commit": git_commit(), "device_name": "", "driver": "", "meter": "torch-cuda+nvml"}
    nvml = None
    if a.dry_run:
        prov.update(device_name="dry run", meter="none")
    elif fake:
        import torch
        import transformers
        prov.update(device_name=f"fake tensors ({semantics} semantics)", meter="fake-tensor",
                    driver=f"torch {torch.__version__}, transformers {transformers.__version__}")
    else:
        import torch
        import transformers

        index = int(device.split(":")[1]) if ":" in device else 0
        torch.cuda.set_device(index)
        prov["device_name"] = torch.cuda.get_device_name(index)
        nvml = Nvml(index)
        drv = ""
        try:
            q = subprocess.run(["nvidia-smi", f"--id={index}", "--query-gpu=driver_version",
                                "--format=csv,noheader"], capture_output=True, text=True)
            drv = q.stdout.strip()
        except OSError:
            pass
        prov["driver"] = f"{drv} (torch {torch.__version__}, transformers {transformers.__version__})".strip()
        device = f"cuda:{index}"

    if fake:
        doc = dict(doc, device=device)
    out = CsvOut(path, doc["csv_header"], {p["id"]: base_row(doc, p, None, prov) for p in doc["points"]})
    ran = failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for point in doc["points"]:
            if point["id"] in out.done:
                continue
            row = base_row(doc, point, plan, prov)
            t0 = time.time()
            try:
                # fake tensors have no cuBLAS workspace (a real CUDA run allocates it
                # through the caching allocator, so it counts there)
                extra = ["--device", semantics, "--cublas-workspace", "0"] if fake else []
                pred = torch_prediction(a.binary, point, doc["dtype"], plan["optimizer"], plan["attn"],
                                        os.path.join(tmp, re.sub(r"[^A-Za-z0-9_.-]", "_", point["model"])),
                                        extra)
                row.update(predicted_peak_bytes=pred["peak"], predicted_forward_bytes=pred["forward"],
                           predicted_loss_bytes=pred["loss"], predicted_backward_bytes=pred["backward"],
                           predicted_optimizer_bytes=pred["optimizer"])
            except Exception as e:  # the row still records the measurement
                row["message"] = f"no prediction: {e}"[:300]
            if a.dry_run:
                row.update(status="skipped", message=(row["message"] or "dry run"))
            else:
                try:
                    if fake:
                        static, grads, ph, side = measure_point_fake(point, plan, semantics, torch, transformers)
                    else:
                        static, grads, ph, side = measure_point(point, plan, device, torch, transformers, nvml)
                    row.update(status="ok", static_bytes=static, grad_bytes=grads,
                               measured_forward_bytes=static + ph[0], measured_loss_bytes=static + ph[1],
                               measured_backward_bytes=static + ph[2], measured_optimizer_bytes=static + ph[3],
                               measured_peak_bytes=static + max(ph),
                               peak_source="fake-tensor-storage-high-water" if fake else "torch-allocator-high-water")
                    srcs = ["allocator=torch-max-memory-allocated", "reserved=torch-max-memory-reserved"]
                    if fake:
                        srcs = ["allocator=fake-tensor-storages"]
                    elif nvml.source:
                        srcs.append(f"device_used={nvml.source}")
                        srcs.append(f"process_used={side.get('_proc_src') or 'nvml-pid-not-listed'}")
                    else:
                        srcs.append("device_used=nvml-unavailable")
                    for k, v in side.items():
                        if not k.startswith("_"):
                            row[k] = "" if v is None else v
                    row["side_sources"] = ";".join(srcs)
                except Exception as e:
                    oom = type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e)
                    row.update(status="oom" if oom else "error", message=f"{type(e).__name__}: {e}".replace("\n", " ")[:500])
                    failed += 1
                finally:
                    gc.collect()
                    if not fake:
                        torch.cuda.empty_cache()
            row["seconds"] = round(time.time() - t0, 3)
            out.write(row)
            ran += 1
            print(f"{point['id']}: {row['status']} {row['measured_peak_bytes']} B measured, "
                  f"{row['predicted_peak_bytes']} B predicted ({row['seconds']} s)", file=sys.stderr)
    print(f"{path}: {ran} points run ({failed} failed), {len(out.done)} already done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
