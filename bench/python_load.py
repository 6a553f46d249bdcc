#!/usr/bin/env python3
"""Loading a large checkpoint from Python: `train_ckpt` against PyTorch and safetensors.

The model is Hugging Face transformers' GPT-2 (`GPT2LMHeadModel`), built from code with
seeded random weights, width 768, 12 heads, GPT-2's vocabulary (50,257) and context (1,024),
`tie_word_embeddings=False` (so `lm_head.weight` is its own tensor and every loader reads the
same 101 tensors), and as many layers as make the fp32 state dict at least `--size-mb` MB
(default 520: 8 layers, 538.7 MB; the largest tensors are the two 147 MiB embeddings). The
state dict is written once, untimed, in three formats holding the same tensors:
`model.tckpt` (`train_ckpt.save_file(compress=True)`), `model.safetensors`
(`train_ckpt.save_file(compress=False)`: plain safetensors with checksums, which
`safetensors` also reads) and `model.pt` (`torch.save(state_dict)`). One untimed process then
checks that every reader gives back the same tensors.

Each measurement is a fresh process (this script with `--case`), with
`torch.set_num_threads(--threads)` (default 2):
  1. model cases build the model (on the meta device, then `to_empty` and filled, so every
     parameter page is resident and no freed memory is left for the load to reuse);
     dict-only cases build nothing;
  2. warm: the file is read once; cold: its pages are dropped with
     `posix_fadvise(POSIX_FADV_DONTNEED)` (the files were fsynced when written). Either way
     `fincore` then reports how much of the file is in the page cache, which the tables show;
  3. the peak RSS is reset (`echo 5 > /proc/self/clear_refs` resets VmHWM), VmRSS is read
     as the baseline, the load is timed (`time.perf_counter`), and VmHWM is read: the peak
     RSS above the model. File pages a loader maps count in RSS, as they do for the kernel.

Printed (markdown): the model-level loads with their peak RSS above the model against the
bound (largest tensor + 64 MiB) and their warm and cold times; dict loads against their peers
as ratios peer time / our time, so >= 1.0 means ours is at least as fast: `train_ckpt.load_file`
of the plain file against `safetensors.torch.load_file` (the target; its default backend maps
the file and reads nothing until a tensor is used), against the same with `backend="pread"`
(reads into its own memory, as ours does) and against the default followed by one read of
every tensor; and `train_ckpt.load_file` of the `.tckpt` against `torch.load` of the `.pt`
(the target). Last, what `load_model_only(verify=True)` costs over `verify=False`.
Times are medians of `--repeats` (default 3) runs, peaks the largest of all runs. Runs are
interleaved (repeat, then cache state, then loader), so background load hits all alike.

When the installed `train_ckpt` has no `load_model_only` yet, the model rows use
`model.load_state_dict(train_ckpt.load_file(path))` in its place, say so, and the verify
table is left out.

A benchmark, not a test: it asserts nothing beyond equal tensors once. The default run takes
about 6 minutes on 2 cores (8 under heavy load). Run it with the venv's Python:

    ~/.cache/train/torch-2.11.0/bin/python bench/python_load.py [--dir DIR] [--size-mb 520]
        [--repeats 3] [--threads 2] [--json PATH]

`--dir` keeps the files there and reuses them on the next run (about 1.5 GB); without it a
temporary folder under $TMPDIR (or /tmp) is used and removed. Put it on a disk, not tmpfs:
`POSIX_FADV_DONTNEED` cannot drop tmpfs pages, and the cold rows then say so (cached bytes).
"""

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

MiB = 2**20
SLACK = 64 * MiB  # the bound on our peak RSS above the model: the largest tensor + SLACK
WIDTH, HEADS = 768, 12
SEED = 0
METADATA = {"epoch": "1", "step": "10", "train_loss": "2.5"}  # load_model_only returns (epoch, train_loss)

