"""Spec loading: YAML file -> ``extends`` chain -> ``--set`` overrides -> validated :class:`Spec`.

Positions survive every step: a value that came from a base spec is reported at the base file's
line, and a value from ``--set`` at the override's position on the command line.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from rescompile import library
from rescompile.errors import Diagnostic, SourcePos, SpecError
from rescompile.spec import yamlsafe
from rescompile.spec.models import Spec

MAX_EXTENDS = 16
MAX_KEY_CHARS = 1000  # a --set key: real ones are a few dozen characters
MAX_DIAGNOSTICS = 100  # beyond this many problems, the rest are counted rather than listed
# fields that accept a bare string for {kind: ...}
_SHORTHAND = {"block", "stem", "downsample", "attention"}


@dataclass
class Resolved:
    """A validated spec plus where each of its values came from."""

    spec: Spec
    file: str
    data: dict[str, Any]
    positions: dict[tuple, SourcePos] = field(default_factory=dict)
    key_positions: dict[tuple, SourcePos] = field(default_factory=dict)

    def pos(self, *path: str | int) -> SourcePos | None:
        for n in range(len(path), -1, -1):
            p = self.positions.get(path[:n])
            if p is not None:
                return p
        return None

    @property
    def hash(self) -> str:
        return spec_hash(self.spec)


def spec_hash(spec: Spec) -> str:
    """sha256 of the canonical JSON of the resolved spec (first 16 hex digits).

    Fields added after the first release are left out while they hold their defaults, and a
    default-kernel ``downsample`` is written as its kind, so a spec that uses none of them keeps
    the hash it always had (checkpoints name it).
    """
    data = _canonical(spec.model_dump(mode="json"))
    canon = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


# (mapping, field) -> default of the fields added with the ResNet family (issue 12).
_LATER_DEFAULTS = {
    ("spec", "anti_alias"): "none",
    ("spec", "drop_path"): 0.0,
    ("stem", "widths"): None,
    ("stem", "pool"): None,
    ("block", "attention"): {
        "kind": "none",
        "rd_ratio": None,
        "rd_divisor": None,
        "kernel_size": None,
    },
    ("block", "reduce_first"): 1,
    ("block", "dropout"): 0.0,
    ("stage", "attention"): None,
    ("stage", "anti_alias"): None,
    ("stage", "out_channels"): None,
    ("stage", "block_widths"): None,
    ("norm", "kind"): "batch",
    ("norm", "groups"): None,
}


def _canonical(d: dict) -> dict:
    def prune(m: dict | None, where: str) -> None:
        if not isinstance(m, dict):
            return
        for (w, k), default in _LATER_DEFAULTS.items():
            if w == where and k in m and m[k] == default:
                del m[k]
        ds = m.get("downsample")
        if isinstance(ds, dict) and ds.get("kernel_size") == 1:
            m["downsample"] = ds["kind"]

    prune(d, "spec")
    prune(d.get("stem"), "stem")
    prune(d.get("block"), "block")
    prune(d.get("norm"), "norm")
    for st in d.get("stages", []):
        prune(st, "stage")
        prune(st.get("block"), "block")
    return d


# ---------------------------------------------------------------------------------------------
# extends


def _allowed(target: Path, roots: list[Path]) -> bool:
    return any(target == r or r in target.parents for r in roots)


def _merge(base: Any, over: Any) -> Any:
    """Deep-merge mappings; anything else (lists included) is replaced by the override."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            if k in _SHORTHAND:
                b, v = _normalise_shorthand(out.get(k)), _normalise_shorthand(v)
                out[k] = _merge(b, v)
            else:
                out[k] = _merge(out.get(k), v) if k in out else v
        return out
    return over


def _normalise_shorthand(v: Any) -> Any:
    return {"kind": v} if isinstance(v, str) else v


