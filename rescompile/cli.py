"""The ``rescompile`` command line.

Every command that takes a spec also takes ``--set key.path=value`` overrides, validated exactly
like the file. User errors print as ``file:line:col: message`` (no traceback) and exit 1.
Heavy modules (backends, the training harness, rich tables) are imported inside the commands
that need them.
"""

from __future__ import annotations

import io
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from rescompile.backends import BUILTIN as BACKENDS
from rescompile.backends import load_backend
from rescompile.errors import SpecError, UserError, one_line

app = typer.Typer(
    name="rescompile",
    help="Compile YAML residual-network specs to an analysable IR and to PyTorch / Flax code.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help is plain text: it wraps cleanly at any width
)


def _version(value: bool) -> None:
    if value:
        from rescompile import __version__

        typer.echo(f"rescompile {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """Compile YAML residual-network specs to an analysable IR and to PyTorch / Flax code."""


SpecArg = Annotated[
    str,
    typer.Argument(
        help="a spec file, - for standard input, or a library spec's name (paper/resnet50; "
        "`rescompile specs` lists them)",
        metavar="SPEC",
    ),
]
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


def _backend_names(incomplete: str = "") -> list[str]:
    """The backends ``--backend`` accepts (built-in and registered), for completion and help."""
    from importlib.metadata import entry_points

    names = dict.fromkeys(
        [*BACKENDS, *(ep.name for ep in entry_points(group="rescompile.backends"))]
    )
    return [n for n in names if n.startswith(incomplete)]


OutOpt = Annotated[
    str | None,
    typer.Option(
        "--output", "-o", help="write to this file (- for standard output)", metavar="FILE"
    ),
]
EmaOpt = Annotated[
    bool, typer.Option("--ema", help="use the checkpoint's weight average (a recipe's ema)")
]


def _compile(spec: str, overrides: list[str] | None, input_size: str | None = None):
    from rescompile.compiler import compile_spec

    sets = list(overrides or [])
    if input_size is not None:
        from rescompile.spec.load import Override

        sets.append(Override(f"input.size={_parse_size(input_size)}", f"--input {input_size}"))
    if spec == "-":
        from rescompile.compiler import analyse
        from rescompile.spec.load import load_spec_text

        resolved = load_spec_text(_read_stdin(), "<stdin>", sets)
        g = analyse(resolved)
    else:
        resolved, g = compile_spec(spec, sets)
    from rescompile.spec.lint import lint

    for warning in lint(resolved):
        typer.echo(f"warning: {warning}", err=True)
    return resolved, g


def _read_stdin() -> str:
    """The spec on standard input (``rescompile report -``), read with the file limits."""
    from rescompile.spec import yamlsafe

    if sys.stdin is None or sys.stdin.isatty():
        raise UserError("SPEC is -, but standard input is a terminal: pipe a spec into it")
    raw = sys.stdin.buffer.read(yamlsafe.MAX_BYTES + 1)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"<stdin>: the spec is not UTF-8 (byte {e.start})") from None


def _parse_size(text: str) -> str:
    h, sep, w = text.lower().partition("x")
    if not (h.isascii() and h.isdigit()) or (sep and not (w.isascii() and w.isdigit())):
        raise UserError(f"--input expects SIZE or HxW (e.g. 224 or 160x192), got {text!r}")
    if max(len(h), len(w)) > 9:
        raise UserError(f"--input {text}: sizes are at most 65536")
    h, w = str(int(h)), str(int(w)) if sep else ""  # 0032 is 32 here: not YAML's octal
    return f"[{h}, {w}]" if sep else h


def _console(file=None):
    """A rich console for tables. Its width is the terminal's, or $COLUMNS, or 160 when writing
    to a pipe or file with no $COLUMNS (so wide tables do not wrap); no colour and no automatic
    highlighting of numbers outside a terminal."""
    from rich.console import Console

    width = None
    if file is not None or not sys.stdout.isatty():
        columns = os.environ.get("COLUMNS", "")
        width = int(columns) if columns.isdigit() and int(columns) > 0 else 160
    return Console(file=file, width=width, highlight=False)


def _emit(data: str | bytes, out: str | None) -> None:
    """Write a command's output to ``out`` (atomically), or to standard output for none or -."""
    from rescompile.files import write_output

    written = write_output(data, out)
    if written is not None:
        typer.echo(f"wrote {written}", err=True)


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
    output: OutOpt = None,
) -> None:
    """Output shapes, parameters, MACs, FLOPs and activations per stage, block or layer."""
    from rescompile.passes import report as rep

    _, g = _compile(spec, set_, input)
    d = depth.value
    if format is ReportFormat.table:
        if output in (None, "-"):
            rep.render_table(g, d, _console())
        else:
            console = _console(file=io.StringIO())
            rep.render_table(g, d, console)
            _emit(console.file.getvalue(), output)
        return
    render = {
        "json": rep.to_json,
        "csv": rep.to_csv,
        "markdown": rep.to_markdown,
        "html": rep.to_html,
    }
    _emit(render[format.value](g, d) + ("\n" if format is ReportFormat.json else ""), output)


