"""Fine-tuning checkpoints: safetensors tensors plus a JSON of scalars, written atomically.

A checkpoint ``step_000100`` is two files in the run's directory:

- ``step_000100.safetensors``: the model's ``state_dict`` under ``model.<name>`` and the optimizer's tensor
  state flattened as ``optimizer.<param index>.<key>`` (AdamW's ``exp_avg``, ``exp_avg_sq``, ``step``);
- ``step_000100.json``: the step, the optimizer's scalar state (param groups, non-tensor entries), whatever
  the trainer adds (its configuration, the model's description), and the size and SHA-256 of the tensor file.

Nothing is ever unpickled. Each file is written to a temporary name, flushed to disk and renamed; the JSON is
renamed last, so a checkpoint without its JSON, or whose tensor file does not match the JSON's size and hash,
was interrupted mid-write: :func:`load_checkpoint` rejects it with :class:`CheckpointError` and
:func:`latest_checkpoint` falls back to the previous good one. :func:`save_checkpoint` removes older checkpoints
only after the new one is complete.

Examples:
    >>> import tempfile, torch
    >>> model = torch.nn.Linear(2, 2); opt = torch.optim.AdamW(model.parameters())
    >>> model(torch.ones(1, 2)).sum().backward(); opt.step()
    >>> d = tempfile.mkdtemp()
    >>> path = save_checkpoint(d, 1, model, opt, {"note": "hi"})
    >>> ckpt = load_checkpoint(path)
    >>> ckpt.step, ckpt.extra["note"]
    (1, 'hi')
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..atomic_files import atomic_write

__all__ = ["CheckpointError", "Checkpoint", "save_checkpoint", "load_checkpoint", "latest_checkpoint",
           "list_checkpoints"]

_NAME = re.compile(r"^step_(\d{6,})\.json$")
FORMAT = "captum_gradeclip.finetune/1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, or for another model."""


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        path: the JSON file.
        step: optimisation steps done.
        model_state: the model's ``state_dict`` tensors.
        optimizer_state: the optimizer's ``state_dict`` (tensors and scalars re-assembled).
        extra: what the trainer stored (configuration, model description, ...).
    """

    path: Path
    step: int
    model_state: Dict[str, Tensor]
    optimizer_state: Optional[Dict[str, Any]]
    extra: Dict[str, Any]

    def restore(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Load the states into ``model`` (strict) and ``optimizer``.

        Raises:
            CheckpointError: If the tensors do not fit the model or the optimizer.
        """
        try:
            model.load_state_dict(self.model_state, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"checkpoint {self.path} does not fit this model: {err}") from None
        if optimizer is not None:
            if self.optimizer_state is None:
                raise CheckpointError(f"checkpoint {self.path} has no optimizer state")
            try:
                optimizer.load_state_dict(self.optimizer_state)
            except (ValueError, KeyError) as err:
                raise CheckpointError(f"checkpoint {self.path} does not fit this optimizer: {err}") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _flatten_optimizer(state: Dict[str, Any]) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    tensors: Dict[str, Tensor] = {}
    scalars: Dict[str, Any] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    groups = []
    for g in state["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()})
    return tensors, {"param_groups": groups, "scalars": scalars}


def _unflatten_optimizer(tensors: Dict[str, Tensor], meta: Dict[str, Any]) -> Dict[str, Any]:
    state: Dict[int, Dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    groups = []
    for g in meta["param_groups"]:
        groups.append({k: (tuple(v) if k == "betas" else v) for k, v in g.items()})
    return {"state": state, "param_groups": groups}


def checkpoint_paths(directory: Union[str, Path], step: int) -> Tuple[Path, Path]:
    """The ``(tensors, json)`` paths of the checkpoint of ``step`` in ``directory``."""
    d = Path(directory)
    return d / f"step_{step:06d}.safetensors", d / f"step_{step:06d}.json"


def save_checkpoint(directory: Union[str, Path], step: int, model: nn.Module,
                    optimizer: Optional[torch.optim.Optimizer] = None, extra: Optional[Dict[str, Any]] = None,
                    keep: int = 2) -> Path:
    """Write a checkpoint atomically and keep the newest ``keep`` ones.

    Args:
        directory: the run's checkpoint directory (created if missing).
        step: optimisation steps done.
        model: the model (its ``state_dict`` is saved; shared tensors are saved once per name).
        optimizer: the optimizer, or None.
        extra: JSON-serialisable scalars to store with it (configuration, model description).
        keep: how many checkpoints to keep (older ones are deleted after this one is complete; >= 1).

    Returns:
        Path: the checkpoint's JSON file.
    """
    from safetensors.torch import save_file

    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    meta: Dict[str, Any] = {"format": FORMAT, "step": int(step), "extra": dict(extra or {}), "optimizer": None,
                            "torch": torch.__version__}
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = _flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_tensors)
    json.dumps(meta)  # raises here, before anything is written, if extra is not JSON-serialisable
    tensor_path, json_path = checkpoint_paths(directory, step)
    atomic_write(tensor_path, lambda tmp: save_file(tensors, str(tmp)))
    meta["tensors"] = {"file": tensor_path.name, "bytes": tensor_path.stat().st_size, "sha256": _sha256(tensor_path)}
    atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(meta, indent=1)))
    for old in list_checkpoints(directory)[:-keep]:
        for p in checkpoint_paths(directory, old):
            if p.exists():
                p.unlink()
    return json_path


