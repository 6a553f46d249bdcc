"""Streamed data (issue 19), measured: peak host memory against the data's size, and the
image pipeline's throughput against PyTorch's DataLoader.

Four tables, from one invocation (`--only` picks some: memory, resize, augment, tokens), every
`train` run a fresh subprocess of a private copy of the binary:

1. **Image folder, memory.** Fashion-MNIST written out as `--images` (default 20,000) RGB
   64x64 JPEGs in torchvision's `ImageFolder` layout (one folder per class, `0` .. `9`), and
   a second folder holding `--scale` (default 10) times as many entries: each file of the
   first hard-linked `--scale` times under new names. Hard links are distinct directory
   entries, so `train` lists, classes and shuffles 200,000 paths; their data is shared on
   disk, which changes nothing that is measured here (the page cache is not RSS). `train`
   trains a tiny mlp on each for `--memory-steps` steps: the run lists every file at start
   and decodes only the batches it trains on. Reported: peak RSS, the pipeline bound the
   start-up log states (`host_bound`), the time from spawn to the "images listed" line.
2. **Image folder, throughput.** Decode + resize images/s on the first folder at each
   `--workers` W: `train` with `data.workers=W`, `run.threads=1`, the mlp hidden `[8]` so
   that the step costs next to nothing, `data.train_limit` = `--steps` x batch so the epoch
   ends and `metrics.jsonl` gets its epoch line (a run stopped by `training.max_steps`
   mid-epoch writes none): its `samples_per_sec` and `data_wait_seconds / train_seconds`.
   PyTorch: torchvision `ImageFolder` (its PIL loader, `convert("RGB")`) with
   `transforms.v2.Compose([Resize(size), ToImage(), ToDtype(float32, scale=True)])`,
   `DataLoader(batch_size, shuffle=True, num_workers=W)`, `torch.set_num_threads(1)`, timed
   from `iter(loader)` to the batch that reaches the same number of images (`train`'s
   `train_seconds` likewise starts before its prefetcher and includes the first batch).
   Both decode JPEG, convert to 3 channels, resize 64x64 -> `--image-size` bilinearly and
   make float32 in [0, 1]; `train` also feeds the mlp, which the data_wait share accounts for.
3. **Image folder, decode + augment.** As table 2, with augmentations (`AUGMENT`): `train`
   with `data.transforms.train` = RandomResizedCrop (`--image-size`, scale [0.6, 1.0]),
   RandomHorizontalFlip (p 0.5), ColorJitter (brightness, contrast, saturation 0.4) and
   Normalize (mean 0.5, std 0.25 per channel); it crops and flips bytes, turns them into floats
   in [0, 1] at ColorJitter and normalizes last. PyTorch: the same v2 transforms in the order
   that does the same work, `ToImage()` (uint8 tensor), `RandomResizedCrop(antialias=True)`,
   `RandomHorizontalFlip`, `ToDtype(float32, scale=True)`, `ColorJitter` (float kernels),
   `Normalize` (torchvision's own v2 example also crops and flips uint8 tensors before
   `ToDtype`); and, unless `--no-pil-order`, the older habit, `ToImage()` after
   `ColorJitter`: crop, flip and jitter on the PIL image, then `ToImage()`, `ToDtype`,
   `Normalize` (PIL's resampling and uint8 enhancers: the same transforms, not the same
   arithmetic). The three runs of a round rotate which goes first.
4. **Token file, memory.** uint16 tokens, uniform in [0, `--vocab`), written with numpy in
   64 MiB chunks and fsynced: `--tokens-small-mb` (default 64) and `--tokens-gb` (default 1.0
   GiB). `train` trains the gpt (context 64, width 128, depth 2, 4 heads, the vocabulary
   `--vocab`) for `--token-steps` steps on each with `model.gpt.vocab` set, and once more on
   the large file with the vocabulary left to the scan, after dropping the file from the page
   cache (`POSIX_FADV_DONTNEED`), so the scan time the log states is a cold read. A baseline
   row trains the same gpt on 1 MiB of text held in memory (`data.kind=text`,
   `model.gpt.vocab` the same): libtorch, the model, AdamW and the activations, with no
   streaming. The bound is model + AdamW state (`train plan --json`: `sizes.model` +
   `sizes.optimizer` = parameters x 4 x 3) + 256 MiB. The token files are deleted after
   this table, `--keep` or not.

Peak RSS: the child's own `ru_maxrss`, from `os.wait4` on its pid (exact, whatever the
sampling), in KiB. A thread also samples `/proc/PID/status` every 20 ms: the largest RssAnon
(anonymous memory: heap, stacks, tensors), the largest RssFile (file-backed pages, nearly all
libtorch's code), and VmHWM at the last line `train` logs. That last figure is "peak before
exit": a `train` process reaches its peak RSS while it tears down, about 100 ms after its
last log line (RssFile grows by about 100 MiB in the last tens of milliseconds with no new
mapping, RssAnon flat: most likely the C++ static destructors of libtorch and the CUDA
libraries faulting in their code), so `ru_maxrss` lies 15-120 MiB above anything seen while
it trains.

Every measurement is repeated `--repeats` times (the tools taking turns to go first in the
throughput tables); rates are medians, peaks the median with the range. The machine is
shared and noisy: `--wait-idle S` waits up to S seconds before each timed run for the CPUs to
be idle, and the load average before and after goes with the tables. It asserts nothing but
sanity: `train` listed every file, PyTorch's batches have the expected shape and range ([0, 1],
or [-2, 2] after Normalize), the scan found the vocabulary the file was written with.

Run it with the venv's Python (the PyTorch loader runs under the same interpreter):

    ~/.cache/train/torch-2.11.0/bin/python bench/data_pipeline.py --json /tmp/dp.json

A default run takes 2.5-4.5 minutes on 2 shared cores (load average 1-4) without the augment
table, which adds about 3 minutes, and writes about 1.3 GB under `--work` (1.1 GB of it the
token files, deleted as soon as their table is done). `--only augment` writes the 30 MB of
JPEGs and nothing else.
"""

