#!/usr/bin/env bash
# One call for a machine with a CUDA GPU: build, test, sanitize, benchmark, report.
#
#   scripts/gpu_check.sh OUT_DIR
#
# Builds the extension in place against the machine's own torch (no network, no pip, no ruff:
# `python setup.py build_ext --inplace` with LCBLOCK_CUDA=1, the equivalent of
# LCBLOCK_SYSTEM_TORCH=1 scripts/setup_env.sh minus the dev tools), then, each step under its
# own time limit and all within GPU_CHECK_BUDGET_S seconds (default 470, i.e. under 8 minutes):
#   build       the C++ and CUDA kernels for the visible GPU's architecture
#   resources   registers / shared / local memory / occupancy of every kernel (cuobjdump)
#   tests_cuda  pytest -m cuda over tests/ (the real kernels against the reference)
#   memcheck    compute-sanitizer memcheck over a small forward+backward, NCHW and NHWC,
#               float32 and bfloat16
#   racecheck   compute-sanitizer racecheck (shared-memory hazards) over the same
#   bench_*     benchmarks/bench_lcblock.py on CUDA, shapes headline,lcnet,gopro, implementations
#               fused,unfold,shifted,flex, float32 and bfloat16 (--json; one run per dtype and
#               preset)
#   lcnet       LCNet inference at 1280x720 in float32/float16/bfloat16 and a few --amp
#               (float16 autocast + GradScaler) training steps
#   tests_emu   the CPU emulation tests and the resource-budget test
# and writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md (logs in OUT_DIR/logs/). A step
# that fails or times out is recorded and the next one runs; the exit status is 0 only if every
# step passed. Without a GPU it stops at once (exit 3) with a message saying so.
#
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET_S, MAX_JOBS (default: all cores).
set -uo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: scripts/gpu_check.sh OUT_DIR" >&2
  exit 2
fi
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-470}
START=$(date +%s)

no_gpu() {
  echo "gpu_check: no CUDA GPU on this machine ($1); nothing to check, stopping." >&2
  exit 3
}
# Fast test first (no torch import): no driver, no GPU.
if ! command -v nvidia-smi >/dev/null 2>&1; then
  no_gpu "nvidia-smi not found"
fi
if ! nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then
  no_gpu "nvidia-smi lists no GPU"
fi
if ! timeout 60 "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  no_gpu "torch.cuda.is_available() is False for $PY"
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1/logs"
OUT=$(cd "$1" && pwd)
LOGS=$OUT/logs
STEPS=$OUT/steps.tsv
: >"$STEPS"
cd "$ROOT" || exit 2
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export PYTHONDONTWRITEBYTECODE=1

# step NAME CAP_SECONDS COMMAND...: runs COMMAND with its output in logs/NAME.log, limited to
# CAP seconds and to what is left of the budget; records name, status, exit code, seconds.
step() {
  local name=$1 cap=$2
  shift 2
  local left=$((BUDGET - ($(date +%s) - START)))
  if [ "$left" -lt 15 ]; then
    printf '%s\tskipped\t-\t0\n' "$name" >>"$STEPS"
    echo "gpu_check: $name skipped (budget spent)"
    return 0
  fi
  local limit=$((cap < left ? cap : left))
  echo "gpu_check: $name (limit ${limit}s)"
  local t0 rc status
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  status=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status=timeout
  elif [ "$rc" -ne 0 ]; then
    status=failed
  fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$(($(date +%s) - t0))" >>"$STEPS"
  echo "gpu_check: $name $status (rc $rc, $(($(date +%s) - t0))s)"
  return 0
}

# The visible GPU's architecture only: a single-arch build is quicker.
ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
step build 200 env LCBLOCK_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
  "$PY" setup.py build_ext --inplace
if ! "$PY" -c "import sys, lcblock_cuda; sys.exit(0 if lcblock_cuda.cuda_compiled() else 1)" \
  >>"$LOGS/build.log" 2>&1; then
  echo "gpu_check: the build has no CUDA kernels; see $LOGS/build.log" >&2
  printf 'import\tfailed\t1\t0\n' >>"$STEPS"
