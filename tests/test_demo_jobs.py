"""``nrnn demo --jobs N``: seeds trained in worker processes give the numbers of one process, and a signal stops
the workers with the parent, leaving the previous output folder untouched."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import cli_env, nrnn

pytestmark = pytest.mark.slow


def _children(pid: int) -> set[int]:
    """Process ids whose parent is ``pid`` (from ``/proc``; the field after the parenthesised command name)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_worker_processes_give_the_numbers_of_one_process(tmp_path):
    common = ("demo", "--quick", "--seeds", "3", "--epochs", "2", "--overwrite")
    serial = nrnn(*common, "--jobs", "1", "--out", str(tmp_path / "serial"), timeout=240)
    assert serial.returncode == 0, serial.stderr
    parallel = nrnn(*common, "--jobs", "2", "--out", str(tmp_path / "parallel"), timeout=240)
    assert parallel.returncode == 0, parallel.stderr
    # the parallel path ran: two worker processes, one progress line per seed (not per epoch)
    assert "in 2 process(es)" in parallel.stderr and "in 1 process(es)" in serial.stderr
    assert "epoch 2/2" in serial.stderr and "epoch 2/2" not in parallel.stderr
    assert all(f"seed {s}: both models trained" in parallel.stderr for s in range(3))
    first = (tmp_path / "serial" / "demo_results.csv").read_bytes()
    assert first == (tmp_path / "parallel" / "demo_results.csv").read_bytes()
    # the printed tables agree too, apart from the training time line
    strip = [line for line in serial.stdout.splitlines() if not line.startswith("training time")]
    assert strip == [line for line in parallel.stdout.splitlines() if not line.startswith("training time")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker processes from /proc")
def test_sigterm_stops_the_workers_and_leaves_the_previous_output(tmp_path):
    target = tmp_path / "demo"
    target.mkdir()
    (target / "demo_results.csv").write_text("previous run\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "nrnn_plugin", "demo", "--quick", "--seeds", "4", "--epochs", "500"]
        + ["--jobs", "2", "--out", str(target), "--overwrite"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        deadline, workers = time.monotonic() + 120, set()
        while time.monotonic() < deadline and len(workers) < 2:
            time.sleep(0.5)
            workers = {pid for pid in _children(process.pid) if _alive(pid)}
            # the spawn machinery starts a resource tracker too: workers are the ones running the pool
            workers = {pid for pid in workers if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()}
        assert len(workers) >= 2, f"the workers did not start: {workers}"
        time.sleep(5)  # the workers are training (500 epochs per seed: far from done)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr
    assert "nrnn demo: stopped by SIGTERM; outputs left as they were" in stderr
    assert "Traceback" not in stderr and stdout == ""
    assert (target / "demo_results.csv").read_text() == "previous run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # the staging folder is gone
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers), "a worker outlived the stopped demo"
