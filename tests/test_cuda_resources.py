"""The CUDA kernels' resource budget, read from the built binary (scripts/cuda_resources.py).

Budget (issue 9): every float32/float16/bfloat16 kernel on sm_80 and sm_90 at >= 50 %
theoretical occupancy with its 256-thread blocks: <= 64 registers per thread, no local memory
(spills) or stack, and shared memory small enough for that. The budget test runs whenever the
extension was built with its CUDA kernels (no GPU needed: cuobjdump reads the library); the
parser and the occupancy arithmetic are tested everywhere.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import lcblock_cuda

_SPEC = importlib.util.spec_from_file_location(
    "cuda_resources", Path(__file__).resolve().parent.parent / "scripts" / "cuda_resources.py"
)
res = importlib.util.module_from_spec(_SPEC)
sys.modules.setdefault("cuda_resources", res)  # dataclasses look their module up there
_SPEC.loader.exec_module(res)

KERNELS = ("forward_kernel", "delta_kernel", "grad_content_kernel", "grad_pattern_kernel")

SAMPLE = """
Fatbin elf code:
================
arch = sm_80
code version = [1,8]
host = linux
compile_size = 64bit

Resource usage:
 Common:
  GLOBAL:28 CONSTANT[4]:224
 Function _ZN7lcblock5tiled12_GLOBAL__N_114forward_kernelIN3c104HalfEEEvNS0_4ArgsIT_fEE:
  REG:64 STACK:0 SHARED:20512 LOCAL:0 CONSTANT[0]:632 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _ZN7lcblock5tiled12_GLOBAL__N_114forward_kernelIdEEvNS0_4ArgsIT_dEE:
  REG:128 STACK:8 SHARED:41024 LOCAL:8 CONSTANT[0]:640 TEXTURE:0 SURFACE:0 SAMPLER:0

Fatbin elf code:
================
arch = sm_90
 Function _ZN7lcblock5tiled12_GLOBAL__N_114forward_kernelIfEEvNS0_4ArgsIT_fEE:
  REG:184 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:472 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def test_parser_tells_kernels_dtypes_and_archs_apart():
    rows = {(r.kernel, r.dtype, r.arch): r for r in res.parse(SAMPLE)}
    assert set(rows) == {
        ("forward_kernel", "float16", "sm_80"),
        ("forward_kernel", "float64", "sm_80"),
        ("forward_kernel", "float32", "sm_90"),
    }
    half = rows["forward_kernel", "float16", "sm_80"]
    assert (half.registers, half.shared, half.local, half.stack) == (64, 20512, 0, 0)
    assert half.occupancy == 0.5 and half.meets_budget()
    double = rows["forward_kernel", "float64", "sm_80"]
    assert double.local == 8 and not double.meets_budget()
    # The old one-thread-per-pixel kernels: 184 registers -> one 256-thread block per SM.
    assert rows["forward_kernel", "float32", "sm_90"].occupancy == 0.125
    bad = res.budget_violations(res.parse(SAMPLE))
    assert len(bad) == 1 and "float32> on sm_90: 184 registers" in bad[0]


@pytest.mark.parametrize(
    ("arch", "registers", "shared", "expected"),
    [
        ("sm_80", 32, 0, 1.0),  # 8 blocks x 8 warps = 64 warps
        ("sm_80", 64, 20512, 0.5),  # registers: 4 blocks
        ("sm_80", 65, 0, 0.375),  # 72 registers per thread after rounding: 3 blocks
        ("sm_80", 32, 40 * 1024, 0.5),  # shared: 164 KB / (40 + 1 reserved) KB -> 4 blocks
        ("sm_80", 32, 41 * 1024, 0.375),  # 164 KB / 42 KB -> 3 blocks
        ("sm_90", 32, 56 * 1024, 0.5),  # 228 KB / 57 KB -> 4 blocks
        ("sm_90", 32, 57 * 1024, 0.375),
        ("sm_90", 128, 41024, 0.25),
        ("sm_75", 32, 0, None),
    ],
)
def test_occupancy_arithmetic(arch, registers, shared, expected):
    assert res.occupancy(arch, registers, shared, 256) == expected


def test_markdown_table_has_one_line_per_kernel():
    table = res.markdown(res.parse(SAMPLE))
    assert table.count("\n") == 1 + 3
    assert "| forward_kernel | float16 | sm_80 | 64 | 20512 | 0 | 50.0 % |" in table


@pytest.fixture(scope="module")
def built_rows():
    if not lcblock_cuda.cuda_compiled():
        pytest.skip(
            "the extension was built without its CUDA kernels (LCBLOCK_CUDA=0, no toolkit or a "
            "CPU-only torch): no kernel resources to read"
        )
    library = res.find_library()
    assert library is not None, "lcblock_cuda was imported but its _C*.so was not found"
    cuobjdump = res.find_cuobjdump()
    if cuobjdump is None:
        pytest.skip("cuobjdump not found (PATH, CUDA_HOME/bin, triton's copy)")
    threads = torch.ops.lcblock_cuda._tiled_config()[2]  # (tile_h, tile_w, threads, ...)
    return res.resource_rows(library, cuobjdump, threads)


def test_built_kernels_meet_the_budget(built_rows):
    archs = {r.arch for r in built_rows}
    present = {(r.kernel, r.dtype, r.arch) for r in built_rows}
    for arch in archs & set(res.BUDGET_ARCHS):
        for kernel in KERNELS:
            for dtype in ("float32", "float16", "bfloat16", "float64"):
                assert (kernel, dtype, arch) in present, f"{kernel}<{dtype}> missing on {arch}"
    assert archs & set(res.BUDGET_ARCHS), f"no sm_80/sm_90 code in the build: {sorted(archs)}"
    assert res.budget_violations(built_rows) == []
    # float64 is outside the budget but must not spill either.
    assert all(r.local == 0 for r in built_rows)
