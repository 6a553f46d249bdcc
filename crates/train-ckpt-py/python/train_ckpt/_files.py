"""The tensor-level layer, for tensors without modules, shaped like ``safetensors.torch``:
:func:`load_file`, :func:`save_file`, :func:`safe_open`, :func:`verify`; and the one place
tensors are made and filled from a file (:class:`_Opened`), which the module-level layer
(``_modules``) uses too."""

import os

from . import _native

# safetensors' dtype names -> torch's attribute names. Types torch lacks in the running
# version (the unsigned 16- to 64-bit kinds before torch 2.3) are refused when met.
_TORCH_DTYPE_NAMES = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


def _torch():
    import torch

    return torch


def _torch_dtype(name, dtype):
    torch_name = _TORCH_DTYPE_NAMES.get(dtype)
    found = getattr(_torch(), torch_name, None) if torch_name else None
    if found is None:
        raise ValueError(f"tensor `{name}` is of dtype {dtype}, which this torch has no dtype for")
    return found


def _file_dtype(name, dtype):
    for file_name, torch_name in _TORCH_DTYPE_NAMES.items():
        if getattr(_torch(), torch_name, None) == dtype:
            return file_name
    raise ValueError(f"tensor `{name}` is of dtype {dtype}, which checkpoint files have no type for")


def _check_device(device):
    if device is None:
        return None
    torch = _torch()
    device = torch.device(device)
    return None if device.type == "cpu" else device