import argparse
import datetime
import gzip
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_speed import clean_env, default_train_bin, wait_for_idle  # noqa: E402

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# The JPEGs on disk: Fashion-MNIST's 28x28 scaled to 64x64, as 3-channel JPEGs so the decoder
# does the colour conversion and chroma upsampling a photograph needs.
SIDE_ON_DISK = 64
JPEG_QUALITY = 90
CLASSES = 10
BATCH = 128
SEED = 42
MIB = 2**20
# numpy writes the token files in chunks of this many bytes (the generator holds one).
TOKEN_CHUNK = 64 * MIB
# The gpt of the token table: train's defaults but for the vocabulary and the batch, which
# keep the logits (batch x context x vocab floats, several copies in backward) small, so that
# the activations do not hide the data pipeline's share of the peak.
GPT = {"context": 64, "width": 128, "depth": 2, "heads": 4}
TOKEN_BATCH = 32
# The bound of the token table: model + optimizer + this.
TOKEN_SLACK = 256 * MIB
# The baseline's in-memory text.
BASELINE_TEXT_BYTES = MIB
# How often the sampler reads /proc/PID/status.
SAMPLE_SECONDS = 0.02

# The tables `--only` chooses from, in the order they run.
TABLES = ("memory", "resize", "augment", "tokens")

# Lines of train's start-up log (text format, stderr not a terminal), e.g.
# 2026-12-05T04:13:19.456539Z  INFO images listed: decoded as batches need them classes=10 train=17999 val=2001
LOG_TIME = re.compile(r"^(\S+Z)\s")
LISTED = re.compile(r"images listed.*\btrain=(\d+) val=(\d+)")
HOST_BOUND = re.compile(r"data streamed from its files.*\bhost_bound=([0-9.]+ \S+)")
SCAN = re.compile(r"token vocabulary: the largest token \+ 1.*\bvocab=(\d+) seconds=([0-9.]+)")

# The augmentations of the "decode + augment" table, for both tools: RandomResizedCrop to the
# image size with this scale (torchvision's default ratio), a flip with this p, ColorJitter
# with this brightness, contrast and saturation, Normalize with this mean and std per channel.
AUGMENT = {"scale": [0.6, 1.0], "flip": 0.5, "jitter": 0.4, "mean": 0.5, "std": 0.25}


def train_transforms(size: int) -> list:
    """`data.transforms.train` of the augment table, for `size` x `size` output."""
    a = AUGMENT
    return [
        {"RandomResizedCrop": {"size": size, "scale": a["scale"]}},
        {"RandomHorizontalFlip": {"p": a["flip"]}},
        {"ColorJitter": {"brightness": a["jitter"], "contrast": a["jitter"], "saturation": a["jitter"]}},
        {"Normalize": {"mean": [a["mean"]] * 3, "std": [a["std"]] * 3}},
    ]


# The PyTorch chains, by name. "resize": the decode + resize table. "augment": the augment
# table's, ordered as `train` works: to a uint8 tensor first, crop and flip on bytes, to float
# in [0, 1] before ColorJitter, which then runs torchvision's float kernels, Normalize last.
# "augment-pil": the same transforms in the older habit's order, `ToImage()` after
# ColorJitter: crop, flip and jitter on the PIL image (PIL's resampling and PIL's uint8
# ImageEnhance), then to a float tensor and Normalize.
TORCH_CHAINS = ("resize", "augment", "augment-pil")

# The PyTorch side of the throughput tables, in a fresh process: prints one JSON line.
TORCH_LOADER = r"""
import json, sys, time
root, chain, aug = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
workers, batch, images, h, w, seed = map(int, sys.argv[4:])
import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2
torch.set_num_threads(1)
to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
if chain == "resize":
    tf = [v2.Resize((h, w)), *to_float]
else:
    crop = v2.RandomResizedCrop((h, w), scale=tuple(aug["scale"]), antialias=True)
    flip = v2.RandomHorizontalFlip(aug["flip"])
    jitter = v2.ColorJitter(aug["jitter"], aug["jitter"], aug["jitter"])
    norm = v2.Normalize([aug["mean"]] * 3, [aug["std"]] * 3)
    if chain == "augment":
        tf = [v2.ToImage(), crop, flip, v2.ToDtype(torch.float32, scale=True), jitter, norm]
    else:
        tf = [crop, flip, jitter, *to_float, norm]
tf = v2.Compose(tf)
ds = datasets.ImageFolder(root, transform=tf)
loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                    generator=torch.Generator().manual_seed(seed))
seen, first, lo, hi, shape = 0, None, 1.0, 0.0, None
t0 = time.perf_counter()
for x, y in loader:
    seen += x.shape[0]
    if first is None:
        first = time.perf_counter() - t0
        shape, dtype = list(x.shape), str(x.dtype)
    if seen >= images:
        break
seconds = time.perf_counter() - t0
lo, hi = float(x.min()), float(x.max())
print(json.dumps({"images": seen, "seconds": seconds, "images_per_sec": seen / seconds,
    "first_batch_seconds": first, "shape": shape, "dtype": dtype, "min": lo, "max": hi,
    "files": len(ds), "threads": torch.get_num_threads(), "chain": repr(tf)}))
"""


