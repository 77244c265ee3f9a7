"""The ``rescompile`` command line.

Every command that takes a spec also takes ``--set key.path=value`` overrides, validated exactly
like the file. User errors print as ``file:line:col: message`` (no traceback) and exit 1.
Heavy modules (backends, the training harness, rich tables) are imported inside the commands
that need them.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from rescompile.errors import SpecError, UserError

app = typer.Typer(
    name="rescompile",
    help="Compile YAML residual-network specs to an analysable IR and to PyTorch / Flax code.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SpecArg = Annotated[str, typer.Argument(help="path to a spec YAML file", metavar="SPEC")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="override a field: key.path=value (repeatable)", metavar="KEY=VALUE"
    ),
]


class Depth(StrEnum):
    stage = "stage"
    block = "block"
    layer = "layer"


class ReportFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"
    html = "html"


class IRFormat(StrEnum):
    json = "json"
    dot = "dot"


def _compile(spec: str, overrides: list[str] | None, input_size: str | None = None):
    from rescompile.compiler import compile_spec

    sets = list(overrides or [])
    if input_size is not None:
        sets.append(f"input.size={_parse_size(input_size)}")
    return compile_spec(spec, sets)


def _parse_size(text: str) -> str:
    h, sep, w = text.lower().partition("x")
    if not h.isdigit() or (sep and not w.isdigit()):
        raise UserError(f"--input expects SIZE or HxW (e.g. 224 or 160x192), got {text!r}")
    return f"[{h}, {w}]" if sep else h


def _console(cls):
    """A rich console; wide when writing to a pipe or file, so tables do not wrap."""
    return cls() if sys.stdout.isatty() else cls(width=160)


def _write(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {out}: {e.strerror}") from None
    typer.echo(f"wrote {out}", err=True)


@app.command()
def validate(spec: SpecArg, set_: SetOpt = None) -> None:
    """Validate a spec (syntax, fields, and shapes through the whole network)."""
    resolved, g = _compile(spec, set_)
    typer.echo(
        f"{spec}: ok ({g.name}, {len(g.blocks)} blocks, {len(g)} IR nodes, hash {resolved.hash})"
    )


@app.command()
def report(
    spec: SpecArg,
    set_: SetOpt = None,
    input: Annotated[str | None, typer.Option("--input", help="input size: N or HxW")] = None,
    format: Annotated[ReportFormat, typer.Option("--format", "-f")] = ReportFormat.table,
    depth: Annotated[Depth, typer.Option("--depth", "-d")] = Depth.stage,
) -> None:
    """Output shapes, parameters, MACs, FLOPs and activations per stage, block or layer."""
    from rescompile.passes import report as rep

    _, g = _compile(spec, set_, input)
    d = depth.value
    if format is ReportFormat.table:
        from rich.console import Console

        rep.render_table(g, d, _console(Console))
    else:
        render = {
            "json": rep.to_json,
            "csv": rep.to_csv,
            "markdown": rep.to_markdown,
            "html": rep.to_html,
        }
        sys.stdout.write(render[format.value](g, d) + ("\n" if format is ReportFormat.json else ""))


@app.command()
def diff(
    spec_a: Annotated[str, typer.Argument(metavar="SPEC_A")],
    spec_b: Annotated[str, typer.Argument(metavar="SPEC_B")],
    set_: SetOpt = None,
    depth: Annotated[Depth, typer.Option("--depth", "-d")] = Depth.stage,
) -> None:
    """Two specs' figures side by side, with the differences."""
    from rich.console import Console
    from rich.table import Table

    from rescompile.passes.report import CONVENTION, diff_rows

    _, a = _compile(spec_a, set_)
    _, b = _compile(spec_b, set_)
    t = Table(
        title=f"{a.name} ({spec_a})  vs  {b.name} ({spec_b})",
        caption=CONVENTION,
        caption_justify="left",
        show_footer=True,
    )
    t.add_column("name", footer="total")
    totals = {k: (a.totals[k], b.totals[k]) for k in ("params", "macs")}
    for key, label in (("params", "params"), ("macs", "MACs")):
        ta, tb = totals[key]
        t.add_column(f"{label} A", justify="right", footer=f"{ta:,}")
        t.add_column(f"{label} B", justify="right", footer=f"{tb:,}")
        t.add_column(f"Δ {label}", justify="right", footer=f"{tb - ta:+,}")
    for name, ca, cb in diff_rows(a, b, depth.value):
        if depth is Depth.layer and ca == cb:
            continue
        t.add_row(
            name,
            *(
                x
                for k in ("params", "macs")
                for x in (f"{ca[k]:,}", f"{cb[k]:,}", f"{cb[k] - ca[k]:+,}")
            ),
        )
    _console(Console).print(t)


