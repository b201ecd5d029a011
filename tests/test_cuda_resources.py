"""The CUDA kernels' resource budget, read from the built binary (scripts/cuda_resources.py).

Budget (issues 9 and 15): every float32/float16/bfloat16 kernel on every built arch at >= 50 %
theoretical occupancy with its 256-thread blocks (<= 64 registers per thread, shared memory
small enough for that); no kernel of any dtype, float64 included, with a stack frame (STACK)
or local memory (LOCAL); the BAR.SYNC count of every kernel that the phase structure implies
(tiled_kernels.h, gather_barriers / pattern_barriers); SASS for every entry of the build's
TORCH_CUDA_ARCH_LIST and PTX for its +PTX entry. These tests run whenever the extension was
built with its CUDA kernels, for whatever arch list (no GPU needed: cuobjdump reads the
library), and skip, saying so, only where it holds no CUDA code; the parsers and the occupancy
arithmetic are tested everywhere.
"""

from __future__ import annotations

import dataclasses
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


SASS_SAMPLE = """
Fatbin elf code:
================
arch = sm_90
code version = [1,8]

        code for sm_90
                Function : _ZN7lcblock5tiled12_GLOBAL__N_112delta_kernelIfEEvNS0_4ArgsIT_fEE
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0020*/                   EXIT ;

Fatbin elf code:
================
arch = sm_120

                Function : _ZN7lcblock5tiled12_GLOBAL__N_112delta_kernelIfEEvNS0_4ArgsIT_fEE
        /*0010*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0020*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0030*/                   BAR.RED.POPC R0, P0 ;
"""


def test_sass_barrier_counter_reads_each_arch():
    counts = res.sass_barriers(SASS_SAMPLE)
    assert counts == {("delta_kernel", "float32", "sm_90"): 1,
                      ("delta_kernel", "float32", "sm_120"): 2}  # fmt: skip


@dataclasses.dataclass
class Build:
    library: str
    rows: list
    barriers: dict
    sass: set
    ptx: set
    arch_list: str | None


@pytest.fixture(scope="module")
def build():
    """The built library's resources, barrier counts and embedded code, read with cuobjdump.
    Skipped (with the reason) only where the extension holds no CUDA kernels."""
    if not lcblock_cuda.cuda_compiled():
        pytest.skip(
            "the extension was built without its CUDA kernels (LCBLOCK_CUDA=0, no toolkit or a "
            "CPU-only torch): no kernel resources to read"
        )
    library = res.find_library()
    assert library is not None, "lcblock_cuda was imported but its _C*.so was not found"
    cuobjdump = res.find_cuobjdump()
    assert cuobjdump is not None, (
        "cuobjdump not found (PATH, CUDA_HOME/bin, triton's copy), yet the build has CUDA code"
    )
    threads = torch.ops.lcblock_cuda._tiled_config()[2]  # (tile_h, tile_w, threads, ...)
    sass, ptx = res.embedded_code(library, cuobjdump)
    info = Path(library).parent / "_build_info.py"
    arch_list = None
    if info.exists():
        namespace: dict = {}
        exec(info.read_text(), namespace)
        arch_list = namespace.get("TORCH_CUDA_ARCH_LIST")
    return Build(library, res.resource_rows(library, cuobjdump, threads),
                 res.barrier_counts(library, cuobjdump), sass, ptx, arch_list)  # fmt: skip


def _arch(entry: str) -> str:
    return "sm_" + entry.replace("+PTX", "").replace(".", "").strip()


def test_built_code_covers_the_arch_list(build):
    # Whatever the list (the default 8.0;9.0;10.0;12.0+PTX, or gpu_check's single visible
    # arch): SASS for each entry, PTX exactly for the +PTX entries.
    assert build.sass, f"{build.library} holds no SASS"
    if build.arch_list:
        entries = [e for e in build.arch_list.replace(",", ";").split(";") if e.strip()]
        assert {_arch(e) for e in entries} == build.sass
        assert {_arch(e) for e in entries if e.endswith("+PTX")} == build.ptx
    if torch.cuda.is_available():  # the visible GPU can run it: SASS of its major, or PTX
        major, minor = torch.cuda.get_device_capability()
        runnable = {a for a in build.sass if int(a[3:-1]) == major and int(a[-1]) <= minor}
        runnable |= {a for a in build.ptx if int(a[3:]) <= major * 10 + minor}
        assert runnable, f"nothing in {sorted(build.sass | build.ptx)} runs on sm_{major}{minor}"


def test_default_build_runs_on_blackwell(build):
    # The default list (setup.py without a GPU or TORCH_CUDA_ARCH_LIST): SASS of those of
    # 8.0/9.0/10.0/12.0 that nvcc supports, PTX of the newest, so sm_100 and sm_120 run it.
    from lcblock_cuda import _buildcfg

    entries = (build.arch_list or "").split(";")
    if build.arch_list != _buildcfg.default_arch_list({e.replace("+PTX", "") for e in entries}):
        pytest.skip(f"not a default build (TORCH_CUDA_ARCH_LIST={build.arch_list})")
    assert build.ptx == {_arch(entries[-1])}
    assert build.ptx or {"sm_100", "sm_120"} <= build.sass, (build.sass, build.ptx)


def test_built_kernels_meet_the_budget(build):
    present = {(r.kernel, r.dtype, r.arch) for r in build.rows}
    for arch in build.sass:
        for kernel in KERNELS:
            for dtype in ("float32", "float16", "bfloat16", "float64"):
                assert (kernel, dtype, arch) in present, f"{kernel}<{dtype}> missing on {arch}"
    assert res.budget_violations(build.rows) == []
    assert [r for r in build.rows if r.registers > res.MAX_REGISTERS and r.dtype != "float64"] == []


def test_no_kernel_has_a_stack_frame_or_local_memory(build):
    # float64 included: it is outside the register budget, but a spill is a bug on any dtype.
    bad = [(r.kernel, r.dtype, r.arch, r.stack, r.local) for r in build.rows
           if r.stack or r.local]  # fmt: skip
    assert bad == [], "STACK / LOCAL > 0: " + repr(bad)


def test_barriers_per_kernel_are_those_the_design_implies(build):
    config = torch.ops.lcblock_cuda._tiled_config()
    gather, pattern, pattern64, delta = config[12:16]
    for (kernel, dtype, arch), count in build.barriers.items():
        want = {
            "forward_kernel": gather,
            "grad_content_kernel": gather,
            "delta_kernel": delta,
            "grad_pattern_kernel": pattern64 if dtype == "float64" else pattern,
        }[kernel]
        assert count == want, f"{kernel}<{dtype}> on {arch}: {count} BAR.SYNC, design {want}"
    assert len(build.barriers) == len(KERNELS) * 4 * len(build.sass)
