"""The C++ decode-attention kernel against torch's scaled_dot_product_attention, and its use by the
decode paths (plain and compiled)."""

import platform
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from chimera.models import decode_attention as da

X86 = platform.machine().lower() in ("x86_64", "amd64")


def test_kernel_builds_on_x86():
    """CI runs on x86 with gcc and ninja: a broken build must fail here, not fall back quietly."""
    if not X86:
        pytest.skip("the kernel is x86 (AVX2) only; elsewhere attend is SDPA")
    assert da.build()


def test_a_build_that_stalls_is_cut_off_and_its_lock_removed(tmp_path, monkeypatch):
    """A lock file that nothing will release (a killed build's) made torch wait forever; the build now
    runs in a child under a time limit, and the caller is told why the kernel is off."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("CHIMERA_DECODE_KERNEL_BUILD_TIMEOUT", "3")
    from torch.utils.cpp_extension import _get_build_directory

    build_dir = _get_build_directory(da.NAME, verbose=False)
    lock = Path(build_dir) / "lock"
    lock.touch()
    problem = da._build_once()
    assert problem is not None and "did not finish within 3 s" in problem
    assert not lock.exists()


@pytest.mark.parametrize("b,h,m,t,d", [(1, 2, 4, 1000, 64), (3, 2, 17, 77, 128), (2, 1, 1, 5, 32),
                                       (1, 2, 68, 300, 64), (2, 3, 8, 130, 256)])
@pytest.mark.parametrize("masking", ["none", "per_row", "per_key"])
def test_attend_matches_sdpa(b, h, m, t, d, masking):
    """Cache views (keys of a longer buffer), rows and lengths off the kernel's multiples of 8 and 64,
    masks per (batch, row, key) and per key only."""
    g = torch.Generator().manual_seed(b * 1000 + t)
    q = 3 * torch.randn(b, h, m, d, generator=g)
    k = torch.randn(b, h, t + 40, d, generator=g)[:, :, :t]
    v = torch.randn(b, h, t + 40, d, generator=g)[:, :, :t]
    mask = torch.rand(b, 1, m, t, generator=g) > 0.4
    mask[..., t // 2] = True  # no row without a key
    mask = {"none": None, "per_row": mask, "per_key": mask[:, :, :1]}[masking]
    ours = da.attend(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask).float()
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=2e-6, rtol=1e-5)
    if X86:
        assert da.uses_kernel(q, k, v)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_caches(dtype):
    """A bf16 / fp16 model's caches: read as they are, computed in float32, returned in the dtype;
    within one rounding of the float64 reference on the same (rounded) operands."""
    g = torch.Generator().manual_seed(3)
    q = (2 * torch.randn(2, 2, 5, 128, generator=g)).to(dtype)
    k = torch.randn(2, 2, 300, 128, generator=g).to(dtype)[:, :, :290]
    v = torch.randn(2, 2, 300, 128, generator=g).to(dtype)[:, :, :290]
    mask = torch.rand(2, 1, 5, 290, generator=g) > 0.3
    mask[..., 0] = True
    ours = da.attend(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)
    assert ours.dtype == dtype
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(ours.double(), ref, atol=eps, rtol=eps)
    if X86:
        assert da.uses_kernel(q, k, v)


def test_masked_keys_get_no_weight():
    """A masked key with a huge score must not leak into the output."""
    q = torch.ones(1, 1, 2, 64)
    k = torch.zeros(1, 1, 100, 64)
    k[..., 50, :] = 10.0  # score 800 / sqrt(64) = 100: dominant if not masked
    v = torch.randn(1, 1, 100, 64)
    mask = torch.ones(1, 1, 2, 100, dtype=torch.bool)
    mask[..., 50] = False
    torch.testing.assert_close(da.attend(q, k, v, mask), v[..., torch.arange(100) != 50, :].mean(-2, keepdim=True)
                               .expand(1, 1, 2, 64), atol=1e-6, rtol=1e-5)


def test_other_cases_go_to_sdpa():
    q, k = torch.randn(1, 2, 4, 64), torch.randn(1, 2, 10, 64)
    assert not da.uses_kernel(q.double(), k.double(), k.double())
    assert not da.uses_kernel(torch.randn(1, 2, 4, 48), torch.randn(1, 2, 10, 48), torch.randn(1, 2, 10, 48))
    assert not da.uses_kernel(torch.randn(1, 2, da.MAX_ROWS + 1, 64), k, k)
    assert not da.uses_kernel(q.requires_grad_(), k, k)  # the kernel has no backward
    assert not da.uses_kernel(q, k.transpose(-1, -2).contiguous().transpose(-1, -2), k)


def test_compiled_graphs_call_the_kernel():
    if not (X86 and da.build()):
        pytest.skip("no kernel on this machine")
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm

    q, k, v = torch.randn(2, 2, 4, 64), torch.randn(2, 2, 200, 64), torch.randn(2, 2, 200, 64)
    mask = torch.rand(2, 1, 4, 200) > 0.2
    mask[..., 0] = True
    out = torch.compile(da.attend, backend=record, fullgraph=True)(q, k, v, mask)
    targets = {n.target for gm in graphs for n in gm.graph.nodes if n.op == "call_function"}
    assert targets & {torch.ops.chimera.decode_attention, torch.ops.chimera.decode_attention.default}
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=2e-6, rtol=1e-5)


def test_a_failed_build_warns_once_and_falls_back(monkeypatch):
    import torch.utils.cpp_extension as ext

    def broken(**kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(da, "_built", {})
    monkeypatch.setattr(da.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(ext, "load", broken)
    with pytest.warns(UserWarning, match="Ninja is required.*scaled_dot_product_attention instead"):
        assert not da.build()
    q, k = torch.randn(1, 2, 4, 64), torch.randn(1, 2, 10, 64)
    assert not da.uses_kernel(q, k, k)
    torch.testing.assert_close(da.attend(q, k, k), F.scaled_dot_product_attention(q, k, k))


def test_env_var_turns_the_kernel_off(monkeypatch):
    monkeypatch.setattr(da, "_built", {})
    monkeypatch.setenv("CHIMERA_DECODE_KERNEL", "0")
    assert not da.build()


def test_key_ranges_split_over_threads_merge_exactly():
    """One sequence and one KV head on 4 threads: the keys go to 4 ranges that are merged; a row
    whose first ranges are all masked, and a row with no key at all (zeros), included."""
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        g = torch.Generator().manual_seed(7)
        q = 3 * torch.randn(1, 1, 3, 64, generator=g)
        k, v = torch.randn(1, 1, 3000, 64, generator=g), torch.randn(1, 1, 3000, 64, generator=g)
        mask = torch.rand(1, 1, 3, 3000, generator=g) > 0.5
        mask[0, 0, 1, :2000] = False
        mask[0, 0, 2] = False
        ours = da.attend(q, k, v, mask)
    finally:
        torch.set_num_threads(threads)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask).float()
    torch.testing.assert_close(ours[:, :, :2], ref[:, :, :2], atol=2e-6, rtol=1e-5)
    assert torch.equal(ours[:, :, 2], torch.zeros(1, 1, 64))