def _load_chain(path: Path, display: str, roots: list[Path], seen: list[Path]) -> yamlsafe.Located:
    loc = yamlsafe.load_file(path, display)
    if not isinstance(loc.data, dict):
        raise SpecError(Diagnostic(SourcePos(display, 1, 1), "a spec must be a YAML mapping"))
    ext = loc.data.get("extends")
    if ext is None:
        return loc
    where = loc.positions.get(("extends",))
    if not isinstance(ext, str):
        raise SpecError(Diagnostic(where, "must be a path to another spec", "extends"))
    target = _resolve_path(path.parent, ext, where)
    if not _is_file(target, ext, where) and (named := library.find(ext)) is not None:
        target = named.resolve()  # no such file beside the spec: the library spec of that name
    if target.suffix not in (".yaml", ".yml"):
        raise SpecError(
            Diagnostic(where, f"must name a .yaml file, got {_shown_path(ext)}", "extends")
        )
    if not _allowed(target, roots):
        raise SpecError(
            Diagnostic(
                where,
                f"{_shown_path(ext)} resolves outside the allowed spec directories "
                f"({', '.join(str(r) for r in roots)})",
                "extends",
            )
        )
    if target in seen:
        chain = " -> ".join(str(p.name) for p in [*seen, target])
        raise SpecError(Diagnostic(where, f"cyclic extends: {chain}", "extends"))
    if len(seen) >= MAX_EXTENDS:
        raise SpecError(Diagnostic(where, f"extends chain longer than {MAX_EXTENDS}", "extends"))
    if _is_file(target, ext, where, directory=True):
        raise SpecError(
            Diagnostic(where, f"base spec {_shown_path(ext)} is a directory ({target})", "extends")
        )
    if not _is_file(target, ext, where):
        raise SpecError(
            Diagnostic(where, f"base spec {_shown_path(ext)} not found ({target})", "extends")
        )
    base = _load_chain(target, _display(target), roots, [*seen, target])
    merged = _merge(base.data, {k: v for k, v in loc.data.items() if k != "extends"})
    out = yamlsafe.Located(merged, display)
    # A value's position is the override's when it has one, otherwise the base's.
    out.positions = {**base.positions, **loc.positions}
    out.key_positions = {**base.key_positions, **loc.key_positions}
    out.problems = [*base.problems, *loc.problems]
    return out


def _path_error(what: str, e: Exception, where: SourcePos | None) -> SpecError:
    why = getattr(e, "strerror", None) or str(e)
    if isinstance(e, RuntimeError):  # Python 3.11's Path.resolve on a loop
        why = "a loop of symbolic links"
    return SpecError(Diagnostic(where, f"cannot use {_short(what)} as a path: {why}", "extends"))


def _resolve_path(parent: Path, ext: str, where: SourcePos | None) -> Path:
    try:
        return (parent / ext).resolve()
    except (OSError, ValueError, RuntimeError) as e:  # an embedded NUL, a symlink loop, ...
        raise _path_error(ext, e, where) from None


def _is_file(target: Path, ext: str, where: SourcePos | None, directory: bool = False) -> bool:
    try:
        return target.is_dir() if directory else target.is_file()
    except (OSError, ValueError) as e:  # a name too long, ...
        raise _path_error(ext, e, where) from None


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except (OSError, ValueError):  # a name too long, an embedded NUL: reported by the caller
        return False


# a path as long as Linux accepts is shown whole; only a longer (hostile) name is cut
PATH_MAX = 4096


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to about ``limit`` characters for messages."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 4]}...{text[-1]}"


def _shown_path(value: Any) -> str:
    """``repr`` of a path for a message: whole up to ``PATH_MAX``, cut only past it."""
    return _short(value, PATH_MAX)


