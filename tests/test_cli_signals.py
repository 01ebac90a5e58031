"""SIGTERM and Ctrl-C end `edgecap run` wherever they land in its main loop.

The loop polls its stop flag with ``stop.wait(0.005)``. The handler `edgecap run` installed called
``threading.Event.set()``, which takes the lock ``Event.wait()`` holds for a few bytecodes around each wait; a signal
handled there (Python runs handlers on the main thread, between bytecodes) deadlocked the main thread on its own
lock. The process then ignored SIGTERM for good while its reader went on logging "drops" (seen once in CI, in
test_rtsp.py's kill-and-restart test). Here the signal is delivered at every line the main thread executes inside
``stop.wait()``, one line per wait, so every such window is hit on every run: no timing, no luck.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from edgecap.cli.signals import SignalStop

# `edgecap run` in-process with its real signal handlers; the model and the runtime are stand-ins whose run() is the
# probe (no model, no source is opened: the camera URL is only checked for its form).
PROBE = r"""
import os, signal, sys

import edgecap.captioner
import edgecap.runtime
from edgecap.cli import main

SIG = getattr(signal, sys.argv[2])


class NoModel:
    def __init__(self, *args, **kwargs):
        pass


class Stats:
    per_camera = {}
    scenes = batches = max_batch_seen = 0


class ProbeRuntime:
    def __init__(self, *args, **kwargs):
        self.stats = Stats()

    @staticmethod
    def check(backend, cameras):  # Runtime's checks before the log exists: nothing to check without a model
        pass

    def run(self, stop):
        k = 0
        while True:  # wait number k gets the signal at the k-th line it executes, until a wait has fewer lines
            k += 1
            seen = [0]

            def line(frame, event, arg):
                if event == "line":
                    seen[0] += 1
                    if seen[0] == k:
                        os.kill(os.getpid(), SIG)  # handled on this thread right here, at this line of wait()
                return line

            sys.settrace(lambda frame, event, arg: line)
            try:
                stop.wait(0.001)
            finally:
                sys.settrace(None)
            if seen[0] < k:
                break
        print(f"signalled at {k - 1} lines of stop.wait(); stopped: {stop.is_set()}", flush=True)
        return 0


edgecap.captioner.Captioner = NoModel
edgecap.runtime.Runtime = ProbeRuntime
sys.exit(main(["run", "rtsp://127.0.0.1:9/cam", "--db", sys.argv[1]]))
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_at_any_line_of_the_main_loops_wait_stops_edgecap_run(tmp_path, sig):
    proc = subprocess.Popen([sys.executable, "-c", PROBE, str(tmp_path / "ev.sqlite"), sig], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        out, err = proc.communicate(timeout=60)  # a guard against the deadlock, not a speed check
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"edgecap run deadlocked in its {sig} handler (the main thread waits for a lock it holds)")
    assert proc.returncode == 0, err[-2000:]
    assert "stopped: True" in out, (out, err[-2000:])
    assert int(out.split("signalled at ")[1].split()[0]) >= 2  # the probe did reach into wait()


def test_signal_stop_set_takes_no_lock_and_wait_returns_the_flag():
    stop = SignalStop(poll_s=0.001)
    assert not stop.is_set() and stop.wait(0) is False and stop.wait(0.002) is False
    stop.set()
    assert stop.is_set() and stop.wait() is True and stop.wait(0) is True


def test_stop_on_signals_sets_the_flag_from_a_real_signal():
    from edgecap.cli.signals import stop_on_signals

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop = stop_on_signals()
        signal.raise_signal(signal.SIGTERM)
        assert stop.is_set()
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