class BenchError(Exception):
    pass


# --- writing the data ----------------------------------------------------------------------

# Fashion-MNIST for the JPEG writers, set before the pool forks (they inherit it).
_IMAGES = None


def read_fashion_mnist():
    """Both splits of Fashion-MNIST (70,000 images and labels) from Debian's gzipped IDX files."""
    import numpy as np

    xs, ys = [], []
    for split in ("train", "t10k"):
        with gzip.open(FASHION_MNIST / f"{split}-images-idx3-ubyte.gz") as f:
            xs.append(np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28))
        with gzip.open(FASHION_MNIST / f"{split}-labels-idx1-ubyte.gz") as f:
            ys.append(np.frombuffer(f.read(), np.uint8, offset=8))
    return np.concatenate(xs), np.concatenate(ys)


def _write_some(job):
    from PIL import Image

    root, start, stop = job
    x, y = _IMAGES
    for i in range(start, stop):
        j = i % len(x)  # past 70,000 the images repeat (under new names)
        img = Image.fromarray(x[j]).resize((SIDE_ON_DISK, SIDE_ON_DISK), Image.BILINEAR).convert("RGB")
        img.save(f"{root}/{y[j]}/{i:07d}.jpg", quality=JPEG_QUALITY)
    return stop - start


def write_jpegs(root: Path, count: int) -> float:
    """`count` JPEGs in ImageFolder layout under `root`, written by one process per core;
    returns the seconds it took."""
    global _IMAGES
    _IMAGES = read_fashion_mnist()
    for c in range(CLASSES):
        (root / str(c)).mkdir(parents=True)
    t0 = time.perf_counter()
    step = 2000
    jobs = [(str(root), s, min(s + step, count)) for s in range(0, count, step)]
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        written = sum(pool.map(_write_some, jobs))
    _IMAGES = None
    if written != count:
        raise BenchError(f"wrote {written} JPEGs, not {count}")
    return time.perf_counter() - t0


def link_copies(src: Path, dst: Path, scale: int) -> int:
    """`dst` in the layout of `src`, each file of `src` hard-linked `scale` times under new
    names; returns the number of entries."""
    made = 0
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        out = dst / cls.name
        out.mkdir(parents=True)
        names = sorted(os.listdir(cls))
        for k in range(scale):
            for n in names:
                os.link(cls / n, out / f"{Path(n).stem}-{k}.jpg")
                made += 1
    return made


def write_tokens(path: Path, size: int, vocab: int, seed: int) -> float:
    """`size` bytes of uint16 tokens uniform in [0, vocab), fsynced; returns the seconds."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        left = size // 2
        while left:
            n = min(left, TOKEN_CHUNK // 2)
            rng.integers(0, vocab, size=n, dtype=np.uint16).tofile(f)
            left -= n
        # The largest token, once, so that the scan's answer is known whatever the draw.
        f.seek(-2, os.SEEK_END)
        f.write((vocab - 1).to_bytes(2, "little"))
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def drop_from_cache(path: Path):
    """Drops `path`'s pages from the page cache (it was fsynced, so none is dirty); returns
    the bytes still cached after, as util-linux's `fincore` counts them (None without it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if shutil.which("fincore") is None:
        return None
    done = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                          capture_output=True, text=True)
    return int(done.stdout.split()[0]) if done.returncode == 0 and done.stdout.strip() else None


# --- running and measuring -----------------------------------------------------------------


