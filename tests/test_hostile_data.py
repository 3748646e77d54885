"""Hostile pass over indexing and datasets: each test fails on the code before its fix.

metadata_parallel.py (the six layouts), make_demo_data.py, FER_transform.py as a script and
FERDataset's handling of damaged rows. Quick: demo data of a few dozen images, scripts run in-process.
"""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import make_demo_data
from conftest import ROOT, run_here
from test_trust import one_error_line


def index(root, out, *flags):
    return run_here("metadata_parallel.py", "--root", root, "--out_dir", out, "--quiet", "--workers", 1, *flags)


@pytest.mark.parametrize("script", ["metadata_parallel.py", "make_demo_data.py"])
def test_ctrl_c_during_the_imports_is_one_line(script):
    """A Ctrl-C while pandas loads (the first second of every run) ended in a traceback: these
    scripts imported pandas before FER_io, whose hook makes an interrupt one line."""
    code = ("import builtins, runpy, sys\n"
            "real = builtins.__import__\n"
            "def hook(name, *a, **k):\n"
            "    if name == 'pandas':\n"
            "        raise KeyboardInterrupt\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = hook\n"
            f"sys.argv = [{script!r}, '--help']\n"
            f"runpy.run_path({str(ROOT / script)!r}, run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr and r.stderr.strip() == "interrupted", r.stderr
