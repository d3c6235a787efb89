"""The sweep's terminal view: our lines on the terminal, everything else in the log file (tinylm.tune.console.Console)."""

import subprocess
import sys

CODE = r"""
import logging, os, sys
from tinylm.tune.console import Console, say
with Console(sys.argv[1]):
    print("ray noise")                      # Python-level output of Ray / MLflow in the driver
    os.write(2, b"raw fd noise\n")          # C++ logs, output forwarded from trial processes
    logging.getLogger("ray.tune").info("ray info")
    logging.getLogger("ray.tune").error("Trial task failed for trial x\nTraceback ...")
    logging.getLogger("tinylm.tune").warning("resuming sweep tiny")
    say("[tiny] 0001 lr=0.003 | tokens 2,048/16,384 | val_loss 6.8 | running")
print("after")
"""


def test_our_lines_on_the_terminal_the_rest_in_the_log(tmp_path):
    log = tmp_path / "tiny" / "output.log"
    p = subprocess.run([sys.executable, "-c", CODE, str(log)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    term = p.stdout + p.stderr
    assert f"output: {log}" in term and "[tiny] 0001 lr=0.003" in term and "after" in term
    assert "error: Trial task failed for trial x" in term and "warning: resuming sweep tiny" in term
    assert "Traceback" not in term and "noise" not in term and "ray info" not in term
    text = log.read_text()
    assert "ray noise" in text and "raw fd noise" in text and "[tiny] 0001" in text and "resuming sweep" in text
