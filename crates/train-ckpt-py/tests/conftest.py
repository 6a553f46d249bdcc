"""Shared fixtures: the repository's root, the `train-ckpt` and `train` binaries, and tensor
comparison."""

import os
import pathlib
import subprocess

import pytest
import torch

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]


def same_bits(a, b):
    """Whether two tensors are bit-identical: dtype, shape and every byte (NaNs included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8))


def assert_same_tensors(got, expected):
    assert sorted(got) == sorted(expected)
    for name, t in expected.items():
        assert same_bits(got[name], t), name


def _binary(variable, name, *cargo_args):
    """The binary `name`: the environment's `variable`, else target/release/`name`, built with
    `cargo build --release --locked` and `cargo_args` if missing."""
    path = pathlib.Path(os.environ.get(variable, REPO_ROOT / "target" / "release" / name))
    if not path.exists():
        subprocess.run(["cargo", "build", "--release", "--locked", *cargo_args], cwd=REPO_ROOT, check=True)
    assert path.exists(), path
    return path


@pytest.fixture(scope="session")
def train_ckpt_bin():
    """The `train-ckpt` binary (TRAIN_CKPT_BIN, else target/release/train-ckpt, built if missing)."""
    return _binary("TRAIN_CKPT_BIN", "train-ckpt", "-p", "train-ckpt")


@pytest.fixture(scope="session")
def train_bin():
    """The `train` binary (TRAIN_BIN, else target/release/train, built if missing)."""
    return _binary("TRAIN_BIN", "train", "--bin", "train")


def run_train(train_bin, cwd, *args):
    """Runs `train` in ``cwd`` with ``args``; returns ``(stdout, stderr)`` (stderr is the log),
    failing the test with the log when `train` fails. Settings from the environment (TRAIN_*)
    are left out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIN_")}
    env["RUST_LOG"] = "info"
    done = subprocess.run([str(train_bin), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"train {' '.join(map(str, args))} exited {done.returncode}:\n{done.stderr}"
    return done.stdout, done.stderr