def status_fields(pid: int, names: tuple) -> dict:
    """Fields of /proc/PID/status in bytes (empty once the process is gone or a zombie)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in names:
                    out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def run_measured(cmd: list, env: dict, out: Path) -> dict:
    """Runs `cmd` with stdout/stderr into `out`; returns its wall time, spawn time, exact peak
    RSS (`ru_maxrss` from wait4 on its pid), the largest RssFile/RssAnon sampled, and VmHWM as
    sampled at its last log line (the peak before the process's teardown)."""
    sampled = {"RssFile": 0, "RssAnon": 0}
    hwm = []  # (unix time, VmHWM bytes)
    done = threading.Event()
    with open(out / "stdout", "wb") as so, open(out / "stderr", "wb") as se:
        t0 = time.time()
        proc = subprocess.Popen(cmd, env=env, stdout=so, stderr=se, stdin=subprocess.DEVNULL)

        def sample():
            while not done.is_set():
                now = time.time()
                fields = status_fields(proc.pid, (*sampled, "VmHWM"))
                if "VmHWM" in fields:
                    hwm.append((now, fields.pop("VmHWM")))
                for k, v in fields.items():
                    sampled[k] = max(sampled[k], v)
                done.wait(SAMPLE_SECONDS)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # wait4 rather than Popen.wait: it also gives the child's own resource usage.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.time() - t0
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = (out / "stderr").read_text(errors="replace")[-2000:]
        shown = " ".join("<script>" if "\n" in str(c) else str(c) for c in cmd)
        raise BenchError(f"exit {proc.returncode}: {shown}\n{tail}")
    last_line = None
    for line in (out / "stderr").read_text(errors="replace").splitlines():
        t = LOG_TIME.match(line)
        if t:
            last_line = datetime.datetime.fromisoformat(t.group(1)).timestamp()
    before = [b for when, b in hwm if last_line is not None and when <= last_line]
    return {
        "spawn_unix": t0,
        "wall_seconds": wall,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "peak_before_exit_bytes": max(before) if before else None,
        "rss_file_sampled_bytes": sampled["RssFile"],
        "rss_anon_sampled_bytes": sampled["RssAnon"],
    }


def log_match(out: Path, pattern: re.Pattern):
    """The first stderr line `pattern` matches: (unix time of the line, match), or None."""
    for line in (out / "stderr").read_text(errors="replace").splitlines():
        m = pattern.search(line)
        if m:
            t = LOG_TIME.match(line)
            when = datetime.datetime.fromisoformat(t.group(1)).timestamp() if t else None
            return when, m
    return None


def epoch_line(run_dir: Path) -> dict:
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if m.get("kind") == "epoch":
            return m
    raise BenchError(f"{run_dir}/metrics.jsonl has no epoch line")


def check_train_bin(path: Path, env: dict, image_size: int) -> None:
    """Refuses a binary without the streamed kinds and the augmentations this benchmark drives."""
    augment = ["data.kind=image_folder", f"data.image_size=[{image_size}, {image_size}]",
               f"data.transforms.train={json.dumps(train_transforms(image_size))}"]
    for sets in (["data.kind=image_folder", "data.workers=1", "data.prefetch_batches=2"],
                 ["data.kind=tokens", "data.path=tokens.u16", "data.dtype=uint16", "model.kind=gpt"], augment):
        probe = [str(path), "config", "show", "--set", "training.max_steps=1"]
        for s in sets:
            probe += ["--set", s]
        done = subprocess.run(probe, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"{path} cannot run this benchmark ({' '.join(sets)}): {done.stderr.strip()}")


class Bench:
    def __init__(self, a, work: Path):
        self.a = a
        self.work = work
        self.env = clean_env()
        self.runs = 0
        self.busy_before = []

    def _dir(self, tag: str, timed: bool = True) -> Path:
        if timed and self.a.wait_idle > 0:
            self.busy_before.append(round(wait_for_idle(self.a.wait_idle), 3))
        self.runs += 1
        d = self.work / "runs" / f"{self.runs:03d}-{tag}"
        d.mkdir(parents=True)
        return d

    def train_cmd(self, out: Path, sets: dict) -> list:
        cmd = [str(self.a.train_bin), "--output-dir", str(out / "run"), "--device", "cpu", "--resume", "never"]
        base = {"training.epochs": 1, "training.seed": SEED, "run.threads": 1}
        for k, v in {**base, **sets}.items():
            cmd += ["--set", f"{k}={json.dumps(v) if isinstance(v, list) else v}"]
        return cmd

    def image_sets(self, folder: Path, workers: int) -> dict:
        return {
            "data.kind": "image_folder",
            "data.dir": str(folder),
            "data.image_size": [self.a.image_size, self.a.image_size],
            "data.channels": 3,
            "data.workers": workers,
            "data.val_limit": BATCH,
            "model.kind": "mlp",
            "model.mlp.hidden": [8],
            "training.batch_size": BATCH,
        }

    # -- table 1 --

    def image_memory(self, folder: Path, files: int, tag: str) -> dict:
        d = self._dir(f"mem-{tag}")
        sets = self.image_sets(folder, max(self.a.workers))
        sets.update({"training.max_steps": self.a.memory_steps, "training.log_every_n_steps": self.a.memory_steps})
        m = run_measured(self.train_cmd(d, sets), self.env, d)
        listed = log_match(d, LISTED)
        bound = log_match(d, HOST_BOUND)
        if listed is None or bound is None:
            raise BenchError(f"{d}/stderr lacks the 'images listed' or 'data streamed' line")
        n = int(listed[1].group(1)) + int(listed[1].group(2))
        if n != files:
            raise BenchError(f"{d}: train listed {n} images, the folder holds {files}")
        return {**m, "files": files, "listed_after_seconds": listed[0] - m["spawn_unix"], "host_bound": bound[1].group(1)}

    # -- tables 2 and 3 --

    def train_rate(self, folder: Path, workers: int, chain: str = "resize") -> dict:
        """`train`'s images/s on `folder`: decode + resize, or with `chain` "augment" the
        augment table's `data.transforms.train`."""
        d = self._dir(f"train-{chain}-w{workers}")
        sets = self.image_sets(folder, workers)
        sets.update({"data.train_limit": self.a.steps * BATCH, "training.log_every_n_steps": 10**6})
        if chain != "resize":
            sets["data.transforms.train"] = train_transforms(self.a.image_size)
        m = run_measured(self.train_cmd(d, sets), self.env, d)
        e = epoch_line(d / "run")
        if e["step"] != self.a.steps:
            raise BenchError(f"{d}: the epoch ended at step {e['step']}, not {self.a.steps}")
        return {
            "images_per_sec": e["samples_per_sec"],
            "train_seconds": e["train_seconds"],
            "data_wait_seconds": e["data_wait_seconds"],
            "data_wait_share": e["data_wait_seconds"] / e["train_seconds"],
            "peak_rss_bytes": m["peak_rss_bytes"],
        }

    def torch_rate(self, folder: Path, workers: int, chain: str = "resize") -> dict:
        """PyTorch `DataLoader`'s images/s on `folder` with the chain `chain` (`TORCH_CHAINS`)."""
        if chain not in TORCH_CHAINS:
            raise ValueError(f"no PyTorch chain {chain!r}")
        d = self._dir(f"torch-{chain}-w{workers}")
        images = self.a.steps * BATCH
        cmd = [sys.executable, "-c", TORCH_LOADER, str(folder), chain, json.dumps(AUGMENT), str(workers), str(BATCH),
               str(images), str(self.a.image_size), str(self.a.image_size), str(SEED)]
        m = run_measured(cmd, self.env, d)
        r = json.loads((d / "stdout").read_text())
        want = [BATCH, 3, self.a.image_size, self.a.image_size]
        # Normalize maps [0, 1] to [-mean/std, (1 - mean)/std]; a little slack for rounding.
        lo, hi = (0.0, 1.0) if chain == "resize" else (-AUGMENT["mean"] / AUGMENT["std"], (1 - AUGMENT["mean"]) / AUGMENT["std"])
        if r["shape"] != want or r["dtype"] != "torch.float32" or not (lo - 1e-5 <= r["min"] <= r["max"] <= hi + 1e-5):
            raise BenchError(f"{d}: PyTorch's batches are {r['shape']} {r['dtype']} in [{r['min']}, {r['max']}], not {want} float32 in [{lo}, {hi}]")
        if r["images"] != images:
            raise BenchError(f"{d}: PyTorch read {r['images']} images, not {images}")
        return {**r, "peak_rss_bytes_main": m["peak_rss_bytes"]}

    # -- table 4 --

    def token_run(self, tag: str, sets: dict) -> dict:
        d = self._dir(f"tok-{tag}")
        gpt = {f"model.gpt.{k}": v for k, v in GPT.items()}
        sets = {"model.kind": "gpt", **gpt, "training.batch_size": TOKEN_BATCH, "data.val_limit": TOKEN_BATCH,
                "data.workers": 1, "training.max_steps": self.a.token_steps,
                "training.log_every_n_steps": self.a.token_steps, **sets}
        m = run_measured(self.train_cmd(d, sets), self.env, d)
        bound = log_match(d, HOST_BOUND)
        scan = log_match(d, SCAN)
        m["host_bound"] = bound[1].group(1) if bound else None
        if scan:
            m["scan_vocab"], m["scan_seconds"] = int(scan[1].group(1)), float(scan[1].group(2))
            if m["scan_vocab"] != self.a.vocab:
                raise BenchError(f"{d}: the scan found vocab {m['scan_vocab']}, the file was written with {self.a.vocab}")
        return m

    def model_bytes(self, token_file: Path) -> dict:
        """Parameters and model + AdamW bytes of the token table's gpt (`train plan --json`)."""
        cmd = [str(self.a.train_bin), "plan", "--json", "--device", "cpu", "--set", "data.kind=tokens",
               "--set", f"data.path={token_file}", "--set", "model.kind=gpt", "--set", f"model.gpt.vocab={self.a.vocab}"]
        for k, v in GPT.items():
            cmd += ["--set", f"model.gpt.{k}={v}"]
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"train plan failed ({done.returncode}): {done.stderr[-2000:]}")
        sizes = json.loads(done.stdout)["sizes"]
        return {"parameters": sizes["model"] // 4, "model_bytes": sizes["model"], "optimizer_bytes": sizes["optimizer"]}


# --- the four tables -----------------------------------------------------------------------


def mib(b) -> str:
    return "-" if b is None else f"{b / MIB:,.0f}"


def spread(values: list, fmt) -> str:
    """The median, with the range when there is more than one value."""
    med = statistics.median(values)
    if len(values) == 1:
        return fmt(med)
    return f"{fmt(med)} ({fmt(min(values))}-{fmt(max(values))})"


def markdown(head: list, body: list, left: int = 1) -> str:
    """A markdown table, its first `left` columns left-aligned and the rest right-aligned."""
    widths = [max(len(c) for c in col) for col in zip(head, *body)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"  # noqa: E731
    rule = "|" + "|".join("-" * (w + 1) + ("-" if i < left else ":") for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt(head), rule, *map(fmt, body)])


def images_memory_table(rows: dict) -> str:
    small, large = rows["small"], rows["large"]
    peak = lambda r: [x["peak_rss_bytes"] for x in r]  # noqa: E731
    before_exit = lambda r: [x["peak_before_exit_bytes"] or 0 for x in r]  # noqa: E731
    body = []
    for r in (small, large):
        body.append([
            f"{r[0]['files']:,}", r[0]["host_bound"], spread(peak(r), mib), spread(before_exit(r), mib),
            spread([x["rss_anon_sampled_bytes"] for x in r], mib),
            spread([x["listed_after_seconds"] for x in r], lambda v: f"{v:.2f}"),
        ])
    ratio = statistics.median(peak(large)) / statistics.median(peak(small))
    extra = large[0]["files"] - small[0]["files"]
    per_file = (statistics.median(peak(large)) - statistics.median(peak(small))) / extra
    anon = lambda r: statistics.median(x["rss_anon_sampled_bytes"] for x in r)  # noqa: E731
    head = ["files", "host_bound (log)", "peak RSS MiB", "peak before exit MiB", "RssAnon MiB (sampled)", "spawn to listed s"]
    return (markdown(head, body) + f"\n\npeak RSS ratio {ratio:.3f} (goal: within 10%, <= 1.100): "
            f"{'met' if ratio <= 1.10 else 'NOT met'}; per extra listed file: {per_file:+.0f} bytes of peak RSS, "
            f"{(anon(large) - anon(small)) / extra:+.0f} bytes of RssAnon")


def throughput_table(rows: list, torch_columns: list) -> str:
    """One row per W: `train`'s rate and data_wait share, then for each (key, label) of
    `torch_columns` that PyTorch chain's rate and the ratio of the medians train/PyTorch."""
    rate = lambda runs: statistics.median(x["images_per_sec"] for x in runs)  # noqa: E731
    body = []
    for r in rows:
        t = r["train"]
        cells = [str(r["workers"]), spread([x["images_per_sec"] for x in t], lambda v: f"{v:,.0f}"),
                 spread([100 * x["data_wait_share"] for x in t], lambda v: f"{v:.0f}%")]
        for key, _ in torch_columns:
            cells += [spread([x["images_per_sec"] for x in r[key]], lambda v: f"{v:,.0f}"), f"{rate(t) / rate(r[key]):.2f}"]
        body.append(cells)
    head = ["workers W", "train images/s", "train data_wait share"]
    for _, label in torch_columns:
        head += [f"{label} images/s", f"ratio train/{label}" if len(torch_columns) > 1 else "ratio train/PyTorch"]
    return markdown(head, body)


def tokens_table(rows: dict, model: dict) -> str:
    med = lambda key, field="peak_rss_bytes": statistics.median(x[field] for x in rows[key])  # noqa: E731
    base = med("baseline")
    bound = model["model_bytes"] + model["optimizer_bytes"] + TOKEN_SLACK
    body = []
    for key, label in (("baseline", "1 MiB text in memory (baseline)"), ("small", "tokens, vocab set"),
                       ("large", "tokens, vocab set"), ("scan", "tokens, vocab scanned (cold cache)")):
        r = rows[key]
        scan = [x["scan_seconds"] for x in r if "scan_seconds" in x]
        body.append([
            label, mib(r[0]["file_bytes"]), r[0]["host_bound"] or "(in memory)",
            spread([x["peak_rss_bytes"] for x in r], mib), spread([x["peak_before_exit_bytes"] or 0 for x in r], mib),
            spread([x["rss_anon_sampled_bytes"] for x in r], mib),
            "-" if key == "baseline" else f"{(med(key) - base) / MIB:+,.0f}",
            spread(scan, lambda v: f"{v:.2f}") if scan else "-",
        ])
    head = ["data", "file MiB", "host_bound (log)", "peak RSS MiB", "peak before exit MiB", "RssAnon MiB (sampled)",
            "peak - baseline MiB", "vocab scan s (log)"]
    worst = max(med(k) for k in ("small", "large", "scan"))
    worst_before = max(x["peak_before_exit_bytes"] or 0 for k in ("small", "large", "scan") for x in rows[k])
    windows = lambda key: (rows[key][0]["file_bytes"] // 2 - 1) // GPT["context"]  # noqa: E731
    per_window = ((med("large", "rss_anon_sampled_bytes") - med("small", "rss_anon_sampled_bytes"))
                  / (windows("large") - windows("small")))
    before = [x.get("cached_bytes_before") for x in rows["scan"]]
    cached = "unknown" if None in before else f"at most {mib(max(before))} MiB"
    above = max(med(k) - base for k in ("small", "large", "scan"))
    return (markdown(head, body) + f"\n\ngpt {model['parameters']:,} parameters: model + AdamW "
            f"{mib(model['model_bytes'] + model['optimizer_bytes'])} MiB, bound (+ 256 MiB) {mib(bound)} MiB. "
            f"Largest token-run peak {mib(worst)} MiB ({mib(worst_before)} before exit): "
            f"{'under' if worst <= bound else 'NOT under'} the bound; "
            f"above the in-memory baseline {above / MIB:+,.0f} MiB: {'under' if above <= TOKEN_SLACK else 'NOT under'} 256 MiB. "
            f"Peak RSS large/small file {med('large') / med('small'):.3f} "
            f"(before exit {med('large', 'peak_before_exit_bytes') / med('small', 'peak_before_exit_bytes'):.3f}), "
            f"RssAnon large/small {med('large', 'rss_anon_sampled_bytes') / med('small', 'rss_anon_sampled_bytes'):.3f}: "
            f"{per_window:+.1f} bytes of RssAnon per extra {GPT['context']}-token window. Before each scan, "
            f"{cached} of the file was in the page cache (fincore)")


# --- main ----------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()),
                   help="parent folder of the work folder (default $TMPDIR or /tmp); the work folder is removed unless --keep")
    p.add_argument("--keep", action="store_true", help="keep the work folder (images and runs; token files are deleted anyway)")
    p.add_argument("--images", type=int, default=20000, help="JPEGs in the first folder (default 20,000)")
    p.add_argument("--scale", type=int, default=10, help="the second folder holds this many times as many (default 10)")
    p.add_argument("--image-size", type=int, default=32, help="both tools resize to this square (default 32)")
    p.add_argument("--workers", default="1,2", help="W values of the throughput tables (default 1,2)")
    p.add_argument("--steps", type=int, default=100, help="throughput: batches of 128 per run (default 100)")
    p.add_argument("--only", default=",".join(TABLES), metavar="TABLES",
                   help=f"the tables to run, comma-separated, of {', '.join(TABLES)} (default all)")
    p.add_argument("--no-pil-order", action="store_true",
                   help="augment table: leave out PyTorch's PIL-order chain (keep the one ordered as train works)")
    p.add_argument("--memory-steps", type=int, default=50, help="image memory runs: training.max_steps (default 50)")
    p.add_argument("--tokens-gb", type=float, default=1.0, help="the large token file in GiB (default 1.0)")
    p.add_argument("--tokens-small-mb", type=int, default=64, help="the small token file in MiB (default 64)")
    p.add_argument("--vocab", type=int, default=2048, help="token vocabulary (default 2048)")
    p.add_argument("--token-steps", type=int, default=20, help="token runs: training.max_steps (default 20)")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement (default 3)")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="before each timed run, wait up to S seconds for the CPUs to be 90%% idle (default 0)")
    p.add_argument("--train-bin", type=Path, default=default_train_bin(), help="the train binary")
    p.add_argument("--json", type=Path, help="also write every run here")
    a = p.parse_args()
    a.workers = [int(w) for w in a.workers.split(",") if w.strip()]
    a.only = [t.strip() for t in a.only.split(",") if t.strip()]
    if not a.only or any(t not in TABLES for t in a.only):
        p.error(f"--only takes one or more of {', '.join(TABLES)}, comma-separated")
    if a.images < CLASSES * 10 or a.scale < 2 or a.repeats < 1 or not a.workers or min(a.workers) < 1:
        p.error("--images at least 100, --scale at least 2, --repeats and every --workers at least 1")
    if a.steps * BATCH > a.images * 0.9 - CLASSES:
        p.error(f"--steps {a.steps} x {BATCH} exceeds the training split of --images {a.images}")
    if not 2 <= a.vocab <= 65536:
        p.error("--vocab must fit uint16")
    if not a.train_bin.exists():
        p.error(f"--train-bin {a.train_bin} does not exist")

    started = time.time()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="data-pipeline-", dir=a.work))
    report = {"command": sys.argv, "cpu_count": os.cpu_count(), "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    token_files = []
    try:
        # A private copy: a rebuild mid-benchmark would otherwise mix two binaries in one table.
        report["train_bin"] = {
            "path": str(a.train_bin),
            "mtime": datetime.datetime.fromtimestamp(a.train_bin.stat().st_mtime, datetime.timezone.utc).isoformat(),
        }
        a.train_bin = Path(shutil.copy2(a.train_bin, work / "train"))
        report["train_bin"]["sha256"] = hashlib.sha256(a.train_bin.read_bytes()).hexdigest()
        bench = Bench(a, work)
        check_train_bin(a.train_bin, bench.env, a.image_size)
        say = lambda msg: print(f"[{time.time() - started:6.0f} s] {msg}", file=sys.stderr, flush=True)  # noqa: E731

        small, large = work / "images", work / f"images-x{a.scale}"
        say(f"writing {a.images:,} JPEGs")
        report["jpeg_write_seconds"] = write_jpegs(small, a.images)
        report["jpeg_bytes"] = sum(f.stat().st_size for f in small.rglob("*.jpg"))

        # Table 1. One untimed run first: libtorch and the small folder into the page cache.
        if "memory" in a.only:
            t0 = time.perf_counter()
            files_large = link_copies(small, large, a.scale)
            report["link_seconds"] = time.perf_counter() - t0
            say("image folder memory")
            bench.image_memory(small, a.images, "prime")
            mem = {"small": [], "large": []}
            for r in range(a.repeats):
                order = [("small", small, a.images), ("large", large, files_large)]
                for key, folder, files in order if r % 2 == 0 else order[::-1]:
                    mem[key].append(bench.image_memory(folder, files, key))
            report["image_memory"] = mem

        # Tables 2 and 3: `train` against one or two PyTorch chains. One untimed run of each
        # first; then, at each W, `--repeats` rounds of one run each, the order of the tools
        # turning round by round so that none always runs first.
        def rates_table(table: str, chains: dict) -> list:
            say(f"throughput, {table}")
            train_chain = "resize" if table == "resize" else "augment"
            bench.train_rate(small, a.workers[0], train_chain)
            for chain in chains.values():
                bench.torch_rate(small, a.workers[0], chain)
            rows = []
            for w in a.workers:
                row = {"workers": w, "train": [], **{key: [] for key in chains}}
                runs = [lambda: row["train"].append(bench.train_rate(small, w, train_chain))]
                runs += [lambda key=key, chain=chain: row[key].append(bench.torch_rate(small, w, chain))
                         for key, chain in chains.items()]
                for r in range(a.repeats):
                    for run in runs[r % len(runs):] + runs[:r % len(runs)]:
                        run()
                    say(f"  W={w} repeat {r + 1}: " + ", ".join(
                        f"{key} {row[key][-1]['images_per_sec']:.0f}/s" for key in ("train", *chains)))
                rows.append(row)
            return rows

        if "resize" in a.only:
            report["throughput"] = rates_table("resize", {"torch": "resize"})
        if "augment" in a.only:
            chains = {"torch": "augment"} if a.no_pil_order else {"torch": "augment", "torch_pil": "augment-pil"}
            report["augment"] = rates_table("augment", chains)
            report["augment_transforms"] = {"train": train_transforms(a.image_size), "torch": AUGMENT}

        # Table 4.
        if "tokens" in a.only:
            say("token files")
            tok = work / "tokens"
            tok.mkdir()
            text = tok / "baseline.txt"
            text.write_bytes(os.urandom(BASELINE_TEXT_BYTES))
            small_tok, large_tok = tok / "small.u16", tok / "large.u16"
            token_files = [small_tok, large_tok]
            report["token_write_seconds"] = {
                "small": write_tokens(small_tok, a.tokens_small_mb * MIB, a.vocab, SEED),
                "large": write_tokens(large_tok, int(a.tokens_gb * 2**30) // 2 * 2, a.vocab, SEED + 1),
            }
            model = bench.model_bytes(small_tok)
            runs = {
                "baseline": ({"data.kind": "text", "data.path": str(text), "model.gpt.vocab": a.vocab}, text),
                "small": ({"data.kind": "tokens", "data.path": str(small_tok), "model.gpt.vocab": a.vocab}, small_tok),
                "large": ({"data.kind": "tokens", "data.path": str(large_tok), "model.gpt.vocab": a.vocab}, large_tok),
                "scan": ({"data.kind": "tokens", "data.path": str(large_tok)}, large_tok),
            }
            bench.token_run("prime", runs["baseline"][0])
            toks = {k: [] for k in runs}
            for r in range(a.repeats):
                for key in runs if r % 2 == 0 else list(runs)[::-1]:
                    sets, path = runs[key]
                    cached = drop_from_cache(path) if key == "scan" else None
                    m = bench.token_run(key, sets)
                    if key == "scan":
                        m["cached_bytes_before"] = cached
                    m["file_bytes"] = path.stat().st_size
                    toks[key].append(m)
            report["tokens"] = {"model": model, "runs": toks, "gpt": GPT, "batch": TOKEN_BATCH, "vocab": a.vocab}
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        for f in token_files:
            f.unlink(missing_ok=True)
        if a.keep:
            print(f"work folder kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()

    if "memory" in a.only:
        print(f"## Image folder: peak RSS, {a.images:,} files against x{a.scale} (hard links), "
              f"{a.memory_steps} steps of {BATCH}, run.threads=1, data.workers={max(a.workers)}\n")
        print(images_memory_table(report["image_memory"]) + "\n")
    if "resize" in a.only:
        print(f"## Image folder: decode + resize {SIDE_ON_DISK}x{SIDE_ON_DISK} JPEG -> {a.image_size}x{a.image_size} "
              f"float32, {a.steps * BATCH:,} images per run, batch {BATCH}\n")
        print(throughput_table(report["throughput"], [("torch", "PyTorch DataLoader")]) + "\n")
    if "augment" in a.only:
        g = AUGMENT
        print(f"## Image folder: decode + augment {SIDE_ON_DISK}x{SIDE_ON_DISK} JPEG -> RandomResizedCrop {a.image_size} "
              f"scale {tuple(g['scale'])}, flip p {g['flip']}, ColorJitter {g['jitter']} x3, Normalize "
              f"({g['mean']}, {g['std']}), float32, {a.steps * BATCH:,} images per run, batch {BATCH}\n")
        columns = [("torch", "PyTorch, train's order")]
        if not a.no_pil_order:
            columns.append(("torch_pil", "PyTorch, PIL order"))
        print(throughput_table(report["augment"], columns) + "\n")
    if "tokens" in a.only:
        print(f"## Token file (uint16, vocab {a.vocab}): peak RSS, gpt {GPT}, batch {TOKEN_BATCH}, "
              f"{a.token_steps} steps\n")
        print(tokens_table(report["tokens"]["runs"], report["tokens"]["model"]) + "\n")
    print(f"medians of {a.repeats} (range in brackets); {os.cpu_count()} CPUs; load average "
          f"{load_before[0]:.2f} -> {load_after[0]:.2f}; {time.time() - started:.0f} s in all")
    if a.json:
        report.update({"load_average_before_after": [load_before, load_after], "cpu_busy_before_runs": bench.busy_before,
                       "seconds": time.time() - started})
        a.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
