"""The job's dependency graph drawn in text, each step marked with its state in one run.

Steps are layered left to right by longest path from the plan's upstream lists, ordered
within a layer to keep lines short, and joined by box-drawing connectors; an edge that
skips layers runs as a line through the layers in between. When the connectors would
turn into a thicket (many sources in one gap, many long edges), the graph falls back to
one line per step listing its upstream steps, which is less pretty but never misleads.
Rendering is a pure function of the RunView; the widget only scrolls the result.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import ScrollableContainer
from textual.widgets import Static

from engine.plan import JobPlan
from engine.query import AttemptView, RunView, StepView
from engine.states import COLORS, GLYPHS, drawn_state
from tui.live_run import LiveRunScreen
from tui.widgets.footer import KeyFooter

LEGEND = (("✓", "succeeded"), ("✗", "failed"), ("●", "running"), ("◷", "waiting"), ("↻", "waiting to retry"),
          ("⊘", "cancelled or upstream failed"), ("–", "pending or skipped"))

MAX_LABEL = 24
"""Longest step label (glyph and name) in a layer column; longer names lose their middle."""
MAX_TRACKS = 12
"""More sources than this in one gap between layers and the connectors stop being readable."""
MAX_CROSSINGS = 4
"""More lines crossing lines they do not join than this and the graph is drawn as a list instead."""
MAX_PASS_THROUGH = 60
"""More layer-skipping line segments than this and the drawing becomes mostly lines."""


def step_drawn_state(step: StepView | None) -> str:
    """How a step of the graph is drawn (engine.states.drawn_state); a step the run lacks is pending."""
    return "pending" if step is None else drawn_state(step.state, step.waiting_for)


def shorten(name: str, width: int) -> str:
    """Cut the middle out of a long name: "load_warehouse_a" -> "load_wa…house_a".

    Step names in one job often share a prefix and differ at the end, so both ends stay.
    """
    if len(name) <= width:
        return name
    if width <= 1:
        return name[:width]
    head = width // 2
    tail = width - 1 - head
    return name[:head] + "…" + (name[-tail:] if tail else "")


def layers(plan: JobPlan) -> list[list[str]]:
    """Steps grouped by longest path from a root, in plan (DAG) order within each layer."""
    depth: dict[str, int] = {}
    for step_plan in plan.steps:  # DAG order: every upstream step is already placed.
        depth[step_plan.name] = 1 + max((depth[u] for u in step_plan.upstream if u in depth), default=-1)
    result: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for step_plan in plan.steps:
        result[depth[step_plan.name]].append(step_plan.name)
    return result


@dataclass(frozen=True, slots=True)
class _Node:
    key: str
    """The step name, or "name>target#layer" for a line passing through a layer."""
    step: str | None
    """None for a pass-through line."""


def _ordered_layers(plan: JobPlan) -> tuple[list[list[_Node]], list[tuple[str, str]]]:
    """Layers with pass-through nodes for long edges, ordered by the barycentre of their upstream."""
    grouped = layers(plan)
    depth = {name: i for i, layer in enumerate(grouped) for name in layer}
    rows: list[list[_Node]] = [[_Node(name, name) for name in layer] for layer in grouped]
    edges: list[tuple[str, str]] = []
    for step_plan in plan.steps:
        for upstream in step_plan.upstream:
            if upstream not in depth:
                continue
            previous = upstream
            for layer in range(depth[upstream] + 1, depth[step_plan.name]):
                key = f"{upstream}>{step_plan.name}#{layer}"
                rows[layer].append(_Node(key, None))
                edges.append((previous, key))
                previous = key
            edges.append((previous, step_plan.name))
    incoming: dict[str, list[str]] = {}
    outgoing: dict[str, list[str]] = {}
    for source, target in edges:
        incoming.setdefault(target, []).append(source)
        outgoing.setdefault(source, []).append(target)

    def by_neighbours(layer: list[_Node], neighbours: list[_Node], links: dict[str, list[str]]) -> None:
        position = {node.key: j for j, node in enumerate(neighbours)}
        def barycentre(node: _Node) -> float:
            found = [position[k] for k in links.get(node.key, ()) if k in position]
            return sum(found) / len(found) if found else float("inf")
        layer.sort(key=barycentre)  # stable: ties keep plan order

    # The usual barycentre sweeps: down, up, down again; enough for job-sized graphs.
    for i in range(1, len(rows)):
        by_neighbours(rows[i], rows[i - 1], incoming)
    for i in range(len(rows) - 2, -1, -1):
        by_neighbours(rows[i], rows[i + 1], outgoing)
    for i in range(1, len(rows)):
        by_neighbours(rows[i], rows[i - 1], incoming)
    return rows, edges


# Direction bits of a connector cell, combined into the box-drawing character that joins them.
_UP, _DOWN, _LEFT, _RIGHT = 1, 2, 4, 8
_BOX = {
    _LEFT | _RIGHT: "─", _LEFT: "─", _RIGHT: "─", _UP | _DOWN: "│", _UP: "│", _DOWN: "│",
    _DOWN | _RIGHT: "┌", _DOWN | _LEFT: "┐", _UP | _RIGHT: "└", _UP | _LEFT: "┘",
    _UP | _DOWN | _RIGHT: "├", _UP | _DOWN | _LEFT: "┤", _DOWN | _LEFT | _RIGHT: "┬",
    _UP | _LEFT | _RIGHT: "┴", _UP | _DOWN | _LEFT | _RIGHT: "┼",
}


def _label(name: str, step: StepView | None) -> Text:
    state = step_drawn_state(step)
    style = COLORS.get(state, "")
    text = Text(GLYPHS.get(state, "?"), style=style)
    text.append(" ")
    text.append(shorten(name, MAX_LABEL - 2), style=style)
    return text


def render_graph(run: RunView) -> Text:
    """The whole graph as one block of text (wider and taller than the screen if need be)."""
    steps = {s.name: s for s in run.steps}
    rows, edges = _ordered_layers(run.plan)
    if not rows:
        return Text("this job has no steps", style="italic")
    # Rows: nodes two lines apart, each layer centred on the tallest one.
    height = 2 * max(len(layer) for layer in rows) - 1
    row_of: dict[str, int] = {}
    for layer in rows:
        top = height // 2 - (len(layer) - 1)
        for j, node in enumerate(layer):
            row_of[node.key] = top + 2 * j
    labels = {node.key: _label(node.step, steps.get(node.step)) for layer in rows for node in layer
              if node.step is not None}

    # Each gap between layers gets vertical tracks: one per source that fans out, one per
    # target that fans in, so fan-outs and fan-ins draw as a single bracket.
    out_degree: dict[str, int] = {}
    in_degree: dict[str, int] = {}
    for source, target in edges:
        out_degree[source] = out_degree.get(source, 0) + 1
        in_degree[target] = in_degree.get(target, 0) + 1
    layer_of = {node.key: i for i, layer in enumerate(rows) for node in layer}
    gap_tracks: list[dict[tuple[str, str], list[tuple[str, str]]]] = [{} for _ in rows[:-1]]
    for source, target in edges:
        key = ("t", target) if out_degree[source] == 1 and in_degree[target] > 1 else ("s", source)
        gap_tracks[layer_of[source]].setdefault(key, []).append((source, target))
    pass_through = sum(1 for layer in rows for node in layer if node.step is None)
    if pass_through > MAX_PASS_THROUGH or max(map(len, gap_tracks), default=0) > MAX_TRACKS:
        return render_upstream_list(run)

    # Columns: a layer is as wide as its widest label, then a stub, the tracks, a stub, the arrow, a space.
    layer_x: list[int] = []
    track_x: list[dict[tuple[str, str], int]] = []
    x = 0
    for i, layer in enumerate(rows):
        layer_x.append(x)
        x += max((labels[n.key].cell_len if n.step else 1) for n in layer) + 2
        if i < len(rows) - 1:
            def middle(key: tuple[str, str], gap: int = i) -> float:
                members = gap_tracks[gap][key]
                return sum(row_of[s] + row_of[t] for s, t in members) / len(members)
            ordered = sorted(gap_tracks[i], key=middle)
            track_x.append({key: x + k for k, key in enumerate(ordered)})
            x += len(ordered) + 3
    total_width = x

    passing = {n.key for layer in rows for n in layer if n.step is None}
    cells = [[0] * total_width for _ in range(height)]
    arrows: set[tuple[int, int]] = set()
    # Which tracks' horizontal and vertical lines pass each cell, to count real crossings.
    across: dict[tuple[int, int], set[object]] = {}
    along: dict[tuple[int, int], set[object]] = {}
    owner: object = None

    def line(row: int, start: int, end: int) -> None:
        for col in range(start, end + 1):
            if col > start:
                cells[row][col] |= _LEFT
            if col < end:
                cells[row][col] |= _RIGHT
            if start < col < end:
                across.setdefault((row, col), set()).add(owner)

    for i, layer in enumerate(rows[:-1]):
        node_end = {n.key: layer_x[i] + (labels[n.key].cell_len + 1 if n.step else 0) for n in layer}
        target_x = layer_x[i + 1]
        for key, members in gap_tracks[i].items():
            track = track_x[i][key]
            owner = (i, key)
            for source, target in members:
                row, target_row = row_of[source], row_of[target]
                line(row, node_end[source], track)
                low, high = sorted((row, target_row))
                for r in range(low, high + 1):
                    if r > low:
                        cells[r][track] |= _UP
                    if r < high:
                        cells[r][track] |= _DOWN
                    if low < r < high:
                        along.setdefault((r, track), set()).add(owner)
                if target in passing:  # a line through a layer continues without an arrow
                    line(target_row, track, target_x)
                else:
                    line(target_row, track, target_x - 2)
                    arrows.add((target_row, target_x - 2))

    crossings = sum(1 for cell, vertical in along.items() if across.get(cell, set()) - vertical)
    if crossings > MAX_CROSSINGS:
        return render_upstream_list(run)

    text = Text(no_wrap=True, overflow="ignore")
    placed = {(row_of[key], layer_x[i]): labels[key] for i, layer in enumerate(rows)
              for key in (n.key for n in layer) if key in labels}
    for r in range(height):
        line_text = Text()
        col = 0
        while col < total_width:
            label = placed.get((r, col))
            if label is not None:
                line_text.append_text(label)
                col += label.cell_len
                continue
            if (r, col) in arrows:
                line_text.append("▶", style="bright_black")
            else:
                bits = cells[r][col]
                line_text.append(_BOX.get(bits, " "), style="bright_black" if bits else "")
            col += 1
        line_text.rstrip()
        text.append_text(line_text)
        if r < height - 1:
            text.append("\n")
    return text


def render_upstream_list(run: RunView) -> Text:
    """The fallback: layer by layer, one line per step with the steps it waits on."""
    steps = {s.name: s for s in run.steps}
    upstream = {s.name: s.upstream for s in run.plan.steps}
    text = Text(no_wrap=True, overflow="ignore")
    grouped = layers(run.plan)
    width = min(MAX_LABEL, max(len(n) for layer in grouped for n in layer) + 2)
    for i, layer in enumerate(grouped):
        if i:
            text.append("\n")
        text.append(f"layer {i + 1} · {len(layer)} step{'s' if len(layer) != 1 else ''}\n", style="bold")
        for name in layer:
            label = _label(name, steps.get(name))
            text.append("  ")
            text.append_text(label)
            if upstream[name]:
                text.append(" " * (width - label.cell_len + 2))
                text.append("← " + ", ".join(upstream[name]), style="bright_black")
            text.append("\n")
    text.rstrip()
    return text


def run_title(run: RunView) -> str:
    """"run 12 · nightly_sales · failed": the line every run screen starts with."""
    return f"run {run.id} · {run.run.job} · {run.state}"


def legend(entries: Iterable[tuple[str, str]], width: int = 78) -> Text:
    """Glyphs and their meanings, wrapped between entries (never inside one) to fit `width`."""
    text = Text(no_wrap=True, overflow="ellipsis")
    line_length = 0
    for mark, meaning in entries:
        entry_length = len(mark) + 1 + len(meaning)
        if line_length and line_length + 2 + entry_length > width:
            text.append("\n")
            line_length = 0
        elif line_length:
            text.append("  ")
            line_length += 2
        text.append(mark)
        text.append(f" {meaning}", style="bright_black")
        line_length += entry_length
    return text


class Legend(Static):
    """A legend line that re-wraps between entries when its width changes."""

    DEFAULT_CSS = "Legend { height: auto; padding: 0 1; }"

    def __init__(self, entries: tuple[tuple[str, str], ...], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.entries = entries

    def render(self) -> Text:
        return legend(self.entries, self.content_size.width or 78)

    def get_content_height(self, container, viewport, width: int) -> int:  # type: ignore[no-untyped-def]
        return len(legend(self.entries, width).plain.splitlines())


class DagGraph(ScrollableContainer):
    """The dependency graph of a run's job, scrollable both ways when it outgrows the screen."""

    DEFAULT_CSS = """
    DagGraph { height: 1fr; padding: 0 1; }
    DagGraph > Static { width: auto; height: auto; }
    """

    def __init__(self, run: RunView, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.run = run

    def compose(self) -> ComposeResult:
        yield Static(render_graph(self.run), id="graph-body")

    def show(self, run: RunView) -> None:
        self.run = run
        self.query_one("#graph-body", Static).update(render_graph(run))


class GraphScreen(LiveRunScreen):
    """`D`: the job's dependency graph, steps marked with their state in the selected run (kept up while it runs)."""

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("q", "close", "Close"),
    ]
    DEFAULT_CSS = """
    GraphScreen > #graph-title { height: 1; padding: 0 1; text-style: bold; }
    """

    def compose(self) -> ComposeResult:
        yield Static(run_title(self.run), id="graph-title", markup=False)
        yield DagGraph(self.run)
        yield Legend(LEGEND, id="graph-legend")
        yield KeyFooter()

    def on_mount(self) -> None:  # LiveRunScreen's runs too: Textual calls the handler of every class
        self.query_one(DagGraph).focus()

    def show_run(self, run: RunView, attempts: dict[str, list[AttemptView]]) -> None:
        self.query_one("#graph-title", Static).update(run_title(run))
        self.query_one(DagGraph).show(run)

    def action_close(self) -> None:
        self.dismiss(None)
