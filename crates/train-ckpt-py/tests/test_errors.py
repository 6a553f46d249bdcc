"""Every error is one clear Python exception, and no input crashes the interpreter."""

import os
import pickle
import random
import subprocess
import sys

import pytest
import torch

import train_ckpt

READERS = {
    "load_file": train_ckpt.load_file,
    "safe_open": train_ckpt.safe_open,
    "verify": train_ckpt.verify,
}


@pytest.mark.parametrize("reader", READERS.values(), ids=READERS.keys())
def test_a_missing_file_is_file_not_found(tmp_path, reader):
    with pytest.raises(FileNotFoundError, match="missing.tckpt"):
        reader(tmp_path / "missing.tckpt")


@pytest.mark.parametrize("reader", READERS.values(), ids=READERS.keys())
def test_what_is_not_a_checkpoint_is_a_value_error(tmp_path, reader):
    (tmp_path / "empty.tckpt").write_bytes(b"")
    (tmp_path / "text.safetensors").write_bytes(b"hello, world\n" * 10)
    (tmp_path / "noise.bin").write_bytes(random.Random(0).randbytes(4096))
    (tmp_path / "dir.tckpt").mkdir()
    for name in ["empty.tckpt", "text.safetensors", "noise.bin", "dir.tckpt"]:
        with pytest.raises(ValueError, match=name):
            reader(tmp_path / name)


def flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_damaged_tensor_is_a_value_error_naming_it(tmp_path):
    # Noise does not compress: the tensor's bytes sit near the file's end in either format.
    tensors = {"first": torch.zeros(8), "damaged_one": torch.randn(4096)}
    for compress, suffix in [(True, ".tckpt"), (False, ".safetensors")]:
        path = tmp_path / f"d{suffix}"
        train_ckpt.save_file(tensors, path, compress=compress)
        size = path.stat().st_size
        flip(path, size - 1000 if not compress else size - 20000)
        for read in (train_ckpt.load_file, train_ckpt.verify, lambda p: train_ckpt.safe_open(p).get_tensor("damaged_one")):
            with pytest.raises(ValueError, match="`damaged_one` fails its checksum|tensor `damaged_one`"):
                read(path)
        with train_ckpt.safe_open(path) as f:
            assert torch.equal(f.get_tensor("first"), tensors["first"]), "the sound tensor still reads"


def test_altered_metadata_is_a_value_error(tmp_path):
    path = tmp_path / "m.safetensors"
    train_ckpt.save_file({"a": torch.ones(2)}, path, metadata={"epoch": "12"}, compress=False)
    data = path.read_bytes().replace(b'"epoch":"12"', b'"epoch":"13"')
    path.write_bytes(data)
    with pytest.raises(ValueError, match="metadata fails its checksum"):
        train_ckpt.load_file(path)


@pytest.mark.parametrize("suffix", [".tckpt", ".safetensors", ".pt"])
def test_truncated_files_are_value_errors(tmp_path, suffix):
    path = tmp_path / f"whole{suffix}"
    tensors = {"a": torch.randn(300), "b": torch.arange(50)}
    if suffix == ".pt":
        torch.save(tensors, path)
    else:
        train_ckpt.save_file(tensors, path, compress=suffix == ".tckpt")
    data = path.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    for keep in sorted({1, 7, 8, 16, 100, len(data) // 2, len(data) - 8, len(data) - 1}):
        cut.write_bytes(data[:keep])
        with pytest.raises(ValueError):
            train_ckpt.load_file(cut)


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, monkeypatch):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"w": Payload()}, f, protocol=2)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError):
        train_ckpt.load_file(path)
    assert not (tmp_path / "pwned").exists()


def test_what_cannot_be_written_is_refused_clearly(tmp_path):
    t = {"a": torch.ones(2)}
    with pytest.raises(ValueError, match="reserved"):
        train_ckpt.save_file(t, tmp_path / "r.tckpt", metadata={"format": "mine"})
    with pytest.raises(ValueError, match="reserved"):
        train_ckpt.save_file(t, tmp_path / "r.tckpt", metadata={"xxh3": "{}"})
    with pytest.raises(ValueError, match="`epoch` = `three`"):
        train_ckpt.save_file(t, tmp_path / "r.tckpt", metadata={"epoch": "three"})
    with pytest.raises(ValueError, match="strings"):
        train_ckpt.save_file(t, tmp_path / "r.tckpt", metadata={"epoch": 3})
    with pytest.raises(ValueError, match="complex64"):
        train_ckpt.save_file({"c": torch.ones(2, dtype=torch.complex64)}, tmp_path / "r.tckpt")
    with pytest.raises(ValueError, match="U64"):
        train_ckpt.save_file({"u": torch.ones(2, dtype=torch.uint64)}, tmp_path / "r.tckpt")
    with pytest.raises(ValueError, match="name contradicts"):
        train_ckpt.save_file(t, tmp_path / "r.safetensors", compress=True)
    with pytest.raises(ValueError, match="name contradicts"):
        train_ckpt.save_file(t, tmp_path / "r.tckpt", compress=False)
    with pytest.raises(TypeError):
        train_ckpt.save_file({"a": [1, 2]}, tmp_path / "r.tckpt")
    with pytest.raises(FileNotFoundError):
        train_ckpt.save_file(t, tmp_path / "no" / "such" / "dir.tckpt")
    assert not (tmp_path / "r.tckpt").exists()


FUZZ = r"""
import random, sys
import torch
import train_ckpt


class Holder(torch.nn.Module):
    # The state dict of the fuzzed files: a, b, c.
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(64, 8))
        self.register_buffer("b", torch.zeros(30, dtype=torch.int64))
        self.register_buffer("c", torch.zeros(5, dtype=torch.bfloat16))


model = Holder()
optimizer = torch.optim.Adam(model.parameters())
loaders = (
    train_ckpt.load_file,
    train_ckpt.verify,
    lambda p: train_ckpt.load_model_only(model, p),
    lambda p: train_ckpt.load_checkpoint_memory_efficient(model, optimizer, p, strict=False),
)
data = open(sys.argv[1], "rb").read()
rng = random.Random(int(sys.argv[2]))
path = sys.argv[1] + ".fuzz"
outcomes = {}
for i in range(150):
    b = bytearray(data)
    if rng.random() < 0.3:
        b = b[: rng.randrange(len(b))]
    for _ in range(rng.randrange(1, 4)):
        if b:
            b[rng.randrange(len(b))] = rng.randrange(256)
    open(path, "wb").write(bytes(b))
    for read in loaders:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        try:
            read(path)
            kind = "ok"
        except (ValueError, KeyError, OSError) as e:
            kind = type(e).__name__
            for k, v in model.state_dict().items():
                assert torch.equal(v, before[k]), f"{kind} ({e}) and yet `{k}` changed"
        outcomes[kind] = outcomes.get(kind, 0) + 1
print(outcomes)
"""


@pytest.mark.parametrize("suffix", [".tckpt", ".safetensors", ".pt"])
def test_damaged_inputs_never_crash_the_interpreter(tmp_path, suffix):
    path = tmp_path / f"f{suffix}"
    tensors = {"a": torch.randn(64, 8), "b": torch.arange(30), "c": torch.ones(5).bfloat16()}
    if suffix == ".pt":
        torch.save(tensors, path)
    else:
        train_ckpt.save_file(tensors, path, compress=suffix == ".tckpt")
    run = subprocess.run([sys.executable, "-c", FUZZ, str(path), "7"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "RuntimeError" not in run.stdout and "PanicException" not in run.stderr
