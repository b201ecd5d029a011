"""Build script for the lcblock_cuda extension.

The CPU kernels always build. The CUDA kernels build whenever a CUDA toolkit and a CUDA
build of torch are found; environment variables steer this:

    LCBLOCK_CUDA=auto|1|0    auto (default): build CUDA when possible, else the CPU kernels
                             only with one line saying why (no toolkit, CPU-only torch, or a
                             toolkit whose CUDA major version differs from torch's); 1:
                             require it (fail with that line); 0: skip it (CPU-only builds).
    CUDA_HOME                the toolkit folder; found from `nvcc -v` when unset.
    TORCH_CUDA_ARCH_LIST     GPU architectures; when unset and no GPU is visible: SASS for
                             8.0, 9.0, 10.0 and 12.0 (those this nvcc supports) and PTX for
                             the newest, so the build runs on any GPU from sm_80 up.
    LCBLOCK_CPU_ARCH         -march for the CPU kernels: "native" (default; pip builds on the
                             machine that runs them) or e.g. "x86-64-v2"; "" for none.
    MAX_JOBS                 parallel compile jobs (ninja).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent

# The build decisions as pure functions (tests/test_build_config.py); loaded by path because
# the package itself cannot be imported before its _C is built.
_spec = importlib.util.spec_from_file_location(
    "_lcblock_buildcfg", ROOT / "lcblock_cuda" / "_buildcfg.py"
)
buildcfg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(buildcfg)


def _log(msg: str) -> None:
    print(f"lcblock_cuda setup: {msg}", file=sys.stderr)


def _toolkit_from_nvcc() -> str | None:
    """The real toolkit folder. The `nvcc` on PATH may be a wrapper script, so ask nvcc
    itself (`nvcc -v` prints TOP=<toolkit>/bin/..) instead of guessing from its path."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "/usr/local/cuda" if Path("/usr/local/cuda/bin/nvcc").exists() else None
    try:
        proc = subprocess.run(
            [nvcc, "-v", "-E", "-x", "cu", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=120,
        )
        match = re.search(r"^#\$ TOP=(.*)$", proc.stderr + proc.stdout, re.MULTILINE)
        if match:
            return str(Path(match.group(1).strip()).resolve())
    except (OSError, subprocess.SubprocessError) as exc:
        _log(f"could not run {nvcc} -v ({exc}); guessing the toolkit from its path")
    return str(Path(nvcc).resolve().parent.parent)


def _find_cuda_home() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return home
    home = _toolkit_from_nvcc()
    if home and Path(home, "bin", "nvcc").exists():
        return home
    return None


def _extra_cuda_includes(cuda_home: str) -> list[str]:
    """ATen's CUDA headers include cuSPARSE/cuBLAS headers; a bare nvcc toolkit may lack
    them, while torch's pip wheels ship them under site-packages/nvidia/*/include."""
    if Path(cuda_home, "include", "cusparse.h").exists():
        return []
    found = []
    for site in sys.path:
        for inc in sorted(glob.glob(os.path.join(site, "nvidia", "*", "include"))):
            if Path(inc, "cusparse.h").exists() or Path(inc, "cublas_v2.h").exists():
                found.append(inc)
    return found


def _nvcc_output(cuda_home: str, *args: str) -> str:
    try:
        proc = subprocess.run(
            [str(Path(cuda_home, "bin", "nvcc")), *args], capture_output=True, text=True, timeout=60
        )
        return proc.stdout + proc.stderr
    except (OSError, subprocess.SubprocessError) as exc:
        _log(f"could not run nvcc {' '.join(args)} ({exc})")
        return ""


mode = os.environ.get("LCBLOCK_CUDA", "auto").strip().lower()
if mode not in ("auto", "1", "0"):
    raise SystemExit(f"lcblock_cuda setup: LCBLOCK_CUDA must be auto, 1 or 0, got {mode!r}")

cuda_home = None
toolkit_version = None
if mode != "0":
    cuda_home = _find_cuda_home()
    if cuda_home:
        toolkit_version = buildcfg.nvcc_version(_nvcc_output(cuda_home, "--version"))
        if toolkit_version is None:
            _log(f"could not read the CUDA version of {cuda_home}/bin/nvcc; assuming torch's")

import torch  # noqa: E402

if toolkit_version is None and cuda_home:
    toolkit_version = torch.version.cuda
with_cuda, why = buildcfg.cuda_decision(
    mode, toolkit_version if cuda_home else None, torch.version.cuda
)
_log(why)
if with_cuda:
    # Must be set before torch.utils.cpp_extension is imported: it reads CUDA_HOME once.
    os.environ["CUDA_HOME"] = cuda_home

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

sources = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "csrc").glob("*.cpp"))]
sources += [str(p.relative_to(ROOT)) for p in sorted((ROOT / "csrc" / "cpu").glob("*.cpp"))]
# -fopenmp: at::parallel_for is a header template over `#pragma omp parallel`; without the
# flag it silently runs on one thread. libgomp.so.1 resolves to the copy torch has loaded.
cxx_flags = ["-O3", "-fopenmp"]
link_flags = ["-fopenmp"]
cpu_arch = os.environ.get("LCBLOCK_CPU_ARCH", "native").strip()
if cpu_arch:
    cxx_flags.append(f"-march={cpu_arch}")
include_dirs = [str(ROOT / "csrc")]
define_macros = []

if with_cuda:
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        supported = buildcfg.supported_archs(_nvcc_output(cuda_home, "--list-gpu-arch"))
        os.environ["TORCH_CUDA_ARCH_LIST"] = buildcfg.default_arch_list(supported)
    sources += [str(p.relative_to(ROOT)) for p in sorted((ROOT / "csrc" / "cuda").glob("*.cu"))]
    include_dirs += _extra_cuda_includes(cuda_home)
    define_macros.append(("LCBLOCK_WITH_CUDA", None))
    _log(
        f"building CPU + CUDA kernels (CUDA_HOME={cuda_home}, "
        f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '<visible GPU>')})"
    )
    extension = CUDAExtension(
        "lcblock_cuda._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
        extra_link_args=link_flags,
    )
else:
    extension = CppExtension(
        "lcblock_cuda._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
    )

# What _C is built against, so that lcblock_cuda can tell a .so built for another torch from
# other load errors (lcblock_cuda/__init__.py, extension_advice). Written by build_ext only, so
# that `setup.py --version` and the like leave the tree alone.
BUILD_INFO = buildcfg.build_info_source(
    torch.__version__,
    torch.version.cuda if with_cuda else None,
    os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
)


class BuildExt(BuildExtension.with_options(use_ninja=True)):
    def run(self):
        folders = {ROOT / "lcblock_cuda"}
        if not self.inplace and self.build_lib:
            folders.add(Path(self.build_lib) / "lcblock_cuda")
        for folder in folders:
            path = folder / buildcfg.BUILD_INFO
            folder.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_text() != BUILD_INFO:
                path.write_text(BUILD_INFO)
        super().run()


os.environ.setdefault("MAX_JOBS", str(max(1, min(4, os.cpu_count() or 1))))

setup(
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExt},
)
