"""Every key of the console with its description, for the bindings, the help screen and the palette."""
from __future__ import annotations

MAIN_KEYS: list[tuple[str, str, str]] = [
    # (key, action, description)
    ("r", "retry", "Retry failed steps, or run a step and those after it again"),
    ("R", "rerun_job", "Re-run job now"),
    ("c", "cancel_run", "Cancel run"),
    ("t", "trigger", "Trigger with params"),
    # One key, two actions: the footer then says which one p does for the selected job.
    ("p", "pause_schedule", "Pause schedule"),
    ("p", "resume_schedule", "Resume schedule"),
    ("f", "cycle_filter", "Filter all/failed/running"),
    ("slash", "search_tree", "Search tree"),
    ("n", "search_next", "Next match"),
    ("N", "search_previous", "Previous match"),
    ("l", "focus_log", "Focus log"),
    ("T", "timeline", "Timeline of run"),
    ("D", "graph", "Dependency graph"),
    ("question_mark", "help", "Help"),
    ("q", "quit_console", "Quit"),
]

FOOTER_LABELS: dict[str, str] = {
    # Short footer labels, in the order the footer shows them: at 80 columns the first ones stay visible.
    "retry": "Retry", "cancel_run": "Cancel", "rerun_job": "Run", "focus_log": "Log",
    "help": "Help", "quit_console": "Quit", "trigger": "Trigger", "pause_schedule": "Pause",
    "resume_schedule": "Resume", "timeline": "Timeline",
    "graph": "Graph", "cycle_filter": "Filter", "search_tree": "Search",
}
"""The footer's label of each action (the palette and help keep the long descriptions)."""

HELP_SECTIONS: list[tuple[str, list[tuple[str, str]]]] = [
    ("Tree (left)", [
        ("↑ ↓ / PgUp PgDn", "move; the details and log follow the selection"),
        ("enter / space", "expand or collapse a job or run; on “more runs” load the next page"),
        ("← →", "collapse, or go to the parent / expand, or go to the first child"),
        ("shift+↑↓", "previous / next sibling"),
        ("/  n  N", "search the loaded jobs and runs, and their steps; next / previous match"),
        ("/#12", "go to run 12, however old (its job's runs load down to it)"),
        ("f", "filter runs: all → failed → running"),
        ("tab  escape", "tree → details → log (shift+tab: back); escape: tree"),
    ]),
    ("Actions", [
        ("r", "retry the selected step and the steps after it, or a run's failed steps"),
        ("R", "re-run the selected job now with its default params"),
        ("t", "trigger the selected job with a params prompt"),
        ("c", "cancel the selected run (asks first)"),
        ("p", "pause or resume the selected job's schedule"),
        ("T", "timeline of the selected run"),
        ("D", "dependency graph of the selected run's job"),
    ]),
    ("Log (l to focus)", [
        ("/  n  N", "search the loaded lines; next / previous match"),
        ("g  G", "top / bottom (G follows again)"),
        ("F", "follow the end on/off; scrolling up stops following, G or end follows again"),
        ("w", "wrap long lines on/off"),
        ("e", "jump to the first error line"),
        ("a", "pick another attempt"),
        ("z", "zoom: the log on the whole screen on/off"),
        ("escape", "back to the tree (from a zoomed log: back to the pane)"),
    ]),
    ("Console", [
        ("?", "this help (escape closes)"),
        ("ctrl+p", "command palette: every action by name"),
        ("q  ctrl+c", "quit (in `stepline up`, asks first when runs are active)"),
    ]),
]
