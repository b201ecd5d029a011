"""Issue 16's data x recipe experiments, measured the way ``scripts/demo.sh`` measures the main job.

One run: build a synthetic GOPRO-style training set (``lcnet synth`` version ``--version``, with
the still-camera / short-path shares given here; cached under ``--cache``), train with
``lcnet train --recipe quick`` plus the extra flags after ``--``, then run the demo's four
evaluations (``lcnet eval``: the own test split on ``blur``; the shake split on ``blur_gamma``;
``--sharp-identity`` on both) and append one JSON line to ``--results``::

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/main_job_experiments.py \\
        --tag v4-10-15 --version 4 --still 0.10 --short 0.15 -- --max-steps 1200

Each line holds the data parameters, the training flags, the wall time of the training and of
the evaluations, and each split's gain (improved images, worst image) and the sharp images'
PSNR against themselves (mean, lowest).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lcnet import scenes, shake, synth  # noqa: E402
from lcnet.cli import main as lcnet  # noqa: E402
from lcnet.model import LCBlock  # noqa: E402


def _plain_forward(self: LCBlock, x: torch.Tensor) -> torch.Tensor:
    return x + self.expand(F.leaky_relu(self.content(x), 0.2))


def _summary(path: Path) -> dict:
    result = json.loads(path.read_text())
    s = result["summary"]
    if s["sharp_identity"]:
        return {"psnr": round(s["psnr"], 3), "psnr_min": round(s["psnr_min"], 3)}
    gains = [x["psnr"] - x["blurry_psnr"] for x in result["images"]]
    return {
        "gain_db": round(s["gain_db"], 3),
        "improved": s["improved"],
        "images": s["images"],
        "worst_gain_db": round(min(gains), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tag", required=True)
    ap.add_argument("--version", type=int, default=synth.DEFAULT_VERSION)
    ap.add_argument("--still", type=float, default=None, help="v4: share of still cameras")
    ap.add_argument("--short", type=float, default=None, help="v4: share of short paths")
    ap.add_argument("--v2-frames", action="store_true", help="v4: version 2's 7-15 frames")
    ap.add_argument("--noise", default=None, help="v4: LO,HI noise levels (8-bit) of the blurry")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/lcnet-experiments"))
    ap.add_argument("--shake", type=Path, default=Path.home() / ".cache/lcnet/shake-test-v1")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/recipe_results.jsonl"))
    ap.add_argument(
        "--plain",
        action="store_true",
        help="the plain-convolution twin: every LCBlock computes x + expand(lrelu(content(x))) "
        "(a res-block; its pattern conv and the local correlation unused), in this process",
    )
    ap.add_argument("train_args", nargs="*", help="extra lcnet train flags (after --)")
    args = ap.parse_args()

    if args.plain:
        LCBlock.forward = _plain_forward
    data_params: dict = {"version": args.version}
    if args.version == 4:
        if args.still is not None:
            scenes.V4_STILL_CAMERA = args.still
        if args.short is not None:
            scenes.V4_SHORT_PATH = args.short
        scenes.V4_ONE_FRAME_PER_PX = not args.v2_frames
        data_params.update(still=scenes.V4_STILL_CAMERA, short=scenes.V4_SHORT_PATH)
        if args.v2_frames:
            data_params["frames"] = "v2"
        if args.noise:
            low, high = (float(v) for v in args.noise.split(","))
            scenes.V4_MIN_NOISE_LEVELS, scenes.V4_MAX_NOISE_LEVELS = low, high
            data_params["noise"] = f"{low:g}-{high:g}"
    name = "-".join(f"{k}{v}" for k, v in data_params.items())
    data = args.cache / f"data-{name}"
    t0 = time.time()
    if not (data / synth.MANIFEST_NAME).exists():
        synth.make_synthetic_gopro(data, version=args.version, workers=2)
    synth_s = time.time() - t0
    if not (args.shake / synth.MANIFEST_NAME).exists():
        shake.make_shake_set(args.shake)

    run = args.cache / f"run-{args.tag}"
    t0 = time.time()
    train = ["train", "--recipe", "quick", "--data", str(data), "--out", str(run), "--overwrite"]
    code = lcnet([*train, *args.train_args])
    train_s = time.time() - t0
    if code != 0:
        print(f"{args.tag}: lcnet train exited {code}", file=sys.stderr)
        return code
    ckpt = ["--checkpoint", str(run / "last.pt"), "--overwrite"]
    evals = {
        "own": ["--data", str(data)],
        "shake": ["--data", str(args.shake), "--blur-dir", "blur_gamma"],
        "own_sharp": ["--data", str(data), "--sharp-identity"],
        "shake_sharp": ["--data", str(args.shake), "--sharp-identity"],
    }
    t0 = time.time()
    out = {}
    for key, flags in evals.items():
        path = run / f"results_{key}.json"
        assert lcnet(["eval", *ckpt, *flags, "--out", str(path)]) == 0
        out[key] = _summary(path)
    eval_s = time.time() - t0
    record = {
        "tag": args.tag,
        "script": "main_job_experiments.py",
        "data": data_params,
        "arch": "plain" if args.plain else "lcnet",
        "train_args": ["--recipe", "quick", *args.train_args],
        "synth_s": round(synth_s, 1),
        "train_s": round(train_s, 1),
        "eval_s": round(eval_s, 1),
        "eval": out,
    }
    with args.results.open("a") as f:
        f.write(json.dumps(record) + "\n")
    o, s, os_, ss = (out[k] for k in evals)
    print(
        f"{args.tag}: own {o['gain_db']:+.3f} ({o['improved']}/{o['images']}) | shake "
        f"{s['gain_db']:+.3f} ({s['improved']}/{s['images']}, worst {s['worst_gain_db']:+.2f}) | "
        f"sharp own {os_['psnr']:.2f}/{os_['psnr_min']:.2f} shake {ss['psnr']:.2f}/"
        f"{ss['psnr_min']:.2f} | train {train_s:.0f} s, eval {eval_s:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
