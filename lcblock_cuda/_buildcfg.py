"""Build decisions of setup.py, as pure functions (standard library only).

setup.py loads this file by path (it cannot import the package before it is built), and the
package uses it at import time to explain a ``_C`` built against another torch. Tests call
the functions with fake versions (tests/test_build_config.py). See docs/cuda.md, "Builds".
"""

from __future__ import annotations

import re
from pathlib import Path

#: SASS in the default build (no GPU visible, TORCH_CUDA_ARCH_LIST unset): sm_80 (runs on
#: every 8.x), sm_90, and Blackwell's sm_100 / sm_120 where the toolkit knows them; PTX for
#: the newest of these, which the driver JIT-compiles on any later GPU.
DEFAULT_ARCHS = ("8.0", "9.0", "10.0", "12.0")

#: The command that rebuilds the extension against the torch of the current environment.
REBUILD = "pip install --no-build-isolation ."

#: Written next to _C by setup.py (git-ignored): the torch and CUDA the .so was built against.
BUILD_INFO = "_build_info.py"


def supported_archs(list_gpu_arch_output: str) -> set[str]:
    """The compute capabilities ("8.0", "12.0", ...) in ``nvcc --list-gpu-arch`` output
    (lines like ``compute_120``)."""
    found = set()
    for major_minor in re.findall(r"compute_(\d+)", list_gpu_arch_output):
        found.add(f"{int(major_minor) // 10}.{int(major_minor) % 10}")
    return found


def default_arch_list(supported: set[str]) -> str:
    """TORCH_CUDA_ARCH_LIST for a build without a visible GPU: SASS for DEFAULT_ARCHS that the
    toolkit supports (all of them when ``supported`` is empty: the toolkit could not be asked),
    ``+PTX`` on the newest, e.g. "8.0;9.0;10.0;12.0+PTX"."""
    archs = [a for a in DEFAULT_ARCHS if not supported or a in supported]
    if not archs:
        raise ValueError(
            f"the CUDA toolkit supports none of {', '.join(DEFAULT_ARCHS)} "
            f"(it lists {', '.join(sorted(supported))}); set TORCH_CUDA_ARCH_LIST"
        )
    archs[-1] += "+PTX"
    return ";".join(archs)


def nvcc_version(nvcc_version_output: str) -> str | None:
    """ "13.0" from ``nvcc --version`` ("Cuda compilation tools, release 13.0, V13.0.88")."""
    match = re.search(r"release (\d+)\.(\d+)", nvcc_version_output)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def cuda_decision(mode: str, toolkit: str | None, torch_cuda: str | None) -> tuple[bool, str]:
    """Whether to build the CUDA kernels, and the one line that says why.

    ``mode`` is LCBLOCK_CUDA (auto, 1, 0); ``toolkit`` the toolkit's CUDA version (None: no
    toolkit found); ``torch_cuda`` torch.version.cuda (None: a CPU-only torch). A toolkit whose
    major version differs from torch's cannot build a loadable extension (torch's
    cpp_extension refuses it): auto builds the CPU kernels only, 1 fails with the same line
    (SystemExit).
    """
    if mode not in ("auto", "1", "0"):
        raise SystemExit(f"lcblock_cuda setup: LCBLOCK_CUDA must be auto, 1 or 0, got {mode!r}")
    if mode == "0":
        return False, "building the CPU kernels only (LCBLOCK_CUDA=0)"
    why = None
    if toolkit is None:
        why = "no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)"
    elif torch_cuda is None:
        why = "torch is a CPU-only build (torch.version.cuda is None)"
    elif toolkit.split(".")[0] != torch_cuda.split(".")[0]:
        why = (
            f"the CUDA toolkit is {toolkit} but torch was built with CUDA {torch_cuda}: "
            "the major versions must match (install a matching toolkit or torch)"
        )
    if why is None:
        return (
            True,
            f"building CPU + CUDA kernels (toolkit CUDA {toolkit}, torch CUDA {torch_cuda})",
        )
    if mode == "1":
        raise SystemExit(f"lcblock_cuda setup: LCBLOCK_CUDA=1 but {why}")
    return False, f"building the CPU kernels only: {why}"


def build_info_source(torch_version: str, torch_cuda: str | None, arch_list: str | None) -> str:
    """The text of BUILD_INFO."""
    return (
        '"""Written by setup.py: what lcblock_cuda._C was built against (not in git)."""\n\n'
        f"TORCH_VERSION = {torch_version!r}\n"
        f"TORCH_CUDA = {torch_cuda!r}\n"
        f"TORCH_CUDA_ARCH_LIST = {arch_list!r}\n"
    )


def read_build_torch(package_dir: Path) -> str | None:
    """TORCH_VERSION from BUILD_INFO in package_dir, without importing it; None if absent."""
    try:
        text = (Path(package_dir) / BUILD_INFO).read_text()
    except OSError:
        return None
    match = re.search(r"^TORCH_VERSION = '([^']*)'$", text, re.MULTILINE)
    return match.group(1) if match else None


def explain_load_error(error: BaseException, built_torch: str | None, running_torch: str) -> str:
    """The advice for an ImportError of _C. An undefined symbol (or a different recorded torch)
    means the .so was built against another torch: say which two and how to rebuild."""
    text = str(error)
    mismatch = built_torch is not None and built_torch != running_torch
    if "undefined symbol" in text or mismatch:
        built = built_torch or "another version (not recorded)"
        return (
            f"lcblock_cuda._C was built against torch {built} but torch {running_torch} is "
            f"installed ({text}). Rebuild it against this torch: {REBUILD} "
            "(build isolation would build against a freshly downloaded torch)"
        )
    return (
        f"the compiled kernels could not be loaded ({text}). Reinstall the package so that they "
        f"build ({REBUILD}), or call lcblock_cuda.reference.local_correlation explicitly."
    )
