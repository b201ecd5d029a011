"""Resource table of the CUDA kernels in the built extension, from ``cuobjdump``.

For every kernel of ``lcblock_cuda/_C*.so`` and every GPU architecture compiled into it:
registers per thread, static shared memory per block, local memory (spills) and stack per
thread, and the theoretical occupancy this allows with the launcher's 256-thread blocks
(csrc/tiled/tiled_kernels.h, kThreads). Kernel names are demangled with ``c++filt`` to tell
kernels and dtypes apart.

    python scripts/cuda_resources.py                 # markdown table of the imported build
    python scripts/cuda_resources.py --so PATH.so    # another build
    python scripts/cuda_resources.py --json          # machine-readable
    python scripts/cuda_resources.py --compact       # one line per kernel and dtype
    python scripts/cuda_resources.py --check         # exit 1 if a kernel misses the budget

Budget (issues 9 and 15; tests/test_cuda_resources.py): every float32/float16/bfloat16 kernel
on every built arch at >= 50 % theoretical occupancy, <= 64 registers per thread; no kernel of
any dtype (float64 included) with a stack frame or local memory.
``cuobjdump`` is taken from PATH, CUDA_HOME/bin, or the copy the ``triton`` package ships.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

THREADS_PER_BLOCK = 256
BUDGET_DTYPES = ("float32", "float16", "bfloat16")
MAX_REGISTERS = 64
MIN_OCCUPANCY = 0.5


@dataclass(frozen=True)
class Arch:
    """Per-SM limits of one compute capability (CUDA occupancy calculator's table)."""

    max_warps: int
    max_blocks: int
    registers: int  # 32-bit registers per SM
    shared: int  # bytes of shared memory per SM usable by blocks
    reserved_shared: int  # bytes the runtime reserves per block
    register_unit: int = 256  # registers are allocated per warp in units of this many
    shared_unit: int = 128


ARCHS = {
    "sm_80": Arch(
        max_warps=64, max_blocks=32, registers=65536, shared=164 * 1024, reserved_shared=1024
    ),
    "sm_86": Arch(
        max_warps=48, max_blocks=16, registers=65536, shared=100 * 1024, reserved_shared=1024
    ),
    "sm_89": Arch(
        max_warps=48, max_blocks=24, registers=65536, shared=100 * 1024, reserved_shared=1024
    ),
    "sm_90": Arch(
        max_warps=64, max_blocks=32, registers=65536, shared=228 * 1024, reserved_shared=1024
    ),
    # Blackwell (CUDA C++ Programming Guide, compute capability table): B200 as sm_90,
    # RTX 50xx as sm_89 (48 warps, 24 blocks, 100 KB of shared memory per SM).
    "sm_100": Arch(
        max_warps=64, max_blocks=32, registers=65536, shared=228 * 1024, reserved_shared=1024
    ),
    "sm_120": Arch(
        max_warps=48, max_blocks=24, registers=65536, shared=100 * 1024, reserved_shared=1024
    ),
}


@dataclass
class Row:
    kernel: str
    dtype: str
    arch: str
    registers: int
    shared: int
    local: int
    stack: int
    occupancy: float | None  # theoretical, with THREADS_PER_BLOCK threads; None: unknown arch

    def meets_budget(self) -> bool:
        return (
            self.registers <= MAX_REGISTERS
            and self.local == 0
            and self.stack == 0
            and self.occupancy is not None
            and self.occupancy >= MIN_OCCUPANCY
        )


def occupancy(arch: str, registers: int, shared: int, threads: int = THREADS_PER_BLOCK):
    """Theoretical occupancy (active warps / max warps per SM), or None for an unknown arch."""
    spec = ARCHS.get(arch)
    if spec is None:
        return None
    warps = math.ceil(threads / 32)
    limits = [spec.max_blocks, spec.max_warps // warps]
    if registers > 0:
        per_warp = math.ceil(registers * 32 / spec.register_unit) * spec.register_unit
        limits.append((spec.registers // per_warp) // warps)
    per_block = math.ceil((shared + spec.reserved_shared) / spec.shared_unit) * spec.shared_unit
    limits.append(spec.shared // per_block)
    return min(limits) * warps / spec.max_warps


_DTYPES = {
    "float": "float32",
    "double": "float64",
    "c10::Half": "float16",
    "c10::BFloat16": "bfloat16",
}


def describe(demangled: str) -> tuple[str, str]:
    """(kernel, dtype) of a demangled kernel name such as
    ``void lcblock::tiled::(anonymous namespace)::forward_kernel<float>(...)``."""
    match = re.search(r"(\w+)<([^<>(]+?)(?:,[^<>(]*)?>\(", demangled)
    if not match:
        name = re.search(r"(\w+)\(", demangled)
        return (name.group(1) if name else demangled), "?"
    kernel, dtype = match.group(1), match.group(2).strip()
    return kernel, _DTYPES.get(dtype, dtype)


def demangle(names: list[str]) -> list[str]:
    if not names:
        return []
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None:
        return names
    proc = subprocess.run(
        [cxxfilt], input="\n".join(names), capture_output=True, text=True, check=True
    )
    out = proc.stdout.splitlines()
    return out if len(out) == len(names) else names


def parse(text: str, threads: int = THREADS_PER_BLOCK) -> list[Row]:
    """Rows of `cuobjdump --dump-resource-usage` output."""
    raw = []
    arch = "?"
    function = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("arch = "):
            arch = line.split("=", 1)[1].strip()
        elif line.startswith("Function ") and line.endswith(":"):
            function = line[len("Function ") : -1]
        elif function is not None and line.startswith("REG:"):
            fields = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line))
            raw.append((function, arch, fields))
            function = None
    names = demangle([r[0] for r in raw])
    rows = []
    for (_, arch, f), name in zip(raw, names, strict=True):
        kernel, dtype = describe(name)
        registers, shared = int(f.get("REG", 0)), int(f.get("SHARED", 0))
        rows.append(
            Row(
                kernel=kernel,
                dtype=dtype,
                arch=arch,
                registers=registers,
                shared=shared,
                local=int(f.get("LOCAL", 0)),
                stack=int(f.get("STACK", 0)),
                occupancy=occupancy(arch, registers, shared, threads),
            )
        )
    rows.sort(key=lambda r: (r.arch, r.kernel, r.dtype))
    return rows


def find_cuobjdump() -> str | None:
    found = shutil.which("cuobjdump")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    candidate = Path(home, "bin", "cuobjdump")
    if candidate.exists():
        return str(candidate)
    spec = importlib.util.find_spec("triton")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location, "backends", "nvidia", "bin", "cuobjdump")
        if candidate.exists():
            return str(candidate)
    return None


def find_library() -> str | None:
    """The build of this checkout (an in-place build), else that of the importable package."""
    locations = [str(Path(__file__).resolve().parent.parent / "lcblock_cuda")]
    spec = importlib.util.find_spec("lcblock_cuda")
    locations += list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        hits = sorted(glob.glob(os.path.join(location, "_C*.so")))
        if hits:
            return hits[0]
    return None


def resource_rows(library: str, cuobjdump: str, threads: int = THREADS_PER_BLOCK) -> list[Row]:
    proc = subprocess.run(
        [cuobjdump, "--dump-resource-usage", library],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return parse(proc.stdout, threads)


def sass_barriers(text: str) -> dict[tuple[str, str, str], int]:
    """Static ``BAR.SYNC`` instructions per (kernel, dtype, arch) in `cuobjdump --dump-sass`
    output: one per block barrier the code holds (fixed-size loops are unrolled)."""
    counts: dict[tuple[str, str], int] = {}
    arch, function = "?", None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("arch = "):
            arch = line.split("=", 1)[1].strip()
        elif line.startswith("Function : "):
            function = line[len("Function : ") :].strip()
            counts.setdefault((function, arch), 0)
        elif function is not None and re.search(r"\bBAR\.SYNC\b", line):
            counts[function, arch] += 1
    keys = list(counts)
    names = demangle([k[0] for k in keys])
    return {(*describe(n), k[1]): counts[k] for k, n in zip(keys, names, strict=True)}


def barrier_counts(library: str, cuobjdump: str) -> dict[tuple[str, str, str], int]:
    proc = subprocess.run(
        [cuobjdump, "--dump-sass", library], capture_output=True, text=True, check=True,
        timeout=300,
    )  # fmt: skip
    return sass_barriers(proc.stdout)


def embedded_code(library: str, cuobjdump: str) -> tuple[set[str], set[str]]:
    """(SASS archs, PTX archs) in the library, e.g. ({"sm_80", "sm_90"}, {"sm_120"})."""
    found = []
    for flag in ("--list-elf", "--list-ptx"):
        proc = subprocess.run(
            [cuobjdump, flag, library], capture_output=True, text=True, timeout=120
        )  # no embedded code of a kind: cuobjdump says so and exits 255
        found.append(set(re.findall(r"\.(sm_\d+a?)\.(?:cubin|ptx)", proc.stdout)))
    return found[0], found[1]


def budget_violations(rows: list[Row]) -> list[str]:
    """Why each budgeted kernel misses the budget; empty when all meet it. Budgeted: every
    float32/float16/bfloat16 kernel on every arch whose limits ARCHS knows."""
    bad = []
    for r in rows:
        if r.dtype in BUDGET_DTYPES and r.arch in ARCHS and not r.meets_budget():
            bad.append(
                f"{r.kernel}<{r.dtype}> on {r.arch}: {r.registers} registers, "
                f"{r.shared} B shared, {r.local} B local, {r.stack} B stack, "
                f"occupancy {r.occupancy}"
            )
    return bad


def markdown(rows: list[Row]) -> str:
    lines = [
        "| kernel | dtype | arch | registers | shared (B) | local (B) | occupancy |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        occ = "?" if r.occupancy is None else f"{100 * r.occupancy:.1f} %"
        lines.append(
            f"| {r.kernel} | {r.dtype} | {r.arch} | {r.registers} | {r.shared} | "
            f"{r.local} | {occ} |"
        )
    return "\n".join(lines)


def compact(rows: list[Row]) -> str:
    """One line per (kernel, dtype), one column per arch: registers / shared / local / occ."""
    archs = sorted({r.arch for r in rows})
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for r in rows:
        occ = "?" if r.occupancy is None else f"{100 * r.occupancy:.1f} %"
        cells.setdefault((r.kernel, r.dtype), {})[r.arch] = (
            f"{r.registers} / {r.shared} / {r.local} / {occ}"
        )
    head = "| kernel | dtype | " + " | ".join(archs) + " |"
    lines = [head, "|---|---|" + "---|" * len(archs)]
    for (kernel, dtype), by_arch in sorted(cells.items()):
        lines.append(
            f"| {kernel} | {dtype} | " + " | ".join(by_arch.get(a, "") for a in archs) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--so", help="the extension library (default: the imported build)")
    parser.add_argument("--threads", type=int, default=THREADS_PER_BLOCK)
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    parser.add_argument(
        "--compact",
        action="store_true",
        help="one line per kernel and dtype: registers / shared B / local B / occupancy per arch",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the budget is missed")
    args = parser.parse_args(argv)
    library = args.so or find_library()
    if not library or not Path(library).exists():
        print("cuda_resources: no built lcblock_cuda/_C*.so found (pass --so)", file=sys.stderr)
        return 2
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        print("cuda_resources: cuobjdump not found (PATH, CUDA_HOME, triton)", file=sys.stderr)
        return 2
    rows = resource_rows(library, cuobjdump, args.threads)
    if not rows:
        print(f"cuda_resources: {library} holds no CUDA kernels", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=1))
    else:
        print(f"{library} ({args.threads} threads per block)\n")
        print(compact(rows) if args.compact else markdown(rows))
    bad = budget_violations(rows)
    if args.check and bad:
        print("\nover budget:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
