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
   `load_state_dict`, and `torch.load(mmap=True)` then `load_state_dict(assign=True)`.

"Transient" is the peak above what stays resident after the load (the model, plus the
optimizer state when it is restored): what a strategy costs beyond its result. The goal:
memory_efficient's transient at most the largest tensor + 5%, and its time no worse than
PyTorch's standard load.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

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
if device.startswith("cuda"):
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
before_dev = torch.cuda.memory_allocated() if device.startswith("cuda") else None
open("/proc/self/clear_refs", "w").write("5")
start_rss = rss()
t0 = time.perf_counter()
if mode == "torch.load":
    sd = torch.load(path, map_location=device)
    model.load_state_dict({k: v for k, v in sd.items() if "/" not in k})
else:
    sd = torch.load(path, mmap=True, map_location=device)
    model.load_state_dict({k: v for k, v in sd.items() if "/" not in k}, assign=True)
optimizer_state = {k: v for k, v in sd.items() if "/" in k}
# Touch every value, as a training step would: mmap'd tensors are read here.
for v in list(model.state_dict().values()) + list(optimizer_state.values()):
    v.sum()
if device.startswith("cuda"): torch.cuda.synchronize()
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "host_peak_above_start_bytes": peak() - start_rss,
    "device_peak_allocated_bytes": torch.cuda.max_memory_allocated() if device.startswith("cuda") else None,
    "device_allocated_before_bytes": before_dev}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", default="8192,8192,8192")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--train", default="target/release/train")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="memtable-")
    hidden = f"[{args.hidden}]"
    common = ["--experiment", "standard", "--set", f"model.mlp.hidden={hidden}", "--set", f"data.dir={args.data}",
              "--set", "data.train_limit=1024", "--set", "data.val_limit=256", "--device", args.device]
    ckpt = os.path.join(work, "run", "checkpoints", "latest.safetensors")
    if not os.path.exists(ckpt):
        print(f"making the checkpoint in {work} ...", file=sys.stderr)
        subprocess.run([args.train, *common, "--output-dir", os.path.join(work, "run"), "--set", "training.max_steps=1",
                        "--set", "training.epochs=1"], check=True, stderr=subprocess.DEVNULL)
    info = json.loads(subprocess.run([args.train, "ckpt", "inspect", "--json", ckpt], check=True, capture_output=True).stdout)
    plan = json.loads(subprocess.run([args.train, "plan", *common[2:], "--checkpoint", ckpt, "--json",
                                      "--set", "memory.checkpoint_memory_efficient=false"],
                                     check=True, capture_output=True).stdout)
    sizes = plan["sizes"]
    pt = os.path.join(work, "same_tensors.pt")
    if not os.path.exists(pt):
        import torch
        from safetensors.torch import load_file
        torch.save(load_file(ckpt), pt)

    rows = []
    for strategy in ["standard", "memory_efficient", "model_only"]:
        out = subprocess.run([args.train, "plan", *common[2:], "--checkpoint", ckpt, "--execute", "--json",
                              "--set", f"memory.strategy={strategy}", "--set", "memory.checkpoint_memory_efficient=false"],
                             check=True, capture_output=True).stdout
        m = json.loads(out)["measured"]
        resident = sizes["optimizer"] if strategy != "model_only" else 0
        rows.append((f"train {strategy}", m, resident, os.path.getsize(ckpt), plan["predicted_peak_bytes"][strategy] - sizes["model"]))
    for mode in ["torch.load", "torch.load(mmap)+assign"]:
        out = subprocess.run([sys.executable, "-c", PY_LOADER, pt, args.device, mode, args.hidden],
                             check=True, capture_output=True).stdout
        rows.append((f"python {mode}", json.loads(out), sizes["optimizer"], os.path.getsize(pt), None))

    mib = lambda b: "-" if b is None else f"{b / 2**20:,.0f}"
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
