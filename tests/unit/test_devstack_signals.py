"""`make run`'s shutdown on signals (devstack/run.py): a second Ctrl-C while the first one's shutdown is printing must
not hang the process (it once waited forever for the output lock its own thread held, leaving every server up)."""

from __future__ import annotations

import signal
import threading

import pytest

from devstack import run


def test_a_second_signal_while_stopping_never_waits_for_the_output_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "_stopping", True)
    finished = threading.Event()

    def second_ctrl_c_while_printing() -> None:
        with run._output_lock:  # the main thread inside say(), as when the signal interrupts it
            run._on_signal(signal.SIGINT, None)
        finished.set()

    worker = threading.Thread(target=second_ctrl_c_while_printing, daemon=True)
    worker.start()
    assert finished.wait(5), "the signal handler waited for the output lock its own thread holds"


def test_the_first_signal_asks_for_a_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "_stopping", False)
    with pytest.raises(run.ShutdownRequested):
        run._on_signal(signal.SIGINT, None)