def _cut(text: str, limit: int = 200) -> str:
    """``text`` cut to about ``limit`` characters for a position label."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


class Override(str):
    """A ``key=value`` override that came from another option (``--input 160x192``): its
    diagnostics are positioned at ``shown``, the option as the user typed it."""

    shown: str

    def __new__(cls, assignment: str, shown: str) -> Override:
        self = super().__new__(cls, assignment)
        self.shown = shown
        return self


def _display(p: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


# ---------------------------------------------------------------------------------------------
# --set overrides


def apply_override(loc: yamlsafe.Located, assignment: str, index: int = 0) -> None:
    """Apply ``key.path=value`` to ``loc`` in place; the value is parsed as a YAML scalar/flow."""
    key, sep, text = assignment.partition("=")
    shown = getattr(assignment, "shown", None)  # an override made from another option
    if shown is not None:
        where = SourcePos(shown, 1, shown.find(" ") + 2)
    else:
        where = SourcePos(f"--set {_cut(assignment)}", 1, len(key) + 2 if sep else 1)
    if not sep or not key.strip():
        raise SpecError(Diagnostic(where, f"expected KEY=VALUE, got {_short(assignment)}"))
    if len(key) > MAX_KEY_CHARS:
        raise SpecError(Diagnostic(where, f"key longer than {MAX_KEY_CHARS} characters"))
    if key.count(".") >= yamlsafe.MAX_DEPTH:
        raise SpecError(Diagnostic(where, f"key deeper than {yamlsafe.MAX_DEPTH} levels"))
    parts: list[str | int] = [
        int(p) if p.isascii() and p.isdigit() and len(p) < 10 else p for p in key.strip().split(".")
    ]
    parsed = yamlsafe.load_text(text, shown or f"--set {_cut(key)}")
    if parsed.problems:
        raise SpecError(parsed.problems)
    value = parsed.data
    node = loc.data
    for i, part in enumerate(parts[:-1]):
        child = _child(node, part, parts[: i + 1], where)
        if child is None or (isinstance(child, str) and parts[i] in _SHORTHAND):
            if child is None:  # a mapping the override creates: it is positioned at the override
                loc.positions[tuple(parts[: i + 1])] = where
                loc.key_positions[tuple(parts[: i + 1])] = where
            child = _normalise_shorthand(child) if child is not None else {}
            node[part] = child
        node = child
    last = parts[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last >= len(node):
            raise SpecError(Diagnostic(where, f"no list element {key!r}"))
    elif not isinstance(node, dict):
        raise SpecError(Diagnostic(where, f"cannot set {key!r}: its parent is not a mapping"))
    node[last] = value
    path = tuple(parts)
    for table in (loc.positions, loc.key_positions):
        for p in [p for p in table if p[: len(path)] == path]:
            del table[p]
    loc.positions[path] = where
    loc.key_positions[path] = where


def _child(node: Any, part: str | int, path: list, where: SourcePos) -> Any:
    dotted = ".".join(map(str, path))
    if isinstance(node, list):
        if not isinstance(part, int) or part >= len(node):
            raise SpecError(Diagnostic(where, f"no list element {dotted!r}"))
        return node[part]
    if isinstance(node, dict):
        return node.get(part)
    raise SpecError(Diagnostic(where, f"cannot descend into {dotted!r}"))


# ---------------------------------------------------------------------------------------------
# pydantic errors -> diagnostics


def _model_at(path: tuple) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at ``path`` (for suggestions)."""
    model: Any = Spec
    for part in path:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        f = model.model_fields.get(part)
        if f is None:
            return None
        model = _unwrap(f.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    for arg in typing.get_args(tp) or (tp,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        inner = _unwrap(arg) if typing.get_args(arg) else None
        if inner is not None:
            return inner
    return None


def _field_path(raw: tuple, data: Any, typ: str) -> tuple:
    """The field path in a pydantic error location, without union-member tags.

    A part is a field when it indexes the data, names a field of the model at that point, or is
    the missing or unknown key the error is about; anything else (``constrained-int``,
    ``tuple[...]``, ``function-after[...]``) is a tag pydantic added.
    """
    path: list[Any] = []
    cur = data
    for i, part in enumerate(raw):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            cur = cur[part]
        elif (i == len(raw) - 1 and typ in ("missing", "extra_forbidden")) or (
            isinstance(part, str) and part in _fields_at(tuple(path))
        ):
            cur = None
        else:
            continue
        path.append(part)
    return tuple(path)


def _fields_at(path: tuple) -> dict:
    model = _model_at(path)
    return model.model_fields if model is not None else {}


_YAML11 = {"yes", "no", "on", "off", "y", "n", "Yes", "No", "On", "Off", "YES", "NO"}


def diagnostics_from(err: ValidationError, loc: yamlsafe.Located | Resolved) -> list[Diagnostic]:
    """pydantic's errors as positioned diagnostics (at most ``MAX_DIAGNOSTICS``, then a count)."""
    diags, hidden = _convert(err, loc)
    return [*diags, _more(loc.file, hidden)] if hidden else diags


def _convert(err: ValidationError, loc: yamlsafe.Located | Resolved) -> tuple[list, int]:
    out: dict[tuple, Diagnostic] = {}
    errors = err.errors(include_url=False)
    for e in errors[:MAX_DIAGNOSTICS]:
        raw = e["loc"]
        path = _field_path(raw, loc.data, e["type"])
        typ, msg, value = e["type"], e["msg"], e.get("input")
        if (
            typ == "int_type"
            and isinstance(value, list | tuple)
            and len(raw) > len(path)
            and isinstance(raw[-1], str)
        ):
            continue  # `size: [..]` is not meant as an int: the list member's errors say more
        if typ == "extra_forbidden":
            model = _model_at(path[:-1])
            key = path[-1]
            msg = f"unknown field {key!r}"
            if model is not None:
                close = difflib.get_close_matches(str(key), list(model.model_fields), n=1)
                if close:
                    msg += f"; did you mean {close[0]!r}?"
                else:
                    msg += f"; expected one of: {', '.join(model.model_fields)}"
            pos = loc.key_positions.get(path) or _pos(loc, path)
        elif typ == "missing":
            what = "item" if isinstance(path[-1], int) else "required field"
            msg = f"missing {what} {path[-1]!r}"
            pos = _pos(loc, path[:-1])
        else:
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            if isinstance(value, str) and value in _YAML11:
                msg += f", got the string {value!r} (YAML 1.1 booleans are not coerced"
                msg += "; write true or false)" if typ == "bool_type" else ")"
            elif isinstance(value, str | int | float | bool) and typ not in ("value_error",):
                msg += f", got {_short(value)}"
            pos = _pos(loc, path)
        dotted = ".".join(map(str, path))
        if path in out and len(raw) != len(path):  # several members of a union failed
            prev = out[path]
            if msg not in prev.message:
                out[path] = Diagnostic(prev.pos, f"{prev.message}; or {msg}", dotted)
            continue
        out.setdefault(path if len(raw) != len(path) else raw, Diagnostic(pos, msg, dotted))
    if not out and errors:  # never "0 errors": fall back to pydantic's first error as it is
        e = errors[0]
        path = _field_path(e["loc"], loc.data, e["type"])
        dotted = ".".join(map(str, path))
        out[path] = Diagnostic(_pos(loc, path), e["msg"].removeprefix("Value error, "), dotted)
    return _sorted(list(out.values())), max(0, len(errors) - MAX_DIAGNOSTICS)


def _more(file: str, n: int) -> Diagnostic:
    return Diagnostic(SourcePos(file, 1, 1), f"{n} more problem{'s' if n > 1 else ''} not shown")


def _capped(diags: list[Diagnostic], file: str, hidden: int = 0) -> SpecError:
    """A SpecError listing at most ``MAX_DIAGNOSTICS`` diagnostics, then a count of the rest."""
    hidden += max(0, len(diags) - MAX_DIAGNOSTICS)
    if not hidden:
        return SpecError(diags)
    return SpecError([*diags[:MAX_DIAGNOSTICS], _more(file, hidden)], len(diags) + hidden)


def _pos(loc: Any, path: tuple) -> SourcePos | None:
    for n in range(len(path), -1, -1):
        p = loc.positions.get(path[:n])
        if p is not None:
            return p
    return None


# ---------------------------------------------------------------------------------------------


def load_spec(
    path: str | Path,
    overrides: typing.Sequence[str] = (),
    *,
    roots: typing.Sequence[Path] | None = None,
) -> Resolved:
    """Load, merge, override and validate a spec file, or the library spec named ``path``.

    ``roots`` are the directories that ``extends`` may reach: by default the spec's own directory's
    parent, the current directory and the built-in library.
    """
    p = Path(path)
    display = str(path)
    if not display:
        raise SpecError(Diagnostic(None, "'': an empty path; give a spec file"))
    if not _exists(p) and not os.path.lexists(p):  # (a dangling link or loop is reported below)
        named = library.find(display)
        if named is None:
            hint = "; nor a library spec (`rescompile specs` lists them)" if p.suffix == "" else ""
            raise SpecError(Diagnostic(None, f"{_shown_path(display)[1:-1]}: no such file{hint}"))
        p = named  # not a file: the library spec of that name
        display = _display(named.resolve())
    try:
        real = p.resolve()
    except (OSError, ValueError, RuntimeError) as e:  # a NUL; a symlink loop (3.11: RuntimeError)
        why = getattr(e, "strerror", None) or str(e)
        if isinstance(e, RuntimeError):
            why = "a loop of symbolic links"
        raise SpecError(
            Diagnostic(None, f"{_shown_path(display)}: not a usable path: {why}")
        ) from None
    if not real.exists() and p.exists():  # /dev/fd/63 of <(...) resolves to "pipe:[...]"
        real = p.absolute()
    if roots is None:
        roots = [real.parent.parent, Path.cwd().resolve(), library.root()]
    loc = _load_chain(real, display, [Path(r).resolve() for r in roots], [real])
    loc = yamlsafe.Located(
        copy.deepcopy(loc.data), loc.file, loc.positions, loc.key_positions, loc.problems
    )
    return _validate(loc, overrides)


def _validate(loc: yamlsafe.Located, overrides: typing.Sequence[str]) -> Resolved:
    for i, assignment in enumerate(overrides):
        apply_override(loc, assignment, i)
    try:
        spec = Spec.model_validate(loc.data)
    except ValidationError as e:
        flagged = {d.path for d in loc.problems}
        diags, hidden = _convert(e, loc)
        rest = [d for d in diags if d.path not in flagged]
        raise _capped(_sorted([*loc.problems, *rest]), loc.file, hidden) from None
    if loc.problems:
        raise _capped(loc.problems, loc.file)
    return Resolved(spec, loc.file, loc.data, loc.positions, loc.key_positions)


def _sorted(diags: list[Diagnostic]) -> list[Diagnostic]:
    return sorted(diags, key=lambda d: (d.pos.file, d.pos.line, d.pos.col) if d.pos else ("", 0, 0))


def load_spec_text(
    text: str, file: str = "<string>", overrides: typing.Sequence[str] = ()
) -> Resolved:
    """Validate a spec given as text (no ``extends``); used by tests and tools."""
    loc = yamlsafe.load_text(text, file)
    if not isinstance(loc.data, dict):
        raise SpecError(Diagnostic(SourcePos(file, 1, 1), "a spec must be a YAML mapping"))
    if "extends" in loc.data:
        raise SpecError(
            Diagnostic(loc.positions.get(("extends",)), "extends needs a file", "extends")
        )
    return _validate(loc, overrides)
