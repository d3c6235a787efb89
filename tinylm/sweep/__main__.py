from tinylm.sweep.cli import run_script

run_script()
