"""Reading a reference ``state_dict`` by name: shape checks, and no parameter left behind."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

# keys under which training scripts commonly nest the weights in a checkpoint file
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module")
# bookkeeping entries that carry no weights
_IGNORED_SUFFIXES = ("num_batches_tracked",)


def _load_path(path: str | os.PathLike) -> Mapping[str, Any]:
    path = os.fspath(path)
    if path.endswith(".npz"):
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    try:
        import torch
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"reading the PyTorch checkpoint {path} needs torch: pip install torch "
            "(or pass the state_dict as a mapping of names to numpy arrays)", name="torch"
        ) from err
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    for key in _NESTED_KEYS:
        if isinstance(loaded, Mapping) and key in loaded and isinstance(loaded[key], Mapping):
            loaded = loaded[key]
    return loaded


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


class StateDict:
    """A reference ``state_dict`` read by name.

    ``source``: a mapping of parameter names to arrays (numpy or torch), or the path of a
    ``.npz`` or a torch checkpoint (torch needed). ``prefix`` is stripped from every name
    (e.g. ``"module."`` of DataParallel checkpoints, ``"state_dict/"`` of the test fixtures);
    names without it are dropped. ``what`` names the reference in error messages.
    """

    def __init__(self, source: Mapping[str, Any] | str | os.PathLike, what: str,
                 prefix: str = "") -> None:
        raw = _load_path(source) if isinstance(source, str | os.PathLike) else source
        self.what = what
        self._arrays = {
            name[len(prefix):]: value for name, value in raw.items()
            if name.startswith(prefix) and not name.endswith(_IGNORED_SUFFIXES)
        }
        self._unread = set(self._arrays)

    def has(self, name: str) -> bool:
        return name in self._arrays

    def names(self, prefix: str = "") -> list[str]:
        """Every name starting with ``prefix``, sorted."""
        return sorted(n for n in self._arrays if n.startswith(prefix))

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of ``name`` without marking it read."""
        self._require(name)
        return tuple(np.shape(self._arrays[name]))

    def take(self, name: str, shape: Iterable[int] | None = None) -> np.ndarray:
        """``name`` as float32 numpy, marked read; ``ValueError`` naming it if it is missing
        or its shape is not ``shape``."""
        self._require(name)
        array = _to_numpy(self._arrays[name])
        if shape is not None and array.shape != tuple(shape):
            raise ValueError(
                f"{self.what} parameter {name!r} has shape {array.shape}, expected "
                f"{tuple(shape)}"
            )
        self._unread.discard(name)
        return array

    def finish(self) -> None:
        """``ValueError`` listing the names no converter step read (unknown parameters)."""
        if self._unread:
            raise ValueError(
                f"{self.what} state_dict has parameter(s) the converter does not know: "
                f"{sorted(self._unread)}"
            )

    def _require(self, name: str) -> None:
        if name not in self._arrays:
            raise ValueError(f"{self.what} state_dict lacks the parameter {name!r}")