# Loaders. `model` ones load into the built model; the others return a dict of tensors.
# Each name maps to (file kind, needs the model, label).
LOADERS = {
    "ours.tckpt": ("tckpt", True, "`train_ckpt.load_model_only` (.tckpt)"),
    "ours.safetensors": ("safetensors", True, "`train_ckpt.load_model_only` (.safetensors)"),
    "ours.tckpt.noverify": ("tckpt", True, "`load_model_only(verify=False)` (.tckpt)"),
    "ours.safetensors.noverify": ("safetensors", True, "`load_model_only(verify=False)` (.safetensors)"),
    "torch.load+lsd": ("pt", True, "`torch.load` + `load_state_dict` (.pt)"),
    "torch.load(mmap)+assign": ("pt", True, "`torch.load(mmap=True)` + `load_state_dict(assign=True)` (.pt)"),
    "safetensors+lsd": ("safetensors", True, "`safetensors.torch.load_file` + `load_state_dict`"),
    "load_file.safetensors": ("safetensors", False, "`train_ckpt.load_file` (.safetensors)"),
    "safetensors.load_file": ("safetensors", False, "`safetensors.torch.load_file` (.safetensors)"),
    "safetensors.load_file.pread": ("safetensors", False, "`safetensors.torch.load_file(backend=\"pread\")`"),
    "safetensors.load_file+read": ("safetensors", False, "`safetensors.torch.load_file`, then every tensor read once"),
    "load_file.tckpt": ("tckpt", False, "`train_ckpt.load_file` (.tckpt)"),
    "torch.load": ("pt", False, "`torch.load` (.pt)"),
}
MEMORY_ROWS = ["ours.tckpt", "ours.safetensors", "torch.load+lsd", "torch.load(mmap)+assign", "safetensors+lsd"]
SPEED_PAIRS = [("load_file.safetensors", "safetensors.load_file"), ("load_file.safetensors", "safetensors.load_file.pread"),
               ("load_file.safetensors", "safetensors.load_file+read"), ("load_file.tckpt", "torch.load")]
TARGETS = {("load_file.safetensors", "safetensors.load_file"), ("load_file.tckpt", "torch.load")}
VERIFY_PAIRS = [("ours.tckpt", "ours.tckpt.noverify"), ("ours.safetensors", "ours.safetensors.noverify")]


# ---------------------------------------------------------------- in the measured process


def proc_status(key):
    """A /proc/self/status field in bytes (VmRSS, VmHWM, RssAnon, RssFile)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def cached_bytes(path):
    """How many bytes of `path` are in the page cache (util-linux fincore), or None."""
    if shutil.which("fincore") is None:
        return None
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path],
                         capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout.split() else None


def warm(path):
    """Reads the whole file once through a reused buffer (no memory stays behind)."""
    buf = bytearray(16 * MiB)
    with open(path, "rb", buffering=0) as fh:
        while fh.readinto(buf):
            pass


def evict(path):
    """Drops the file's pages from the page cache (clean pages only: the files are fsynced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def gpt2_config(layers):
    from transformers import GPT2Config

    return GPT2Config(n_layer=layers, n_embd=WIDTH, n_head=HEADS, tie_word_embeddings=False)


def build_model(layers, random):
    """GPT-2 with `layers` blocks. `random`: transformers' seeded initialisation (for writing
    the files). Otherwise the model is made on the meta device, then allocated and filled:
    the weights are overwritten by the load, and this leaves no freed temporaries behind in
    the allocator for a load to reuse unseen."""
    import torch
    from transformers import GPT2LMHeadModel

    if random:
        torch.manual_seed(SEED)
        return GPT2LMHeadModel(gpt2_config(layers)).eval()
    with torch.device("meta"):
        model = GPT2LMHeadModel(gpt2_config(layers))
    model.to_empty(device="cpu")
    with torch.no_grad():
        for t in model.state_dict().values():
            t.fill_(0.5)
    return model.eval()


def fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def case_prepare(spec):
    """Writes the three files (when missing) and returns the sizes."""
    import torch
    import train_ckpt

    model = build_model(spec["layers"], random=True)
    sd = model.state_dict()
    ptrs = {t.untyped_storage().data_ptr() for t in sd.values()}
    files = spec["files"]
    if not os.path.exists(files["tckpt"]):
        train_ckpt.save_file(sd, files["tckpt"], metadata=METADATA, compress=True)
    if not os.path.exists(files["safetensors"]):
        train_ckpt.save_file(sd, files["safetensors"], metadata=METADATA, compress=False)
    if not os.path.exists(files["pt"]):
        torch.save(sd, files["pt"] + ".tmp")
        fsync(files["pt"] + ".tmp")
        os.replace(files["pt"] + ".tmp", files["pt"])
    for path in files.values():
        fsync(path)
    return {
        "tensors": len(sd),
        "distinct_storages": len(ptrs),
        "state_bytes": sum(t.numel() * t.element_size() for t in sd.values()),
        "largest_bytes": max(t.numel() * t.element_size() for t in sd.values()),
        "largest_name": max(sd, key=lambda k: sd[k].numel() * sd[k].element_size()),
        "parameters": sum(p.numel() for p in model.parameters()),
        "file_bytes": {k: os.path.getsize(v) for k, v in files.items()},
    }


def load_ours(model, path, verify, stand_in):
    import train_ckpt

    if stand_in:
        model.load_state_dict(train_ckpt.load_file(path))
        return None
    # strict=True as the peers' load_state_dict: every name must match.
    return train_ckpt.load_model_only(model, path, strict=True, verify=verify)


def case_check(spec):
    """Equal tensors once: every reader of every file against the model `load_model_only`
    (or its stand-in) filled from the .tckpt, and against the seeded model itself."""
    import torch
    import train_ckpt
    from safetensors.torch import load_file as st_load_file

    files = spec["files"]
    reference = build_model(spec["layers"], random=True).state_dict()
    model = build_model(spec["layers"], random=False)
    returned = load_ours(model, files["tckpt"], True, spec["stand_in"])
    loaded = {
        "load_model_only(.tckpt)": model.state_dict(),
        "train_ckpt.load_file(.tckpt)": train_ckpt.load_file(files["tckpt"]),
        "train_ckpt.load_file(.safetensors)": train_ckpt.load_file(files["safetensors"]),
        "safetensors.torch.load_file": st_load_file(files["safetensors"]),
        "torch.load(.pt)": torch.load(files["pt"], map_location="cpu", weights_only=True),
    }
    mismatches = []
    for reader, tensors in loaded.items():
        if set(tensors) != set(reference):
            mismatches.append(f"{reader}: names differ ({len(set(tensors) ^ set(reference))})")
            continue
        for name, t in reference.items():
            if t.dtype != tensors[name].dtype or not torch.equal(t, tensors[name]):
                mismatches.append(f"{reader}: {name}")
    return {"mismatches": mismatches, "readers": list(loaded),
            "returned": None if returned is None else list(returned)}


def run_loader(name, model, path, stand_in):
    """The timed part. Returns extra facts about the run (a dict)."""
    import torch

    extra = {}
    if name.startswith("ours."):
        returned = load_ours(model, path, not name.endswith(".noverify"), stand_in)
        extra["returned"] = None if returned is None else list(returned)
    elif name == "torch.load+lsd":
        sd = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(sd)
        del sd
    elif name == "torch.load(mmap)+assign":
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        model.load_state_dict(sd, assign=True)
        del sd
    elif name == "safetensors+lsd":
        from safetensors.torch import load_file

        sd = load_file(path)
        model.load_state_dict(sd)
        del sd
    elif name == "load_file.safetensors" or name == "load_file.tckpt":
        import train_ckpt

        extra["result"] = train_ckpt.load_file(path)
    elif name == "safetensors.load_file":
        from safetensors.torch import load_file

        extra["result"] = load_file(path)
    elif name == "safetensors.load_file.pread":
        from safetensors.torch import load_file

        extra["result"] = load_file(path, backend="pread")
    elif name == "safetensors.load_file+read":
        # The default backend returns views of the mapped file and reads nothing until a
        # tensor is used; this is the same call followed by the first use of every byte.
        from safetensors.torch import load_file

        extra["result"] = load_file(path)
        touch_all(extra["result"].values())
    elif name == "torch.load":
        extra["result"] = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"unknown loader {name}")
    return extra


