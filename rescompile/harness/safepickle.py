"""Unpickling restricted to plain data: numpy arrays, dicts, lists, numbers and strings.

The CIFAR "python version" files are pickles. ``pickle.load`` on a file from elsewhere can run
arbitrary code, because a pickle may name any importable callable. :func:`safe_loads` resolves
only the handful of globals a numpy array needs and refuses everything else, so a hostile file
fails with :class:`UnsafePickleError` before any of its code can run.

Both the original Python 2 files (``numpy.core.multiarray._reconstruct``, byte strings) and
re-pickled Python 3 files (``numpy._core``, protocol 2 to 5) are accepted.
"""

from __future__ import annotations

import builtins
import io
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["UnsafePickleError", "safe_loads"]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allowed set."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode``: Python 3 writes ``bytes`` this way at protocol 2."""
    if encoding != "latin1":
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _numpy_reconstruct() -> Callable[..., Any]:
    # The array reconstructor lives in numpy.core (1.x) or numpy._core (2.x); take it from an
    # array's own reduce tuple instead of importing the (deprecated) module by name.
    return np.ndarray.__reduce__(np.zeros(1))[0]


def _numpy_frombuffer() -> Callable[..., Any] | None:
    # Protocol 5 pickles rebuild arrays with numpy's private ``_frombuffer`` helper.
    reduced = np.zeros(1).__reduce_ex__(5)
    return reduced[0] if reduced[0].__name__ == "_frombuffer" else None


MAX_BYTES_ARG = 1 << 20  # bytes(N) in a data file is only ever a small buffer


def _bytes(*args: Any) -> bytes:
    """Stand-in for ``bytes``: Python 3 writes ``b""`` as ``bytes()`` at protocol 2. A hostile
    file could ask for ``bytes(10**15)``; a size that large is refused before it is allocated."""
    if args and isinstance(args[0], int) and not 0 <= args[0] <= MAX_BYTES_ARG:
        raise UnsafePickleError(f"refusing bytes({args[0]}): larger than {MAX_BYTES_ARG} bytes")
    return bytes(*args)


class _NdarrayClass:
    """Stands for ``numpy.ndarray`` in a pickle. numpy pickles an array as
    ``_reconstruct(ndarray, (0,), b"b")`` and then sets its shape and bytes from data in the
    file, so its memory is bounded by the file's size; calling ``ndarray(shape)`` directly
    would allocate whatever shape a hostile file names, so that is refused."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError(
            "refusing numpy.ndarray(...): arrays are accepted only as numpy pickles them"
        )


_NDARRAY = _NdarrayClass()


def _checked_reconstruct(reconstruct: Callable[..., Any]) -> Callable[..., Any]:
    def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
        if subtype is not _NDARRAY or shape != (0,):
            raise UnsafePickleError(
                "refusing an array reconstructed other than as numpy pickles one "
                f"(shape {shape!r} before its data)"
            )
        return reconstruct(np.ndarray, shape, dtype)

    return _reconstruct


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    reconstruct = _checked_reconstruct(_numpy_reconstruct())
    frombuffer = _numpy_frombuffer()
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        if frombuffer is not None:
            allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    for module in ("builtins", "__builtin__"):
        for name in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "bytes", "str"):
            allowed[(module, name)] = getattr(builtins, name)
        allowed[(module, "bytes")] = _bytes
    return allowed


_ALLOWED = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: only numpy arrays, dicts, lists, numbers "
                "and strings are allowed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a pickle with persistent references")


def safe_loads(data: bytes, *, encoding: str = "bytes") -> Any:
    """Unpickle ``data`` allowing only plain data and numpy arrays.

    ``encoding`` is passed to :class:`pickle.Unpickler`; ``"bytes"`` (the default) keeps
    Python 2 strings as :class:`bytes`, which is how the CIFAR files are meant to be read.
    Object arrays are refused, since their elements could be anything.

    Raises:
        UnsafePickleError: the pickle names a callable outside the allowed set.
        pickle.UnpicklingError, EOFError, ValueError, TypeError: the stream is malformed.
    """
    obj = _RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
    _reject_object_arrays(obj)
    return obj


def _reject_object_arrays(obj: Any) -> None:
    # Iterative: a hostile file may nest lists far deeper than Python's recursion limit.
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, np.ndarray) and item.dtype.hasobject:
            raise UnsafePickleError("refusing a numpy array of Python objects")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
