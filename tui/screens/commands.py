# mypy: disable-error-code="misc"
# (the mixin's methods annotate `self: MainScreen`, which mypy cannot check on a mixin)
"""The keys that change things: retry, re-run, trigger, cancel, pause, quit, and the T/D views.

A mixin of MainScreen. Each action first asks `why_not(action)`: when the key does not
apply to the selection it says why (and the footer hides it). Otherwise it writes one
command through `store.add_command` in a worker, notifies at once, and notifies again with
the engine's answer when the command is acknowledged.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual import work
from textual.message import Message

from engine.errors import unscheduled
from engine.query import CommandView
from tui import data
from tui.widgets.run_tree import JobNode, RunNode, StepNode

if TYPE_CHECKING:
    from tui.screens.main import MainScreen

ALWAYS = {"cycle_filter", "search_tree", "focus_log", "help", "quit_console"}
ACTIVE = ("running", "queued")


class CommandActions:
    """Mixed into MainScreen; uses its `selected`, `jobs`, `status`, `counts` and panes."""

    class CommandWritten(Message):
        def __init__(self, command_id: int | None, text: str, error: str | None, same: str) -> None:
            super().__init__()
            self.command_id, self.text, self.error, self.same = command_id, text, error, same

    class TimelineLoaded(Message):
        def __init__(self, view: Any, attempts: dict[str, Any], graph: bool) -> None:
            super().__init__()
            self.view, self.attempts, self.graph = view, attempts, graph

    pending_commands: dict[int, tuple[str, str]]
    """Commands written and not answered yet: id -> (what was said, the command's identity)."""
    unanswered: set[str]
    """Identities of the commands sent and not answered yet (see send_command)."""

    # --- what the selection is --------------------------------------------------------------------------

    def _selection(self: MainScreen) -> tuple[str | None, Any, Any]:
        """(job name, run summary, step view) of the selection, each None when not selected.

        The node under the tree's cursor, not the last one announced: keys typed quickly, or arriving
        together over SSH, come before the tree's message that the cursor moved, and must act on the line
        the user sees highlighted.
        """
        cursor = self.run_tree.cursor_node
        node = cursor.data if cursor is not None and cursor.data is not None else self.selected
        if isinstance(node, JobNode):
            return node.name, None, None
        if isinstance(node, RunNode):
            return node.summary.job, node.summary, None
        if isinstance(node, StepNode):
            run_node = self.run_tree.runs.get(node.run_id)
            summary = run_node.data.summary if run_node is not None else None  # type: ignore[union-attr]
            step = node.step
            if self.selected_view is not None and self.selected_view.id == node.run_id:
                step = next((s for s in self.selected_view.steps if s.name == step.name), step)
            return node.job, summary, step
        return None, None, None

    def why_not(self: MainScreen, action: str) -> str | None:
        """Why `action` does not apply to the selection, or None when it does."""
        if action in ALWAYS:
            return None
        job, run, step = self._selection()
        if action in ("search_next", "search_previous"):
            return None if self.search_term else "no tree search yet: press / to search"
        if action == "retry":
            if run is None:
                return "select a failed run or step to retry (f shows only failed runs)"
            if run.state in ACTIVE and run.id in self.run_tree.abandoned:
                return f"run #{run.id} lost its engine; c closes it now (cancelled), then r retries it"
            if run.state in ACTIVE:
                return f"run #{run.id} is still {run.state}; retry works once it has ended (c cancels it)"
            if step is not None:
                return None  # a step that succeeded runs again too, once confirmed (action_retry)
            view = self.selected_view if self.selected_view and self.selected_view.id == run.id else None
            if view is not None and not any(s.state in ("failed", "upstream_failed", "cancelled") for s in view.steps):
                return (f"run #{run.id} {run.state}; it has no failed steps to retry (on one of its steps, r runs "
                        "that step and those after it again; R starts a new run)")
            if view is None and run.state == "succeeded":
                return (f"run #{run.id} succeeded; it has no failed steps to retry (on one of its steps, r runs that "
                        "step and those after it again; R starts a new run)")
            return None
        if action in ("rerun_job", "trigger", "pause_schedule", "resume_schedule"):
            if job is None:
                return "select a job (or one of its runs) first"
            if job not in self.jobs:
                if self.status is not None and self.status.state != "running":
                    # The job list comes from the engine, which loads the job files: without one it may
                    # simply never have been read.
                    return (f"no engine is running on this home to load job '{job}': start one "
                            "(`stepline daemon`, or quit and run `stepline up`)")
                return (f"job '{job}' is not loaded now: its file was removed, or has a problem (listed at the top "
                        "of the tree when it has)")
            if action in ("pause_schedule", "resume_schedule"):
                summary = self.jobs[job]
                if not summary.schedule and not summary.every:
                    return unscheduled(job)
                if action == "pause_schedule" and summary.paused:
                    return f"the schedule of '{job}' is paused already"
                if action == "resume_schedule" and not summary.paused:
                    return f"the schedule of '{job}' is not paused"
            return None
        if action == "cancel_run":
            if run is None:
                return "select a run to cancel"
            if run.state not in ACTIVE:
                return f"run #{run.id} already {run.state}; nothing to cancel"
            return None
        if action in ("timeline", "graph"):
            if run is None and not (action == "graph" and job is not None and self._last_run_of(job)):
                return "select a run first" if action == "timeline" else "select a job that has run, or a run"
            return None
        return None

    def _last_run_of(self: MainScreen, job: str) -> Any:
        node = self.run_tree.jobs.get(job)
        return node.data.last_run if node is not None else None  # type: ignore[union-attr]

    def check_action(self: MainScreen, action: str, parameters: tuple[object, ...]) -> bool | None:
        return self.why_not(action) is None

    def explain(self: MainScreen, action: str) -> None:
        reason = self.why_not(action)
        if reason:
            self.app.notify(reason, title="not applicable", severity="warning")

    # --- writing commands -----------------------------------------------------------------------------

    def send_command(self: MainScreen, text: str, kind: str, **fields: Any) -> None:
        """Write a command, unless the same one still waits for the engine's answer (a key pressed twice)."""
        same = repr((kind, sorted(fields.items())))
        if same in self.unanswered:
            self.app.notify(f"sent already, waiting for the engine's answer: {text}", severity="warning")
            return
        self.unanswered.add(same)
        self._write_command(text, kind, fields, same)

    @work(thread=True, group="commands")
    def _write_command(self: MainScreen, text: str, kind: str, fields: dict[str, Any], same: str) -> None:
        try:
            command_id = data.closing_connection(lambda: data.write_command(kind, **fields))
        except Exception as error:  # the database refused the write: say so, the console keeps going
            self.post_message(self.CommandWritten(None, text, str(error), same))
            return
        self.post_message(self.CommandWritten(command_id, text, None, same))

    def on_command_actions_command_written(self: MainScreen, message: CommandActions.CommandWritten) -> None:
        if message.error is not None or message.command_id is None:
            self.unanswered.discard(message.same)
            self.app.notify(f"could not write the command ({message.text}): {message.error}", severity="error")
            return
        self.pending_commands[message.command_id] = (message.text, message.same)
        note = ""
        if self.status is not None and self.status.state != "running":
            note = ("\nno engine is running on this home: it happens when one starts "
                    "(`stepline daemon` or `stepline up`)")
        self.app.notify(message.text + note, severity="warning" if note else "information")
        self.poll_now()

    def command_acked(self: MainScreen, command: CommandView) -> None:
        pending = self.pending_commands.pop(command.id, None)
        if pending is None:
            return
        text, same = pending
        self.unanswered.discard(same)
        if command.state == "done":
            self.app.notify(command.result or f"{command.kind} done", title="engine")
        else:
            self.app.notify(command.result or f"{command.kind} failed", title=f"{command.kind} refused",
                            severity="error")

    # --- actions --------------------------------------------------------------------------------------------

    def _guard(self: MainScreen, action: str) -> bool:
        reason = self.why_not(action)
        if reason:
            self.app.notify(reason, title="not applicable", severity="warning")
        return reason is None

    def action_retry(self: MainScreen) -> None:
        if not self._guard("retry"):
            return
        _, run, step = self._selection()
        if step is not None and step.state in ("succeeded", "skipped"):
            self._confirm_rerun_of_step(run, step)
        elif step is not None:
            self.send_command(f"retry requested for step '{step.name}' of run {run.id}", "retry",
                              run_id=run.id, step=step.name)
        else:
            self.send_command(f"retry requested for the failed and cancelled steps of run {run.id}", "retry",
                              run_id=run.id,
                              step=None)

    def _confirm_rerun_of_step(self: MainScreen, run: Any, step: Any) -> None:
        """Running a step that succeeded again repeats what it did (a load loads twice): ask first."""
        from tui.screens.confirm import ConfirmScreen

        view = self.selected_view if self.selected_view and self.selected_view.id == run.id else None
        after = view.plan.all_downstream(step.name) if view is not None else []
        named = ", ".join(after[:3]) + (f", … {len(after) - 3} more" if len(after) > 3 else "")
        also = f", and the {len(after)} step{'s' if len(after) != 1 else ''} after it ({named})" if after else ""

        def answered(yes: bool | None) -> None:
            if not yes:
                self.app.notify(f"step '{step.name}' of run {run.id} keeps its result")
            else:  # the engine refuses it if the run started again while the question was open
                self.send_command(f"retry requested for step '{step.name}' of run {run.id}", "retry",
                                  run_id=run.id, step=step.name)

        self.app.clear_notifications()  # a notice over the question would hide its keys
        self.app.push_screen(ConfirmScreen(
            f"run step '{step.name}' again",
            f"Step '{step.name}' of run #{run.id} {step.state}. Run it again{also}, with the job file's current "
            "code? Their new outputs replace the old ones; steps before it keep theirs.", yes="run again",
            no="leave it as it is"), answered)

    def action_rerun_job(self: MainScreen) -> None:
        if not self._guard("rerun_job"):
            return
        job, _, _ = self._selection()
        self.send_command(f"run of '{job}' requested (default params)", "trigger", job=job,
                          payload={"params": {}})

    def action_trigger(self: MainScreen) -> None:
        from tui.screens.trigger import TriggerScreen

        if not self._guard("trigger"):
            return
        job, _, _ = self._selection()
        assert job is not None

        def chosen(params: dict[str, str] | None) -> None:
            if params is None:
                self.app.notify("trigger cancelled: nothing was started")
                return
            shown = ", ".join(f"{k}={v}" for k, v in params.items()) or "no params"
            self.send_command(f"run of '{job}' requested ({shown})", "trigger", job=job,
                              payload={"params": params})

        self.app.push_screen(TriggerScreen(job, dict(self.jobs[job].plan.params)), chosen)

    def action_cancel_run(self: MainScreen) -> None:
        from tui.screens.confirm import ConfirmScreen

        if not self._guard("cancel_run"):
            return
        _, run, _ = self._selection()

        def answered(yes: bool | None) -> None:
            ended = self._ended(run.id)
            if yes and ended:  # while the question was open
                self.app.notify(f"run {run.id} already {ended}; nothing to cancel", severity="warning")
            elif yes and run.id in self.run_tree.abandoned:
                self._cancel_abandoned(run.id)
            elif yes:
                self.send_command(f"cancel requested for run {run.id}", "cancel", run_id=run.id,
                                  payload={"reason": "cancelled by user (console)"})
            else:
                self.app.notify(f"run {run.id} keeps running")

        self.app.clear_notifications()  # a notice over the question would hide its keys
        self.app.push_screen(ConfirmScreen(
            f"cancel run #{run.id}", f"Cancel run #{run.id} of {run.job}? Its running steps are killed and its "
            "steps that have not started are marked cancelled. Finished steps keep their results; r retries "
            "the cancelled steps later.", yes="cancel the run", no="keep it running"), answered)

    def _ended(self: MainScreen, run_id: int) -> str | None:
        """The state of the run if the tree knows it has ended, else None."""
        node = self.run_tree.runs.get(run_id)
        state = node.data.summary.state if node is not None and isinstance(node.data, RunNode) else None
        return state if state is not None and state not in ACTIVE else None

    @work(thread=True, group="commands")
    def _cancel_abandoned(self: MainScreen, run_id: int) -> None:
        """Cancel a run whose engine is gone here and now, as `stepline cancel` does: no engine would act on
        a command, and the next one to start would close the run as failed rather than cancelled."""
        from engine.recovery import cancel_if_abandoned

        try:
            done = data.closing_connection(
                lambda: cancel_if_abandoned(run_id, "cancelled by user (console; its engine had stopped)"))
        except Exception as error:  # the database refused the write: say so, the console keeps going
            self.app.call_from_thread(self.app.notify, f"could not cancel run {run_id}: {error}", severity="error")
            return
        if not done:  # its engine is back (or was never gone): it takes the command
            self.app.call_from_thread(self.send_command, f"cancel requested for run {run_id}", "cancel",
                                      run_id=run_id, payload={"reason": "cancelled by user (console)"})
            return
        self.app.call_from_thread(self.app.notify, f"run {run_id} cancelled (the engine that ran it had stopped; "
                                  "leftover step processes ended)")
        self.app.call_from_thread(self.poll_now)

    def action_pause_schedule(self: MainScreen) -> None:
        if self._guard("pause_schedule"):
            job, _, _ = self._selection()
            self.send_command(f"pause requested for the schedule of '{job}' (running runs go on)", "pause", job=job)

    def action_resume_schedule(self: MainScreen) -> None:
        if self._guard("resume_schedule"):
            job, _, _ = self._selection()
            self.send_command(f"resume requested for the schedule of '{job}'", "resume", job=job)

    def action_quit_console(self: MainScreen) -> None:
        from tui.screens.confirm import ConfirmScreen

        active = self.counts.get("running", 0) + self.counts.get("queued", 0)
        if self.app_mode != "embedded" or not active:
            self.quit()
            return
        grace = self.app.stop_grace_s  # type: ignore[attr-defined]
        grace_text = f"{grace:g} s (--grace)" if grace is not None else "(--grace, 10 s by default)"
        question = (f"{active} run{'s are' if active != 1 else ' is'} active. Quitting stops the embedded engine: "
                    f"running steps get the grace period {grace_text} to finish, then they are "
                    "cancelled and their runs end as cancelled (r retries them later). Schedules do not fire "
                    "until stepline starts again.\n\nTo keep runs going without a console, use "
                    "`stepline daemon` and `stepline tui`.")

        def answered(yes: bool | None) -> None:
            if yes:
                self.quit()

        self.app.clear_notifications()  # a notice over the question would hide its keys
        self.app.push_screen(ConfirmScreen("quit stepline up?", question, yes="quit"), answered)

    # --- timeline and graph (screens by another module) ------------------------------------------------------

    def action_timeline(self: MainScreen) -> None:
        self._open_view(graph=False)

    def action_graph(self: MainScreen) -> None:
        self._open_view(graph=True)

    def _open_view(self: MainScreen, graph: bool) -> None:
        if not self._guard("graph" if graph else "timeline"):
            return
        job, run, _ = self._selection()
        if run is None and job is None:
            return
        run_id = run.id if run is not None else self._last_run_of(job).id  # type: ignore[arg-type]
        self.app.notify(f"loading the {'dependency graph' if graph else 'timeline'} of run {run_id}…", timeout=2)
        self._load_view(run_id, graph)

    @work(thread=True, exclusive=True, group="view")
    def _load_view(self: MainScreen, run_id: int, graph: bool) -> None:
        view, attempts = data.closing_connection(lambda: data.load_timeline(run_id))
        self.post_message(self.TimelineLoaded(view, attempts, graph))

    def on_command_actions_timeline_loaded(self: MainScreen, message: CommandActions.TimelineLoaded) -> None:
        self.app.clear_notifications()  # "loading the timeline…" is done; it would cover the legend
        try:
            if message.graph:
                from tui.widgets.dag_graph import GraphScreen
                self.app.push_screen(GraphScreen(message.view))
            else:
                from tui.widgets.timeline import TimelineScreen
                self.app.push_screen(TimelineScreen(message.view, message.attempts, self.now()))
        except ImportError as error:
            self.app.notify(f"this view is not available in this build ({error})", severity="error")