else
  step resources 30 sh -c "'$PY' scripts/cuda_resources.py --json >'$OUT/resources.json'"
  step tests_cuda 90 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests \
    --junitxml="$OUT/tests_cuda.xml"
  SMALL=$LOGS/small_case.py
  cat >"$SMALL" <<'PY'
import torch
ops = torch.ops.lcblock_cuda
for dtype in (torch.float32, torch.bfloat16):
    for fmt in (torch.contiguous_format, torch.channels_last):
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(2, 9, 19, 70, device="cuda", dtype=dtype, generator=g)
        c = torch.randn(2, 18, 19, 70, device="cuda", dtype=dtype, generator=g)
        x, c = x.contiguous(memory_format=fmt), c.contiguous(memory_format=fmt)
        y, lse = ops.local_correlation_forward(x, c, 7, 1, 1.0)
        gx, gc = ops.local_correlation_backward(torch.ones_like(y), x, c, y, lse, 7, 1, 1.0)
        torch.cuda.synchronize()
        print(dtype, fmt, float(y.float().abs().sum()), float(gx.float().abs().sum()))
PY
  SANITIZER=$(command -v compute-sanitizer || true)
  for home in "${CUDA_HOME:-}" /usr/local/cuda; do
    if [ -z "$SANITIZER" ] && [ -n "$home" ] && [ -x "$home/bin/compute-sanitizer" ]; then
      SANITIZER=$home/bin/compute-sanitizer
    fi
  done
  for tool in memcheck racecheck; do
    if [ -z "$SANITIZER" ]; then
      printf '%s\tfailed\t-\t0\n' "$tool" >>"$STEPS"
      echo "gpu_check: $tool: compute-sanitizer not found" | tee "$LOGS/$tool.log"
      continue
    fi
    # Only our kernels are instrumented (kernel-name substring), which keeps this fast.
    step "$tool" 90 "$SANITIZER" --tool "$tool" --error-exitcode 1 --kernel-name kns=lcblock \
      "$PY" "$SMALL"
  done
  # One run per dtype and preset, so that a slow one (flex_attention compiles) costs only its
  # own rows.
  bench() {
    step "bench_$1_$2" "$3" "$PY" benchmarks/bench_lcblock.py --device cuda --dtype "$1" \
      --shapes "$2" --impl fused,unfold,shifted,flex --json "$OUT/bench_$1_$2.json"
  }
  for preset in headline lcnet gopro; do
    bench float32 "$preset" 60
  done
  step lcnet 60 "$PY" - "$OUT/lcnet.json" <<'PY'
import json, statistics, sys, time
import torch
from lcnet.model import LCNet

def timed(fn, repeats):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)

results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
torch.manual_seed(0)
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    for fmt in (torch.contiguous_format, torch.channels_last):
        net = LCNet().cuda().eval().to(dtype=dtype, memory_format=fmt)
        x = torch.rand(1, 3, 720, 1280, device="cuda", dtype=dtype)
        x = x.contiguous(memory_format=fmt)
        with torch.inference_mode():
            ms = timed(lambda: net(x), 10)
        results["rows"].append({"what": "inference 1x3x720x1280", "dtype": str(dtype),
                                "layout": "channels_last" if fmt is torch.channels_last else "nchw",
                                "ms": ms})
        print(results["rows"][-1], flush=True)
net = LCNet().cuda().train()
opt = torch.optim.Adam(net.parameters(), lr=1e-4)
scaler = torch.amp.GradScaler("cuda")
blur = torch.rand(4, 3, 256, 256, device="cuda")
sharp = torch.rand(4, 3, 256, 256, device="cuda")

def train_step():
    with torch.autocast("cuda", dtype=torch.float16):
        loss = torch.nn.functional.l1_loss(net(blur), sharp)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()

