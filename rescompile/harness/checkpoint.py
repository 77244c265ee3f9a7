"""The portable checkpoint format both backends read and write.

A checkpoint is a pair of files with one stem:

- ``NAME.safetensors``: the tensors, keyed by IR node names (``conv1.weight``,
  ``layer1.0.bn1.running_mean``, ``fc.bias``); optimizer state may ride along under the
  ``optim/`` prefix (``optim/layer1.0.conv1.weight.momentum``).
- ``NAME.json``: the sidecar: the resolved spec, its hash, the training state (step, epoch, rng
  seeds, optimizer hyper-parameters, ...) and the size and SHA-256 of the tensor file.

The sidecar is the commit record. Saving writes both files to temporary names in the target
directory, fsyncs them, renames the tensor file into place and then the sidecar, and only then
moves the run directory's ``latest`` pointer. A crash at any point leaves the previous
checkpoint loadable: a tensor file without its sidecar is ignored, and a tensor file that does not
match its sidecar's size and checksum is reported as corrupt instead of being loaded.

In a run directory checkpoints are named ``ckpt-{step:06d}``; the last ``keep`` are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rescompile.errors import UserError
from rescompile.files import write_temp

__all__ = [
    "FORMAT",
    "LATEST_FILE",
    "OPTIM_PREFIX",
    "VERSION",
    "CheckpointError",
    "check_compatible",
    "checkpoint_name",
    "committed_checkpoints",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
    "split_optimizer",
]

FORMAT = "rescompile-checkpoint"
VERSION = 1
OPTIM_PREFIX = "optim/"
LATEST_FILE = "latest"
_NAME_RE = re.compile(r"ckpt-(\d+)")


class CheckpointError(UserError):
    """A checkpoint is missing, incomplete, corrupt or does not fit the model (user-facing)."""


def checkpoint_name(step: int) -> str:
    """The stem of the checkpoint saved at ``step`` in a run directory: ``ckpt-000123``."""
    return f"ckpt-{step:06d}"


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def save_checkpoint(
    dir_or_path: str | Path,
    tensors: Mapping[str, np.ndarray],
    spec: Mapping[str, Any],
    spec_hash: str,
    state: Mapping[str, Any],
    *,
    keep: int | None = 3,
) -> Path:
    """Write a checkpoint atomically and return the path of its ``.safetensors`` file.

    Args:
        dir_or_path: a run directory (created if needed): the checkpoint is named
            ``ckpt-{state["step"]:06d}``, the ``latest`` pointer is moved to it and only the
            ``keep`` most recent checkpoints are kept (``None`` keeps all). Or a path ending in
            ``.safetensors``: a named checkpoint (e.g. ``best.safetensors``), with no pointer
            and no pruning.
        tensors: name -> array; names are IR node names, optimizer state under ``optim/``.
        spec: the resolved spec, as JSON-ready data.
        spec_hash: the hash identifying ``spec``.
        state: JSON-ready training state; in a run directory it must hold an integer ``step``.
    """
    target = Path(dir_or_path)
    in_run_dir = target.suffix != ".safetensors"
    if in_run_dir:
        step = state.get("step")
        if not isinstance(step, int | np.integer) or step < 0:
            raise ValueError(f"state['step'] must be a non-negative integer, got {step!r}")
        directory, stem = target, checkpoint_name(int(step))
    else:
        directory, stem = target.parent, target.stem
    directory.mkdir(parents=True, exist_ok=True)
    tensor_file = directory / f"{stem}.safetensors"
    sidecar = directory / f"{stem}.json"

    blob = _serialize(tensors, spec_hash)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "tensors_file": tensor_file.name,
        "bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "num_tensors": len(tensors),
        "spec_hash": spec_hash,
        "spec": spec,
        "state": state,
    }
    meta_text = json.dumps(meta, indent=2, default=_to_json) + "\n"

    tmp_tensors = _write_temp(directory, tensor_file.name, blob)
    tmp_sidecar = None
    try:
        tmp_sidecar = _write_temp(directory, sidecar.name, meta_text.encode("utf-8"))
        if sidecar.exists():  # re-saving a name: un-commit the old pair before touching it
            sidecar.unlink()
            _fsync_dir(directory)
        os.replace(tmp_tensors, tensor_file)
        os.replace(tmp_sidecar, sidecar)  # the commit point
        _fsync_dir(directory)
    finally:
        for tmp in (tmp_tensors, tmp_sidecar):
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    if in_run_dir:
        latest = _write_temp(directory, LATEST_FILE, f"{stem}\n".encode())
        os.replace(latest, directory / LATEST_FILE)
        _fsync_dir(directory)
        if keep is not None:
            _prune(directory, keep=max(keep, 1), current=stem)
    return tensor_file


def _serialize(tensors: Mapping[str, np.ndarray], spec_hash: str) -> bytes:
    from safetensors.numpy import save

    arrays: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor names must be non-empty strings, got {name!r}")
        array = np.asarray(value)
        # not np.ascontiguousarray: it would turn a 0-d array (num_batches_tracked) into 1-d
        arrays[name] = array if array.flags.c_contiguous else array.copy(order="C")
    try:
        return save(arrays, metadata={"format": FORMAT, "spec_hash": spec_hash})
    except Exception as exc:  # safetensors raises its own error types for unsupported dtypes
        raise ValueError(f"cannot serialize the tensors: {exc}") from exc


def _to_json(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"checkpoint metadata cannot hold {type(value).__name__} values")


def _write_temp(directory: Path, final_name: str, data: bytes) -> Path:
    """Write ``data`` to a fresh temporary file next to ``final_name`` (created exclusively,
    with the umask's permissions) and fsync it."""
    return write_temp(directory, final_name, data)


def _fsync_dir(directory: Path) -> None:
    """Make renames in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _prune(directory: Path, *, keep: int, current: str) -> None:
    """Keep the ``keep`` most recent committed checkpoints; drop crash leftovers."""
    committed = list_checkpoints(directory)
    doomed = [p for p in committed[:-keep] if p.stem != current]
    for path in doomed:
        path.with_suffix(".json").unlink(missing_ok=True)  # un-commit first
        path.unlink(missing_ok=True)
    committed_stems = {p.stem for p in committed}
    for leftover in [*directory.glob("ckpt-*.json"), *directory.glob("ckpt-*.safetensors")]:
        if leftover.stem not in committed_stems and _NAME_RE.fullmatch(leftover.stem):
            leftover.unlink(missing_ok=True)
    for pattern in (".ckpt-*.tmp", f".{LATEST_FILE}.*.tmp"):  # temporaries of a killed save
        for stale in directory.glob(pattern):
            stale.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Finding and loading
# --------------------------------------------------------------------------------------------


def _read_sidecar(sidecar: Path) -> dict[str, Any]:
    tensor_file = sidecar.with_suffix(".safetensors")
    if not sidecar.is_file():
        raise CheckpointError(
            f"{sidecar} is missing: {tensor_file.name} is not a complete rescompile checkpoint "
            "(it was never committed, or the sidecar was deleted)"
        )
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{sidecar} is corrupt: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{sidecar} is not a rescompile checkpoint sidecar")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{sidecar} has checkpoint format version {meta.get('version')!r}; "
            f"this rescompile reads version {VERSION}"
        )
    return meta


def _is_committed(sidecar: Path) -> bool:
    """Cheap check: a valid sidecar and a tensor file of the recorded size."""
    try:
        meta = _read_sidecar(sidecar)
        return sidecar.with_suffix(".safetensors").stat().st_size == meta.get("bytes")
    except (CheckpointError, OSError):
        return False


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The committed ``ckpt-*`` checkpoints of a run directory, oldest step first."""
    directory = Path(run_dir)
    if not directory.is_dir():
        return []
    found = []
    for sidecar in directory.glob("ckpt-*.json"):
        match = _NAME_RE.fullmatch(sidecar.stem)
        if match and _is_committed(sidecar):
            found.append((int(match.group(1)), sidecar.with_suffix(".safetensors")))
    return [path for _, path in sorted(found)]


def committed_checkpoints(run_dir: str | Path) -> list[Path]:
    """The ``.safetensors`` files of every ``ckpt-*`` checkpoint that has a sidecar, newest
    step first, whether or not it is still intact (:func:`load_checkpoint` says). A tensor file
    without a sidecar is the leftover of a save that never committed and is not listed."""
    directory = Path(run_dir)
    found = []
    for sidecar in directory.glob("ckpt-*.json"):
        match = _NAME_RE.fullmatch(sidecar.stem)
        if match:
            found.append((int(match.group(1)), sidecar.with_suffix(".safetensors")))
    return [path for _, path in sorted(found, reverse=True)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The ``.safetensors`` file of the run's latest committed checkpoint, or ``None``.

    The ``latest`` pointer is trusted when it names a committed checkpoint; otherwise the
    committed checkpoint with the highest step is returned.
    """
    directory = Path(run_dir)
    pointer = directory / LATEST_FILE
    try:
        stem = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        stem = ""
    if stem and "/" not in stem and _is_committed(directory / f"{stem}.json"):
        return directory / f"{stem}.safetensors"
    committed = list_checkpoints(directory)
    return committed[-1] if committed else None


def _resolve(path: Path) -> Path:
    """The ``.safetensors`` file meant by a run directory, a tensor file, a sidecar or a stem."""
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"no complete checkpoint in {path}")
        return found
    if path.suffix in (".safetensors", ".json"):
        return path.with_suffix(".safetensors")
    if not path.exists():
        return path.with_name(path.name + ".safetensors")
    raise CheckpointError(
        f"{path} is not a checkpoint (expected a .safetensors file or a run directory)"
    )


def load_checkpoint(
    path: str | Path, *, spec_hash: str | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load a checkpoint and verify it against its sidecar.

    Args:
        path: a run directory (its latest checkpoint), a ``.safetensors`` file, its ``.json``
            sidecar, or their common stem.
        spec_hash: if given, the checkpoint must have been written for this spec hash.

    Returns:
        ``(tensors, meta)``: name -> array, and the sidecar (``meta["spec"]``,
        ``meta["spec_hash"]``, ``meta["state"]``, ...).

    Raises:
        CheckpointError: missing, truncated or corrupt files, or a different spec hash.
    """
    from safetensors.numpy import load

    tensor_file = _resolve(Path(path))
    meta = _read_sidecar(tensor_file.with_suffix(".json"))
    if tensor_file.exists() and not tensor_file.is_file():  # a FIFO would block the read
        raise CheckpointError(f"{tensor_file} is not a regular file")
    try:
        blob = tensor_file.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{tensor_file} is missing (its sidecar exists)") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {tensor_file}: {exc.strerror or exc}") from exc
    if len(blob) != meta.get("bytes"):
        raise CheckpointError(
            f"{tensor_file} is truncated or corrupt: {len(blob)} bytes, "
            f"the sidecar records {meta.get('bytes')}"
        )
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise CheckpointError(
            f"{tensor_file} is corrupt: its SHA-256 differs from the one its sidecar records"
        )
    try:
        tensors = load(blob)
    except Exception as exc:  # safetensors raises SafetensorError, not an exported subclass
        raise CheckpointError(f"{tensor_file} is not a valid safetensors file: {exc}") from exc
    if spec_hash is not None and meta.get("spec_hash") != spec_hash:
        raise CheckpointError(
            f"{tensor_file} was written for spec hash {meta.get('spec_hash')}, "
            f"but this spec hashes to {spec_hash}"
        )
    return tensors, meta


# --------------------------------------------------------------------------------------------
# Compatibility
# --------------------------------------------------------------------------------------------


def split_optimizer(
    tensors: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Split into ``(model tensors, optimizer tensors)``; the ``optim/`` prefix is removed."""
    model = {k: v for k, v in tensors.items() if not k.startswith(OPTIM_PREFIX)}
    optim = {
        k.removeprefix(OPTIM_PREFIX): v for k, v in tensors.items() if k.startswith(OPTIM_PREFIX)
    }
    return model, optim


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def check_compatible(
    tensors: Mapping[str, Any],
    expected: Mapping[str, tuple[int, ...]],
    *,
    ignore_prefix: str | None = OPTIM_PREFIX,
) -> None:
    """Check that a checkpoint's model tensors are exactly the ones a model expects.

    ``tensors`` maps names to arrays (or to shapes); ``expected`` maps names to shapes in the
    model's own order. The first problem is reported: walking ``expected`` in order, the first
    name that is missing or has another shape; then the first unexpected checkpoint name in
    sorted order. Names starting with ``ignore_prefix`` (optimizer state) are not compared.

    Raises:
        CheckpointError: naming the first mismatching tensor and counting the others.
    """
    problems: list[str] = []
    for name, shape in expected.items():
        if name not in tensors:
            problems.append(f"{name} {_shape_text(tuple(shape))} is missing from the checkpoint")
            continue
        value = tensors[name]
        found = tuple(value.shape if hasattr(value, "shape") else value)
        if found != tuple(shape):
            problems.append(
                f"{name} has shape {_shape_text(found)} in the checkpoint, "
                f"the model expects {_shape_text(tuple(shape))}"
            )
    for name in sorted(set(tensors) - set(expected)):
        if ignore_prefix and name.startswith(ignore_prefix):
            continue
        problems.append(f"{name} is in the checkpoint but not in the model")
    if problems:
        more = len(problems) - 1
        suffix = f" (and {more} more mismatch{'es' if more > 1 else ''})" if more else ""
        raise CheckpointError(f"checkpoint does not fit the model: {problems[0]}{suffix}")
