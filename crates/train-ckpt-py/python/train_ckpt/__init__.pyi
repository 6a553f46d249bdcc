# Type hints of the train_ckpt package; the docstrings are in _files.py and _modules.py.
import os
from types import TracebackType
from typing import Any, Dict, List, Literal, Optional, Tuple, Type, Union

import torch

__version__: str

_Path = Union[str, "os.PathLike[str]"]
_Device = Union[str, torch.device, None]

def load_file(path: _Path, device: _Device = "cpu") -> Dict[str, torch.Tensor]: ...
def save_file(
    tensors: Dict[str, torch.Tensor],
    path: _Path,
    metadata: Optional[Dict[str, str]] = None,
    compress: bool = True,
) -> None: ...
def verify(path: _Path) -> Dict[str, Union[int, str]]: ...

class _Slice:
    def get_shape(self) -> List[int]: ...
    def get_dtype(self) -> str: ...
    def __getitem__(self, index: Any) -> torch.Tensor: ...

class safe_open:
    def __init__(self, path: _Path, framework: Literal["pt", "torch"] = "pt", device: _Device = "cpu") -> None: ...
    def __enter__(self) -> "safe_open": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> Literal[False]: ...
    def keys(self) -> List[str]: ...
    def metadata(self) -> Dict[str, str]: ...
    def get_tensor(self, name: str) -> torch.Tensor: ...
    def get_slice(self, name: str) -> _Slice: ...

STAGING_BYTES: int

_Strategy = Literal["auto", "standard", "memory_efficient", "model_only"]

class StateDictKeyError(KeyError): ...

class Loaded(Tuple[Any, ...]):
    missing_keys: List[str]
    unexpected_keys: List[str]
    strategy: str
    reason: str
    optimizer_restored: bool
    scheduler_restored: bool
    integrity: str
    step: int
    free_bytes: Optional[int]
    source: str
    predicted_peak_bytes: Dict[str, int]
    sizes: Dict[str, int]

def load_checkpoint_memory_efficient(
    model: torch.nn.Module,
    optimizer: Optional[torch.optim.Optimizer],
    path: _Path,
    device: _Device = "cpu",
    scheduler: Optional[Any] = None,
    *,
    strict: bool = True,
    verify: bool = True,
) -> Loaded: ...
def load_model_only(
    model: torch.nn.Module,
    path: _Path,
    strict: bool = False,
    device: _Device = None,
    *,
    verify: bool = True,
) -> Loaded: ...
def smart_load_checkpoint(
    model: torch.nn.Module,
    optimizer: Optional[torch.optim.Optimizer],
    path: _Path,
    device: _Device = None,
    *,
    strategy: _Strategy = "auto",
    checkpoint_memory_efficient: bool = False,
    load_optimizer_state: bool = True,
    safety_margin: float = 0.1,
    free_bytes: Optional[int] = None,
    scheduler: Optional[Any] = None,
    strict: bool = True,
    verify: bool = True,
) -> Loaded: ...
def save_checkpoint(
    path: _Path,
    model: torch.nn.Module,
    optimizer: Optional[torch.optim.Optimizer] = None,
    *,
    epoch: int,
    train_loss: float,
    val_loss: Optional[float] = None,
    compress: bool = True,
    scheduler: Optional[Any] = None,
    step: Optional[int] = None,
    metadata: Optional[Dict[str, str]] = None,
) -> None: ...
