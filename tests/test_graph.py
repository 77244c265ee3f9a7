"""Pictures: `rescompile graph` (DOT, SVG, PNG, with and without Graphviz) and the HTML report."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest
from clirun import run_cli
from spec_cases import LIBRARY_SPECS, ROOT, spec_id

from rescompile.compiler import compile_spec
from rescompile.passes import graphviz
from rescompile.passes.report import rows, to_html

R50 = str(ROOT / "specs" / "torchvision" / "resnet50.yaml")
C20 = str(ROOT / "specs" / "paper" / "cifar-resnet20.yaml")
HAVE_DOT = shutil.which("dot") is not None

_NODE = re.compile(r'^\s*(n\d+) \[label="((?:[^"\\]|\\.)*)"', re.M)
_EDGE = re.compile(r'^\s*(n\d+) -> (n\d+) \[label="([^"]*)"\];$', re.M)


def _labels(dot: str) -> dict[str, list[str]]:
    return {nid: label.split("\\n") for nid, label in _NODE.findall(dot)}


def _figure(lines: list[str], what: str) -> int:
    for line in lines:
        if line.startswith(what + " "):
            return int(line.split()[1].replace(",", ""))
    return 0


@pytest.fixture(scope="module")
def r50():
    return compile_spec(R50)[1]


@pytest.mark.parametrize("depth", ["stage", "block", "layer"])
def test_one_box_per_row_and_figures_add_up(r50, depth):
    dot = graphviz.to_dot(r50, depth)
    labels = _labels(dot)
    expected = [r.name for r in rows(r50, depth)]
    names = [lines[0] for lines in labels.values()]
    assert names == ["input", *expected]
    params = sum(_figure(lines, "params") for lines in labels.values())
    macs = sum(_figure(lines, "MACs") for lines in labels.values())
    assert (
        (params, macs) == (r50.totals["params"], r50.totals["macs"]) == (25_557_032, 4_089_184_256)
    )


def test_edges_carry_shapes(r50):
    edges = _EDGE.findall(graphviz.to_dot(r50, "stage"))
    assert [shape for _, _, shape in edges] == [
        "3x224x224",
        "64x56x56",
        "256x56x56",
        "512x28x28",
        "1024x14x14",
        "2048x7x7",
    ]
    block_edges = _EDGE.findall(graphviz.to_dot(r50, "block"))
    assert len(block_edges) == 1 + 16 + 1  # input->stem, into each block, last block->head
    layer = graphviz.to_dot(r50, "layer")
    ids = {lines[0]: nid for nid, lines in _labels(layer).items()}
    edges = {(u, v): s for u, v, s in _EDGE.findall(layer)}
    # the projection shortcut of layer2.0 reads the 256x56x56 output of layer1.2
    assert edges[(ids["layer1.2.relu3"], ids["layer2.0.downsample.0"])] == "256x56x56"
    assert edges[(ids["layer2.0.downsample.1"], ids["layer2.0.add"])] == "512x28x28"


def test_dot_is_deterministic_and_labels_are_escaped(r50):
    assert graphviz.to_dot(r50, "block") == graphviz.to_dot(compile_spec(R50)[1], "block")
    assert graphviz._q('a"b\\c\nd') == 'a\\"b\\\\c d'


@pytest.mark.parametrize("path", LIBRARY_SPECS, ids=spec_id)
def test_every_spec_draws_at_block_depth(path):
    _, g = compile_spec(path)
    dot = graphviz.to_dot(g, "block")
    assert dot.startswith(f'digraph "{g.name}" {{') and dot.endswith("}\n")
    assert dot.count("{") == dot.count("}")
    assert len(_labels(dot)) == len(rows(g, "block")) + 1


def test_graph_dot_to_stdout():
    r = run_cli("graph", C20, "--format", "dot", "--depth", "stage")
    assert r.code == 0 and r.stderr == ""
    assert r.stdout.startswith('digraph "cifar-resnet20"') and "16x32x32" in r.stdout


def test_graph_without_graphviz_fails_and_writes_nothing(monkeypatch, tmp_path):
    """Asked for SVG or PNG without Graphviz, graph exits 1 and writes no stand-in file."""
    monkeypatch.setattr(graphviz.shutil, "which", lambda name: None)
    r = run_cli("graph", C20, "--format", "svg")
    assert r.code == 1 and r.stdout == ""
    assert r.stderr.startswith("error: Graphviz's `dot` is not installed")
    assert r.stderr.endswith("(--format dot writes it)\n") and len(r.stderr_lines()) == 1
    out = tmp_path / "net.png"
    r = run_cli("graph", C20, "--format", "png", "-o", str(out))
    assert r.code == 1 and "no png can be drawn" in r.stderr
    assert list(tmp_path.iterdir()) == []
    r = run_cli("graph", C20, "--format", "dot", "-o", str(tmp_path / "net.dot"))
    assert r.code == 0 and (tmp_path / "net.dot").read_text().startswith("digraph")


def test_png_needs_an_output_file():
    r = run_cli("graph", C20, "--format", "png")
    assert r.code == 1 and r.stderr.startswith("error: PNG is binary")


def test_graph_of_a_bad_spec_is_a_diagnostic(write_spec):
    bad = write_spec("name: x\n")
    r = run_cli("graph", str(bad), "--format", "dot")
    assert r.code == 1 and "missing required field 'input'" in r.stderr
    r.assert_clean()


@pytest.mark.skipif(not HAVE_DOT, reason="Graphviz's dot is not installed")
def test_svg_and_png_through_graphviz(tmp_path):
    r = run_cli("graph", C20, "--format", "svg", "--depth", "layer")
    assert r.code == 0, r.stderr
    root = ET.fromstring(r.stdout[r.stdout.index("<svg") :])
    assert root.tag.endswith("svg")
    assert "layer3.2.conv2" in r.stdout and "64x8x8" in r.stdout
    out = tmp_path / "r50.png"
    r = run_cli("graph", R50, "--format", "png", "-o", str(out))
    assert r.code == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r50.png"]


@pytest.mark.skipif(not HAVE_DOT, reason="Graphviz's dot is not installed")
def test_graphviz_failure_is_a_user_error(monkeypatch):
    with pytest.raises(graphviz.UserError, match="Graphviz's dot failed"):
        graphviz.render("digraph { this is not dot", "svg")


# -- HTML report --------------------------------------------------------------------------------


class _Checker(HTMLParser):
    VOID = {"meta", "br", "img", "link", "input", "hr", "rect"}

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, (self.stack[-3:], tag)
        self.stack.pop()


def test_html_report_is_self_contained_and_well_formed(r50):
    page = to_html(r50, "block")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    checker = _Checker()
    checker.feed(page)
    assert checker.stack == []
    tags = [t for t, _ in checker.tags]
    assert (
        "script" not in tags and "link" not in tags and "img" not in tags and "iframe" not in tags
    )
    assert re.findall(r"https?://[^\s\"']+", page) == ["http://www.w3.org/2000/svg"] * 2
    # two bar charts, one bar per stage each, the widest bar is the largest stage
    assert tags.count("svg") == 2
    bars = [a for t, a in checker.tags if t == "rect"]
    assert len(bars) == 2 * 6
    params = [float(a["width"]) for a in bars[:6]]
    assert max(params) == params[4] == 300.0  # layer4 holds most parameters
    for svg in re.findall(r"<svg.*?</svg>", page, re.S):
        ET.fromstring(svg)
    # the table: one row per block plus stem and head, then the totals
    assert page.count("<tr>") == 1 + 18 + 1
    assert "25,557,032" in page and "4,089,184,256" in page


def test_html_escapes_everything(r50, monkeypatch):
    monkeypatch.setattr(r50, "name", "<script>alert(1)</script>")
    page = to_html(r50, "stage")
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_report_html_command():
    r = run_cli("report", C20, "--format", "html", "--depth", "stage")
    assert r.code == 0 and r.stderr == ""
    assert "<h1>cifar-resnet20: 3x32x32 input</h1>" in r.stdout
    assert "layer3 (conv4_x)" in r.stdout
    r = run_cli("report", C20, "--format", "markdown")  # markdown stays
    assert r.code == 0 and r.stdout.startswith("# cifar-resnet20")
