"""Sharded optimizer state on the CPU: `train`'s distributed.shard (none, optimizer = ZeRO-1,
optimizer_and_gradients = ZeRO-2) next to PyTorch's DDP with AdamW and with
ZeroRedundancyOptimizer(AdamW), at 2 Gloo ranks started by the real torchrun, in one run.

Rows, each a fresh 2-rank job (torchrun --nproc-per-node 2, one thread per rank):

    PyTorch DDP + AdamW                      the peer; speed ratios are against it
    PyTorch DDP + ZeroRedundancyOptimizer    optimizer_class=AdamW, the local shard in .optim
    train, distributed.shard=none            replicated, DDP-like; memory ratios are against it
    train, distributed.shard=optimizer       ZeRO-1
    train, distributed.shard=optimizer_and_gradients   ZeRO-2

A `train` binary without the distributed.shard key (probed with `train config show --set
distributed.shard=...`) gets "not run" in its sharded rows; its replicated row then runs
without the key, which is the same replicated job.

Speed (mlp 784-1024-1024-10, 1.9 M parameters; B = 64 per rank; Fashion-MNIST): samples/s of
the global batch over `--steps` global steps, every step counted, the first (warm-up: DDP's
first buckets, AdamW's state allocated) included, for both. For `train` it is the epoch's
`samples_per_sec` in metrics.jsonl (data.train_limit = steps x 2B, so one epoch is the
steps); its clock starts at the epoch's start and stops after the last step, so start-up,
data loading, validation and the checkpoint are outside it. The PyTorch peer times the same
loop on rank 0 after a barrier: each rank's B rows of the global batch gathered with
index_select from the in-memory set along a seeded permutation, zero_grad(set_to_none=False),
forward, cross_entropy, backward (DDP's overlapping all-reduce), loss.item(), step. Its start-up
(imports, loading, process group, DDP construction) is outside the clock. `train` also
all-reduces each step's loss, example count and stop flag (one small all-reduce, started
before the last backward), which the peer does not. Data as
`train` loads IDX: pixels / 255 as float32, no mean/std normalisation (src/data/load.rs),
both splits held in memory. Ratios are paired: each row divided by PyTorch DDP of the same
repeat, then the median and range over --repeats.

Memory (mlp 784-5000-5000-5000-10, 54 M parameters, 216 MB of fp32 weights; B = 64 per rank;
--mem-steps steps, one run per row), per rank:
  - optimizer state and gradient tensor bytes held after the first optimizer step. PyTorch:
    the nbytes of every tensor in optimizer.state (ZeroRedundancyOptimizer: opt.optim.state,
    the local shard) and of every p.grad, after step() and before the next zero_grad (DDP's
    bucket storage is not counted). train: its "per-rank state after the first step" log
    line (fields rank, parameter_bytes, gradient_bytes, optimizer_state_bytes), n/a if the
    binary does not print it;
  - peak RSS of the rank's process over the whole job: resource.getrusage(RUSAGE_SELF) in
    the PyTorch rank; /usr/bin/time -f %M around each train rank (or, without it, a small
    Python wrapper reading RUSAGE_CHILDREN). train's RSS includes its validation and its
    end-of-epoch checkpoint save, which rank 0 writes (it cannot be turned off), so compare
    rank 1 for the training state alone; the PyTorch peer saves nothing.
  Ratios are against the replicated row of the same framework and rank; ZeRO-1/2 should keep
  at most ~0.55 of the replicated optimizer state (PyTorch's ZeroRedundancyOptimizer assigns
  whole tensors to ranks, so with 54 M parameters in 3 big matrices one rank holds 29 M).

What 2 shared CPU cores can show: with one thread per rank, the step's compute, AdamW's
per-element work (which ZeRO halves per rank) and the Gloo collectives over loopback are all
real, so the ratios of one implementation to the other, and the bytes, are meaningful. What
they cannot show: network bandwidth (loopback all-reduce, reduce-scatter and all-gather cost
memory copies, not wire time), so ZeRO's communication pattern is neither penalised nor
rewarded as on a cluster; and the absolute samples/s move with whatever else runs on the
machine, so compare ratios, and rerun when a range is wide.

This is a benchmark, not a test: it asserts nothing. Run it with the venv's Python, one run at
a time (it uses both cores):

    ~/.cache/train/torch-2.11.0/bin/python bench/zero.py [--repeats 3] [--steps 200]
        [--only speed|memory] [--train-bin target/release/train] [--json runs.json]
"""

import argparse
import gzip
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULT_TAG = "ZERO_BENCH_RESULT "
STATE_LINE = "per-rank state after the first step"
NO_SHARD = "not run: this train binary has no distributed.shard"
RANKS = 2