def list_checkpoints(directory: Union[str, Path]) -> List[int]:
    """Steps of the checkpoints in ``directory`` whose JSON exists (complete or not), ascending."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := _NAME.match(p.name)))


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> Checkpoint:
    """Load and verify one checkpoint.

    Args:
        path: the checkpoint's JSON file, or its ``.safetensors`` file.
        map_location: device of the loaded tensors.

    Returns:
        Checkpoint: the verified checkpoint.

    Raises:
        CheckpointError: If a file is missing, the JSON is unreadable, the tensor file does not match the size
            and hash recorded at save time (truncated or corrupt), or it cannot be parsed.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix == ".safetensors":
        path = path.with_suffix(".json")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found (an interrupted save leaves no JSON: use an earlier one)")
    try:
        meta = json.loads(path.read_text())
        info = meta["tensors"]
        step = int(meta["step"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} is unreadable or incomplete ({err}): it was probably "
                              "interrupted while being written") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    tensor_path = path.with_name(info["file"])
    if not tensor_path.is_file():
        raise CheckpointError(f"checkpoint {path}: its tensor file {tensor_path} is missing")
    size = tensor_path.stat().st_size
    if size != info["bytes"]:
        raise CheckpointError(f"checkpoint {tensor_path} is truncated or corrupt: {size} bytes, {info['bytes']} "
                              "were written")
    if _sha256(tensor_path) != info["sha256"]:
        raise CheckpointError(f"checkpoint {tensor_path} is corrupt: its SHA-256 differs from the one recorded "
                              "when it was written")
    try:
        tensors = load_file(str(tensor_path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {tensor_path} cannot be read: {err}") from None
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    opt = None
    if meta.get("optimizer") is not None:
        opt = _unflatten_optimizer({k: v for k, v in tensors.items() if k.startswith("optimizer.")},
                                   meta["optimizer"])
    return Checkpoint(path=path, step=step, model_state=model_state, optimizer_state=opt,
                      extra=meta.get("extra", {}))


def latest_checkpoint(directory: Union[str, Path], map_location: Union[str, torch.device] = "cpu"
                      ) -> Optional[Checkpoint]:
    """The newest checkpoint of ``directory`` that loads and verifies; bad ones are skipped with a warning.

    Args:
        directory: the run's checkpoint directory.
        map_location: device of the loaded tensors.

    Returns:
        Checkpoint or None: None when the directory has no usable checkpoint.
    """
    for step in reversed(list_checkpoints(directory)):
        try:
            return load_checkpoint(checkpoint_paths(directory, step)[1], map_location)
        except CheckpointError as err:
            warnings.warn(f"skipping a bad checkpoint: {err}", stacklevel=2)
    return None
