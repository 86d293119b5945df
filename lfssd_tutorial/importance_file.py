"""The importance file: :func:`save_importance` and :func:`load_importance`.

An importance file is a `safetensors <https://huggingface.co/docs/safetensors>`_ file (suffix
``.safetensors``): a JSON header, then the raw float32 tensors, one per parameter. Reading
it runs no code: the file is memory-mapped and each tensor is read from it directly. The
header's metadata (a ``str -> str`` map) holds one key, ``"lfssd_tutorial"``, whose value
is JSON::

    {"format": "lfssd-importance", "version": 2,
     "parameters": [[name, shape], ...],     # the tensors, in the model's order
     "info": {"objective": ..., "granularity": ..., "samples": ..., "batches": ...,
              "label_samples": ...} or null, # how it was estimated (ImportanceInfo)
     "metadata": {...}}                      # the caller's own metadata

Files of version 1, written by earlier versions of the package with :func:`torch.save`
(``{"format": "lfssd-importance", "version": 1, "metadata": ..., "importance": ...}``), still
load (with ``weights_only=True``); their objective and granularity are read from their
metadata when it has them. Saving what they load with :func:`save_importance` converts them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .checks import check_choice, check_importance
from .importance import GRANULARITIES, OBJECTIVES
from .importance_info import Importance, ImportanceInfo, shape_mismatch, shapes_of

__all__ = ["FORMAT", "FORMAT_VERSION", "HEADER_KEY", "save_importance", "load_importance"]

FORMAT = "lfssd-importance"
FORMAT_VERSION = 2
#: The key of the safetensors metadata that holds the importance header (JSON).
HEADER_KEY = "lfssd_tutorial"
_TORCH_ZIP_MAGIC = b"PK\x03\x04"  # how a torch.save file (a zip archive) begins: version 1


def save_importance(
    importance: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, str | int | float | bool] | None = None,
) -> None:
    """Save an importance to ``path``, a safetensors file (use the suffix ``.safetensors``).

    The tensors are stored as float32 on the CPU, in the importance's order. An
    :class:`~lfssd_tutorial.Importance` keeps its record (objective, granularity, counts); a
    plain dict may state its ``"objective"`` and ``"granularity"`` in ``metadata``, and is
    then loaded as an ``Importance`` with them. ``metadata`` (e.g. the data set, the seed) is
    stored beside it; keys must be strings and values strings, numbers or booleans. The file
    is written atomically (readers see the old file or the whole new one).

    Raises:
        ValueError: an invalid importance (see :func:`~lfssd_tutorial.check_importance`), an
            ``Importance`` edited since it was estimated, or ``metadata`` whose objective or
            granularity is unknown or contradicts the importance's record.
        TypeError: a metadata key or value of another type.
    """
    check_importance(importance)
    meta = dict(metadata or {})
    for key, value in meta.items():
        if not isinstance(key, str):
            raise TypeError(f"metadata keys must be strings, got {key!r}")
        if not isinstance(value, (str, int, float, bool)):
            raise TypeError(f"metadata[{key!r}] must be a str, int, float or bool, got {type(value).__name__}")
    parameters = {name: tuple(value.shape) for name, value in importance.items()}
    stated = _info_from_metadata(meta, parameters, where="metadata")
    if isinstance(importance, Importance):
        info = importance.info
        problem = shape_mismatch(shapes_of(importance), info.parameters) if info.parameters else None
        if problem:
            raise ValueError(f"the importance was edited after it was estimated ({problem}); "
                             "save a plain dict, or build a new Importance")
        for field in ("objective", "granularity"):
            if stated is not None and getattr(stated, field) != getattr(info, field):
                raise ValueError(f"metadata[{field!r}] is {getattr(stated, field)!r}, but the importance "
                                 f"has {field} {getattr(info, field)!r}")
    else:
        info = stated
    recorded = None
    if info is not None:
        recorded = info.to_dict()
        del recorded["parameters"]  # the header's own "parameters" lists them
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "parameters": [[name, list(shape)] for name, shape in parameters.items()],
        "info": recorded,
        "metadata": meta,
    }
    tensors = {name: value.detach().to("cpu", torch.float32, copy=True).contiguous() for name, value in importance.items()}
    _atomic_save_file(tensors, os.fspath(path), {HEADER_KEY: json.dumps(header)})


def load_importance(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    *,
    map_location: str | torch.device = "cpu",
    with_metadata: bool = False,
) -> dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load an importance saved by :func:`save_importance`.

    Args:
        path: the file (a ``.safetensors`` file, or a version-1 file of the older format).
        model: when given, the keys and shapes are checked against its trainable parameters.
        map_location: the device to load the tensors onto.
        with_metadata: also return the metadata given to :func:`save_importance`.

    Returns:
        An :class:`~lfssd_tutorial.Importance` when the file records the objective and
        granularity (always, for what :func:`~lfssd_tutorial.compute_importance` returned),
        else a plain dict; with ``with_metadata=True``, ``(importance, metadata)``.

    Raises:
        FileNotFoundError: there is no file at ``path``.
        ValueError: naming the file and what is wrong: it is not a safetensors file (nor of
            the older format), it is truncated or corrupt, it has no importance header, its
            tensors are missing or of the wrong shape for the header or for ``model``, or its
            values are not finite and non-negative.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        start = f.read(len(_TORCH_ZIP_MAGIC))
    if start == _TORCH_ZIP_MAGIC:
        values, info, meta = _read_version_1(path, map_location)
    else:
        values, info, meta = _read_safetensors(path, map_location)
    check_importance(values, model, name=f"importance loaded from {path}")
    importance = Importance(values, info) if info is not None else values
    if with_metadata:
        return importance, meta
    return importance


def _read_safetensors(path: str, map_location) -> tuple[dict, ImportanceInfo | None, dict]:
    device = str(torch.device(map_location))
    try:
        with safe_open(path, framework="pt", device=device) as f:
            stored = f.metadata() or {}
            if HEADER_KEY not in stored:
                raise _NotOurs(f"{path} is a safetensors file without the importance header of save_importance "
                               f"(no {HEADER_KEY!r} key in its metadata)")
            header = _parse_header(path, stored[HEADER_KEY])
            parameters = {name: tuple(shape) for name, shape in header["parameters"]}
            problem = shape_mismatch({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}, parameters)
            if problem:
                raise _NotOurs(f"{path}: the tensors do not match the file's header: {problem}")
            values = {name: f.get_tensor(name) for name in parameters}
    except _NotOurs as exc:
        raise ValueError(str(exc)) from None
    except Exception as exc:  # safetensors' own errors (truncated, corrupt, not safetensors at all)
        raise ValueError(f"{path} is not a readable safetensors importance file: {type(exc).__name__}: {exc}") from None
    info = None
    if header["info"] is not None:
        info = _info(path, {**header["info"], "parameters": header["parameters"]})
    return values, info, dict(header.get("metadata") or {})


def _parse_header(path: str, text: str) -> dict:
    try:
        header = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _NotOurs(f"{path}: its importance header is not valid JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _NotOurs(f"{path}: its {HEADER_KEY!r} metadata is not an importance header (format {FORMAT!r})")
    version = header.get("version")
    if version != FORMAT_VERSION:
        raise _NotOurs(f"{path} has importance format version {version!r}; this package reads version {FORMAT_VERSION} "
                       "(and the older torch files of version 1)")
    if not isinstance(header.get("parameters"), list) or not isinstance(header.get("info"), (dict, type(None))):
        raise _NotOurs(f"{path}: its importance header lacks the list of parameters or has a malformed 'info'")
    return header


def _read_version_1(path: str, map_location) -> tuple[dict, ImportanceInfo | None, dict]:
    """A file of the older format: a :func:`torch.save` payload, read with ``weights_only=True``."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a corrupt archive, or one holding more than tensors and plain containers
        raise ValueError(f"{path} is neither a safetensors file nor a readable importance file of the older torch "
                         f"format ({type(exc).__name__})") from None
    if not (isinstance(payload, dict) and payload.get("format") == FORMAT and payload.get("version") == 1
            and isinstance(payload.get("importance"), dict)):
        raise ValueError(f"{path} is a torch file but not an importance file written by save_importance")
    values = dict(payload["importance"])
    meta = dict(payload.get("metadata") or {})
    parameters = {name: tuple(v.shape) for name, v in values.items() if isinstance(v, torch.Tensor)}
    return values, _info_from_metadata(meta, parameters, where=path), meta


def _info_from_metadata(meta: Mapping[str, Any], parameters: dict, *, where: str) -> ImportanceInfo | None:
    """The record a plain dict's metadata states: its ``"objective"`` and ``"granularity"``, if it has both."""
    if "objective" not in meta or "granularity" not in meta:
        return None
    return _info(where, {"objective": meta["objective"], "granularity": meta["granularity"],
                         "parameters": [[name, list(shape)] for name, shape in parameters.items()]})


def _info(where: str, data: Mapping[str, Any]) -> ImportanceInfo:
    """An :class:`ImportanceInfo` from its dict, with a ``ValueError`` naming ``where`` if it is not one."""
    try:
        check_choice("objective", data["objective"], OBJECTIVES)
        check_choice("granularity", data["granularity"], GRANULARITIES)
        return ImportanceInfo.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: not a valid importance record ({exc})") from None


def _atomic_save_file(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    """Write a safetensors file through a temporary file beside ``path`` and :func:`os.replace`."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".tmp-")
    os.close(handle)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _NotOurs(Exception):
    """A readable file that is not a valid importance file (the message says why)."""