results["rows"].append({"what": "--amp training step, batch 4x3x256x256, L1 loss",
                        "dtype": "float16 autocast", "layout": "nchw",
                        "ms": timed(train_step, 5)})
print(results["rows"][-1], flush=True)
json.dump(results, open(sys.argv[1], "w"), indent=1)
PY
  for preset in headline lcnet gopro; do
    bench bfloat16 "$preset" 50
  done
  step tests_emu 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_emulation.py \
    tests/test_cuda_resources.py --junitxml="$OUT/tests_emu.xml"
fi

"$PY" - "$OUT" "$((($(date +%s) - START)))" <<'PY'
import json, pathlib, sys, xml.etree.ElementTree as ET

out, total = pathlib.Path(sys.argv[1]), int(sys.argv[2])
steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    name, status, rc, seconds = line.split("\t")
    steps.append({"step": name, "status": status, "rc": rc, "seconds": int(seconds)})
report = {"total_seconds": total, "steps": steps}
try:
    import torch
    report["torch"] = torch.__version__
    report["cuda"] = torch.version.cuda
    report["device"] = torch.cuda.get_device_name()
except Exception as exc:  # the report must still be written
    report["device"] = f"unknown ({exc})"

def load(name):
    path = out / name
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except ValueError:
        return None

for key in ("resources", "lcnet"):
    report[key] = load(f"{key}.json")
report["bench"] = {p.stem: load(p.name) for p in sorted(out.glob("bench_*.json"))}
for key in ("tests_cuda", "tests_emu"):
    path = out / f"{key}.xml"
    if path.exists():
        root = ET.parse(path).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        report[key] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
(out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")

md = [f"# gpu_check: {report.get('device')}", "",
      f"torch {report.get('torch')}, CUDA {report.get('cuda')}, {total} s in all.", "",
      "| step | status | exit | seconds |", "|---|---|---:|---:|"]
md += [f"| {s['step']} | {s['status']} | {s['rc']} | {s['seconds']} |" for s in steps]
for key in ("tests_cuda", "tests_emu"):
    if report.get(key):
        md += ["", f"{key}: " + ", ".join(f"{k} {v}" for k, v in report[key].items())]
if report["resources"]:
    md += ["", "## Kernel resources", "", "| kernel | dtype | arch | registers | shared | local "
           "| occupancy |", "|---|---|---|---:|---:|---:|---:|"]
    for r in report["resources"]:
        occ = "?" if r["occupancy"] is None else f"{100 * r['occupancy']:.1f} %"
        md.append(f"| {r['kernel']} | {r['dtype']} | {r['arch']} | {r['registers']} | "
                  f"{r['shared']} | {r['local']} | {occ} |")
for key, bench in report["bench"].items():
    if not bench:
        continue
    md += ["", f"## {key} (benchmarks/bench_lcblock.py, medians)", "",
           "| shape | impl | status | fwd ms | fwd+bwd ms | peak fwd+bwd MiB | notes |",
           "|---|---|---|---:|---:|---:|---|"]
    for r in bench.get("rows", []):
        f = lambda v: "" if v is None else f"{v:.3f}"
        md.append(f"| {r['shape']} | {r['impl']} | {r['status']} | {f(r.get('fwd_ms'))} | "
                  f"{f(r.get('fwd_bwd_ms'))} | {f(r.get('peak_fwd_bwd_mib'))} | "
                  f"{'; '.join(r.get('notes') or [])} |")
if report.get("lcnet"):
    md += ["", "## LCNet", "", "| what | dtype | layout | ms (median) |", "|---|---|---|---:|"]
    for r in report["lcnet"]["rows"]:
        md.append(f"| {r['what']} | {r['dtype']} | {r['layout']} | {r['ms']:.2f} |")
md += ["", "Logs: logs/<step>.log."]
(out / "gpu_check.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
PY

if awk -F'\t' '$2 != "ok" { bad = 1 } END { exit bad }' "$STEPS"; then
  exit 0
fi
exit 1
