"""Training speed of `train` against an equivalent PyTorch eager loop, side by side.

For each model (mlp, cnn, gpt, resnet18) both tools train the same architecture on the same
data with the same batch size, thread count and AdamW settings, each in a fresh subprocess,
and this prints one table:

    model | batch | threads | train samples/s | torch samples/s | ratio | train start-up s | torch start-up s

Throughput: both run `--steps` optimiser steps; samples/s is taken over steps
(warmup, last] where `last` is the largest multiple of `--warmup` not above `--steps`, from
the wall-clock time at the end of step `warmup` to the end of step `last`. `train` gives
those times in its `metrics.jsonl` step lines (`elapsed_seconds`, with
`training.log_every_n_steps = warmup`, so it also pays for writing those lines); the Python
loop records `time.perf_counter()` after each step.

resnet18 is torchvision's resnet18(num_classes=10) with seeded random weights on synthetic
3x32x32 images (2048 training examples, or steps x batch if more, plus `train`'s validation
tenth), written once into the work folder by `torch_eager.py --prepare`: `train` runs a
`torch.jit.script` export of the module (model.kind torchscript, data.kind tensors) and the
eager loop loads that same module's state_dict into torchvision's resnet18, so both start
from the same weights. Its default batch is 32.

Start-up: separate runs of one step each; wall time from just before the subprocess is
spawned to the end of the first optimiser step. For `train`, the timestamp of its first
"training" log line on stderr (`RUST_LOG=info`, plain text when stderr is not a terminal;
it is logged right after the step returns); for Python, `time.time()` printed by the
script after its first step.

Every measurement is repeated `--repeats` times (the two tools alternating which goes first)
and the median is reported; the machine is shared and noisy (`--wait-idle S` waits up to S
seconds before each run for the CPUs to be idle; `--json` keeps every run and the best of
each). One untimed run of each tool beforehand warms the page cache (libtorch is a few GB),
so neither pays for the disk. `train` runs from a copy of `--train-bin` taken at the start.

Run it with the venv's Python (it runs `torch_eager.py` with the same interpreter):

    ~/.cache/train/torch-2.11.0/bin/python bench/train_speed.py --threads 2
"""

import argparse
import datetime
import hashlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EAGER = HERE / "torch_eager.py"
DEFAULT_BIN = Path("/work/main/target/release/train")
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
LICENSES = Path("/usr/share/common-licenses")

# Steps per run when --steps is not given: each run takes a few seconds on 2 cores.
DEFAULT_STEPS = {"mlp": 200, "cnn": 40, "gpt": 20, "resnet18": 20}
# Batch size when --batch is not given (128 is train's default).
DEFAULT_BATCH = {"resnet18": 32}
# resnet18's synthetic data: training examples (more if --steps x --batch needs them).
RESNET_TRAIN_EXAMPLES = 2048
# Fashion-MNIST's training split.
IDX_TRAIN_EXAMPLES = 60000
# train's defaults for data.kind text and model.gpt (src/config/schema.rs).
GPT_CONTEXT = 64
VAL_FRACTION = 0.1
# AdamW as configured in both tools (train's defaults, written out so the two cannot drift).
ADAMW = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}
SEED = 42

# The line `train` logs after a step when stderr is not a terminal (src/progress.rs), e.g.
# 2026-11-28T05:27:54.286269Z  INFO epoch{epoch=1}: training epoch=1 of=1 step=1 batch=1/5 ...
FIRST_STEP_LINE = re.compile(r"^(\S+Z)\s+INFO\b.*\btraining\b.*\bstep=1\b")


class BenchError(Exception):
    pass


def default_train_bin() -> Path:
    local = REPO / "target" / "release" / "train"
    return DEFAULT_BIN if DEFAULT_BIN.exists() or not local.exists() else local


