"""Attention of a few query rows over a long KV cache: the decode step's attention, on CPU.

``attend(q, k, v, mask)`` is ``F.scaled_dot_product_attention`` for these shapes. On an x86 CPU with
AVX2 it runs the C++ kernel in ``csrc/decode_attention.cpp`` (registered as
``torch.ops.chimera.decode_attention``, so compiled graphs call it too), which reads each key and
value once per step; bench/decode_attention.py measures it against SDPA, and
tests/test_decode_attention.py holds the two equal to float rounding. The kernel is built with
``torch.utils.cpp_extension`` on first use (ninja and a C++ compiler; about 20 s, then cached under
``~/.cache/torch_extensions``). The first build runs in a child process under a time limit
(``CHIMERA_DECODE_KERNEL_BUILD_TIMEOUT`` seconds, default 300), so a build that stalls (a compiler
that hangs, or the lock file of a build that was killed, which torch would wait on forever) costs
that much once and never hangs the caller; a lock older than the limit is removed. Where the kernel
cannot be built, one warning says why and SDPA is used. ``CHIMERA_DECODE_KERNEL=0`` turns it off.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

SOURCE = Path(__file__).with_name("csrc") / "decode_attention.cpp"
HEAD_DIMS = (32, 64, 128, 256)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # of q, k and v alike; the arithmetic is float32
MAX_ROWS = 128
"""Query rows per (batch, KV head) up to which the kernel is used: the query heads of a group times
the tokens of a decode step, a speculative block or a static prefill chunk. Wider prompt chunks
are matrix products that SDPA's GEMMs do better."""

_built: dict[str, bool] = {}


def build() -> bool:
    """Build and load the kernel once per process; whether it is available. Call it before
    ``torch.compile`` traces a graph that attends (``chimera.inference.compiled.Compiled`` does)."""
    if "ok" not in _built:
        _built["ok"] = _load()
    return _built["ok"]


NAME = "chimera_decode_attention"
CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]
LDFLAGS = ["-fopenmp"]  # at::parallel_for is OpenMP; libgomp.so.1 is torch's, already loaded


def _load() -> bool:
    if os.environ.get("CHIMERA_DECODE_KERNEL", "1") == "0":
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False  # the kernel is written for AVX2; elsewhere SDPA is the path, not a fault
    try:
        problem = _build_once()
        if problem is None:
            _compile_and_load()
            torch.library.register_fake("chimera::decode_attention")(_shape)
    except Exception as e:  # any build failure means: use SDPA, and say why
        problem = str(e)
    if problem is not None:
        warnings.warn(f"chimera: the C++ decode-attention kernel could not be built ({problem[-400:]}); "
                      "decoding uses torch's scaled_dot_product_attention instead (slower on long contexts). "
                      "It needs ninja (pip install ninja), a C++ compiler and a CPU with AVX2, FMA and F16C; "
                      "CHIMERA_DECODE_KERNEL=0 skips it without this warning.", stacklevel=3)
        return False
    return True


def _compile_and_load() -> None:
    """Build the kernel if its cached build is missing or out of date, and load it into this process."""
    from torch.utils.cpp_extension import load

    load(name=NAME, sources=[str(SOURCE)], is_python_module=False, extra_cflags=CFLAGS, extra_ldflags=LDFLAGS)


def _build_once() -> str | None:
    """Make sure a cached build exists, building it in a child process under the time limit when it
    does not; None when it is there, else what went wrong."""
    from torch.utils.cpp_extension import _get_build_directory

    limit = float(os.environ.get("CHIMERA_DECODE_KERNEL_BUILD_TIMEOUT", "300"))
    build_dir = Path(_get_build_directory(NAME, verbose=False))
    lock = build_dir / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > limit:
        lock.unlink(missing_ok=True)  # left by a build that was killed: torch would wait on it forever
    if (build_dir / f"{NAME}.so").exists():
        return None  # built before; load() rebuilds in-process only if the source or flags changed
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parents[2])!r}); " \
           "from chimera.models.decode_attention import _compile_and_load; _compile_and_load()"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        lock.unlink(missing_ok=True)  # the killed child's, or a stale one it waited on
        return (f"the build did not finish within {limit:.0f} s (CHIMERA_DECODE_KERNEL_BUILD_TIMEOUT); "
                f"build directory {build_dir}")
    if done.returncode != 0:
        return (done.stderr or done.stdout).strip() or f"the build exited with status {done.returncode}"
    return None


def _shape(q, k, v, mask, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def uses_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether ``attend`` runs the kernel for these operands (it builds the kernel if it has not)."""
    ok = _built.get("ok")
    if ok is None and not torch.compiler.is_compiling():
        ok = build()
    return bool(ok) and q.is_cpu and q.dtype == k.dtype == v.dtype and q.dtype in DTYPES and q.size(-1) in HEAD_DIMS \
        and q.size(-2) <= MAX_ROWS and k.stride(-1) == 1 and v.stride(-1) == 1 \
        and not (q.requires_grad or k.requires_grad or v.requires_grad)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """q (b, h, M, d), k / v (b, h, T, d), mask bool broadcastable to (b, 1, M, T) (True: may attend)
    -> (b, h, M, d), softmax(q k^T / sqrt(d)) v as ``F.scaled_dot_product_attention`` computes it.
    A row with no key to attend gives zeros here and NaN there; decoding never asks for one."""
    if not uses_kernel(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    b, _, m, d = q.shape
    if mask is not None:
        mask = mask.expand(b, 1, m, k.size(2))[:, 0]
        if mask.stride(-1) != 1:
            mask = mask.contiguous()
    return torch.ops.chimera.decode_attention(q, k, v, mask, d ** -0.5)