def touch_all(tensors):
    """Reads every byte of every tensor once (a sum per tensor); returns the seconds."""
    import torch

    start = time.perf_counter()
    with torch.no_grad():
        for t in tensors:
            t.sum()
    return time.perf_counter() - start


def case_measure(spec):
    import torch

    torch.set_num_threads(spec["threads"])
    name, path = spec["loader"], spec["file"]
    model = build_model(spec["layers"], random=False) if LOADERS[name][1] else None
    if spec["cache"] == "warm":
        warm(path)
    else:
        evict(path)
    cached = cached_bytes(path)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = proc_status("VmRSS")
    hwm_reset = proc_status("VmHWM")
    start = time.perf_counter()
    extra = run_loader(name, model, path, spec["stand_in"])
    seconds = time.perf_counter() - start
    peak = proc_status("VmHWM")
    out = {
        "seconds": seconds,
        "baseline_rss": base,
        "hwm_after_reset": hwm_reset,
        "peak_above_baseline": peak - base,
        "rss_above_baseline_after": proc_status("VmRSS") - base,
        "rss_file_after": proc_status("RssFile"),
        "cached_before_load": cached,
        "file_bytes": os.path.getsize(path),
        "threads": torch.get_num_threads(),
    }
    if "returned" in extra:
        out["returned"] = extra["returned"]
    if name == "torch.load(mmap)+assign":
        # The load maps the file and reads nothing; what reading the weights once then costs.
        out["touch_seconds"] = touch_all(model.state_dict().values())
        out["peak_above_baseline_after_touch"] = proc_status("VmHWM") - base
    return out


def child(spec):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    kind = spec["kind"]
    result = {"prepare": case_prepare, "check": case_check, "measure": case_measure}[kind](spec)
    print(json.dumps(result))


# ---------------------------------------------------------------- the driver


def child_env():
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    for k in [k for k in env if k.startswith("TRAIN_")]:
        del env[k]
    return env


def run_case(spec, timeout=600):
    cmd = [sys.executable, os.path.abspath(__file__), "--case", json.dumps(spec)]
    done = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"case {spec.get('kind')} {spec.get('loader', '')} {spec.get('cache', '')} "
                           f"exited {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def layers_for(size_mb):
    """The fewest GPT-2 blocks for an fp32 state dict of at least size_mb MB (10^6 bytes)."""
    vocab, positions = 50257, 1024
    fixed = 2 * vocab * WIDTH + positions * WIDTH + 2 * WIDTH  # wte, lm_head, wpe, ln_f
    block = 12 * WIDTH * WIDTH + 13 * WIDTH  # attention (qkv, proj), MLP (4x), two LayerNorms
    layers = 1
    while 4 * (fixed + layers * block) < size_mb * 1e6:
        layers += 1
    return layers


def has_load_model_only():
    out = subprocess.run([sys.executable, "-c", "import train_ckpt; train_ckpt.load_model_only"],
                         capture_output=True, env=child_env())
    return out.returncode == 0


def versions():
    code = ("import json, torch, transformers, safetensors, train_ckpt; print(json.dumps({"
            "'torch': torch.__version__, 'transformers': transformers.__version__, "
            "'safetensors': safetensors.__version__, 'train_ckpt': train_ckpt.__version__}))")
    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     env=child_env(), check=True).stdout)


def loadavg():
    with open("/proc/loadavg") as fh:
        return float(fh.read().split()[0])


def mib(b):
    return "-" if b is None else f"{b / MiB:,.0f}"