@app.command()
def check(
    spec: Annotated[str | None, typer.Argument(metavar="[SPEC]", help="spec to audit")] = None,
    all_: Annotated[bool, typer.Option("--all", help="audit every spec in the library")] = False,
    set_: SetOpt = None,
) -> None:
    """Audit computed figures against the published row the spec names."""
    from rescompile.passes.audit import FAIL, audit
    from rescompile.spec.load import LIBRARY

    if all_ == (spec is not None):
        raise UserError("give either SPEC or --all")
    if all_:
        specs = [str(p) for p in sorted(LIBRARY.rglob("*.yaml"))]
    else:
        specs = [spec]
    failed = 0
    for path in specs:
        resolved, g = _compile(path, set_)
        if resolved.spec.paper is None:
            if not all_:
                audit(resolved, g)  # raises the "names no paper row" error
            continue
        ref = resolved.spec.paper
        typer.echo(f"{path}: {g.name} vs {ref.table} {ref.row}")
        for f in audit(resolved, g):
            typer.echo(f"  {f.status}  {f.figure:28s} {f.computed:>30s}   printed {f.printed}")
            if f.note:
                typer.echo(f"        {f.status.lower()}: {f.note}")
            failed += f.status == FAIL
    if failed:
        typer.echo(f"{failed} figure(s) FAIL", err=True)
        raise typer.Exit(1)


@app.command()
def ir(
    spec: SpecArg,
    set_: SetOpt = None,
    format: Annotated[IRFormat, typer.Option("--format", "-f")] = IRFormat.json,
) -> None:
    """Print the analysed IR as JSON or Graphviz DOT."""
    from rescompile.ir import printer

    _, g = _compile(spec, set_)
    sys.stdout.write(printer.to_json(g) + "\n" if format is IRFormat.json else printer.to_dot(g))


@app.command()
def build(
    spec: SpecArg,
    set_: SetOpt = None,
    backend: Annotated[str, typer.Option("--backend", "-b", help="torch | flax")] = "torch",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write here")] = None,
    check_: Annotated[
        bool, typer.Option("--check", help="build, run and compare with the IR")
    ] = False,
) -> None:
    """Emit a standalone model source file for a backend."""
    from rescompile.backends import load_backend

    _, g = _compile(spec, set_)
    mod = load_backend(backend)
    source = mod.emit(g)
    _write(source, output)
    if check_:
        results = mod.check(g, source)
        bad = 0
        for what, expected, got, ok in results:
            typer.echo(
                f"  {'PASS' if ok else 'FAIL'}  {what}: IR {expected}, model {got}", err=True
            )
            bad += not ok
        if bad:
            raise typer.Exit(1)


class ExportFormat(StrEnum):
    onnx = "onnx"


@app.command()
def export(
    spec: SpecArg,
    set_: SetOpt = None,
    format: Annotated[ExportFormat, typer.Option("--format", "-f")] = ExportFormat.onnx,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="default: NAME.onnx")
    ] = None,
) -> None:
    """Export the emitted PyTorch model (ONNX, checked with onnx.checker)."""
    from rescompile.backends import load_backend

    _, g = _compile(spec, set_)
    torch = load_backend("torch")
    out = output or Path(f"{g.name}.{format.value}")
    path = torch.module.export(g, torch.emit(g), out, fmt=format.value)
    typer.echo(f"wrote {path}", err=True)


class GraphFormat(StrEnum):
    dot = "dot"
    svg = "svg"
    png = "png"


@app.command()
def graph(
    spec: SpecArg,
    set_: SetOpt = None,
    format: Annotated[GraphFormat, typer.Option("--format", "-f")] = GraphFormat.svg,
    depth: Annotated[Depth, typer.Option("--depth", "-d")] = Depth.block,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write here")] = None,
) -> None:
    """Draw the architecture: shapes on the edges, params and MACs per stage, block or layer.

    SVG and PNG need Graphviz's `dot`; without it the DOT text is written instead (to FILE with
    its suffix changed to .dot when -o FILE is given).
    """
    from rescompile.passes import graphviz

    _, g = _compile(spec, set_)
    dot = graphviz.to_dot(g, depth.value)
    if format is GraphFormat.png and output is None:
        raise UserError("PNG is binary: give -o FILE (or use --format svg or dot)")
    try:
        data = graphviz.render(dot, format.value)
    except graphviz.GraphvizMissing as e:
        typer.echo(f"warning: {e}; writing the DOT text instead", err=True)
        _write(dot, output.with_suffix(".dot") if output is not None else None)
        return
    if format is GraphFormat.png:
        _write_bytes(data, output)
    else:
        _write(data.decode(), output)