@app.command()
def diff(
    spec_a: Annotated[str, typer.Argument(metavar="SPEC_A")],
    spec_b: Annotated[str, typer.Argument(metavar="SPEC_B")],
    set_: SetOpt = None,
    depth: Annotated[Depth, typer.Option("--depth", "-d")] = Depth.stage,
) -> None:
    """Two specs' figures side by side, with the differences."""
    from rescompile.passes.report import render_diff

    _, a = _compile(spec_a, set_)
    _, b = _compile(spec_b, set_)
    title = f"{a.name} ({spec_a})  vs  {b.name} ({spec_b})"
    render_diff(a, b, depth.value, title, _console())


@app.command()
def check(
    spec: Annotated[str | None, typer.Argument(metavar="SPEC", help="spec to audit")] = None,
    all_: Annotated[bool, typer.Option("--all", help="audit every spec in the library")] = False,
    set_: SetOpt = None,
) -> None:
    """Audit computed figures against the published row the spec names."""
    from rescompile import library
    from rescompile.passes.audit import FAIL, audit

    if all_ == (spec is not None):
        raise UserError("give either SPEC or --all")
    if all_:
        specs = library.names()
        if not specs:
            raise UserError(f"no specs in the library ({library.root()}): a broken installation")
    else:
        specs = [spec]
    failed = audited = 0
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
        audited += 1
    if all_ and not audited:
        raise UserError(f"none of the {len(specs)} library specs names a paper row to audit")
    if failed:
        typer.echo(f"{failed} figure(s) FAIL", err=True)
        raise typer.Exit(1)


@app.command("specs")
def specs_() -> None:
    """List the spec library: every name any command (and ``extends:``) accepts as a spec."""
    from rescompile import library

    for path in library.paths():
        lines = path.read_text(encoding="utf-8").splitlines()
        about = next(
            (x[1:].strip() for x in lines if x.startswith("#") and "yaml-language-server" not in x),
            "",
        )
        typer.echo(f"{library.name_of(path):34s} {about}".rstrip())


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
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            "-b",
            help="torch | flax (or a registered one)",
            autocompletion=_backend_names,
        ),
    ] = "torch",
    output: OutOpt = None,
    check_: Annotated[
        bool, typer.Option("--check", help="build, run and compare with the IR")
    ] = False,
) -> None:
    """Emit a standalone model source file for a backend."""
    _, g = _compile(spec, set_)
    if check_:
        _check_fits_in_memory(g)
    mod = load_backend(backend)
    from rescompile.ir.features import require_backend_support

    require_backend_support(g, mod, backend)
    source = mod.emit(g)
    _emit(source, output)
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


MAX_CHECK_BYTES = 16 << 30  # build --check runs the model on a CPU: keep it to what one has


