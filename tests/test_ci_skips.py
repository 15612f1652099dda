"""tests/conftest.py: a missing module skips locally, fails under CI=true; a hardware skip stays a skip."""

import os
import subprocess
import sys
from pathlib import Path

PROBE = '''
import pytest

def test_needs_a_module():
    pytest.importorskip("no_such_module_chimera")

def test_needs_hardware():
    pytest.skip("no EGL rendering on this machine")
'''


def test_missing_module_skips_locally_and_fails_in_ci(tmp_path):
    (tmp_path / "conftest.py").write_text((Path(__file__).parent / "conftest.py").read_text())
    (tmp_path / "test_probe.py").write_text(PROBE)
    for ci, expect in (("", "2 skipped"), ("true", "1 failed, 1 skipped")):
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                              str(tmp_path)], env={**os.environ, "CI": ci}, capture_output=True, text=True,
                             cwd=tmp_path)
        assert expect in out.stdout, (ci, out.stdout[-1500:])
    assert "this skip fails in CI" in out.stdout
