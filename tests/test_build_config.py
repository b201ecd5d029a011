"""setup.py's build decisions (lcblock_cuda/_buildcfg.py): the default GPU architectures, the
toolkit/torch CUDA version check, and the advice for a _C built against another torch.

The pure functions are called with fake versions; setup.py itself is run end to end with a fake
``nvcc`` on PATH (``setup.py --version``: it decides, logs and stops before compiling).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lcblock_cuda
from lcblock_cuda import _buildcfg as cfg

ROOT = Path(__file__).resolve().parent.parent

NVCC_13_ARCHS = (
    "compute_75\ncompute_80\ncompute_86\ncompute_89\ncompute_90\ncompute_100\ncompute_120\n"
)


def test_supported_archs_parse_nvcc_list():
    assert cfg.supported_archs(NVCC_13_ARCHS) == {"7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "12.0"}
    assert cfg.supported_archs("") == set()


@pytest.mark.parametrize(
    ("supported", "expected"),
    [
        # CUDA 12.8+/13: Blackwell SASS, PTX of the newest for anything later.
        ({"8.0", "9.0", "10.0", "12.0"}, "8.0;9.0;10.0;12.0+PTX"),
        # CUDA 12.0-12.7: no Blackwell SASS; sm_90 PTX still JIT-compiles on sm_100/sm_120.
        ({"7.5", "8.0", "8.6", "8.9", "9.0"}, "8.0;9.0+PTX"),
        # nvcc could not be asked: the full list (nvcc reports what it lacks).
        (set(), "8.0;9.0;10.0;12.0+PTX"),
    ],
)
def test_default_arch_list_embeds_ptx_of_the_newest(supported, expected):
    assert cfg.default_arch_list(supported) == expected


def test_default_arch_list_refuses_a_toolkit_without_any():
    with pytest.raises(ValueError, match="supports none of 8.0, 9.0, 10.0, 12.0.*7.5"):
        cfg.default_arch_list({"7.5"})


def test_nvcc_version():
    out = "nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 12.4, V12.4.131\n"
    assert cfg.nvcc_version(out) == "12.4"
    assert cfg.nvcc_version("garbage") is None


@pytest.mark.parametrize(
    ("mode", "toolkit", "torch_cuda", "with_cuda", "says"),
    [
        ("auto", "13.0", "13.0", True, "CPU + CUDA"),
        ("auto", "13.1", "13.0", True, "CPU + CUDA"),  # minor versions may differ
        ("auto", "12.4", "13.0", False, "toolkit is 12.4 but torch was built with CUDA 13.0"),
        ("auto", None, "13.0", False, "no CUDA toolkit found"),
        ("auto", "13.0", None, False, "CPU-only build"),
        ("0", "12.4", "13.0", False, "LCBLOCK_CUDA=0"),
    ],
)
def test_cuda_decision(mode, toolkit, torch_cuda, with_cuda, says):
    got, line = cfg.cuda_decision(mode, toolkit, torch_cuda)
    assert got is with_cuda
    assert says in line and "\n" not in line


def test_cuda_decision_required_fails_with_the_same_line():
    with pytest.raises(SystemExit, match="LCBLOCK_CUDA=1 but the CUDA toolkit is 12.4 but torch"):
        cfg.cuda_decision("1", "12.4", "13.0")
    with pytest.raises(SystemExit, match="LCBLOCK_CUDA must be auto, 1 or 0, got 'yes'"):
        cfg.cuda_decision("yes", "13.0", "13.0")


def _fake_toolkit(folder: Path, version: str) -> Path:
    """A toolkit folder whose bin/nvcc answers -v (TOP=...), --version and --list-gpu-arch."""
    bin_dir = folder / "cuda" / "bin"
    bin_dir.mkdir(parents=True)
    nvcc = bin_dir / "nvcc"
    nvcc.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        f'  *--version*) echo "Cuda compilation tools, release {version}, V{version}.1" ;;\n'
        "  *--list-gpu-arch*) echo compute_80; echo compute_90 ;;\n"
        f'  *) echo "#$ TOP={bin_dir}/.." >&2 ;;\n'
        "esac\n"
    )
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def _run_setup(tmp_path: Path, mode: str, version: str) -> subprocess.CompletedProcess:
    bin_dir = _fake_toolkit(tmp_path, version)
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", LCBLOCK_CUDA=mode)
    return subprocess.run(
        [sys.executable, "setup.py", "--version"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(
    torch.version.cuda is None, reason="a CPU-only torch: no CUDA version to mismatch"
)
def test_setup_with_a_mismatched_toolkit(tmp_path):
    other = "11.8" if not torch.version.cuda.startswith("11.") else "12.4"
    info = ROOT / "lcblock_cuda" / cfg.BUILD_INFO
    before = info.read_text() if info.exists() else None
    auto = _run_setup(tmp_path / "a", "auto", other)
    assert auto.returncode == 0, auto.stderr
    line = (
        f"lcblock_cuda setup: building the CPU kernels only: the CUDA toolkit is {other} but "
        f"torch was built with CUDA {torch.version.cuda}"
    )
    assert line in auto.stderr
    assert "building CPU + CUDA kernels" not in auto.stderr  # no CUDA extension configured
    required = _run_setup(tmp_path / "r", "1", other)
    assert required.returncode != 0
    assert f"LCBLOCK_CUDA=1 but the CUDA toolkit is {other} but torch" in required.stderr
    # A matching fake toolkit is accepted (and --version compiles nothing).
    match = _run_setup(tmp_path / "m", "auto", torch.version.cuda)
    assert match.returncode == 0, match.stderr
    assert "building CPU + CUDA kernels (toolkit CUDA" in match.stderr
    # --version is no build: the recorded build info is untouched.
    assert (info.read_text() if info.exists() else None) == before


def test_load_error_of_another_torch_names_both_versions():
    err = ImportError("_C.so: undefined symbol: _ZN3c1017RegisterOperatorsD1Ev")
    text = cfg.explain_load_error(err, "2.5.1+cu124", "2.14.1+cu130")
    assert "built against torch 2.5.1+cu124 but torch 2.14.1+cu130 is installed" in text
    assert "pip install --no-build-isolation ." in text and "undefined symbol" in text
    # Not recorded (an older build): still a torch mismatch, said so.
    assert "another version (not recorded)" in cfg.explain_load_error(err, None, "2.14.1")
    # Any other load error: the generic advice, which names the reference fallback.
    other = cfg.explain_load_error(ImportError("libfoo.so: cannot open"), "2.14.1", "2.14.1")
    assert "could not be loaded (libfoo.so: cannot open)" in other and "reference" in other


def test_build_info_round_trips(tmp_path):
    (tmp_path / cfg.BUILD_INFO).write_text(cfg.build_info_source("2.5.1+cu124", "12.4", "8.0"))
    assert cfg.read_build_torch(tmp_path) == "2.5.1+cu124"
    assert cfg.read_build_torch(tmp_path / "absent") is None


def test_the_package_explains_an_undefined_symbol(monkeypatch):
    err = ImportError("undefined symbol: _ZN2at4_ops5empty4callE")
    monkeypatch.setattr(lcblock_cuda, "_EXTENSION_ERROR", err)
    monkeypatch.setattr(cfg, "read_build_torch", lambda folder: "2.4.0")
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(RuntimeError, match=r"built against torch 2\.4\.0 but torch .* installed"):
        lcblock_cuda.local_correlation(x, x, 3)
    assert "--no-build-isolation" in lcblock_cuda.extension_advice()


def test_this_build_recorded_its_torch():
    if lcblock_cuda.extension_error() is not None:
        pytest.skip(f"the extension did not load: {lcblock_cuda.extension_error()}")
    built = cfg.read_build_torch(Path(lcblock_cuda.__file__).parent)
    assert built == torch.__version__