# (row name, framework, what): what is the PyTorch optimizer or train's distributed.shard value.
ROWS = [
    ("PyTorch DDP + AdamW", "torch", "adamw"),
    ("PyTorch DDP + ZeroRedundancyOptimizer", "torch", "zero"),
    ("train, shard=none (replicated)", "train", "none"),
    ("train, shard=optimizer (ZeRO-1)", "train", "optimizer"),
    ("train, shard=optimizer_and_gradients (ZeRO-2)", "train", "optimizer_and_gradients"),
]
REPLICATED = {"torch": "adamw", "train": "none"}


# ---------------------------------------------------------------------------------------
# The PyTorch rank (run by torchrun as `zero.py --worker ...`)
# ---------------------------------------------------------------------------------------

def read_idx(directory: str, stem: str):
    """An IDX file (`stem` or `stem.gz`) as a uint8 numpy array shaped by its header."""
    import numpy as np

    plain = os.path.join(directory, stem)
    opener = (lambda: open(plain, "rb")) if os.path.exists(plain) else (lambda: gzip.open(plain + ".gz", "rb"))
    with opener() as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    assert zero == 0 and dtype == 0x08, f"{stem}: only unsigned-byte IDX files are expected"
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_idx(directory: str):
    """Both splits as `train` loads IDX (float32 pixels / 255, int64 labels); returns train's."""
    import torch

    splits = {}
    for split in ("train", "t10k"):
        images = read_idx(directory, f"{split}-images-idx3-ubyte")
        labels = read_idx(directory, f"{split}-labels-idx1-ubyte")
        n, h, w = images.shape
        x = torch.from_numpy(images.copy()).view(n, 1, h, w).to(torch.float32) / 255.0
        splits[split] = (x, torch.from_numpy(labels.astype("int64")))
    return splits["train"]


def tensor_bytes(tensors) -> int:
    import torch

    return sum(t.nbytes for t in tensors if isinstance(t, torch.Tensor))


def worker(a) -> None:
    import resource

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch import nn
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(a.seed)
    x, y = load_idx(a.data_dir)
    n = a.steps * a.batch * world
    if n > x.shape[0]:
        sys.exit(f"{a.steps} global steps of {world} x {a.batch} need {n} examples; the data has {x.shape[0]}")
    x, y = x[:n], y[:n]  # data.train_limit keeps the first n

    widths = [x[0].numel(), *(int(v) for v in a.hidden.split(",")), int(y.max()) + 1]
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    model = DDP(nn.Sequential(nn.Flatten(), *layers))
    hyper = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, foreach=False)
    if a.optimizer == "zero":
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.AdamW, **hyper)
        local_state = lambda: opt.optim.state  # noqa: E731
    else:
        opt = torch.optim.AdamW(model.parameters(), **hyper)
        local_state = lambda: opt.state  # noqa: E731
    order = torch.randperm(n, generator=torch.Generator().manual_seed(a.seed))
    model.train()

    first = None
    dist.barrier()
    start = time.perf_counter()
    for s in range(a.steps):
        base = s * a.batch * world + rank * a.batch
        idx = order[base:base + a.batch]
        xs, ys = x.index_select(0, idx), y.index_select(0, idx)
        opt.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(xs), ys)
        loss.backward()
        loss.item()
        opt.step()
        if first is None:
            params = list(model.parameters())
            first = {
                "parameter_bytes": tensor_bytes(params),
                "gradient_bytes": tensor_bytes(p.grad for p in params),
                "optimizer_state_bytes": tensor_bytes(v for st in local_state().values() for v in st.values()),
            }
    seconds = time.perf_counter() - start
    mine = {"rank": rank, "seconds": seconds, "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "last_loss": loss.item(), **first}
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        print(RESULT_TAG + json.dumps({"ranks": everyone, "samples_per_sec": n / seconds, "torch": torch.__version__}),
              flush=True)
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------

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


def torchrun(entry: list) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(RANKS), "--master-addr",
            "127.0.0.1", "--master-port", str(free_port()), *entry]


class Failed(Exception):
    pass


def execute(cmd: list, name: str) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        print(f"--- {name}: exit {done.returncode}\n{(done.stderr + done.stdout)[-3000:]}", file=sys.stderr)
        raise Failed(f"failed: exit {done.returncode}")
    return done


def run_torch(args, optimizer: str, hidden: str, steps: int, name: str) -> dict:
    cmd = torchrun([str(Path(__file__).resolve()), "--worker", "--optimizer", optimizer, "--hidden", hidden,
                    "--batch", str(args.batch), "--steps", str(steps), "--data-dir", args.data_dir])
    done = execute(cmd, name)
    lines = [l for l in done.stdout.splitlines() if l.startswith(RESULT_TAG)]
    if not lines:
        raise Failed("failed: no result line")
    out = json.loads(lines[-1][len(RESULT_TAG):])
    out["ranks"] = sorted(out["ranks"], key=lambda r: r["rank"])
    return out


