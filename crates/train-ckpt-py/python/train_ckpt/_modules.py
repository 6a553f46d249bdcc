"""The module-level layer: the seed guide's method 2. Loads checkpoints into an
``nn.Module`` and its optimizer in place, and saves them in the format ``train --resume``
continues from.

How a load goes, whatever the entry point:

1. **Plan, touching nothing.** Open the file (its header, metadata and checksums), match its
   names to the model's (``module.`` and ``_orig_mod.`` wrappers stripped on both sides),
   check every shape, and, when the optimizer is loaded, match each parameter's state to
   the parameter by name through the model, then to PyTorch's index through the optimizer's
   param groups. Any refusal (a size mismatch, ``strict`` names, another optimizer kind) is
   raised here.
2. **Verify, touching nothing.** Read and check every tensor that will be loaded against
   its checksum (``verify=True``, the default), so that a damaged file raises and leaves the
   model and optimizer exactly as they were. Tensors that are not loaded are not read.
3. **Fill.** Decode each tensor straight into its destination: a CPU tensor of the file's
   dtype is filled in its own memory (no copy at all); any other (a GPU tensor, another
   dtype) passes through a bounded staging buffer, pinned for a GPU, in groups of at most
   :data:`STAGING_BYTES` (a larger tensor alone), with two buffers alternating so that
   decoding one group overlaps the copy of the other.
"""

import json
import logging
import math
import os
import re
import warnings
from collections import defaultdict

from . import _native
from ._files import _Opened, _torch, _torch_dtype, _write

log = logging.getLogger("train_ckpt")

#: Bytes of file tensors staged at once on their way to a destination that cannot be filled
#: in place (a GPU tensor, or another dtype): the guide's layer-by-layer idea, bounded.
STAGING_BYTES = 64 << 20

#: The optimizers whose state ``train`` keeps under the same slot names as PyTorch (its
#: ``training.optimizer.kind``), by PyTorch class name. Others are saved and loaded by slot
#: name too, but ``train --resume`` starts them fresh.
_TRAIN_KINDS = {"Adam": "adam", "AdamW": "adamw", "SGD": "sgd"}

#: Prefixes that wrappers add to every name: ``DistributedDataParallel``/``DataParallel``
#: (``module.``) and ``torch.compile`` (``_orig_mod.``).
_WRAPPERS = ("module.", "_orig_mod.")

_OPTIMIZER = "optimizer/"

#: A tensor of a ``torch.save`` file's optimizer state dict, as the reader names it:
#: ``optimizer_state_dict.state.<index>.<slot>``. PyTorch keys that state by the parameter's
#: index over the param groups (its own ``load_state_dict`` matches it so), and so does this.
_PYTORCH_STATE = re.compile(r"^(?:.*\.)?state\.(\d+)\.([^.]+)$")


class StateDictKeyError(KeyError):
    """``strict=True`` and the file's names and the model's differ: a ``KeyError`` whose
    message lists them as ``nn.Module.load_state_dict`` does."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class Loaded(tuple):
    """What a load returns: the guide's tuple (``(epoch, train_loss, val_loss)`` or
    ``(epoch, train_loss)``), which unpacks as before, with what else happened as attributes:
    ``missing_keys`` and ``unexpected_keys`` (as ``load_state_dict`` reports them),
    ``strategy`` and ``reason`` (how it was loaded, and why), ``optimizer_restored``,
    ``scheduler_restored``, ``integrity`` (what verifying found: ``checked``,
    ``metadata_not_covered``, ``not_checked``, or ``not_verified``), ``step`` (the global
    optimizer step the file records), and for :func:`smart_load_checkpoint` the plan's
    figures: ``free_bytes``, ``source``, ``predicted_peak_bytes``, ``sizes``."""

    def __new__(cls, values, **info):
        loaded = super().__new__(cls, values)
        loaded.__dict__.update(info)
        return loaded

    def __repr__(self):
        return f"Loaded({tuple(self)!r}, strategy={self.__dict__.get('strategy')!r})"


def _canonical(name):
    """``name`` without the wrappers' prefixes (any number, in any order)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPERS:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return name


