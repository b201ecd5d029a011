"""Deliberate defects in the CUDA block code, and how many emulation tests fail on each.

    python scripts/inject_cuda_defects.py                    # every defect, the default tests
    python scripts/inject_cuda_defects.py --list             # the defects and what they break
    python scripts/inject_cuda_defects.py --defect clamped_halo_scalar --defect plane_pad_old
    python scripts/inject_cuda_defects.py --defect missing_barrier_stage_compute+race_model_off
    python scripts/inject_cuda_defects.py --tests tests/test_cuda_emulation.py --out FILE.json

Each defect is a minimal edit of csrc/tiled/tiled_kernels.h, the block code that the CUDA
kernels and the CPU emulator share (exact text replacements; each must match exactly once, so
the script fails loudly when the code it breaks has moved). The working tree (tracked files and
untracked ones git does not ignore) is copied once into a work folder; for every defect the
pristine files are restored, the defect applied, the CPU-only extension rebuilt in place there
(LCBLOCK_CUDA=0; only tiled_emulation.cpp recompiles after the first build) and pytest run.
"none" is the baseline, which must fail nothing. By default every defect of the block code
runs; the emulator switches (race_model_off, poison_off, ascending_only) only when named, in a
combination "DEFECT+SWITCH", to show which feature of the emulator catches a defect. The
repository itself is never modified. docs/cuda.md, "Deliberate defects", has the table this prints.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNELS = "csrc/tiled/tiled_kernels.h"
EMULATOR = "csrc/cpu/tiled_emulation.cpp"
DEFAULT_TESTS = ("tests/test_cuda_emulation.py",)


@dataclass(frozen=True)
class Defect:
    name: str
    what: str
    edits: tuple[tuple[str, str, str], ...]  # (path, old text, new text)


STAGE_VALUES = (
    "              stage_region<scalar_t>(t, args, tile, values, a, b0, v0, n, region);\n"
)
CLAMP_HW = (
    "const int hc = h < 0 ? 0 : (h < args.height ? h : args.height - 1);\n"
    "{i}const int wc = w < 0 ? 0 : (w < args.width ? w : args.width - 1);\n"
)

DEFECTS = (
    Defect("none", "no defect (the baseline: nothing may fail)", ()),
    Defect(
        "clamped_halo_scalar",
        "scalar staging fills out-of-image halo elements by clamping to the border, not with 0",
        (
            (
                KERNELS,
                "    acc_t v = acc_t(0);\n"
                "    if (h >= 0 && h < args.height && w >= 0 && w < args.width) {\n"
                "      v = static_cast<acc_t>(x.ptr[x.at(tile.b, c0 + c, h, w)]);\n"
                "    }\n",
                "    " + CLAMP_HW.format(i="    ") + "    acc_t v = static_cast<acc_t>("
                "x.ptr[x.at(tile.b, c0 + c, hc, wc)]);\n",
            ),
        ),
    ),
    Defect(
        "clamped_halo_vector",
        "16-byte vector staging (NHWC) stages the border pixel for out-of-image halo pixels",
        (
            (
                KERNELS,
                "      if (h >= 0 && h < args.height && w >= 0 && w < args.width) {\n"
                "        stage_pixel(x.ptr + x.at(tile.b, c0, h, w), region + e);\n"
                "      } else {\n"
                "        LC_UNROLL\n"
                "        for (int c = 0; c < kStage; ++c) smem_store(region + c * kPlane + e, "
                "acc_t(0));\n"
                "      }\n",
                "      " + CLAMP_HW.format(i="      ") + "      stage_pixel(x.ptr + "
                "x.at(tile.b, c0, hc, wc), region + e);\n",
            ),
        ),
    ),
    Defect(
        "clamped_halo_plane",
        "the lse / D planes of the backward clamp their out-of-image halo to the border",
        (
            (
                KERNELS,
                "    acc_t v = acc_t(0);\n"
                "    if (h >= 0 && h < args.height && w >= 0 && w < args.width) {\n"
                "      v = static_cast<acc_t>(plane[base + int64_t(h) * args.width + w]);\n"
                "    }\n",
                "    " + CLAMP_HW.format(i="    ") + "    acc_t v = static_cast<acc_t>("
                "plane[base + int64_t(hc) * args.width + wc]);\n",
            ),
        ),
    ),
    Defect(
        "unpack_swapped_halves",
        "float16/bfloat16 unpack takes the high half of each 32-bit word for the even channel",
        (
            (
                KERNELS,
                "byte % 4 == 0 ? word & 0xffffu : word >> 16",
                "byte % 4 == 0 ? word >> 16 : word & 0xffffu",
            ),
        ),
    ),
    Defect(
        "unpack_lane7",
        "float16/bfloat16 unpack: channel 7 of each 8-channel chunk gets channel 6's half",
        (
            (
                KERNELS,
                "byte % 4 == 0 ? word & 0xffffu : word >> 16",
                "byte % 4 == 0 || c == kStage - 1 ? word & 0xffffu : word >> 16",
            ),
        ),
    ),
    Defect(
        "state_sum_unwritten",
        "forward: the softmax sum is not zeroed in the init phase (read before written)",
        (
            (
                KERNELS,
                "      st.max_logit = -acc_t(INFINITY);\n      st.sum = acc_t(0);\n",
                "      st.max_logit = -acc_t(INFINITY);\n",
            ),
        ),  # fmt: skip
    ),
    Defect(
        "state_c_dy_unwritten",
        "grad_pattern: <dy_j, c_i> sums not zeroed before their first chunk",
        (
            (
                KERNELS,
                "st.logit[g] = st.dy_c[g] = st.c_dy[g] = acc_t(0);",
                "st.logit[g] = st.dy_c[g] = acc_t(0);",
            ),
        ),
    ),
    Defect(
        "missing_barrier_stage_compute",
        "forward/grad_content: the values chunk is staged and used in one phase (no barrier "
        "between staging and compute: read-after-write)",
        (
            (
                KERNELS,
                STAGE_VALUES + "            });\n            ex.run([&](int t, State& st) {\n",
                STAGE_VALUES,
            ),
            (
                KERNELS,
                "            ex.run([&](int t, State&) {\n" + STAGE_VALUES,
                "            ex.run([&](int t, State& st) {\n" + STAGE_VALUES,
            ),
        ),
    ),
    Defect(
        "missing_barrier_compute_stage",
        "forward/grad_content: the first values chunk is staged in the phase that still reads "
        "the pattern chunk of the logits (no barrier between compute and staging: "
        "write-after-read)",
        (
            (
                KERNELS,
                "              if (kForward) st.sum += w;\n            }\n          });\n",
                "              if (kForward) st.sum += w;\n            }\n"
                "            if (o0 < cv) {\n"
                "              stage_region<scalar_t>(t, args, tile, values, a, b0, o0,\n"
                "                                     min3(kStage, cv - o0, OUT), region);\n"
                "            }\n          });\n",
            ),
            (
                KERNELS,
                "            ex.run([&](int t, State&) {\n" + STAGE_VALUES,
                "            if (sub > 0) ex.run([&](int t, State&) {\n" + STAGE_VALUES,
            ),
        ),
    ),
    Defect(
        "zero_weight_multiplied",
        "accumulate_weighted multiplies neighbours of weight 0 instead of skipping them "
        "(0 * inf = NaN from in-image pixels outside the window)",
        (
            (
                KERNELS,
                "if (g < args.group && weight[g] != acc_t(0)) {",
                "if (g < args.group) {",
            ),
        ),
    ),
    Defect(
        "plane_pad_old",
        "shared plane padded by 1 slot (513 = 1 mod 32), the padding before issue 15",
        ((KERNELS, "constexpr int kPlanePad = 12;", "constexpr int kPlanePad = 1;"),),
    ),
    # Switches of the emulator itself, to combine with a defect ("A+B"): they show which of
    # the emulator's features catches it.
    Defect(
        "race_model_off",
        "emulator: no read/write race check (a slot written and read by two threads in one "
        "phase passes)",
        (
            (
                EMULATOR,
                "  const int reader = tr->reader[index];\n",
                "  const int reader = kNone;\n",
            ),
            (
                EMULATOR,
                "  const int writer = tr->writer[index];\n",
                "  const int writer = kNone;\n",
            ),
        ),
    ),
    Defect(
        "poison_off",
        "emulator: per-thread state zero-initialised instead of 0xFF",
        ((EMULATOR, "st.data()), 0xFF, sizeof(State)", "st.data()), 0x00, sizeof(State)"),),
    ),
    Defect(
        "ascending_only",
        "emulator: threads always run in ascending order",
        (
            (
                EMULATOR,
                "    int mode = g_thread_order.load(std::memory_order_relaxed);\n",
                "    int mode = 0;\n",
            ),
        ),
    ),
)


def tree_files(root: Path) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout
    return [p for p in out.decode().split("\0") if p and (root / p).is_file()]


def copy_tree(root: Path, work: Path) -> None:
    for rel in tree_files(root):
        dst = work / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / rel, dst)  # fresh mtimes: the copy is newer than old builds


def apply(defect: Defect, work: Path, pristine: dict[str, str]) -> None:
    for path, text in pristine.items():  # always rewritten: a fresh mtime makes ninja rebuild
        (work / path).write_text(text)
    edited: dict[str, str] = {}
    for path, old, new in defect.edits:
        text = edited.get(path, pristine[path])
        count = text.count(old)
        if count != 1:
            msg = f"defect {defect.name}: its text occurs {count} times in {path}:\n{old}"
            raise SystemExit(msg)
        edited[path] = text.replace(old, new)
    for path, text in edited.items():
        (work / path).write_text(text)


def run(cmd: list[str], work: Path, log: Path) -> int:
    env = dict(os.environ, LCBLOCK_CUDA="0", PYTHONPATH=str(work))
    env.setdefault("MAX_JOBS", "2")
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.run(cmd, cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT).returncode


def count(summary: str, word: str) -> int:
    m = re.search(rf"(\d+) {word}", summary)
    return int(m.group(1)) if m else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--defect", action="append", help="defect name (repeatable; default all)")
    parser.add_argument("--tests", action="append", help=f"test files (default {DEFAULT_TESTS})")
    parser.add_argument("--workdir", type=Path, help="work folder (default: a fresh temp folder)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--list", action="store_true", help="list the defects and exit")
    args = parser.parse_args(argv)
    by_name = {d.name: d for d in DEFECTS}
    if args.list:
        for d in DEFECTS:
            print(f"{d.name:32s} {d.what}")
        return 0
    names = args.defect or [d.name for d in DEFECTS if not d.edits or d.edits[0][0] == KERNELS]
    unknown = [p for n in names for p in n.split("+") if p not in by_name]
    if unknown:
        parser.error(f"--defect: unknown {unknown}; choose from {sorted(by_name)}")
    tests = args.tests or list(DEFAULT_TESTS)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lcblock_defects_"))
    work.mkdir(parents=True, exist_ok=True)
    copy_tree(ROOT, work)
    paths = sorted({p for d in DEFECTS for p, _, _ in d.edits})
    pristine = {p: (ROOT / p).read_text() for p in paths}
    results = []
    for name in names:
        parts = [by_name[p] for p in name.split("+")]
        defect = Defect(name, "; ".join(p.what for p in parts), sum((p.edits for p in parts), ()))
        apply(defect, work, pristine)
        log = work / f"defect_{name}.log"
        log.write_text("")
        start = time.monotonic()
        build = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
        if run(build, work, log) != 0:
            results.append({"defect": name, "status": "build failed", "log": str(log)})
            print(f"{name}: build failed, see {log}", flush=True)
            continue
        pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
        rc = run(pytest, work, log)
        tail = log.read_text().strip().splitlines()[-1] if log.read_text().strip() else ""
        row = {
            "defect": name,
            "what": defect.what,
            "failed": count(tail, "failed"),
            "errors": count(tail, "error"),
            "passed": count(tail, "passed"),
            "pytest_rc": rc,
            "seconds": round(time.monotonic() - start, 1),
            "summary": tail,
            "log": str(log),
        }
        results.append(row)
        print(f"{name}: {row['failed']} failed, {row['passed']} passed ({tail})", flush=True)
    apply(by_name["none"], work, pristine)
    if args.out:
        args.out.write_text(json.dumps({"tests": tests, "results": results}, indent=2) + "\n")
    print("\n| defect | tests failed |\n|---|---:|")
    for r in results:
        print(f"| `{r['defect']}` | {r.get('failed', r.get('status'))} |")
    baseline = next((r for r in results if r["defect"] == "none"), None)
    return 1 if baseline is not None and baseline.get("failed", 1) != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