def shard_support(train_bin: str) -> dict:
    """For each shard value, None if this binary takes it, else why the row is not run."""
    why = {}
    for _, framework, value in ROWS:
        if framework != "train":
            continue
        done = subprocess.run([train_bin, "config", "show", "--set", f"distributed.shard={value}"],
                              env=clean_env(), capture_output=True, text=True, timeout=60)
        text = done.stderr + done.stdout
        if done.returncode == 0 and "distributed.shard" in text:
            why[value] = None
        elif value == "none":
            why[value] = None  # the replicated job, without the key
        elif "unknown key" in text or "distributed.shard" not in text:
            why[value] = NO_SHARD
        else:
            why[value] = "not run: " + text.strip().splitlines()[-1][:120]
    why["_has_key"] = why.get("optimizer") is None or why.get("optimizer_and_gradients") is None
    return why


def state_lines(text: str):
    """The JSON objects on the lines that mention STATE_LINE. Both ranks write to one pipe, so
    a line may hold two objects if their writes interleave; decode each one found."""
    decoder = json.JSONDecoder()
    for line in text.splitlines():
        if STATE_LINE not in line:
            continue
        at = line.find("{")
        while at != -1:
            try:
                obj, end = decoder.raw_decode(line, at)
            except ValueError:
                at = line.find("{", at + 1)
                continue
            yield obj
            at = line.find("{", end)


def run_train(args, shard: str, has_key: bool, hidden: str, steps: int, work: Path, name: str,
              rss: bool = False) -> dict:
    out = work / name
    sets = [f"data.dir={args.data_dir}", f"model.mlp.hidden=[{hidden}]", f"training.batch_size={args.batch}",
            f"data.train_limit={steps * args.batch * RANKS}", "data.val_limit=256", "training.epochs=1",
            "run.device=cpu", "run.threads=1", "checkpoint.async_save=true",
            *([f"distributed.shard={shard}"] if has_key else [])]
    cmd = [args.train_bin, "--log-format", "json", "--output-dir", str(out), "--resume", "never",
           *sum((["--set", s] for s in sets), [])]
    rss_base = work / f"{name}.maxrss"
    if rss:
        # Each rank's peak RSS, written to rss_base.<RANK> by a wrapper around the binary.
        if Path("/usr/bin/time").exists():
            wrap = ["sh", "-c", 'exec /usr/bin/time -o "$0.$RANK" -f "%M" "$@"', str(rss_base)]
        else:
            wrap = [sys.executable, "-c",
                    "import os, resource, subprocess, sys\n"
                    "rc = subprocess.call(sys.argv[2:])\n"
                    "open(sys.argv[1] + '.' + os.environ['RANK'], 'w').write("
                    "str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
                    "sys.exit(rc)", str(rss_base)]
        cmd = wrap + cmd
    done = execute(torchrun(["--no-python", *cmd]), name)
    epochs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"epoch"' in l]
    epoch = [e for e in epochs if e.get("kind") == "epoch"][-1]
    ranks = {r: {"rank": r} for r in range(RANKS)}
    for d in state_lines(done.stderr + done.stdout):
        f = d.get("fields", {}) if isinstance(d, dict) else {}
        if f.get("message") == STATE_LINE and isinstance(f.get("rank"), int) and f["rank"] in ranks:
            for k in ("parameter_bytes", "gradient_bytes", "optimizer_state_bytes"):
                if isinstance(f.get(k), int):
                    ranks[f["rank"]][k] = f[k]
    if rss:
        for r in ranks:
            lines = Path(f"{rss_base}.{r}").read_text().split()
            ranks[r]["maxrss_kib"] = int(lines[-1])
    return {"samples_per_sec": epoch["samples_per_sec"], "train_seconds": epoch["train_seconds"],
            "ranks": [ranks[r] for r in range(RANKS)]}


def one(args, support: dict, row, hidden: str, steps: int, work: Path, tag: str, memory: bool) -> dict:
    name, framework, what = row
    if framework == "train" and support[what]:
        return {"skipped": support[what]}
    label = f"{tag}-{framework}-{what}"
    try:
        if framework == "torch":
            return run_torch(args, what, hidden, steps, label)
        return run_train(args, what, support["_has_key"], hidden, steps, work, label, rss=memory)
    except Failed as e:
        return {"skipped": str(e)}


def spread(values: list, fmt: str) -> str:
    return f"{min(values):{fmt}}–{max(values):{fmt}}" if len(values) > 1 else ""