def _check_module(model):
    torch = _torch()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")


def _check_optimizer(optimizer):
    torch = _torch()
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, not {type(optimizer).__name__}")


# --- step 1: the plan --------------------------------------------------------------------


class _Plan:
    """What a load will do, decided before anything is touched: ``jobs`` (file tensor name,
    destination tensor) in file order, the optimizer's new state by PyTorch index, and the
    names that did not match."""

    def __init__(self, opened, model):
        self.opened = opened
        self.model_name = type(model).__name__
        self.jobs = []
        self.missing = []
        self.unexpected = []
        self.optimizer_state = None
        self.size_errors = []

    def add(self, name, dest):
        """Loads file tensor ``name`` into ``dest``, whose shape must be the file's."""
        dtype, shape, _ = self.opened.entry(name)
        if tuple(dest.shape) != shape:
            self.size_errors.append(
                f"size mismatch for {name}: copying a param with shape {list(shape)} from checkpoint, "
                f"the shape in current model is {list(dest.shape)}."
            )
        elif dest.device.type == "meta":
            raise ValueError(
                f"`{name}` is on the meta device: materialise the model first (model.to_empty(device=...))"
            )
        else:
            _torch_dtype(name, dtype)  # a dtype this torch has
            self.jobs.append((name, dest))

    def raise_if_refused(self, strict):
        """Size mismatches always refuse the load, as ``load_state_dict`` does; names that do
        not match refuse it under ``strict``."""
        if self.size_errors:
            raise ValueError(
                f"Error(s) in loading {self.opened.path} into {self.model_name}:\n\t" + "\n\t".join(self.size_errors)
            )
        if strict and (self.missing or self.unexpected):
            lines = []
            if self.missing:
                lines.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in self.missing) + ".")
            if self.unexpected:
                lines.append("Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in self.unexpected) + ".")
            raise StateDictKeyError(
                f"Error(s) in loading {self.opened.path} into {self.model_name} (strict=True):\n\t" + "\n\t".join(lines)
            )

    def report_names(self, strict):
        if not strict and (self.missing or self.unexpected):
            log.warning(
                "loading %s into %s: %d missing keys %s; %d unexpected keys %s",
                self.opened.path,
                self.model_name,
                len(self.missing),
                _some(self.missing),
                len(self.unexpected),
                _some(self.unexpected),
            )


def _some(names, limit=10):
    shown = ", ".join(names[:limit])
    return f"[{shown}, and {len(names) - limit} more]" if len(names) > limit else f"[{shown}]"


def _plan_model(opened, model):
    """Matches the file's model tensors to ``model.state_dict()``'s names (its parameters and
    persistent buffers, as ``load_state_dict`` sees them)."""
    plan = _Plan(opened, model)
    in_file = {}
    for name, (_, _, _, role) in opened.entries.items():
        if role == "model":
            in_file.setdefault(_canonical(name), name)
    used = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        found = in_file.get(_canonical(name))
        if found is None:
            plan.missing.append(name)
        else:
            used.add(found)
            plan.add(found, tensor)
    plan.unexpected = [n for n in in_file.values() if n not in used]
    if in_file and not used:
        # Loading nothing is never what was meant, strict or not: say so instead of leaving
        # the model as it was built.
        raise ValueError(
            f"none of the {len(in_file)} tensors of {opened.path} has the name of a tensor of {plan.model_name}, "
            f"so nothing would be loaded: the file has {_some(list(in_file.values()), 5)}, the model "
            f"{_some(plan.missing, 5)}"
        )
    return plan


def _optimizer_kind(optimizer):
    name = type(optimizer).__name__
    return _TRAIN_KINDS.get(name, name.lower())


def _plan_optimizer(plan, opened, model, optimizer, run):
    """Adds the optimizer's state to ``plan``: each ``optimizer/<param>/<slot>`` of the file
    to the parameter of that name in ``model``, which the optimizer must hold, at PyTorch's
    index for it (its place over the param groups); a ``torch.save`` file's state, keyed by
    that index, by the index, as PyTorch does (shapes are checked). New state tensors are made on the
    parameter's device and in its dtype, as PyTorch keeps them; ``step`` as PyTorch's
    float32 scalar (on the parameter's device for a ``capturable`` or ``fused`` group)."""
    torch = _torch()
    saved = _json(run["optimizer"]).get("kind", "unknown")
    kind = _optimizer_kind(optimizer)
    if saved not in ("unknown", kind):
        raise ValueError(
            f"{opened.path} holds {saved} optimizer state and the optimizer is a {type(optimizer).__name__}: "
            f"build the optimizer the checkpoint was saved with, or load the weights alone with load_model_only"
        )
    by_param = defaultdict(dict)
    by_index = defaultdict(dict)  # a torch.save file's optimizer state dict
    for name, (_, _, _, role) in opened.entries.items():
        if role != "optimizer":
            continue
        if name.startswith(_OPTIMIZER):
            param, _, slot = name[len(_OPTIMIZER):].rpartition("/")
            by_param[_canonical(param)][slot] = name
        elif found := _PYTORCH_STATE.match(name):
            by_index[int(found[1])][found[2]] = name
        else:
            plan.unexpected.append(name)
    names = {id(p): n for n, p in model.named_parameters()}
    state = {}
    matched = set()
    index = 0
    for group in optimizer.param_groups:
        on_device = bool(group.get("capturable") or group.get("fused"))
        for p in group["params"]:
            name = names.get(id(p))
            if name is None:
                raise ValueError(
                    f"the optimizer holds a parameter of shape {list(p.shape)} that the model does not: its state "
                    f"cannot be matched by name"
                )
            slots = by_param.get(_canonical(name)) or by_index.get(index, {})
            if slots:
                matched.add(_canonical(name))
                matched.add(index)
                state[index] = {}
                for slot, file_name in sorted(slots.items()):
                    dtype, shape, _ = opened.entry(file_name)
                    if slot == "step":
                        if math.prod(shape) != 1:
                            plan.size_errors.append(f"size mismatch for {file_name}: a step count must be one number")
                            continue
                        dest = torch.zeros((), dtype=torch.float32, device=p.device if on_device else "cpu")
                        plan.jobs.append((file_name, dest.view(shape)))
                    else:
                        dest = torch.empty_like(p, memory_format=torch.contiguous_format)
                        plan.add(file_name, dest)
                    state[index][slot] = dest
            index += 1
    for source in (by_param, by_index):
        plan.unexpected += [name for key, slots in source.items() if key not in matched for name in slots.values()]
    plan.optimizer_state = state
    return plan


# --- step 3: filling ---------------------------------------------------------------------


def _fill(opened, jobs, staging_bytes):
    """Decodes each ``(file name, destination)`` of ``jobs`` into its destination: in place
    where the destination is a contiguous CPU tensor of the file's dtype, else through
    staging buffers of ``staging_bytes`` (``None``: all at once). Destinations whose memory
    overlaps an earlier one's (tied weights) are filled after it, so the last name wins as
    with ``load_state_dict``'s copies."""
    torch = _torch()
    in_place, staged = [], []
    for name, dest in jobs:
        dtype, _, _ = opened.entry(name)
        same = dest.dtype == _torch_dtype(name, dtype)
        (in_place if dest.device.type == "cpu" and dest.is_contiguous() and same else staged).append((name, dest))
    with torch.no_grad():
        for wave in _without_overlaps(in_place):
            opened.native.read_into([(name, dest.data_ptr(), _nbytes(dest)) for name, dest in wave])
        if staged:
            _fill_staged(opened, staged, staging_bytes)


def _nbytes(t):
    return t.numel() * t.element_size()


def _without_overlaps(jobs):
    """``jobs`` in waves whose destinations do not overlap in memory: decoded in parallel
    within a wave, one wave after another."""
    waves = []
    for job in jobs:
        start = job[1].data_ptr()
        end = start + _nbytes(job[1])
        for wave in waves:
            if all(end <= s or e <= start for s, e in wave[1]):
                wave[0].append(job)
                wave[1].append((start, end))
                break
        else:
            waves.append(([job], [(start, end)]))
    return [w[0] for w in waves]


def _groups(jobs, opened, limit):
    """Consecutive ``jobs`` of at most ``limit`` file bytes each (a larger tensor alone)."""
    group, size = [], 0
    for job in jobs:
        nbytes = opened.entry(job[0])[2]
        if group and limit is not None and size + nbytes > limit:
            yield group
            group, size = [], 0
        group.append(job)
        size += _aligned(nbytes)
    if group:
        yield group


def _aligned(n):
    return (n + 63) // 64 * 64


def _fill_staged(opened, jobs, limit):
    """Decodes ``jobs`` group by group into a staging buffer, then copies each tensor to its
    destination (converting the dtype where it differs). For GPU destinations the buffers
    are pinned and the copies asynchronous; two buffers alternate, and a buffer is reused
    only once the copies out of it have finished."""
    torch = _torch()
    cuda = any(dest.device.type == "cuda" for _, dest in jobs)
    pin = cuda and torch.cuda.is_available()
    buffers = [None, None]
    done = [None, None]
    for i, group in enumerate(_groups(jobs, opened, limit)):
        b = i % 2 if cuda else 0
        if done[b] is not None:
            done[b].synchronize()
        need = sum(_aligned(opened.entry(name)[2]) for name, _ in group)
        if buffers[b] is None or buffers[b].numel() < need:
            buffers[b] = None
            buffers[b] = torch.empty(need, dtype=torch.uint8, pin_memory=pin)
        buf = buffers[b]
        targets, views, at = [], [], 0
        for name, dest in group:
            dtype, shape, nbytes = opened.entry(name)
            targets.append((name, buf.data_ptr() + at, nbytes))
            views.append((buf[at:at + nbytes].view(_torch_dtype(name, dtype)).view(shape), dest))
            at += _aligned(nbytes)
        opened.native.read_into(targets)
        for src, dest in views:
            dest.copy_(src, non_blocking=pin)
        if pin:
            done[b] = torch.cuda.Event()
            done[b].record()
    if pin:
        for event in done:
            if event is not None:
                event.synchronize()


# --- the steps together ------------------------------------------------------------------


def _json(text):
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _load(model, optimizer, opened, *, strict, strategy, staging_bytes, verify, scheduler):
    """Plans, verifies and fills (see the module's docstring) from the open file ``opened``;
    returns the file's run state, the plan and the integrity found."""
    _check_module(model)
    if optimizer is not None:
        _check_optimizer(optimizer)
    run = opened.native.run_state()
    plan = _plan_model(opened, model)
    with_optimizer = optimizer is not None and strategy != "model_only"
    if with_optimizer:
        _plan_optimizer(plan, opened, model, optimizer, run)
    plan.raise_if_refused(strict)
    scheduler_state = _scheduler_state(opened, run, scheduler) if scheduler is not None else None
    integrity = "not_verified"
    if verify:
        _, integrity = opened.native.verify_tensors([name for name, _ in plan.jobs])
    plan.report_names(strict)
    _fill(opened, plan.jobs, staging_bytes)
    if optimizer is not None:
        if with_optimizer:
            _install_optimizer_state(optimizer, opened, plan.optimizer_state, run)
        else:
            optimizer.state = defaultdict(dict)
    if scheduler_state is not None:
        scheduler.load_state_dict(scheduler_state)
    return run, plan, integrity, scheduler_state is not None


def _install_optimizer_state(optimizer, opened, state, run):
    """Gives ``optimizer`` the filled ``state`` through its own ``load_state_dict`` (its
    hooks and checks run; the tensors are already on the parameters' devices and in their
    dtypes, so nothing is copied again). The param groups' hyper-parameters (the learning
    rate a scheduler had reached among them) are restored as ``load_state_dict`` restores
    them, from a file this package saved or a ``torch.save`` file; a file ``train`` wrote
    keeps the optimizer's own (its settings are its configuration's)."""
    groups = optimizer.state_dict()["param_groups"]
    saved = _json(run["optimizer"]).get("param_groups")
    if saved is None:
        pytorch = opened.native.pytorch_param_groups()
        saved = json.loads(pytorch) if pytorch else None
    if isinstance(saved, list) and len(saved) == len(groups):
        groups = [_restored_group(g, _decode(s)) for g, s in zip(groups, saved)]
    elif saved is not None:
        log.warning(
            "%s records %d param groups and the optimizer has %d: its hyper-parameters are kept",
            opened.path,
            len(saved),
            len(groups),
        )
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _restored_group(current, saved):
    """``current`` (a param group of ``optimizer.state_dict()``) with the hyper-parameters
    ``saved`` records, in the kinds ``current`` holds them (a tuple stays a tuple); its own
    ``params``, and its own value wherever the file could not represent one."""
    group = dict(current)
    for key, value in saved.items():
        if key == "params" or (isinstance(value, str) and value.startswith("<")):
            continue
        if isinstance(current.get(key), tuple) and isinstance(value, list):
            value = tuple(value)
        group[key] = value
    return group


def _scheduler_state(opened, run, scheduler):
    """The scheduler's state from a file this package saved (``None`` with a warning for a
    file without one, such as ``train``'s, whose schedule is its own)."""
    saved = _json(run["lr_scheduler"])
    if saved.get("kind") != "torch" or "state" not in saved:
        warnings.warn(
            f"{opened.path} holds no PyTorch scheduler state (its schedule: {run['lr_scheduler']}); "
            f"the {type(scheduler).__name__} is left as it is",
            stacklevel=4,
        )
        return None
    if saved.get("class") != type(scheduler).__name__:
        raise ValueError(
            f"{opened.path} holds the state of a {saved.get('class')} and the scheduler is a {type(scheduler).__name__}"
        )
    return _decode(saved["state"])


# --- JSON for optimizer and scheduler state ------------------------------------------------


def _encode(value, where):
    """``value`` (a scheduler's or a param group's state) as JSON: what JSON cannot hold as it
    is (inf and nan, tuples such as Adam's ``betas``, one-element tensors) is tagged so that
    :func:`_decode` gives it back as it was."""
    torch = _torch()
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return {"__tensor__": value.item(), "dtype": str(value.dtype).removeprefix("torch."), "device": str(value.device)}
    if isinstance(value, (list, tuple)):
        items = [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"cannot save {where}: its keys are not all strings")
        return {k: _encode(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"cannot save {where}: a {type(value).__name__} is none of the kinds a checkpoint records")


def _decode(value):
    torch = _torch()
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if "__tuple__" in value:
            return tuple(_decode(v) for v in value["__tuple__"])
        if "__float__" in value:
            return float(value["__float__"])
        if "__tensor__" in value:
            return torch.tensor(value["__tensor__"], dtype=getattr(torch, value["dtype"]), device=value["device"])
        return {k: _decode(v) for k, v in value.items()}
    return value


# --- the guide's functions -----------------------------------------------------------------


def _loaded(values, run, plan, integrity, **info):
    """The :class:`Loaded` a loader returns: ``values`` (the guide's tuple) with what the plan
    matched, what verifying found, the file's step, and ``info``."""
    return Loaded(
        values,
        missing_keys=plan.missing,
        unexpected_keys=plan.unexpected,
        integrity=integrity,
        step=run["step"],
        **info,
    )


def _staging_for(device):
    """The guide's ``device`` (its ``map_location``): where the file's tensors pass through.
    ``'cpu'`` or ``None`` stage them through host memory in bounded pieces (the memory-efficient
    way); a GPU stages the whole checkpoint at once (the ``standard`` way, fastest when it fits).
    The model's tensors stay where they are either way."""
    if device is None:
        return STAGING_BYTES
    return STAGING_BYTES if _torch().device(device).type == "cpu" else None


def load_checkpoint_memory_efficient(model, optimizer, path, device="cpu", scheduler=None, *, strict=True, verify=True):
    """Loads a checkpoint into ``model`` and ``optimizer`` (and ``scheduler``) in place; returns
    ``(epoch, train_loss, val_loss)`` as the guide's function does (a :class:`Loaded`).

    Weights and buffers are decoded straight into the model's own tensors, wherever they are
    (a GPU model through a bounded pinned buffer); optimizer state is matched to the model's
    parameters by name and installed with ``optimizer.load_state_dict``; a scheduler's state
    from a file :func:`save_checkpoint` wrote is restored with its ``load_state_dict``.
    ``device`` is where the file's tensors pass through (the guide's ``map_location``): ``'cpu'``
    stages them in bounded pieces, a GPU all at once.

    Reads every kind of checkpoint :func:`train_ckpt.load_file` reads: ``train``'s, this
    package's, foreign safetensors and ``torch.save`` files. A ``torch.save`` file's optimizer
    state is keyed by the parameters' positions; it is matched by position, as PyTorch does,
    with every shape checked, and its param groups' hyper-parameters are restored too.

    ``strict``: names must match (``StateDictKeyError``, a ``KeyError``, listing both
    sides); otherwise the differences are logged. A size mismatch always raises
    ``ValueError``. With ``verify`` (the default) every tensor to be loaded is read and
    checked against its checksum first, so a damaged file raises ``ValueError`` naming the
    tensor and changes nothing.
    """
    run, plan, integrity, scheduled = _load(
        model,
        optimizer,
        _Opened(path),
        strict=strict,
        strategy="memory_efficient",
        staging_bytes=_staging_for(device),
        verify=verify,
        scheduler=scheduler,
    )
    return _loaded(
        (run["epoch"], run["train_loss"], run["val_loss"]),
        run,
        plan,
        integrity,
        strategy="memory_efficient",
        reason="load_checkpoint_memory_efficient",
        optimizer_restored=optimizer is not None and bool(plan.optimizer_state),
        scheduler_restored=scheduled,
    )


def load_model_only(model, path, strict=False, device=None, *, verify=True):
    """Loads the weights and buffers of a checkpoint into ``model`` in place, never reading
    the optimizer state's bytes; returns ``(epoch, train_loss)`` as the guide's function does
    (a :class:`Loaded`, whose ``missing_keys`` and ``unexpected_keys`` say what did not match).

    Names are matched without the ``module.`` and ``_orig_mod.`` prefixes that
    ``DistributedDataParallel`` and ``torch.compile`` add. With ``strict=False`` (the default)
    missing and unexpected keys are logged to the ``train_ckpt`` logger; with ``strict=True``
    they raise ``StateDictKeyError`` (a ``KeyError``). ``device``: as in
    :func:`load_checkpoint_memory_efficient`. ``verify``: the loaded tensors are checked first.
    """
    run, plan, integrity, _ = _load(
        model,
        None,
        _Opened(path),
        strict=strict,
        strategy="model_only",
        staging_bytes=_staging_for(device),
        verify=verify,
        scheduler=None,
    )
    return _loaded(
        (run["epoch"], run["train_loss"]),
        run,
        plan,
        integrity,
        strategy="model_only",
        reason="load_model_only",
        optimizer_restored=False,
        scheduler_restored=False,
    )


def _budget(model, device):
    """The memory the load goes into, as ``train``'s plan measures it: the free memory of the
    model's device (``torch.cuda.mem_get_info`` on a GPU; on the CPU, ``train``'s own host
    probe: ``MemAvailable`` or the memory cgroup's headroom, the smaller) plus the bytes of the
    model already there, which the predicted peaks count."""
    torch = _torch()
    tensors = list(model.state_dict(keep_vars=True).values())
    if device is None:
        device = tensors[0].device if tensors else torch.device("cpu")
    device = torch.device(device)
    resident = sum(_nbytes(t) for t in {t.data_ptr(): t for t in tensors if t.device == device}.values())
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + resident, "torch.cuda.mem_get_info", resident
    available, source = _native.host_available()
    return (None if available is None else available + resident), source, resident


def smart_load_checkpoint(
    model,
    optimizer,
    path,
    device=None,
    *,
    strategy="auto",
    checkpoint_memory_efficient=False,
    load_optimizer_state=True,
    safety_margin=_native.DEFAULT_SAFETY_MARGIN,
    free_bytes=None,
    scheduler=None,
    strict=True,
    verify=True,
):
    """Loads a checkpoint with the strategy ``train plan`` would choose, and says why.

    The choice is ``train``'s own rule (the same Rust function), fed the free memory of the
    model's device (``device`` to measure another): ``torch.cuda.mem_get_info()`` on a GPU,
    available host memory on the CPU, or ``free_bytes`` when given (``memory.assume_free_vram``).
    The keyword arguments are the ``memory:`` section's keys: ``strategy`` (``auto``,
    ``standard``, ``memory_efficient``, ``model_only``), ``checkpoint_memory_efficient``
    (rules out ``standard``), ``load_optimizer_state`` (``False`` allows only ``model_only``)
    and ``safety_margin``.

    - ``standard``: the whole checkpoint is staged at once, then copied; fastest when it fits.
    - ``memory_efficient``: weights and optimizer state through a bounded staging buffer.
    - ``model_only``: weights only; the optimizer's state is cleared (momentum lost), as a
      fresh start, and the scheduler is left as it is.

    On a CUDA out-of-memory error the next cheaper strategy is tried, as ``train`` does.
    Returns a :class:`Loaded` ``(epoch, train_loss, val_loss)`` whose ``strategy`` and
    ``reason`` say what was chosen and why, with the plan's figures (``free_bytes``,
    ``source``, ``predicted_peak_bytes``, ``sizes``).
    """
    torch = _torch()
    _check_module(model)
    opened = _Opened(path)
    budget, source, resident = _budget(model, device)
    if free_bytes is not None:
        budget, source = int(free_bytes), "free_bytes"
    if optimizer is None and strategy == "auto":
        load_optimizer_state = False  # nothing to load it into: plan for the weights alone
    chosen, reason, peaks, sizes = opened.native.choose(
        resident, budget, float(safety_margin), strategy, bool(checkpoint_memory_efficient), bool(load_optimizer_state)
    )
    log.info("loading %s with %s: %s", opened.path, chosen, reason)
    order = list(_native.STRATEGIES)
    for attempt in order[order.index(chosen):]:
        try:
            run, plan, integrity, scheduled = _load(
                model,
                optimizer,
                opened,
                strict=strict,
                strategy=attempt,
                staging_bytes=None if attempt == "standard" else STAGING_BYTES,
                verify=verify,
                scheduler=scheduler if attempt != "model_only" else None,
            )
            break
        except torch.cuda.OutOfMemoryError as oom:
            if attempt == order[-1]:
                raise
            reason += f"; {attempt} ran out of memory ({str(oom).splitlines()[0]}), stepped down"
            log.warning("loading %s with %s ran out of memory; trying a cheaper strategy", opened.path, attempt)
            torch.cuda.empty_cache()
    return _loaded(
        (run["epoch"], run["train_loss"], run["val_loss"]),
        run,
        plan,
        integrity,
        strategy=attempt,
        reason=reason,
        optimizer_restored=optimizer is not None and attempt != "model_only" and bool(plan.optimizer_state),
        scheduler_restored=scheduled,
        free_bytes=budget,
        source=source,
        predicted_peak_bytes=peaks,
        sizes=sizes,
    )


def save_checkpoint(
    path,
    model,
    optimizer=None,
    *,
    epoch,
    train_loss,
    val_loss=None,
    compress=True,
    scheduler=None,
    step=None,
    metadata=None,
):
    """Saves ``model`` (and ``optimizer``, ``scheduler``) to ``path`` in ``train``'s format,
    atomically, with ``train``'s checksums: ``train ckpt verify`` accepts it, and
    ``train --resume`` continues from it with Adam's step counts intact.

    - Weights and buffers are saved under ``model.state_dict()``'s names, without the
      ``module.``/``_orig_mod.`` wrappers' prefixes.
    - The optimizer's state is saved by parameter name, ``optimizer/<param>/<slot>``, as
      ``train`` saves it (``step`` as an int64 scalar), with its kind (``adam``, ``adamw``,
      ``sgd``: what ``train``'s ``training.optimizer.kind`` must be to restore it) and its
      param groups' hyper-parameters.
    - A scheduler's ``state_dict()`` is saved as JSON in the metadata.
    - ``step`` (the global optimizer step) defaults to the optimizer state's largest ``step``.

    ``compress=True`` writes ``.tckpt``, ``False`` plain safetensors (a name with the other
    suffix is refused). Tensors on a GPU are copied to the CPU to be written.
    """
    torch = _torch()
    _check_module(model)
    tensors = {}
    for name, t in model.state_dict().items():
        canonical = _canonical(name)
        if canonical in tensors:
            raise ValueError(f"two tensors of the model are both named `{canonical}` without their wrappers' prefixes")
        tensors[canonical] = t
    optimizer_json = None
    steps = []
    if optimizer is not None:
        _check_optimizer(optimizer)
        names = {id(p): _canonical(n) for n, p in model.named_parameters()}
        groups = []
        for group in optimizer.param_groups:
            groups.append(_encode({k: v for k, v in group.items() if k != "params"}, "the optimizer's param_groups"))
            for p in group["params"]:
                slots = optimizer.state.get(p)
                if not slots:
                    continue
                if id(p) not in names:
                    raise ValueError(
                        f"the optimizer holds state for a parameter of shape {list(p.shape)} that the model does "
                        f"not: it cannot be saved by name"
                    )
                for slot, value in slots.items():
                    key = f"{_OPTIMIZER}{names[id(p)]}/{slot}"
                    if slot == "step":
                        count = float(value)
                        if count != int(count) or count < 0:
                            raise ValueError(f"`{key}` is {count}, not a count of steps")
                        steps.append(int(count))
                        tensors[key] = torch.tensor(int(count), dtype=torch.int64)
                    elif isinstance(value, torch.Tensor):
                        tensors[key] = value
                    elif value is not None:
                        raise TypeError(f"cannot save `{key}`: a {type(value).__name__}, not a tensor")
        optimizer_json = json.dumps(
            {"kind": _optimizer_kind(optimizer), "class": type(optimizer).__name__, "param_groups": groups}
        )
    scheduler_json = None
    if scheduler is not None:
        scheduler_json = json.dumps(
            {
                "kind": "torch",
                "class": type(scheduler).__name__,
                "state": _encode(scheduler.state_dict(), "the scheduler's state_dict"),
            }
        )
    meta = dict(metadata or {})
    if step is None:
        step = max(steps, default=0)
    for key, value in (("epoch", epoch), ("step", step), ("train_loss", train_loss), ("val_loss", val_loss)):
        if value is None:
            continue
        if key in ("epoch", "step") and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{key} must be a whole number of at least 0, not {value!r}")
        meta[key] = str(float(value) if key.endswith("loss") else value)
    _write(tensors, os.fspath(path), meta, compress, optimizer_json, scheduler_json)
