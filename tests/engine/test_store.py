"""The database: WAL, migrations, corrupt or too-new files, and the command table as a bus."""
from __future__ import annotations

import threading

import pytest

from engine import query, store
from engine.errors import StateDirError
from engine.home import prepare_home


def test_a_new_home_gets_a_wal_database_at_the_current_schema(tmp_path):
    home = prepare_home(tmp_path / "home")
    database = store.open_database(home)
    assert home.database.is_file()
    assert database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert database.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.schema_version(database) == store.SCHEMA_VERSION


def test_migrate_is_idempotent_and_keeps_the_data(tmp_path):
    home = prepare_home(tmp_path / "home")
    database = store.open_database(home)
    command_id = store.add_command("cancel", run_id=1)
    store.migrate(database)
    store.migrate(database)
    database = store.open_database(home)
    assert store.schema_version(database) == store.SCHEMA_VERSION
    assert store.Meta.select().where(store.Meta.key == "schema_version").count() == 1
    assert query.command(command_id).kind == "cancel"


def test_a_version_1_database_gains_the_step_output_table(tmp_path):
    home = prepare_home(tmp_path / "home")
    database = store.open_database(home)
    database.execute_sql('DROP TABLE "step_output"')  # as stepline made it before small outputs were stored
    store.Meta.replace(key="schema_version", value="1").execute()
    command_id = store.add_command("cancel", run_id=1)
    database = store.open_database(home)
    assert store.schema_version(database) == 2 == store.SCHEMA_VERSION
    assert database.table_exists("step_output")
    assert query.command(command_id).kind == "cancel"


def test_a_corrupt_database_file_is_a_clear_error(tmp_path):
    home = prepare_home(tmp_path / "home")
    home.database.write_bytes(b"this is not SQLite at all\x00" * 400)
    with pytest.raises(StateDirError) as caught:
        store.open_database(home)
    assert f"{home.database} is not a usable stepline database" in str(caught.value)
    assert "move it aside" in str(caught.value)


def test_an_empty_database_file_becomes_a_new_database(tmp_path):
    home = prepare_home(tmp_path / "home")
    home.database.write_bytes(b"")
    database = store.open_database(home)
    assert store.schema_version(database) == store.SCHEMA_VERSION


def test_a_database_from_a_newer_stepline_is_refused(tmp_path):
    home = prepare_home(tmp_path / "home")
    store.open_database(home)
    store.Meta.replace(key="schema_version", value=str(store.SCHEMA_VERSION + 5)).execute()
    with pytest.raises(StateDirError) as caught:
        store.open_database(home)
    message = str(caught.value)
    assert str(home.database) in message
    assert f"schema version {store.SCHEMA_VERSION + 5}, newer than this stepline understands" in message
    assert "upgrade stepline" in message


def test_commands_are_pending_until_acknowledged(tmp_path):
    store.open_database(prepare_home(tmp_path / "home"))
    cancel = store.add_command("cancel", run_id=4, payload={"reason": "why not"})
    store.add_command("trigger", job="j")
    pending = store.pending_commands(run_ids=[4], kinds=["cancel"])
    assert [(c["id"], c["payload"]) for c in pending] == [(cancel, {"reason": "why not"})]
    store.ack_command(cancel, True, "run 4 cancelling")
    assert store.pending_commands(run_ids=[4]) == []
    assert query.command(cancel).state == "done"
    assert query.command(cancel).result == "run 4 cancelling"


def test_readers_in_other_threads_see_every_event_in_order(tmp_path):
    store.open_database(prepare_home(tmp_path / "home"))
    seen: list[int] = []
    done = threading.Event()

    def read() -> None:
        last = 0
        while not done.is_set() or last < query.last_event_id():
            for event in query.events_since(last, limit=50):
                seen.append(event.id)
                last = event.id

    reader = threading.Thread(target=read)
    reader.start()
    for _ in range(300):
        store.add_command("cancel", run_id=1)
    done.set()
    reader.join(30)
    assert seen == list(range(1, 301))


def test_a_write_put_off_in_a_batch_comes_before_the_next_write_and_rolls_back_with_the_batch(tmp_path):
    # The engine records a finished step with store.later() so the next step starts first; the event log
    # must still tell the changes in the order they happened, and a failed turn must lose all of them.
    store.open_database(prepare_home(tmp_path / "home"))
    run_id, _ = store.create_run("j", "manual", {}, "{}", ["a"], at=1.0)
    with store.batch():
        store.later(lambda: store.set_run_state(run_id, "running", 2.0))
        assert store.Run.get_by_id(run_id).state == "queued"  # not yet written
        store.set_run_state(run_id, "succeeded", 3.0, ended=True)
    assert [(e.kind, e.state) for e in query.events_since(0, run_id=run_id)][-2:] == [("run", "running"),
                                                                                        ("run", "succeeded")]
    with store.batch():
        store.later(lambda: store.set_run_state(run_id, "running", 4.0))
    assert store.Run.get_by_id(run_id).state == "running"  # written at the batch's end
    with pytest.raises(RuntimeError):
        with store.batch():
            store.later(lambda: store.set_run_state(run_id, "failed", 5.0, ended=True))
            raise RuntimeError("the turn failed")
    assert store.Run.get_by_id(run_id).state == "running"
    assert [e.state for e in query.events_since(0, run_id=run_id)][-1] == "running"


def test_a_new_database_in_a_home_with_earlier_runs_does_not_reuse_their_ids(harness):
    # The damaged-database advice is to move stepline.db aside: the logs and outputs stay, in folders named
    # by run id, and a new run 1 appended its log to the old run 1's file.
    harness.write_job("j.py", 'j = job("j", [shell("talk", "echo hello from $STEPLINE_RUN_ID")])\n')
    first = harness.run_now("j")
    second = harness.run_now("j")
    assert (first.id, second.id) == (1, 2)
    store.db.close()
    for path in harness.home.root.glob("stepline.db*"):
        path.rename(path.with_name(path.name + ".damaged"))
    store.open_database(harness.home)
    third = harness.run_now("j")
    assert third.id == 3
    [attempt] = query.attempts(third.id, "talk")
    assert open(attempt.log_path).read().count("hello from") == 1
    assert harness.run_now("j").id == 4