def speed_table(args, results: dict) -> None:
    print(f"\n## Speed: mlp 784-{args.hidden.replace(',', '-')}-10, B = {args.batch} per rank, {RANKS} Gloo ranks, "
          f"{args.steps} global steps, one thread per rank, {os.cpu_count()} CPUs, {args.repeats} repeat(s)\n")
    print("| run | samples/s (median) | range | × PyTorch DDP (median of paired ratios) | range |")
    print("|---|--:|--:|--:|--:|")
    base = results[ROWS[0][0]]
    for name, *_ in ROWS:
        runs = results[name]
        ok = [r for r in runs if "skipped" not in r]
        if not ok:
            print(f"| {name} | {runs[0]['skipped']} | | | |")
            continue
        sps = [r["samples_per_sec"] for r in ok]
        ratios = [r["samples_per_sec"] / b["samples_per_sec"] for r, b in zip(runs, base)
                  if "skipped" not in r and "skipped" not in b]
        ratio = f"{statistics.median(ratios):.3f}" if ratios else "n/a"
        print(f"| {name} | {statistics.median(sps):,.0f} | {spread(sps, ',.0f')} | {ratio} | "
              f"{spread(ratios, '.3f') if ratios else ''} |")


def memory_table(args, results: dict) -> None:
    mb = lambda v: "n/a" if v is None else f"{v / 1e6:,.1f}"  # noqa: E731
    ratio = lambda v, b: "n/a" if v is None or not b else f"{v / b:.3f}"  # noqa: E731
    print(f"\n## Memory: mlp 784-{args.mem_hidden.replace(',', '-')}-10, B = {args.batch} per rank, {RANKS} Gloo "
          f"ranks, {args.mem_steps} steps; bytes after the first step, peak RSS over the job (MB = 10^6 bytes)\n")
    print("| run | rank | parameters MB | gradients MB | optimizer state MB | opt ÷ replicated | grad ÷ replicated "
          "| peak RSS MB | RSS ÷ replicated |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    by_what = {(fw, what): results[name] for name, fw, what in ROWS}
    for name, framework, what in ROWS:
        res = results[name]
        if "skipped" in res:
            print(f"| {name} | | {res['skipped']} | | | | | | |")
            continue
        base = by_what[(framework, REPLICATED[framework])]
        for r in res["ranks"]:
            b = {} if "skipped" in base else base["ranks"][r["rank"]]
            rss = r.get("maxrss_kib") and r["maxrss_kib"] * 1024
            brss = b.get("maxrss_kib") and b["maxrss_kib"] * 1024
            print(f"| {name} | {r['rank']} | {mb(r.get('parameter_bytes'))} | {mb(r.get('gradient_bytes'))} | "
                  f"{mb(r.get('optimizer_state_bytes'))} | "
                  f"{ratio(r.get('optimizer_state_bytes'), b.get('optimizer_state_bytes'))} | "
                  f"{ratio(r.get('gradient_bytes'), b.get('gradient_bytes'))} | {mb(rss)} | {ratio(rss, brss)} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-bin", default=str(REPO / "target" / "release" / "train"))
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--hidden", default="1024,1024", help="speed model's hidden widths (784-1024-1024-10)")
    ap.add_argument("--mem-hidden", default="5000,5000,5000", help="memory model's hidden widths (54 M parameters)")
    ap.add_argument("--batch", type=int, default=64, help="per-rank batch B")
    ap.add_argument("--steps", type=int, default=200, help="global steps per speed run (at most 60000 / 2B)")
    ap.add_argument("--mem-steps", type=int, default=3, help="global steps per memory run")
    ap.add_argument("--repeats", type=int, default=3, help="speed runs per row (memory: one run per row)")
    ap.add_argument("--only", choices=["speed", "memory"])
    ap.add_argument("--json", help="write every run here")
    # The PyTorch rank, run by torchrun.
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--optimizer", choices=["adamw", "zero"], help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if not Path(args.train_bin).exists():
        ap.error(f"--train-bin {args.train_bin} does not exist")

    support = shard_support(args.train_bin)
    print(f"train binary: {args.train_bin}; distributed.shard "
          f"{'known' if support['_has_key'] else 'unknown (sharded rows not run)'}", file=sys.stderr)
    record = {"speed": None, "memory": None}
    with tempfile.TemporaryDirectory(prefix="zero-bench-") as work:
        if args.only in (None, "speed"):
            speed = {row[0]: [] for row in ROWS}
            for r in range(args.repeats):
                for row in ROWS:
                    speed[row[0]].append(one(args, support, row, args.hidden, args.steps, Path(work), f"s{r}", False))
            record["speed"] = speed
        if args.only in (None, "memory"):
            record["memory"] = {row[0]: one(args, support, row, args.mem_hidden, args.mem_steps, Path(work), "m", True)
                                for row in ROWS}
    if record["speed"]:
        speed_table(args, record["speed"])
    if record["memory"]:
        memory_table(args, record["memory"])
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
