"""The workdir lock: one run per workdir, a killed holder's lock taken over, nothing written by
a refused run; and the command line's one-line user errors."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

import jaxdd
from configs import smoke
from jaxdd import workdir

REPO = pathlib.Path(__file__).resolve().parents[1]
_HOLD = (
    "import pathlib, sys, time\n"
    "from jaxdd import workdir\n"
    "with workdir.lock(pathlib.Path(sys.argv[1])):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(600)\n"
)


@pytest.fixture
def holder(tmp_path):
    """A live process holding tmp_path's lock; killed (SIGKILL) at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_holder_is_refused_naming_the_first(tmp_path, holder):
    with pytest.raises(workdir.WorkdirInUse, match=rf"in use by process {holder.pid} on "):
        with workdir.lock(tmp_path):
            pass
    recorded = json.loads((tmp_path / workdir.LOCK_NAME).read_text())
    assert recorded["pid"] == holder.pid  # The refused attempt left the holder's record alone.


def test_a_killed_holders_lock_is_taken_over(tmp_path, holder, caplog):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with caplog.at_level("WARNING"), workdir.lock(tmp_path):
        recorded = json.loads((tmp_path / workdir.LOCK_NAME).read_text())
        assert recorded["pid"] == os.getpid()
    assert f"took over the lock of workdir {tmp_path} from process {holder.pid}" in caplog.text


def test_a_finished_run_releases_the_lock_quietly(tmp_path, caplog):
    with workdir.lock(tmp_path):
        with pytest.raises(workdir.WorkdirInUse):  # Not even this process may enter twice.
            with workdir.lock(tmp_path):
                pass
    assert (tmp_path / workdir.LOCK_NAME).read_text() == ""
    with caplog.at_level("WARNING"), workdir.lock(tmp_path):
        pass
    assert "took over" not in caplog.text


def test_distill_on_a_workdir_in_use_is_refused_before_writing(tmp_path, holder):
    with pytest.raises(workdir.WorkdirInUse, match=str(holder.pid)):
        jaxdd.distill(smoke.get_config(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [workdir.LOCK_NAME]


def _cli(*args, cwd):
    cmd = [sys.executable, "-m", "jaxdd.main", f"--config={REPO / 'configs' / 'smoke.py'}", *args]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config.robust.alpha=1.5"], "config.robust.alpha=1.5 is invalid"),
        (["--config.robust.alpah=0.5"], "the config has no field 'alpah' (did you mean 'alpha'?)"),
        (["--config.data.name=npz:missing.npz"], "missing.npz"),
        (["--config=nothing.py"], "config file 'nothing.py' does not exist"),
    ],
)
def test_cli_prints_a_user_error_as_one_line(tmp_path, args, message):
    proc = _cli(*args, f"--workdir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert message in proc.stderr
    assert not (tmp_path / "run").exists()  # Nothing written.


def test_cli_on_a_workdir_in_use(tmp_path, holder):
    proc = _cli(f"--workdir={tmp_path}", cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: workdir {tmp_path} is in use by process {holder.pid} ")
    assert proc.stderr.endswith("pass another --workdir.\n") and proc.stderr.count("\n") == 1