def _check_fits_in_memory(g) -> None:
    """Refuse ``build --check`` of a model whose run would need absurd memory, before trying."""
    t = g.totals
    # float32 weights, gradients and one optimiser-free copy; a batch of 2 kept for backward
    need = 4 * (3 * t["params"] + t["buffers"]) + 2 * 3 * t["act_bytes"]
    if need > MAX_CHECK_BYTES:
        raise UserError(
            f"--check would run {g.name} ({t['params']:,} parameters, {t['act_bytes']:,} bytes "
            f"of activations per image): about {need / 2**30:,.1f} GiB, more than the "
            f"{MAX_CHECK_BYTES / 2**30:.0f} GiB it allows; build without --check"
        )


class ExportFormat(StrEnum):
    onnx = "onnx"


@app.command()
def export(
    spec: Annotated[
        str,
        typer.Argument(
            metavar="RUN|SPEC",
            help="a run directory (its latest checkpoint's weights), a checkpoint "
            "(.safetensors), or a spec (random weights unless --checkpoint)",
        ),
    ],
    set_: SetOpt = None,
    checkpoint: Annotated[
        str | None,
        _opt("the checkpoint whose weights to export (default: the run's latest)", "--checkpoint"),
    ] = None,
    format: Annotated[ExportFormat, typer.Option("--format", "-f")] = ExportFormat.onnx,
    opset: Annotated[int, _opt("ONNX opset version", "--opset")] = 18,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="default: NAME.onnx", metavar="FILE")
    ] = None,
    ema: EmaOpt = False,
) -> None:
    """Export the PyTorch model with a run's trained weights to ONNX, checked with onnx.checker
    and against PyTorch with onnxruntime."""
    from rescompile.files import atomic_output

    tensors, where, g = _weights_to_export(spec, set_, checkpoint, ema)
    if not 7 <= opset <= 99:
        raise UserError(f"--opset is an ONNX opset version from 7 to 99, got {opset}")
    out = output if output is not None else f"{g.name}.{format.value}"
    if out == "-":
        raise UserError("ONNX is binary and checked on disk: give -o FILE")
    from rescompile.ir.features import require_backend_support

    with atomic_output(out, parents=True) as tmp:  # checked before the (slow) export starts
        torch = load_backend("torch")
        require_backend_support(g, torch, "torch")
        try:
            from rescompile.backends.torch.weights import export_checked

            diff, _ = export_checked(g, torch.emit(g), tmp, tensors=tensors, opset=opset)
        except ImportError as e:
            raise UserError(f"export needs {e.name}: install rescompile[torch]") from None
        except ValueError as e:
            raise UserError(f"the export of {g.name} is wrong: {e}") from None
    if tensors is None:
        typer.echo(
            f"warning: {spec} is a spec and no --checkpoint was given: the weights are "
            "randomly initialised (seed 0)",
            err=True,
        )
    typer.echo(
        f"wrote {out} ({where}; onnxruntime agrees with PyTorch within {diff:.1e})", err=True
    )


def _weights_to_export(
    spec: str, overrides: list[str] | None, checkpoint: str | None, ema: bool = False
):
    """``(model tensors or None, what they are in words, graph)`` for ``export``; ``ema``: the
    checkpoint's weight average."""
    from rescompile.harness.checkpoint import CheckpointError, load_checkpoint
    from rescompile.harness.evaluate import find_checkpoint, rebuild

    target = Path(spec)
    if target.is_dir() or target.suffix == ".safetensors":
        if overrides:
            raise UserError(f"{spec} is a run: its spec is fixed (drop --set)")
        ckpt, _ = find_checkpoint(checkpoint or spec)
        tensors, meta = load_checkpoint(ckpt)
        _, g = rebuild(meta, str(ckpt.with_suffix(".json")))
    else:
        resolved, g = _compile(spec, overrides)
        if checkpoint is None:
            if ema:
                raise UserError(f"--ema exports a run's weight average, and {spec} is a spec")
            return None, "random weights, seed 0", g
        ckpt, _ = find_checkpoint(checkpoint)
        tensors, meta = load_checkpoint(ckpt)
        if meta.get("spec_hash") != resolved.hash:
            raise CheckpointError(
                f"{ckpt} was written for spec hash {meta.get('spec_hash')}, but {spec} hashes "
                f"to {resolved.hash}; export the run itself (rescompile export RUN)"
            )
    step = (meta.get("state") or {}).get("step")
    if ema:
        from rescompile.harness.ema import averaged_weights

        return (
            averaged_weights(tensors, str(ckpt)),
            f"weight average of {ckpt.name}, step {step}",
            g,
        )
    return tensors, f"weights of {ckpt.name}, step {step}", g