def med(runs, key="seconds"):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def per_repeat(num, den):
    """The ratio within each repeat (the runs of one repeat ran back to back), in order."""
    return ", ".join(f"{a['seconds'] / b['seconds']:.2f}" for a, b in zip(num, den))


def print_tables(info, results, stand_in, repeats, threads):
    bound = info["largest_bytes"] + SLACK
    ours_label = "stand-in: `load_state_dict(train_ckpt.load_file())`" if stand_in else None

    def label(name):
        if stand_in and name.startswith("ours."):
            return ours_label + f" ({LOADERS[name][0]})"
        return LOADERS[name][2]

    def runs(name, cache):
        return results.get(name, {}).get(cache, [])

    print(f"GPT-2, {info['layers']} layers, width {WIDTH}, untied: {info['parameters']:,} parameters, "
          f"{info['tensors']} tensors, {info['state_bytes'] / 1e6:,.1f} MB fp32; largest tensor "
          f"`{info['largest_name']}` {info['largest_bytes'] / MiB:,.1f} MiB; bound = largest + 64 MiB = "
          f"{bound / MiB:,.1f} MiB. Files: .tckpt {mib(info['file_bytes']['tckpt'])} MiB, .safetensors "
          f"{mib(info['file_bytes']['safetensors'])} MiB, .pt {mib(info['file_bytes']['pt'])} MiB. "
          f"torch threads {threads}; times are medians of {repeats}, peaks the largest of all runs.")
    print()
    print("| loader into the CPU model | peak RSS above model MiB | within largest + 64 MiB | "
          "RSS above model after MiB | warm s | cold s |")
    print("|---|--:|:-:|--:|--:|--:|")
    for name in MEMORY_ROWS:
        all_runs = runs(name, "warm") + runs(name, "cold")
        if not all_runs:
            continue
        peak = max(r["peak_above_baseline"] for r in all_runs)
        w, c = med(runs(name, "warm")), med(runs(name, "cold"))
        after = max(r["rss_above_baseline_after"] for r in all_runs)
        print(f"| {label(name)} | {mib(peak)} | {'yes' if peak <= bound else 'NO'} | {mib(after)} | "
              f"{'-' if w is None else f'{w:.3f}'} | {'-' if c is None else f'{c:.3f}'} |")
    mm = runs("torch.load(mmap)+assign", "warm") + runs("torch.load(mmap)+assign", "cold")
    if mm:
        print()
        print("`torch.load(mmap=True)` + `assign=True` reads no weight during the load: the parameters "
              "become views of the mapped file and the model's own memory is freed. Reading every weight "
              "once afterwards (a sum per tensor) took "
              f"{med(runs('torch.load(mmap)+assign', 'warm'), 'touch_seconds'):.3f} s warm, "
              f"{med(runs('torch.load(mmap)+assign', 'cold'), 'touch_seconds') or float('nan'):.3f} s cold; "
              f"the peak above the model was then {mib(max(r['peak_above_baseline_after_touch'] for r in mm))} "
              "MiB (the file's pages take the place of the freed parameters).")
    print()
    print("| dict load: ours vs peer | cache | ours s | peer s | ratio peer/ours | per repeat | target >= 1.0x | "
          "ours peak MiB | peer peak MiB |")
    print("|---|---|--:|--:|--:|--:|:-:|--:|--:|")
    for ours, peer in SPEED_PAIRS:
        for cache in ("warm", "cold"):
            o, p = runs(ours, cache), runs(peer, cache)
            if not o or not p:
                continue
            ratio = med(p) / med(o)
            print(f"| {LOADERS[ours][2]} vs {LOADERS[peer][2]} | {cache} | {med(o):.3f} | {med(p):.3f} | "
                  f"{ratio:.2f}x | {per_repeat(p, o)} | {('met' if ratio >= 1.0 else 'missed') if (ours, peer) in TARGETS else '-'} | "
                  f"{mib(max(r['peak_above_baseline'] for r in o))} | {mib(max(r['peak_above_baseline'] for r in p))} |")
    if not stand_in:
        print()
        print("| verify before touching the model | cache | verify=True s | verify=False s | cost (True/False) | "
              "per repeat |")
        print("|---|---|--:|--:|--:|--:|")
        for on, off in VERIFY_PAIRS:
            for cache in ("warm", "cold"):
                a, b = runs(on, cache), runs(off, cache)
                if not a or not b:
                    continue
                print(f"| {LOADERS[on][0]} | {cache} | {med(a):.3f} | {med(b):.3f} | {med(a) / med(b):.2f}x | {per_repeat(a, b)} |")
    else:
        print()
        print("`train_ckpt.load_model_only` is not installed: the model rows use the stand-in, and "
              "the verify=True/False table is left out.")
    # What the page cache held just before each load, so the cold and warm labels can be trusted.
    cold = [r["cached_before_load"] for c in results.values() for r in c.get("cold", [])]
    hot = [r["cached_before_load"] / r["file_bytes"] for c in results.values() for r in c.get("warm", [])
           if r["cached_before_load"] is not None]
    print()
    if cold and all(x is not None for x in cold):
        print(f"Page cache before each load (fincore): cold runs held at most {mib(max(cold))} MiB of the file; "
              f"warm runs at least {100 * min(hot):.0f}% of it.")
    else:
        print("fincore is not available: eviction was not checked.")