def _write_bytes(data: bytes, out: Path) -> None:
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {out}: {e.strerror}") from None
    typer.echo(f"wrote {out}", err=True)


@app.command()
def schema(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write here")] = None,
    docs: Annotated[
        bool, typer.Option("--docs", help="the Markdown reference instead of the JSON Schema")
    ] = False,
) -> None:
    """Print the JSON Schema of the spec language (or, with --docs, its reference).

    The committed copies are specs/schema.json and docs/spec-language.md.
    """
    from rescompile.spec.schema import reference_markdown, schema_text

    _write(reference_markdown() if docs else schema_text(), output)


def _opt(help_: str, *names: str, **kw):
    return typer.Option(*names, help=help_, **kw)


@app.command()
def train(
    spec: Annotated[
        str | None, typer.Argument(metavar="[SPEC]", help="spec to train (omit with --resume)")
    ] = None,
    set_: SetOpt = None,
    backend: Annotated[str | None, _opt("torch | flax (default torch)", "--backend", "-b")] = None,
    data: Annotated[
        str | None,
        _opt("digits | synthetic[:HxWxC[:CLASSES]] | cifar10:PATH | cifar100:PATH", "--data"),
    ] = None,
    recipe: Annotated[str | None, _opt("paper-cifar | paper-imagenet | fast", "--recipe")] = None,
    epochs: Annotated[float | None, _opt("run length in epochs", "--epochs")] = None,
    steps: Annotated[int | None, _opt("run length in steps", "--steps")] = None,
    batch_size: Annotated[int | None, _opt("global batch size", "--batch-size")] = None,
    lr: Annotated[float | None, _opt("base learning rate", "--lr")] = None,
    seed: Annotated[int | None, _opt("seed of init, order, augmentation", "--seed")] = None,
    out: Annotated[str | None, _opt("run directory (default runs/NAME-BACKEND)", "--out")] = None,
    resume: Annotated[str | None, _opt("continue the run in this directory", "--resume")] = None,
    eval_every: Annotated[int | None, _opt("steps between evaluations", "--eval-every")] = None,
    ckpt_every: Annotated[int | None, _opt("steps between checkpoints", "--ckpt-every")] = None,
    log_every: Annotated[int | None, _opt("steps between log records", "--log-every")] = None,
    keep: Annotated[int | None, _opt("checkpoints kept (default 3)", "--keep")] = None,
    precision: Annotated[
        str | None, _opt("fp32 | bf16 (default bf16 on GPU)", "--precision")
    ] = None,
    compile_: Annotated[
        bool | None, _opt("torch.compile (default on GPU)", "--compile/--no-compile")
    ] = None,
    channels_last: Annotated[
        bool | None, _opt("channels_last (default on GPU)", "--channels-last/--no-channels-last")
    ] = None,
    device: Annotated[
        str | None, _opt("cpu | cuda | gpu (default: best available)", "--device")
    ] = None,
    augment: Annotated[
        bool | None, _opt("pad-crop-flip (default: as the dataset)", "--augment/--no-augment")
    ] = None,
    warmup: Annotated[
        bool | None, _opt("paper warm-up (default: 110+ layers)", "--warmup/--no-warmup")
    ] = None,
    quiet: Annotated[bool, _opt("no progress output", "--quiet", "-q")] = False,
) -> None:
    """Train a spec with a backend; writes a run directory (metrics, checkpoints, curves)."""
    from rescompile.harness.loop import run_from_cli

    run_from_cli(locals())


@app.command()
def plot(
    runs: Annotated[list[str], typer.Argument(metavar="RUN...", help="run directories")],
    output: Annotated[str, typer.Option("--output", "-o", help="image to write")] = "curves.png",
    label: Annotated[list[str] | None, _opt("legend label per run (repeatable)", "--label")] = None,
    title: Annotated[str | None, _opt("figure title", "--title")] = None,
) -> None:
    """Overlay training (dashed) and test (solid) error of runs, as in the paper's Figure 6."""
    from rescompile.harness.loop import plot_runs

    typer.echo(f"wrote {plot_runs(runs, output, label, title)}", err=True)


def main() -> None:
    """Entry point: user errors become one line per problem and exit status 1."""
    try:
        app()
    except SpecError as e:
        for d in e.diagnostics:
            typer.echo(f"{d}", err=True)
        n = e.count
        typer.echo(f"{n} error{'s' if n > 1 else ''}", err=True)
        sys.exit(1)
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