@app.command()
def weights(
    run: Annotated[
        str,
        typer.Argument(
            metavar="RUN|CHECKPOINT",
            help="a run directory (its latest checkpoint) or a ckpt-NNNNNN.safetensors file",
        ),
    ],
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="default: NAME.safetensors", metavar="FILE"),
    ] = None,
    ema: EmaOpt = False,
) -> None:
    """Write a checkpoint's model tensors alone: a plain state_dict for the run's model.py.

    The file is safetensors, keyed like the emitted PyTorch model's state_dict() (optimizer
    state dropped), so `model.load_state_dict(safetensors.torch.load_file(FILE))` loads it
    strictly; rescompile.backends.flax.convert loads it into the Flax model.
    """
    from safetensors.numpy import save

    from rescompile.harness.checkpoint import load_checkpoint, split_optimizer
    from rescompile.harness.evaluate import find_checkpoint, rebuild

    ckpt, _ = find_checkpoint(run)
    tensors, meta = load_checkpoint(ckpt)
    _, g = rebuild(meta, str(ckpt.with_suffix(".json")))
    if ema:
        from rescompile.harness.ema import averaged_weights

        model = averaged_weights(tensors, str(ckpt))
    else:
        model, _ = split_optimizer(tensors)
    step = (meta.get("state") or {}).get("step")
    metadata = {"spec": g.name, "spec_hash": str(meta.get("spec_hash")), "step": str(step)}
    metadata["weights"] = "ema" if ema else "model"
    out = output if output is not None else f"{g.name}.safetensors"
    if out == "-":
        raise UserError("safetensors is binary: give -o FILE")
    from rescompile.files import write_file

    written = write_file(out, save(model, metadata=metadata), parents=True)
    typer.echo(
        f"wrote {written} ({len(model)} model tensors of {ckpt.name}, step {step}"
        f"{', the weight average' if ema else ''})",
        err=True,
    )


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
    output: OutOpt = None,
) -> None:
    """Draw the architecture: shapes on the edges, params and MACs per stage, block or layer.

    SVG and PNG need Graphviz's `dot`; without it they fail (exit 1) and --format dot still works.
    """
    from rescompile.passes import graphviz

    _, g = _compile(spec, set_)
    dot = graphviz.to_dot(g, depth.value)
    if format is GraphFormat.png and output is None:
        raise UserError("PNG is binary: give -o FILE (or use --format svg or dot)")
    if output not in (None, "-"):
        from rescompile.files import check_target

        check_target(output, stdout_hint=True)  # before running dot
    try:
        data = graphviz.render(dot, format.value)
    except graphviz.GraphvizMissing as e:
        raise UserError(f"{e} (--format dot writes it)") from None
    _emit(data if format is GraphFormat.png else data.decode(), output)


@app.command()
def schema(
    output: OutOpt = None,
    docs: Annotated[
        bool, typer.Option("--docs", help="the Markdown reference instead of the JSON Schema")
    ] = False,
    install: Annotated[
        bool,
        typer.Option(
            "--install",
            help="write the schema to your data directory (or -o FILE) and print the modeline "
            "that points editors at it from any folder",
        ),
    ] = False,
) -> None:
    """Print the JSON Schema of the spec language (or, with --docs, its reference).

    The committed copies are specs/schema.json and docs/spec-language.md. A spec's first line
    `# yaml-language-server: $schema=../schema.json` works inside specs/; for a spec kept
    anywhere else, `rescompile schema --install` prints a modeline with an absolute path.
    """
    from rescompile.spec.schema import reference_markdown, schema_text

    if install:
        if docs or output == "-":
            raise UserError("--install writes the JSON Schema to a file: drop --docs and -o -")
        target = Path(output) if output else _data_dir() / "schema.json"
        from rescompile.files import write_file

        written = write_file(target, schema_text(), parents=True, stdout_hint=True)
        typer.echo(f"wrote {written}", err=True)
        typer.echo(f"# yaml-language-server: $schema={written.resolve().as_uri()}")
        return
    _emit(reference_markdown() if docs else schema_text(), output)