def order(stand_in):
    names = list(LOADERS)
    if stand_in:
        names = [n for n in names if not n.endswith(".noverify")]
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help="work folder (kept, files reused); default: a temporary folder, removed")
    ap.add_argument("--size-mb", type=float, default=520, help="least fp32 state dict size, MB (default 520)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per loader and cache state (median; default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every case (default 2)")
    ap.add_argument("--json", help="write every run and the summary here")
    args = ap.parse_args()
    if args.case:
        child(json.loads(args.case))
        return

    work = args.dir or tempfile.mkdtemp(prefix="python-load-")
    os.makedirs(work, exist_ok=True)
    layers = layers_for(args.size_mb)
    files = {kind: os.path.join(work, f"gpt2-{layers}l.{kind}") for kind in ("tckpt", "safetensors", "pt")}
    stand_in = not has_load_model_only()
    started = time.time()
    load_before = loadavg()
    try:
        print(f"writing GPT-2 with {layers} layers in {work} (if missing) ...", file=sys.stderr)
        info = run_case({"kind": "prepare", "layers": layers, "files": files})
        info["layers"] = layers
        check = run_case({"kind": "check", "layers": layers, "files": files, "stand_in": stand_in})
        if check["mismatches"]:
            sys.exit("readers disagree: " + "; ".join(check["mismatches"][:10]))
        print(f"equal tensors from {len(check['readers'])} readers; load_model_only returned {check['returned']}",
              file=sys.stderr)
        results = {}
        names = order(stand_in)
        for rep in range(args.repeats):
            for cache in ("warm", "cold"):
                for name in names:
                    spec = {"kind": "measure", "loader": name, "cache": cache, "layers": layers,
                            "file": files[LOADERS[name][0]], "threads": args.threads, "stand_in": stand_in}
                    r = run_case(spec)
                    r["load_average"] = loadavg()
                    results.setdefault(name, {}).setdefault(cache, []).append(r)
                    print(f"[{rep + 1}/{args.repeats}] {cache} {name}: {r['seconds']:.3f} s, "
                          f"peak {mib(r['peak_above_baseline'])} MiB", file=sys.stderr)
        load_after = loadavg()
        print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
              f"load average {load_before:.2f} -> {load_after:.2f}, {time.time() - started:.0f} s; "
              f"{', '.join(f'{k} {v}' for k, v in versions().items())}; files in {work}.")
        print()
        print_tables(info, results, stand_in, args.repeats, args.threads)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"info": info, "stand_in": stand_in, "threads": args.threads, "repeats": args.repeats,
                           "load_average": [load_before, load_after], "versions": versions(),
                           "check": check, "results": results}, fh, indent=1)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
