"""Progress output of fit and `gpudl train`: in a terminal one live bar per
epoch and no plain line after it; in a pipe, or with --quiet, one line per
epoch, printed as the epoch ends."""
import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios

import gpudl
from gpudl.cli import main

TRAIN = [sys.executable, "-m", "gpudl.cli", "train", "--device", "cpu", "--model", "mlp",
         "--epochs", "2", "--limit", "100", "--save", ""]


def _run_in_terminal(argv):
    """argv's output (stdout and stderr) on a 120-column pseudo-terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = dict(os.environ, COLUMNS="120")
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            proc.kill()
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 0
    return b"".join(chunks).decode(errors="replace")


def test_terminal_shows_bars_and_no_duplicate_lines():
    out = _run_in_terminal(TRAIN)
    for e in (1, 2):
        assert f"epoch {e}/2: 100%" in out, out[-2000:]        # the bar, finished
        assert f"epoch {e}/2: loss=" not in out, out[-2000:]   # no plain line after it


def test_a_pipe_gets_one_line_per_epoch_and_no_bar():
    proc = subprocess.run(TRAIN, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for e in (1, 2):
        assert proc.stdout.count(f"epoch {e}/2: loss=") == 1
    assert "100%" not in proc.stderr and "|" not in proc.stderr


def test_quiet_prints_each_epoch_as_it_ends(capsys, monkeypatch):
    """Between epochs the finished epoch's line is already out (it used to come
    all at once after training), and in a terminal --quiet draws no bar."""
    run_epoch, printed = gpudl.Trainer._run_epoch, []

    def spy(self, *a, **k):
        logs = run_epoch(self, *a, **k)
        printed.append(capsys.readouterr().out)
        return logs
    monkeypatch.setattr(gpudl.Trainer, "_run_epoch", spy)
    assert main(TRAIN[3:] + ["--quiet"]) == 0
    assert len(printed) == 2
    for e, out in enumerate(printed, 1):  # epoch 1's chunk also holds the run header
        assert out.splitlines()[-1].startswith(f"epoch {e}/2: loss="), printed
        assert out.count("epoch 1/2: loss=") == (e == 1) and f"epoch {e + 1}/" not in out
    assert "epoch" not in capsys.readouterr().out.replace("2 epochs", "")
    out = _run_in_terminal(TRAIN + ["--quiet"])
    assert "100%" not in out and out.count("epoch 1/2: loss=") == 1
