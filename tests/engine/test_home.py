"""The state directory: created on first use; every way it can be unusable is one StateDirError naming it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from engine.errors import StateDirError
from engine.home import prepare_home, resolve_home
from tests.conftest import ROOT


def test_a_missing_state_dir_is_created_with_its_parents(tmp_path):
    home = prepare_home(tmp_path / "a" / "b" / "home")
    assert home.root == tmp_path / "a" / "b" / "home"
    assert home.logs.is_dir() and home.outputs.is_dir()


def test_an_existing_home_is_reused(tmp_path):
    first = prepare_home(tmp_path / "home")
    (first.logs / "keep").write_text("x")
    second = prepare_home(tmp_path / "home")
    assert (second.logs / "keep").read_text() == "x"


def test_a_home_that_must_exist_but_does_not_is_an_error(tmp_path):
    with pytest.raises(StateDirError, match=f"state directory {tmp_path / 'nope'} does not exist"):
        prepare_home(tmp_path / "nope", create=False)
    assert not (tmp_path / "nope").exists()


def test_a_file_in_place_of_the_state_dir_is_an_error(tmp_path):
    (tmp_path / "home").write_text("not a folder")
    with pytest.raises(StateDirError, match=f"state directory {tmp_path / 'home'} is a file, not a directory"):
        prepare_home(tmp_path / "home")


def test_the_home_comes_from_the_argument_then_the_environment_then_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("STEPLINE_HOME", str(tmp_path / "env"))
    assert resolve_home(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_home(None) == tmp_path / "env"
    monkeypatch.delenv("STEPLINE_HOME")
    monkeypatch.chdir(tmp_path)
    assert resolve_home(None) == tmp_path / ".stepline"


def without_dac_override(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a Python that honours file permissions even as root.

    Tests run as root, and root writes into a chmod 555 folder: the condition only exists for a process
    without CAP_DAC_OVERRIDE, so the code runs under setpriv with that capability dropped.
    """
    command = [sys.executable, "-c", textwrap.dedent(code)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv is missing: a read-only folder cannot be made unwritable")
        command = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps=-all", "--"] + command
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    if "Operation not permitted" in result.stderr and "setpriv" in result.stderr:
        pytest.skip(f"this container cannot drop capabilities: {result.stderr.strip()}")
    return result


OPEN_HOME = """
    import sys
    from engine.errors import StateDirError
    from engine.home import prepare_home
    from engine import store
    try:
        store.open_database(prepare_home(sys.argv[1] if len(sys.argv) > 1 else {path!r}))
    except StateDirError as error:
        print(error)
        sys.exit(3)
    print("opened")
"""


def test_a_read_only_state_dir_is_a_clear_error(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o555)
    tmp_path.chmod(0o755)
    result = without_dac_override(OPEN_HOME.format(path=str(home)))
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert f"state directory {home} is read-only" in result.stdout
    assert "Traceback" not in result.stderr


def test_a_state_dir_that_cannot_be_created_is_a_clear_error(tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    result = without_dac_override(OPEN_HOME.format(path=str(parent / "home")))
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert f"cannot create state directory {parent / 'home'}: Permission denied" in result.stdout


def test_a_read_only_database_file_is_a_clear_error(tmp_path):
    from engine import store
    home = prepare_home(tmp_path / "home")
    store.open_database(home)
    store.db.close()
    for leftover in (home.root / "stepline.db-wal", home.root / "stepline.db-shm"):
        leftover.unlink(missing_ok=True)
    home.database.chmod(0o444)
    result = without_dac_override(OPEN_HOME.format(path=str(home.root)))
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert f"cannot write the database {home.database}" in result.stdout
    assert "Traceback" not in result.stderr


def test_root_may_use_a_chmod_555_state_dir_because_it_really_can_write_there(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("only root writes through chmod 555")
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o555)
    opened = prepare_home(home)
    assert opened.logs.is_dir()
