"""The command line writing into a pipe whose reader is gone (``lit ... | head``)."""

import os
import subprocess
import sys


def test_a_closed_output_pipe_ends_the_command_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "lit", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    proc.stdout.close()  # the reader leaves before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err  # 128 + SIGPIPE, as the shell reports for Unix tools
    assert err == "", err  # no BrokenPipeError traceback, no "Exception ignored"
