"""The seed guide's memory table, measured: loading one large checkpoint with each of
`train`'s strategies, next to PyTorch in Python on the same tensors.

Usage (from the repository root, after scripts/setup.sh):
  ~/.cache/train/torch-2.11.0/bin/python bench/memory_table.py [--hidden 8192,8192,8192]
      [--device cpu|cuda] [--workdir DIR] [--train target/release/train]

1. `train` makes the checkpoint: an MLP 784 -> hidden... -> 10 (default 141 M parameters,
   563 MB of fp32 weights) after one AdamW step, so `latest.safetensors` holds weights and
   Adam's two moments (1.7 GB).
2. Each `train` strategy loads it in a fresh process (`train plan --execute`): wall time,
   peak host RSS above the RSS just before the load (the model already built), and on CUDA
   the peak bytes the caching allocator held.
3. PyTorch does the same in fresh processes, from a `.pt` file holding the same tensors
   (written once with torch.save): `torch.load(map_location=device)` then
   `load_state_dict`; the seed guide's memory-efficient recipe (`map_location="cpu"`, then
   each tensor copied to the device on its own); and `torch.load(mmap=True)` then
   `load_state_dict(assign=True)`.

"Transient" is the peak above what stays resident after the load (the model, plus the
optimizer state when it is restored): what a strategy costs beyond its result. The goal:
memory_efficient's transient at most the largest tensor + 5%, and its time no worse than
PyTorch's standard load.

`scripts/gpu-check` imports the functions below (the GPU acceptance run measures the same
table on the device), so they take the binary, the interpreter and the environment as
arguments and never import torch into the calling process.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

STRATEGIES = ["standard", "memory_efficient", "model_only"]
PY_MODES = ["torch.load", "seed recipe", "torch.load(mmap)+assign"]

PY_LOADER = r"""
import json, os, sys, time, torch
path, device, mode, hidden = sys.argv[1], sys.argv[2], sys.argv[3], [int(h) for h in sys.argv[4].split(",")]
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"): return int(line.split()[1]) * 1024
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"): return int(line.split()[1]) * 1024
layers, width = [], 784
for i, h in enumerate(hidden):
    layers.append((f"fc{i+1}", torch.nn.Linear(width, h))); width = h
layers.append(("out", torch.nn.Linear(width, 10)))
model = torch.nn.Sequential()
for n, l in layers: model.add_module(n, l)
model.to(device)
cuda = device.startswith("cuda")
if cuda:
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
before_dev = torch.cuda.memory_allocated() if cuda else None
open("/proc/self/clear_refs", "w").write("5")
start_rss = rss()
t0 = time.perf_counter()
if mode == "torch.load":
    sd = torch.load(path, map_location=device)
    model.load_state_dict({k: v for k, v in sd.items() if "/" not in k})
    optimizer_state = {k: v for k, v in sd.items() if "/" in k}
elif mode == "seed recipe":
    # The seed guide's memory-efficient load: everything to host memory, then one tensor at
    # a time to the device (each host copy dropped once it is over).
    sd = torch.load(path, map_location="cpu")
    params = dict(model.state_dict(keep_vars=True))
    optimizer_state = {}
    with torch.no_grad():
        for k in list(sd):
            v = sd.pop(k)
            if "/" in k:
                optimizer_state[k] = v.to(device)
            else:
                params[k].copy_(v)
            del v
else:
    sd = torch.load(path, mmap=True, map_location=device)
    model.load_state_dict({k: v for k, v in sd.items() if "/" not in k}, assign=True)
    optimizer_state = {k: v for k, v in sd.items() if "/" in k}
# Touch every value, as a training step would: mmap'd tensors are read here.
for v in list(model.state_dict().values()) + list(optimizer_state.values()):
    v.sum()
if cuda: torch.cuda.synchronize()
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "host_peak_above_start_bytes": peak() - start_rss,
    "device_peak_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None,
    "device_allocated_before_bytes": before_dev}))