def clean_env() -> dict:
    """The environment for both tools: no TRAIN_* (train reads those as configuration)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIN_")}
    env["RUST_LOG"] = "info"
    env.pop("NO_COLOR", None)
    return env


def text_corpus(path: Path, windows_needed: int) -> Path:
    """A text file present on a clean Debian machine: /usr/share/common-licenses/*, sorted,
    concatenated, repeated until its training part has `windows_needed` windows."""
    files = sorted(p for p in LICENSES.iterdir() if p.is_file())
    if not files:
        raise BenchError(f"no files under {LICENSES} to build the gpt text from")
    one = b"".join(p.read_bytes() for p in files)
    data = one
    while True:
        windows = (len(data) - 1) // GPT_CONTEXT
        if windows - max(math.floor(windows * VAL_FRACTION + 0.5), 1) >= windows_needed:
            break
        data += one
    path.write_bytes(data)
    return path


def cpu_busy(interval: float = 0.25) -> float:
    """The share of all CPUs busy over `interval` seconds (from /proc/stat), 0..1."""

    def sample():
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(interval)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_for_idle(max_wait: float, threshold: float = 0.1) -> float:
    """Waits (at most `max_wait` seconds) until other processes keep under `threshold` of the
    CPUs busy; returns the last busy share seen."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        busy = cpu_busy()
    return busy


def run(cmd: list, env: dict, stdout_path: Path, stderr_path: Path) -> float:
    """Runs `cmd` to completion; returns time.time() just before the spawn."""
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        t0 = time.time()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        rc = proc.wait()
    if rc != 0:
        tail = stderr_path.read_text(errors="replace")[-2000:]
        raise BenchError(f"{cmd[0]} exited with {rc}: {' '.join(map(str, cmd))}\n{tail}")
    return t0


def check_train_bin(path: Path, env: dict, models: list) -> None:
    """Refuses a binary older than the features this benchmark drives (gpt, max_steps, and
    for resnet18 TorchScript models and safetensors data)."""
    kinds = [["model.kind=gpt"]]
    if "resnet18" in models:
        kinds.append(["model.kind=torchscript", "model.torchscript.path=resnet18.pt", "data.kind=tensors",
                      "data.path=resnet18_data.safetensors"])
    for sets in kinds:
        kind = sets[0].split("=", 1)[1]
        probe = [str(path), "config", "show", "--set", "training.max_steps=1"]
        for s in sets:
            probe += ["--set", s]
        done = subprocess.run(probe, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(
                f"{path} cannot run this benchmark (it needs model.kind {kind} and training.max_steps): "
                f"{done.stderr.strip()}; rebuild it or pass --train-bin"
            )


class Bench:
    def __init__(self, args, tmp: Path):
        self.a = args
        self.tmp = tmp
        self.env = clean_env()
        self.runs = 0
        self.text = None
        # resnet18's files from `torch_eager.py --prepare` and its training-example count.
        self.resnet = None
        self.resnet_examples = 0
        # Busy share of the CPUs just before each timed run (with --wait-idle).
        self.busy_before = []

    def _dir(self, tag: str) -> Path:
        """A fresh folder for one run; first waits for a quiet machine if --wait-idle asks."""
        if self.a.wait_idle > 0:
            self.busy_before.append(round(wait_for_idle(self.a.wait_idle), 3))
        self.runs += 1
        d = self.tmp / f"{self.runs:03d}-{tag}"
        d.mkdir()
        return d

    def batch(self, model: str) -> int:
        return self.a.batch or DEFAULT_BATCH.get(model, 128)

    def prepare_resnet18(self, examples: int) -> None:
        """Writes resnet18's TorchScript export, initial weights and data (untimed, once)."""
        if self.resnet is not None and self.resnet_examples >= examples:
            return
        d = self.tmp / "resnet18"
        d.mkdir(exist_ok=True)
        cmd = [sys.executable, str(EAGER), "--model", "resnet18", "--prepare", str(d)]
        cmd += ["--train-examples", str(examples), "--seed", str(SEED), "--val-fraction", str(VAL_FRACTION)]
        run(cmd, self.env, d / "prepare.stdout", d / "prepare.stderr")
        self.resnet = {
            "module": d / "resnet18.pt",
            "init": d / "resnet18_init.safetensors",
            "data": d / "resnet18_data.safetensors",
        }
        self.resnet_examples = examples

    def train_cmd(self, model: str, steps: int, log_every: int, out: Path) -> list:
        a = self.a
        sets = {
            "run.threads": a.threads,
            "model.kind": "torchscript" if model == "resnet18" else model,
            "training.batch_size": self.batch(model),
            "training.epochs": 1,
            "training.max_steps": steps,
            "training.log_every_n_steps": log_every,
            "training.seed": SEED,
            "training.optimizer.kind": "adamw",
            "training.optimizer.lr": ADAMW["lr"],
            "training.optimizer.betas": list(ADAMW["betas"]),
            "training.optimizer.eps": ADAMW["eps"],
            "training.optimizer.weight_decay": ADAMW["weight_decay"],
            # Only reached if the steps cover the whole split; keep that evaluation short.
            "data.val_limit": self.batch(model),
        }
        if model == "gpt":
            sets.update({"data.kind": "text", "data.path": str(self.text)})
        elif model == "resnet18":
            sets.update({
                "model.torchscript.path": str(self.resnet["module"]),
                "data.kind": "tensors",
                "data.path": str(self.resnet["data"]),
                "data.val_fraction": VAL_FRACTION,
            })
        else:
            sets["data.dir"] = a.data_dir
        cmd = [str(a.train_bin), "--output-dir", str(out / "run"), "--device", "cpu", "--resume", "never"]
        for k, v in sets.items():
            cmd += ["--set", f"{k}={json.dumps(v) if isinstance(v, list) else v}"]
        return cmd

    def torch_cmd(self, model: str, steps: int) -> list:
        a = self.a
        cmd = [sys.executable, str(EAGER), "--model", model, "--steps", str(steps), "--batch", str(self.batch(model))]
        cmd += ["--threads", str(a.threads), "--seed", str(SEED), "--data-dir", a.data_dir]
        cmd += ["--lr", str(ADAMW["lr"]), "--betas", ",".join(map(str, ADAMW["betas"]))]
        cmd += ["--eps", str(ADAMW["eps"]), "--weight-decay", str(ADAMW["weight_decay"])]
        if model == "gpt":
            cmd += ["--text", str(self.text)]
        elif model == "resnet18":
            cmd += ["--data", str(self.resnet["data"]), "--init", str(self.resnet["init"])]
            cmd += ["--val-fraction", str(VAL_FRACTION)]
        if a.torch_foreach:
            cmd.append("--foreach")
        return cmd

    def check_train_threads(self, run_dir: Path) -> None:
        """`train` writes its resolved configuration to config.yaml in the run folder; its
        run.threads must be the --threads that the Python loop passes to
        torch.set_num_threads (checked on the Python side from its own report)."""
        path = run_dir / "config.yaml"
        section, threads = None, None
        for line in path.read_text().splitlines():
            if line and not line[0].isspace():
                section = line.split(":", 1)[0]
            elif section == "run" and line.strip().startswith("threads:"):
                threads = line.split(":", 1)[1].strip()
        if threads != str(self.a.threads):
            raise BenchError(f"{path}: run.threads is {threads}, not --threads {self.a.threads}")

    def train_throughput(self, model: str, steps: int, warmup: int) -> float:
        d = self._dir(f"train-{model}")
        run(self.train_cmd(model, steps, warmup, d), self.env, d / "stdout", d / "stderr")
        self.check_train_threads(d / "run")
        elapsed = {}
        for line in (d / "run" / "metrics.jsonl").read_text().splitlines():
            m = json.loads(line)
            if m.get("kind") == "step":
                elapsed[m["step"]] = m["elapsed_seconds"]
        last = steps - steps % warmup
        if warmup not in elapsed or last not in elapsed:
            raise BenchError(f"{d}/run/metrics.jsonl lacks the step lines {warmup} and {last}")
        return (last - warmup) * self.batch(model) / (elapsed[last] - elapsed[warmup])

    def torch_throughput(self, model: str, steps: int, warmup: int) -> float:
        d = self._dir(f"torch-{model}")
        run(self.torch_cmd(model, steps), self.env, d / "stdout", d / "stderr")
        result = json.loads((d / "stdout").read_text())
        if result["threads"] != self.a.threads:
            raise BenchError(f"{d}/stdout: torch ran with {result['threads']} threads, not --threads {self.a.threads}")
        ends = result["step_end"]
        last = steps - steps % warmup
        return (last - warmup) * self.batch(model) / (ends[last - 1] - ends[warmup - 1])

    def train_startup(self, model: str) -> float:
        d = self._dir(f"train-{model}-startup")
        t0 = run(self.train_cmd(model, 1, 1, d), self.env, d / "stdout", d / "stderr")
        for line in (d / "stderr").read_text(errors="replace").splitlines():
            m = FIRST_STEP_LINE.match(line)
            if m:
                return datetime.datetime.fromisoformat(m.group(1)).timestamp() - t0
        raise BenchError(f"no first-step log line in {d}/stderr")

    def torch_startup(self, model: str) -> float:
        d = self._dir(f"torch-{model}-startup")
        t0 = run(self.torch_cmd(model, 1), self.env, d / "stdout", d / "stderr")
        return json.loads((d / "stdout").read_text())["first_step_unix"] - t0

    def measure(self, model: str) -> dict:
        a = self.a
        steps = a.steps or DEFAULT_STEPS[model]
        if steps < 2 * a.warmup:
            raise BenchError(f"--steps {steps} leaves nothing to time after --warmup {a.warmup}")
        batch = self.batch(model)
        examples = IDX_TRAIN_EXAMPLES
        if model == "gpt":
            self.text = text_corpus(self.tmp / "corpus.txt", (steps + 1) * batch)
        elif model == "resnet18":
            self.prepare_resnet18(max(RESNET_TRAIN_EXAMPLES, steps * batch))
        elif steps * batch > examples:
            raise BenchError(f"{steps} steps of {batch} exceed Fashion-MNIST's {examples} examples")
        raw = {k: [] for k in ("train_sps", "torch_sps", "train_startup_s", "torch_startup_s")}
        for r in range(a.repeats):
            pairs = [
                (lambda: raw["train_sps"].append(self.train_throughput(model, steps, a.warmup)),
                 lambda: raw["torch_sps"].append(self.torch_throughput(model, steps, a.warmup))),
                (lambda: raw["train_startup_s"].append(self.train_startup(model)),
                 lambda: raw["torch_startup_s"].append(self.torch_startup(model))),
            ]
            for first, second in pairs:
                # Alternate which tool goes first, so a drift in the machine's load hits both.
                for f in (first, second) if r % 2 == 0 else (second, first):
                    f()
            if not a.quiet:
                print(
                    f"  {model} repeat {r + 1}/{a.repeats}: "
                    f"train {raw['train_sps'][-1]:.0f}/s, torch {raw['torch_sps'][-1]:.0f}/s, "
                    f"start-up {raw['train_startup_s'][-1]:.2f}s / {raw['torch_startup_s'][-1]:.2f}s",
                    file=sys.stderr,
                    flush=True,
                )
        med = {k: statistics.median(v) for k, v in raw.items()}
        return {
            "model": model,
            "batch": batch,
            "threads": a.threads,
            "steps": steps,
            "timed_steps": [a.warmup + 1, steps - steps % a.warmup],
            **med,
            "ratio": med["train_sps"] / med["torch_sps"],
            # Noise only ever slows a run down: the best of the repeats is a second view.
            "best": {
                "train_sps": max(raw["train_sps"]),
                "torch_sps": max(raw["torch_sps"]),
                "train_startup_s": min(raw["train_startup_s"]),
                "torch_startup_s": min(raw["torch_startup_s"]),
            },
            "raw": raw,
        }

    def prime(self) -> None:
        """One untimed run of each tool, so that neither pays for reading libtorch from disk."""
        for cmd, tag in (
            (self.train_cmd("mlp", 1, 1, self._dir("prime-train")), "train"),
            (self.torch_cmd("mlp", 1), "torch"),
        ):
            d = self.tmp / f"prime-{tag}-out"
            d.mkdir(exist_ok=True)
            run(cmd, self.env, d / "stdout", d / "stderr")


def rate(samples_per_s: float) -> str:
    """Whole samples/s, with one decimal below 100 (resnet18 on a few cores)."""
    return f"{samples_per_s:.0f}" if samples_per_s >= 100 else f"{samples_per_s:.1f}"


def table(rows: list, stat: str = "median") -> str:
    head = [
        "model", "batch", "threads", "train samples/s", "torch samples/s", "ratio (train/torch)",
        "train start-up s", "torch start-up s",
    ]
    rows = [{**r, **r["best"], "ratio": r["best"]["train_sps"] / r["best"]["torch_sps"]} if stat == "best" else r for r in rows]
    body = [
        [
            r["model"], str(r["batch"]), str(r["threads"]), rate(r["train_sps"]), rate(r["torch_sps"]),
            f"{r['ratio']:.2f}", f"{r['train_startup_s']:.2f}", f"{r['torch_startup_s']:.2f}",
        ]
        for r in rows
    ]
    widths = [max(len(c) for c in col) for col in zip(head, *body)]
    fmt = lambda cells: "| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"  # noqa: E731
    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt(head), rule, *map(fmt, body)])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for both tools (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is reported")
    p.add_argument("--models", default="mlp,cnn,gpt", help="comma-separated, of mlp, cnn, gpt, resnet18")
    p.add_argument("--steps", type=int, help=f"optimiser steps per run (default per model: {DEFAULT_STEPS})")
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the timing (default 5)")
    p.add_argument(
        "--batch", type=int, help=f"batch size (default 128, train's default; per model: {DEFAULT_BATCH})"
    )
    p.add_argument("--train-bin", type=Path, default=default_train_bin(), help="the train binary")
    p.add_argument("--data-dir", default=FASHION_MNIST, help="Fashion-MNIST IDX folder")
    p.add_argument("--torch-foreach", action="store_true", help="AdamW(foreach=True) in the Python loop")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each run, wait up to S seconds for the CPUs to be at least 90%% idle (default 0: no wait)",
    )
    p.add_argument("--best", action="store_true", help="also print the table of the best run of each column")
    p.add_argument("--json", type=Path, help="also write the results (medians and every run) here")
    p.add_argument("--keep", action="store_true", help="keep the run folders and print where")
    p.add_argument("--quiet", action="store_true", help="no per-repeat progress on stderr")
    a = p.parse_args()
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    bad = [m for m in models if m not in DEFAULT_STEPS]
    if bad or not models:
        p.error(f"--models: unknown {bad}; choose from {list(DEFAULT_STEPS)}")
    if a.threads < 1 or a.repeats < 1 or a.warmup < 1 or (a.batch is not None and a.batch < 1):
        p.error("--threads, --repeats, --warmup and --batch must be at least 1")
    if not a.train_bin.exists():
        p.error(f"--train-bin {a.train_bin} does not exist")

    tmp = Path(tempfile.mkdtemp(prefix="train-speed-"))
    started = time.time()
    load_before = os.getloadavg()
    try:
        # Run a private copy: a build that replaces the binary mid-benchmark (the machine is
        # shared) would otherwise mix two versions in one table. Its rpath is absolute.
        binary = {
            "path": str(a.train_bin),
            "mtime": datetime.datetime.fromtimestamp(a.train_bin.stat().st_mtime, datetime.timezone.utc).isoformat(),
        }
        a.train_bin = Path(shutil.copy2(a.train_bin, tmp / "train"))
        binary["sha256"] = hashlib.sha256(a.train_bin.read_bytes()).hexdigest()
        bench = Bench(a, tmp)
        check_train_bin(a.train_bin, bench.env, models)
        bench.prime()
        rows = [bench.measure(m) for m in models]
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if a.keep:
            print(f"run folders kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()

    print(table(rows))
    if a.best:
        print(f"\nbest of {a.repeats} (highest samples/s, lowest start-up, each column on its own):")
        print(table(rows, "best"))
    print(
        f"median of {a.repeats}; samples/s over steps {a.warmup + 1}..last of each run; "
        f"AdamW foreach={a.torch_foreach}; load average {load_before[0]:.2f} -> {load_after[0]:.2f}; "
        f"{time.time() - started:.0f} s in all"
    )
    if a.json:
        report = {
            "command": sys.argv,
            "train_bin": binary,
            "torch_foreach": a.torch_foreach,
            "warmup": a.warmup,
            "repeats": a.repeats,
            "cpu_count": os.cpu_count(),
            "load_average_before_after": [load_before, load_after],
            "wait_idle_s": a.wait_idle,
            "cpu_busy_before_runs": bench.busy_before,
            "rows": rows,
        }
        a.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
