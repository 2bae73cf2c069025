"""The CLI makes idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE) unless the user chose otherwise, and
sets it before torch is loaded, which is when libgomp reads it. The speed effect is measured by
benchmarks/cpu_threads.py, not asserted here."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pokediff import cli


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_cli_sets_a_passive_wait_policy_unless_one_is_given(monkeypatch, capsys, given, expected):
    if given is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", given)
    with pytest.raises(SystemExit):
        cli.main(["fid", "--help"])
    assert os.environ["OMP_WAIT_POLICY"] == expected


def test_torch_is_not_loaded_before_the_cli_sets_it():
    proc = subprocess.run([sys.executable, "-c", "import sys, pokediff.cli; assert 'torch' not in sys.modules"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