class _Opened:
    """A native file handle with its entries by name."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.native = _native.File(self.path)
        # name -> (dtype, shape, bytes, role): role is `model`, `optimizer` or `other`.
        self.entries = {
            name: (dtype, tuple(shape), nbytes, role) for name, dtype, shape, nbytes, role in self.native.entries()
        }

    def entry(self, name):
        """``(dtype, shape, bytes)`` of tensor ``name``; ``KeyError`` naming the file if absent."""
        if name not in self.entries:
            raise KeyError(f"no tensor `{name}` in {self.path}")
        return self.entries[name][:3]

    def read(self, names):
        """The tensors ``names`` (a list), decoded straight into fresh CPU tensors."""
        torch = _torch()
        out = []
        for name in names:
            dtype, shape, nbytes = self.entry(name)
            t = torch.empty(shape, dtype=_torch_dtype(name, dtype), device="cpu")
            if t.numel() * t.element_size() != nbytes:
                raise ValueError(f"tensor `{name}` holds {nbytes} bytes, which is not a {dtype} tensor of shape {list(shape)}")
            out.append(t)
        self.native.read_into([(name, t.data_ptr(), t.numel() * t.element_size()) for name, t in zip(names, out)])
        return out


def load_file(path, device="cpu"):
    """Loads every tensor of the checkpoint at ``path``, under the file's own names.

    Ours (``.tckpt`` or ``.safetensors``) include the optimizer state as
    ``optimizer/<param>/<slot>`` tensors; a ``torch.save`` file's tensors beside its model
    state dict (optimizer state, a 0-d loss) come under their dotted path in the pickle
    (``optimizer_state_dict.state.0.exp_avg``). Dtypes are kept as stored. Checksums are
    checked where the file has them. A sharded checkpoint (a data-parallel job's
    ``latest.index.json``, with one shard file per rank beside it) loads as one file: each
    tensor whole, assembled from its pieces.

    The bytes are decoded into the tensors' own CPU memory (a compressed file in parallel).
    For another ``device`` the tensors are loaded to the CPU, then moved with ``.to(device)``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a damaged or
    malformed one.
    """
    target = _check_device(device)
    opened = _Opened(path)
    names = list(opened.entries)
    tensors = dict(zip(names, opened.read(names)))
    if target is not None:
        tensors = {k: v.to(target) for k, v in tensors.items()}
    return tensors


def save_file(tensors, path, metadata=None, compress=True):
    """Writes ``tensors`` (a dict of names to tensors) to ``path`` in ``train``'s format.

    ``compress=True`` writes the compressed ``.tckpt`` format, ``compress=False`` plain
    safetensors with a checksum per tensor (which ``safetensors`` also reads); a name ending in
    the other format's suffix is refused. The write is atomic: ``path`` holds either its old
    content or the whole new file. Tensors on another device are copied to the CPU first;
    dtypes are kept.

    ``metadata`` (a dict of strings to strings) is stored beside ``train``'s own keys.
    ``epoch``, ``step``, ``train_loss`` and ``val_loss`` are read as numbers into ``train``'s
    metadata (``epoch`` and ``step`` whole numbers); ``train``'s other keys are reserved.

    Raises ``ValueError`` for what cannot be written (a dtype the format lacks, a reserved key).
    """
    _write(tensors, path, metadata, compress)


def _write(tensors, path, metadata, compress, optimizer=None, lr_scheduler=None):
    """:func:`save_file`, with the optimizer's and schedule's descriptions (JSON text) that
    :func:`train_ckpt.save_checkpoint` records."""
    torch = _torch()
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1]
    if suffix == (".safetensors" if compress else ".tckpt"):
        raise ValueError(
            f"cannot write {path}: compress={compress} writes the "
            f"{'compressed .tckpt' if compress else 'plain .safetensors'} format, which the name contradicts"
        )
    if not isinstance(tensors, dict):
        raise TypeError("tensors must be a dict of names to tensors")
    metadata = dict(metadata or {})
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError(f"metadata must map strings to strings; `{k}` maps to {type(v).__name__}")
    held = []
    specs = []
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be strings, not {type(name).__name__}")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"`{name}` is a {type(t).__name__}, not a torch.Tensor")
        dtype = _file_dtype(name, t.dtype)
        t = t.detach().to("cpu").contiguous()
        held.append(t)
        specs.append((name, dtype, list(t.shape), t.data_ptr(), t.numel() * t.element_size()))
    _native.save(path, specs, metadata, compress, optimizer, lr_scheduler)


def verify(path):
    """Reads every tensor of ``path`` and checks it against its checksum.

    Returns a dict: ``tensors`` (how many were read) and ``integrity``: ``"checked"`` (every
    tensor and the metadata matched), ``"metadata_not_covered"`` (a format-version-1 file: its
    tensors matched, its metadata has no checksum) or ``"not_checked"`` (a file without
    checksums: foreign safetensors, ``torch.save``). Raises ``ValueError`` naming the damaged
    tensor, ``FileNotFoundError`` for a missing file.
    """
    tensors, integrity = _Opened(path).native.verify()
    return {"tensors": tensors, "integrity": integrity}


class safe_open:
    """Opens a checkpoint to read tensors one at a time, as ``safetensors.safe_open`` does.

    A context manager::

        with safe_open("model.tckpt", framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)

    Only ``framework="pt"`` is supported, and ``device="cpu"`` (load, then ``.to(device)``).
    """

    def __init__(self, path, framework="pt", device="cpu"):
        if framework not in ("pt", "torch"):
            raise ValueError(f"framework `{framework}` is not supported; use 'pt'")
        self._device = _check_device(device)
        self._opened = _Opened(path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._opened = None
        return False

    def _file(self):
        if self._opened is None:
            raise ValueError("the file is closed")
        return self._opened

    def keys(self):
        """Every tensor's name, in file order (see :func:`load_file` for ``torch.save`` files)."""
        return list(self._file().entries)

    def metadata(self):
        """The file's metadata, a dict of strings (``train``'s keys and any of the writer's own)."""
        return self._file().native.metadata()

    def get_tensor(self, name):
        """Reads tensor ``name`` (checked against its checksum where the file has one)."""
        t = self._file().read([name])[0]
        return t if self._device is None else t.to(self._device)

    def get_slice(self, name):
        """A lazy handle on tensor ``name``: ``get_shape()``, ``get_dtype()``, and indexing
        (``[...]``, ``[a:b]``, anything torch indexing takes). Indexing reads and checks the
        whole tensor, then returns the part asked for (as a copy when it is a part): the
        formats check whole tensors, so no partial read is offered."""
        self._file().entry(name)
        return _Slice(self, name)


class _Slice:
    """What :meth:`safe_open.get_slice` returns."""

    def __init__(self, opened, name):
        self._opened = opened
        self._name = name

    def get_shape(self):
        """The tensor's shape, as a list."""
        return list(self._opened._file().entry(self._name)[1])

    def get_dtype(self):
        """The tensor's dtype as the file names it (``F32``, ``BF16``, ...)."""
        return self._opened._file().entry(self._name)[0]

    def __getitem__(self, index):
        full = self._opened.get_tensor(self._name)
        part = full[index]
        return part.clone() if part.numel() < full.numel() else part
