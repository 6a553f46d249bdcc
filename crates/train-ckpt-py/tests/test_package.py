"""The package as installed: no libtorch linked, an abi3 wheel, a fast import without torch."""

import os
import pathlib
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

import train_ckpt


def test_the_extension_links_no_libtorch_nor_libpython():
    ext = pathlib.Path(train_ckpt._native.__file__)
    linked = subprocess.run(["ldd", ext], capture_output=True, text=True, check=True).stdout
    assert "libtorch" not in linked and "libc10" not in linked, linked
    # An abi3 extension takes the interpreter's symbols from the process that loads it.
    assert "libpython" not in linked, linked


def test_the_wheel_is_abi3_for_python_3_9_on():
    wheel = os.environ.get("TRAIN_CKPT_WHEEL")
    wheels = [pathlib.Path(wheel)] if wheel else sorted((REPO_ROOT / "target" / "wheels").glob("train_ckpt-*.whl"))
    if not wheels:
        pytest.fail("no wheel: run scripts/python-wheel (or set TRAIN_CKPT_WHEEL)")
    assert "-cp39-abi3-" in wheels[-1].name, wheels[-1].name


IMPORT = """
import sys, time
t = time.perf_counter()
import train_ckpt
elapsed = time.perf_counter() - t
assert "torch" not in sys.modules, "import train_ckpt imported torch"
print(elapsed)
"""


def test_import_is_fast_and_does_not_import_torch():
    runs = [float(subprocess.run([sys.executable, "-c", IMPORT], capture_output=True, text=True, check=True).stdout) for _ in range(5)]
    best = min(runs)
    print(f"import train_ckpt: {best * 1000:.1f} ms (best of 5: {', '.join(f'{r * 1000:.1f}' for r in runs)})")
    assert best < 0.050, runs


def test_every_public_function_has_a_docstring_and_a_type_hint():
    stub = (pathlib.Path(train_ckpt.__file__).parent / "__init__.pyi").read_text()
    assert (pathlib.Path(train_ckpt.__file__).parent / "py.typed").exists()
    for name in train_ckpt.__all__:
        if not callable(getattr(train_ckpt, name)):
            assert f"\n{name}: " in stub, f"the constant {name} has no type in the stub"
            continue
        assert getattr(train_ckpt, name).__doc__, name
        assert f"def {name}(" in stub or f"class {name}" in stub, name