def _data_dir() -> Path:
    """Where ``schema --install`` puts the schema: $XDG_DATA_HOME/rescompile (or ~/.local/share)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "rescompile"


def _opt(help_: str, *names: str, **kw):
    return typer.Option(*names, help=help_, **kw)


@app.command()
def train(
    spec: Annotated[
        str | None, typer.Argument(metavar="SPEC", help="spec to train (omit with --resume)")
    ] = None,
    set_: SetOpt = None,
    backend: Annotated[
        str | None,
        _opt("torch | flax (default torch)", "--backend", "-b", autocompletion=_backend_names),
    ] = None,
    data: Annotated[
        str | None,
        _opt(
            "digits | synthetic[:HxWxC[:CLASSES]] | cifar10:PATH | cifar100:PATH | "
            "imagefolder:PATH | webdataset:PATTERN",
            "--data",
        ),
    ] = None,
    recipe: Annotated[
        str | None,
        _opt(
            "a recipe file (YAML) or a library recipe: paper-cifar | paper-imagenet | fast "
            "| torchvision-resnet50",
            "--recipe",
        ),
    ] = None,
    epochs: Annotated[float | None, _opt("run length in epochs", "--epochs")] = None,
    steps: Annotated[
        int | None, _opt("run length in steps (with --resume: extend the run)", "--steps")
    ] = None,
    batch_size: Annotated[int | None, _opt("global batch size", "--batch-size")] = None,
    lr: Annotated[float | None, _opt("base learning rate", "--lr")] = None,
    momentum: Annotated[float | None, _opt("SGD momentum (the recipe's)", "--momentum")] = None,
    nesterov: Annotated[
        bool | None, _opt("Nesterov momentum (the recipe's)", "--nesterov/--no-nesterov")
    ] = None,
    weight_decay: Annotated[
        float | None, _opt("L2 weight decay (the recipe's)", "--weight-decay")
    ] = None,
    norm_weight_decay: Annotated[
        float | None,
        _opt(
            "weight decay of BatchNorm scale and shift (default: --weight-decay)",
            "--norm-weight-decay",
        ),
    ] = None,
    label_smoothing: Annotated[
        float | None, _opt("label smoothing (the recipe's)", "--label-smoothing")
    ] = None,
    sync_bn: Annotated[
        bool | None,
        _opt(
            "torchrun: BatchNorm statistics of the global batch (default on)",
            "--sync-bn/--no-sync-bn",
        ),
    ] = None,
    clip_grad_norm: Annotated[
        float | None, _opt("clip the gradients' global L2 norm", "--clip-grad-norm")
    ] = None,
    seed: Annotated[int | None, _opt("seed of init, order, augmentation", "--seed")] = None,
    out: Annotated[str | None, _opt("run directory (default runs/NAME-BACKEND)", "--out")] = None,
    resume: Annotated[str | None, _opt("continue the run in this directory", "--resume")] = None,
    reschedule: Annotated[
        bool,
        _opt(
            "with --resume RUN --steps N: plan the schedule afresh over N steps "
            "(needed to extend a cosine or one-cycle run)",
            "--reschedule",
        ),
    ] = False,
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
    init_from: Annotated[
        str | None,
        _opt(
            "start from these weights: a run or checkpoint, a .safetensors or .pth state_dict "
            "(another num_classes re-initialises the classifier)",
            "--init-from",
        ),
    ] = None,
    tensorboard: Annotated[
        bool | None,
        _opt("also write TensorBoard event files to RUN/tensorboard", "--tensorboard"),
    ] = None,
    quiet: Annotated[bool, _opt("no progress output", "--quiet", "-q")] = False,
    coordinator: Annotated[
        str | None,
        _opt(
            "multi-host flax: process 0's HOST:PORT (default $JAX_COORDINATOR_ADDRESS), or "
            "auto (SLURM, Open MPI, Cloud TPU)",
            "--coordinator",
        ),
    ] = None,
    num_processes: Annotated[
        int | None, _opt("multi-host flax: number of processes (hosts)", "--num-processes")
    ] = None,
    process_id: Annotated[
        int | None, _opt("multi-host flax: this process, 0 to N-1", "--process-id")
    ] = None,
) -> None:
    """Train a spec with a backend; writes a run directory (metrics, checkpoints, curves)."""
    from rescompile.harness import distributed
    from rescompile.harness.config import TrainConfig
    from rescompile.harness.loop import train as train_run

    options = {  # TrainConfig field -> the value given (None: not given)
        "backend": backend,
        "data": data,
        "recipe": recipe,
        "batch_size": batch_size,
        "lr": lr,
        "momentum": momentum,
        "nesterov": nesterov,
        "weight_decay": weight_decay,
        "norm_weight_decay": norm_weight_decay,
        "label_smoothing": label_smoothing,
        "clip_grad_norm": clip_grad_norm,
        "sync_bn": sync_bn,
        "seed": seed,
        "out": out,
        "eval_every": eval_every,
        "ckpt_every": ckpt_every,
        "log_every": log_every,
        "keep": keep,
        "precision": precision,
        "compile": compile_,
        "channels_last": channels_last,
        "device": device,
        "augment": augment,
        "warmup": warmup,
        "init_from": init_from,
        "tensorboard": tensorboard,
    }
    given = {name: value for name, value in options.items() if value is not None}
    if resume:  # --resume RUN [--steps N | --epochs N [--reschedule]]: the run's own settings
        if spec is not None or set_ or given:
            flags = ["SPEC"] * (spec is not None) + ["--set"] * bool(set_)
            flags += ["--" + name.replace("_", "-") for name in given]
            raise UserError(
                f"--resume continues a run with its saved configuration; drop "
                f"{', '.join(flags)} (see {Path(resume) / 'config.json'})"
            )
        config = None
    elif reschedule:
        raise UserError("--reschedule re-plans a resumed run: use it with --resume RUN --steps N")
    elif spec is None:
        raise UserError("give a SPEC to train, or --resume RUN_DIR")
    elif not data:
        raise UserError(
            "give the data to train on: --data digits | synthetic[:HxWxC[:CLASSES]] "
            "| cifar10:PATH | cifar100:PATH | imagefolder:PATH | webdataset:PATTERN"
        )
    else:
        config = TrainConfig(
            spec=spec, overrides=list(set_ or []), steps=steps, epochs=epochs, quiet=quiet, **given
        )
    if (coordinator, num_processes, process_id) != (None, None, None):
        if backend != "flax" and not (backend is None and resume):
            raise UserError(
                "--coordinator, --num-processes and --process-id start a multi-host flax run: "
                "add --backend flax (the torch backend runs on several hosts under torchrun)"
            )
        distributed.initialize(coordinator, num_processes, process_id)
    try:
        if config is None:
            train_run(resume=resume, quiet=quiet, steps=steps, epochs=epochs, reschedule=reschedule)
        else:
            train_run(config)
    except BaseException as exc:  # multi-host: exit at once, a lost peer in one line
        error = distributed.failed(exc)
        if error is exc:
            raise
        raise error from None


class EvalFormat(StrEnum):
    table = "table"
    json = "json"


@app.command("eval")
def eval_(
    target: Annotated[
        str,
        typer.Argument(
            metavar="RUN|CHECKPOINT",
            help="a run directory (its latest checkpoint) or a ckpt-NNNNNN.safetensors file",
        ),
    ],
    data: Annotated[
        str | None, _opt("data with the run's classes (default: the run's)", "--data")
    ] = None,
    split: Annotated[str, _opt("test | train", "--split")] = "test",
    backend: Annotated[
        str | None,
        _opt("torch | flax (default: the run's)", "--backend", "-b", autocompletion=_backend_names),
    ] = None,
    batch_size: Annotated[int | None, _opt("evaluation batch size", "--batch-size")] = None,
    device: Annotated[str | None, _opt("cpu | cuda | gpu", "--device")] = None,
    precision: Annotated[
        str | None, _opt("fp32 | bf16 (default: the run's)", "--precision")
    ] = None,
    format: Annotated[EvalFormat, typer.Option("--format", "-f")] = EvalFormat.table,
    output: OutOpt = None,
    ema: EmaOpt = False,
) -> None:
    """Evaluate a checkpoint: loss, top-1 and top-5 error and images/s, with either backend."""
    import json

    from rescompile.harness.evaluate import evaluate, render_table

    result = evaluate(
        target,
        data=data,
        backend=backend,
        split=split,
        batch_size=batch_size,
        device=device,
        precision=precision,
        ema=ema,
    )
    if format is EvalFormat.json:
        _emit(json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n", output)
    else:
        _emit(render_table(result) + "\n", output)


@app.command("pack-shards")
def pack_shards(
    folder: Annotated[
        str, typer.Argument(metavar="FOLDER", help="image folder: train/<class>/*, val/<class>/*")
    ],
    output: Annotated[str, typer.Option("--output", "-o", help="directory for the shards")],
    per_shard: Annotated[int, _opt("examples per shard", "--per-shard")] = 1000,
) -> None:
    """Pack an image folder into tar shards (webdataset layout) for --data webdataset:PATTERN."""
    from rescompile.harness.shards import pack_shards as pack

    train_pattern, val_pattern = pack(folder, output, per_shard)
    index = Path(output) / "train.json"
    typer.echo(f"wrote {train_pattern}, {val_pattern} and their indexes", err=True)
    typer.echo(f"train with --data webdataset:{train_pattern}")
    typer.echo(f"or, read front to back (shards on an object store), --data webdataset:{index}")


@app.command("index-shards")
def index_shards(
    pattern: Annotated[
        str,
        typer.Argument(
            metavar="PATTERN",
            help="the shards: files, http(s) URLs or pipe: commands, brace patterns included",
        ),
    ],
    output: Annotated[str, typer.Option("--output", "-o", help="the index to write (.json)")],
) -> None:
    """Write the index (counts and labels) that --data webdataset:INDEX.json needs to read
    shards front to back, reading each shard once. Name it train.json; the validation
    shards' index is val.json beside it."""
    from rescompile.files import check_target
    from rescompile.harness.shards import index_shards as index

    if not output.lower().endswith(".json"):
        raise UserError(f"an index is a .json file: -o {output}.json?")
    check_target(output)
    count = index(pattern, output)
    typer.echo(f"wrote {output} ({count:,} examples)", err=True)


