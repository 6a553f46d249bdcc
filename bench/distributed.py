"""Data-parallel training on the CPU: samples/s with 1 and 2 ranks (Gloo on loopback,
started by torchrun), and the time per step the gradient all-reduce adds, with DDP's Reducer
(overlapping backward) and without (all-reduce after backward).

Runs, each a fresh `train` job on Fashion-MNIST (the Debian package, or --data-dir), one
thread per rank, one epoch of `--steps` global steps:

    1 rank,  batch B         the per-rank work of the 2-rank jobs
    1 rank,  batch 2B        the same global batch as the 2-rank jobs
    2 ranks, batch B, overlap        distributed.overlap=true (c10d Reducer)
    2 ranks, batch B, no overlap     distributed.overlap=false (bucketed all-reduce after backward)

samples/s is `train`'s own epoch figure (samples of the global batch over the epoch's train
time). The per-step times come from each rank's "data parallel: time per step" log line: the
last micro-batch's backward (with the Reducer its all-reduce waits happen inside it), the
all-reduce after backward (without the Reducer), and the small all-reduces of the step's
example count, loss and stop flag. The table shows rank 0's and the median of --repeats runs.

This is a benchmark, not a test: it asserts nothing. Run it with the venv's Python:

    ~/.cache/train/torch-2.11.0/bin/python bench/distributed.py
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("TRAIN_") or k.startswith("SLURM_") or k.startswith("TORCHELASTIC_")
                   or k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))}
    env["RUST_LOG"] = "info"
    return env


def run(args, name: str, ranks: int, batch: int, overlap: bool, work: Path) -> dict:
    out = work / name
    sets = [f"data.dir={args.data_dir}", f"model.mlp.hidden=[{args.hidden}]", f"training.batch_size={batch}",
            f"data.train_limit={args.steps * args.batch * 2}", "data.val_limit=256", "training.epochs=1",
            f"run.device={args.device}", f"distributed.overlap={'true' if overlap else 'false'}",
            "checkpoint.async_save=true", *(["run.threads=1"] if args.device == "cpu" else [])]
    cmd = [args.train_bin, "--log-format", "json", "--output-dir", str(out), "--resume", "never",
           *sum((["--set", s] for s in sets), [])]
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-addr",
               "127.0.0.1", "--master-port", str(free_port()), "--no-python", *cmd]
    done = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{name}: exit {done.returncode}\n{done.stderr[-3000:]}")
    epochs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"epoch"' in l]
    epoch = [e for e in epochs if e.get("kind") == "epoch"][-1]
    times = {}
    for line in (done.stderr + done.stdout).splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        f = d.get("fields", {})
        if f.get("message") == "data parallel: time per step" and f.get("rank") == 0:
            times = {k: float(f[k]) for k in ("last_backward_ms", "allreduce_after_backward_ms", "small_allreduces_ms")}
    return {"samples_per_sec": epoch["samples_per_sec"], "train_seconds": epoch["train_seconds"], **times}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-bin", default=str(REPO / "target" / "release" / "train"))
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--hidden", default="1024,1024", help="model.mlp.hidden (default 784-1024-1024-10, 1.9 M parameters)")
    ap.add_argument("--batch", type=int, default=64, help="per-rank batch B")
    ap.add_argument("--steps", type=int, default=100, help="global steps per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu (Gloo, one thread per rank) or cuda (NCCL, one GPU per rank)")
    ap.add_argument("--json", help="write every run here")
    args = ap.parse_args()
    variants = [("1 rank, batch B", 1, args.batch, False), ("1 rank, batch 2B", 1, 2 * args.batch, False),
                ("2 ranks, batch B, overlap (Reducer)", 2, args.batch, True),
                ("2 ranks, batch B, all-reduce after backward", 2, args.batch, False)]
    results = {v[0]: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="dist-bench-") as work:
        for r in range(args.repeats):
            for name, ranks, batch, overlap in variants:
                results[name].append(run(args, f"{r}-{ranks}-{batch}-{overlap}", ranks, batch, overlap, Path(work)))
    per_rank = "one thread per rank" if args.device == "cpu" else "one GPU per rank"
    print(f"mlp 784-{args.hidden.replace(',', '-')}-10, B = {args.batch}, {args.steps} global steps on {args.device}, "
          f"{per_rank}, {os.cpu_count()} CPUs, median of {args.repeats}\n")
    print("| run | samples/s | last backward ms/step | all-reduce after backward ms/step | small all-reduces ms/step |")
    print("|---|--:|--:|--:|--:|")
    for name, *_ in variants:
        runs = results[name]
        med = lambda k: statistics.median(x[k] for x in runs) if k in runs[0] else None  # noqa: E731
        cell = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"| {name} | {med('samples_per_sec'):,.0f} | {cell(med('last_backward_ms'))} | "
              f"{cell(med('allreduce_after_backward_ms'))} | {cell(med('small_allreduces_ms'))} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