"""

# Writes the tensors of a .safetensors file with torch.save, reading the file itself (an
# 8-byte header length, a JSON header, the raw bytes): the GPU machine's torch environment
# need not have the `safetensors` package.
TO_PT = r"""
import json, mmap, struct, sys, torch
src, dst = sys.argv[1], sys.argv[2]
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
with open(src, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
    body = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
out = {}
for name, t in header.items():
    if name == "__metadata__":
        continue
    begin, end = t["data_offsets"]
    dtype = DTYPES[t["dtype"]]
    count = (end - begin) // torch.tensor([], dtype=dtype).element_size()
    out[name] = torch.frombuffer(body, dtype=dtype, count=count, offset=8 + n + begin).reshape(t["shape"]).clone()
torch.save(out, dst)
"""


def clean_env(extra=None) -> dict:
    """The environment for `train` and the Python loaders: no TRAIN_* (train reads those as
    configuration and refuses unknown keys)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIN_")}
    env.update(extra or {})
    return env


def common_args(hidden: str, data_dir: str, device: str, extra_sets=()) -> list:
    """`train` arguments naming the model and data of the table (hidden: "8192,8192,8192")."""
    args = ["--experiment", "standard", "--set", f"model.mlp.hidden=[{hidden}]", "--set", f"data.dir={data_dir}",
            "--set", "data.train_limit=1024", "--set", "data.val_limit=256", "--device", device]
    for s in extra_sets:
        args += ["--set", s]
    return args


def make_checkpoint(train: str, common: list, run_dir: str, env=None, sets=("training.max_steps=1", "training.epochs=1")) -> str:
    """Trains per `sets` (default: one AdamW step) into `run_dir`; returns latest.safetensors."""
    ckpt = os.path.join(run_dir, "checkpoints", "latest.safetensors")
    if not os.path.exists(ckpt):
        cmd = [train, *common, "--output-dir", run_dir]
        for s in sets:
            cmd += ["--set", s]
        done = subprocess.run(cmd, env=env or clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"making the checkpoint failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return ckpt


def run_json(cmd: list, env=None, timeout=None) -> dict:
    """Runs a command that prints one JSON document; raises with its stderr if it fails."""
    done = subprocess.run(cmd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        shown = " ".join("<script>" if "\n" in str(c) else str(c) for c in cmd)
        raise RuntimeError(f"exit {done.returncode}: {shown}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def plan(train: str, common: list, ckpt: str, extra=(), env=None, timeout=None) -> dict:
    """`train plan --json` for `ckpt` (standard allowed, so every strategy is predicted)."""
    cmd = [train, "plan", *common[2:], "--checkpoint", ckpt, "--json",
           "--set", "memory.checkpoint_memory_efficient=false", *extra]
    return run_json(cmd, env, timeout)


def measure_train(train: str, common: list, ckpt: str, strategy: str, env=None, timeout=None) -> dict:
    """`train plan --execute --json` with `memory.strategy=strategy`: the plan, with `measured`."""
    return plan(train, common, ckpt, ["--execute", "--set", f"memory.strategy={strategy}"], env, timeout)


def save_same_tensors(python: str, ckpt: str, pt: str, env=None) -> str:
    """Writes the tensors of `ckpt` (a .safetensors file) to `pt` with torch.save, once."""
    if not os.path.exists(pt):
        subprocess.run([python, "-c", TO_PT, ckpt, pt + ".tmp"], env=env or clean_env(), check=True)
        os.replace(pt + ".tmp", pt)
    return pt


def measure_python(python: str, pt: str, device: str, mode: str, hidden: str, env=None, timeout=None) -> dict:
    """One PyTorch load of `pt` in a fresh process (`mode` one of PY_MODES)."""
    return run_json([python, "-c", PY_LOADER, pt, device, mode, hidden], env, timeout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", default="8192,8192,8192")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--train", default="target/release/train")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="memtable-")
    common = common_args(args.hidden, args.data, args.device)
    if not os.path.exists(os.path.join(work, "run", "checkpoints", "latest.safetensors")):
        print(f"making the checkpoint in {work} ...", file=sys.stderr)
    ckpt = make_checkpoint(args.train, common, os.path.join(work, "run"))
    sizes = plan(args.train, common, ckpt)["sizes"]
    pt = save_same_tensors(sys.executable, ckpt, os.path.join(work, "same_tensors.pt"))

    rows = []
    for strategy in STRATEGIES:
        p = measure_train(args.train, common, ckpt, strategy)
        resident = sizes["optimizer"] if strategy != "model_only" else 0
        rows.append((f"train {strategy}", p["measured"], resident, os.path.getsize(ckpt),
                     p["predicted_peak_bytes"][strategy] - sizes["model"]))
    for mode in PY_MODES:
        m = measure_python(sys.executable, pt, args.device, mode, args.hidden)
        rows.append((f"python {mode}", m, sizes["optimizer"], os.path.getsize(pt), None))

    mib = lambda b: "-" if b is None else f"{b / 2**20:,.0f}"  # noqa: E731
    print(f"checkpoint {ckpt}: weights {mib(sizes['weights'])} MiB, optimizer state {mib(sizes['optimizer'])} MiB, "
          f"largest tensor {mib(sizes['largest'])} MiB; device {args.device}")
    head = ("loader", "time s", "host peak MiB", "transient MiB", "predicted MiB", "device peak MiB", "file MiB")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    base = next(r[1]["seconds"] for r in rows if r[0] == "python torch.load")
    for name, m, resident, size, predicted in rows:
        # On the CPU the host is the device: the optimizer state restored stays resident.
        host = m["host_peak_above_start_bytes"]
        transient = host - resident if args.device == "cpu" else None
        dev = m.get("device_peak_allocated_bytes")
        print(f"| {name} | {m['seconds']:.2f} ({m['seconds'] / base:.2f}x) | {mib(host)} | {mib(transient)} | "
              f"{mib(predicted)} | {mib(dev)} | {mib(size)} |")
    me = next(r for r in rows if r[0] == "train memory_efficient")
    transient = me[1]["host_peak_above_start_bytes"] - me[2]
    print(f"\nmemory_efficient transient {mib(transient)} MiB vs largest tensor + 5% = {mib(sizes['largest'] * 1.05)} MiB: "
          f"{'met' if transient <= sizes['largest'] * 1.05 else 'NOT met'}; time {me[1]['seconds'] / base:.2f}x python torch.load: "
          f"{'met' if me[1]['seconds'] <= base else 'NOT met'}")


if __name__ == "__main__":
    main()
