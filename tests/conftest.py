"""Shared fixtures, and CI's rule for skips.

Under CI (``CI=true``, as CI runs ``.ci/run``) a test skipped because a module is missing
(``pytest.importorskip``) fails instead: CI installs the ``dev`` and ``envs`` extras, so a missing
module there is a broken install that would otherwise drop whole test files silently. Skips that
say why the machine cannot run a test stay skips: MuJoCo rendering without EGL (no GPU or Mesa
driver) and the decode-attention kernel off x86 (AVX2) CPUs.
"""

import os

import pytest
import torch

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs for one test module (``pytestmark = pytest.mark.usefixtures("local_ray")``)."""
    import ray

    from chimera.envs.ray_vector import connect

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    connect("", num_cpus=2)
    yield
    ray.shutdown()


def _fail_missing_module(report) -> None:
    """In CI, turn a skip for a module that could not be imported into a failure that says so."""
    if IN_CI and report.skipped and "could not import" in str(report.longrepr):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"{reason}\nCI=true: CI installs the dev and envs extras (pip install -e '.[dev,envs]'), "
                           f"so a missing module is a broken install, not an optional part; this skip fails in CI")


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    _fail_missing_module(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    _fail_missing_module(report)
    return report