@app.command()
def plot(
    runs: Annotated[list[str], typer.Argument(metavar="RUN...", help="run directories")],
    output: Annotated[str, typer.Option("--output", "-o", help="image to write")] = "curves.png",
    label: Annotated[list[str] | None, _opt("legend label per run (repeatable)", "--label")] = None,
    title: Annotated[str | None, _opt("figure title", "--title")] = None,
) -> None:
    """Overlay training (dashed) and test (solid) error of runs, as in the paper's Figure 6."""
    from rescompile.files import check_target
    from rescompile.harness.metrics import metrics_path
    from rescompile.harness.plots import image_format, plot_curves

    if output == "-":
        raise UserError("a plot is an image file: give -o FILE.png, FILE.svg or FILE.pdf")
    check_target(output)
    try:
        image_format(output)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    for run in runs:
        if not metrics_path(run).is_file():
            raise UserError(f"{run} is not a run directory (no {metrics_path(run).name})")
    if label and len(label) != len(runs):
        raise UserError(f"{len(label)} --label for {len(runs)} runs; give one per run")
    try:
        written = plot_curves(list(runs), output, labels=label or None, title=title)
    except ValueError as exc:
        raise UserError(f"cannot plot: {exc}") from None
    typer.echo(f"wrote {written}", err=True)


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
    except OSError as e:  # a disk that filled up, a file-size limit, ... mid-way through a command
        where = f"{one_line(str(e.filename))}: " if e.filename else ""
        typer.echo(f"error: {where}{e.strerror or e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
