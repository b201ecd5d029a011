"""Training-recipe experiments for LCNet on a GOPRO-layout set, in one process, in memory.

Builds the model, the data and the optimiser directly (no trainer), trains for ``--steps``
steps on random crops of the training pairs held in memory, and evaluates on the test split
exactly as ``lcnet eval`` does: whole images, output rounded to uint8 RGB, PSNR per image,
averaged; the blurry input's PSNR is the baseline and the images the model improves are
counted. One JSON line per run is appended to ``--results``.

Example (the table in the README comes from runs like this one)::

    python benchmarks/recipe_experiments.py --data ~/.cache/lcnet/synthetic-gopro-v2 \\
        --steps 1500 --lr 2e-3 --init identity --schedule cosine --warmup 100 --clip 1.0

Every run with the same arguments draws the same crops (numpy generator seeded with
``--seed``) and the same initial weights (``torch.manual_seed(--seed)``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lcnet.data import list_pairs, read_image  # noqa: E402
from lcnet.losses import DeblurLoss  # noqa: E402
from lcnet.metrics import psnr, to_uint8  # noqa: E402
from lcnet.model import LCBlock, LCNet, LCNetConfig  # noqa: E402


def load_split(root: Path, split: str, blur_dir: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    pairs = list_pairs(root, split, blur_dir)
    return [read_image(p.blur) for p in pairs], [read_image(p.sharp) for p in pairs]


def batch_from(
    rng: np.random.Generator,
    blurs: list[np.ndarray],
    sharps: list[np.ndarray],
    n: int,
    p: int,
    candidates: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """n random p x p crops with flips and channel permutation, as (n, 3, p, p) float32.

    ``candidates`` > 1: each crop is the one of that many random candidates whose blurry and
    sharp crops differ most (mean squared error): training spends its steps where PSNR is lost.
    """
    b = np.empty((n, p, p, 3), np.uint8)
    s = np.empty((n, p, p, 3), np.uint8)
    for k in range(n):
        best = -1.0
        for _ in range(candidates):
            i = int(rng.integers(len(blurs)))
            h, w = blurs[i].shape[:2]
            top, left = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
            cx = blurs[i][top : top + p, left : left + p]
            cy = sharps[i][top : top + p, left : left + p]
            err = float(np.square(cx.astype(np.float32) - cy).mean()) if candidates > 1 else 0.0
            if err > best:
                best, x, y = err, cx, cy
        if rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        if rng.random() < 0.5:
            x, y = x[::-1], y[::-1]
        order = rng.permutation(3)
        b[k], s[k] = x[:, :, order], y[:, :, order]
    to = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float().div_(255)  # noqa: E731
    return to(b), to(s)


def _dihedral(x: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """The k-th of the 8 flips/rotations of (B, C, H, W) (or its inverse)."""
    if not inverse:
        x = x.flip(-1) if k >= 4 else x
        return torch.rot90(x, k % 4, (-2, -1))
    x = torch.rot90(x, -(k % 4), (-2, -1))
    return x.flip(-1) if k >= 4 else x


@torch.no_grad()
def evaluate(
    model: LCNet,
    blurs: list[np.ndarray],
    sharps: list[np.ndarray],
    channels_last: bool,
    tta: bool = False,
) -> dict[str, float]:
    model.eval()
    gains = []
    for blur, sharp in zip(blurs, sharps, strict=True):
        x = torch.from_numpy(blur).permute(2, 0, 1)[None].float().div(255)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if tta:  # self-ensemble over the 8 flips/rotations (EDSR+)
            y = sum(_dihedral(model(_dihedral(x, k)), k, inverse=True) for k in range(8)) / 8
        else:
            y = model(x)
        out = to_uint8(y[0])
        gains.append((psnr(out, sharp), psnr(blur, sharp)))
    model.train()
    arr = np.array(gains)
    return {
        "psnr": float(arr[:, 0].mean()),
        "blurry_psnr": float(arr[:, 1].mean()),
        "gain_db": float((arr[:, 0] - arr[:, 1]).mean()),
        "improved": int((arr[:, 0] > arr[:, 1]).sum()),
        "images": len(arr),
        "worst_gain_db": float((arr[:, 0] - arr[:, 1]).min()),
    }


@torch.no_grad()
def logit_ranges(model: LCNet, x: torch.Tensor) -> list[float]:
    """Largest |logit| of every LCBlock on batch ``x`` (the diagonal <p_i, p_i> term bounds the
    dot products, so max over pixels of scale * |p_i|^2 for "dot")."""
    found: list[float] = []

    def hook(module: LCBlock, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        p = module.pattern(inputs[0])
        if module.logits == "cosine":
            found.append(float(module.temperature()) * module.correlation.scale)
        else:
            found.append(float(p.pow(2).sum(1).max()) * module.correlation.scale)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, LCBlock)]
    model(x)
    for h in handles:
        h.remove()
    return [round(v, 2) for v in found]


class LayerNorm2d(torch.nn.Module):
    """Normalise each pixel's channels (NAFNet's LayerNorm2d), with a learned affine."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(channels, 1, 1))
        self.bias = torch.nn.Parameter(torch.zeros(channels, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        return (x - mean) / (var + self.eps).sqrt() * self.weight + self.bias


def add_layer_norms(model: LCNet) -> None:
    """Pre-norm residual branches: a LayerNorm2d before every res-block body and before the
    LCBlocks' pattern and content convolutions (a departure from the paper, which has none)."""
    from lcnet.model import ResBlock

    for module in model.modules():
        if isinstance(module, ResBlock):
            c = module.body[0].in_channels
            module.body = torch.nn.Sequential(LayerNorm2d(c), *module.body)
        elif isinstance(module, LCBlock):
            c = module.pattern.in_channels
            module.pattern = torch.nn.Sequential(LayerNorm2d(c), module.pattern)
            module.content = torch.nn.Sequential(LayerNorm2d(c), module.content)


def lr_at(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    if args.schedule == "constant":
        return args.lr
    if args.schedule == "cosine":
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.min_lr + (args.lr - args.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
    raise ValueError(args.schedule)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--test-data", type=Path, action="append", default=[])
    ap.add_argument("--blur-dir", default="blur")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr", type=float, default=0.0)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    ap.add_argument("--clip", type=float, default=0.0, help="gradient-norm clip; 0: none")
    ap.add_argument("--optimizer", choices=("adam", "adamw"), default="adam")
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--beta2", type=float, default=0.999)
    ap.add_argument("--init", choices=("xavier", "identity", "output"), default="xavier")
    ap.add_argument("--lc-logits", choices=("dot", "cosine"), default="dot")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--widths", default="18,36,72", help="LCNet widths (the paper's: 18,36,72)")
    ap.add_argument("--kernel-size", type=int, default=5, help="LCBlock window")
    ap.add_argument("--norm", choices=("none", "layer"), default="none", help="see add_layer_norms")
    ap.add_argument("--loss", choices=("l1", "charbonnier", "l2", "l1fft"), default="l1")
    ap.add_argument("--fft-weight", type=float, default=0.1, help="weight of l1fft's FFT term")
    ap.add_argument("--channels-last", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    ap.add_argument(
        "--crop-candidates", type=int, default=1, help="keep the hardest of N random crops"
    )
    ap.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights; 0: none")
    ap.add_argument("--lr-lc", type=float, default=1.0, help="LR multiplier of LCBlock params")
    ap.add_argument("--eval-train", type=int, default=0, help="also evaluate N training pairs")
    ap.add_argument("--tta", action="store_true", help="also evaluate with 8-fold self-ensemble")
    ap.add_argument("--tag", default="")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/recipe_results.jsonl"))
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train_b, train_s = load_split(args.data, "train", args.blur_dir)
    tests = {str(args.data): load_split(args.data, "test", args.blur_dir)}
    for extra in args.test_data:
        tests[str(extra)] = load_split(extra, "test", args.blur_dir)

    init = "xavier" if args.init == "output" else args.init
    cfg = LCNetConfig(
        widths=tuple(int(w) for w in args.widths.split(",")),
        kernel_size=args.kernel_size,
        init=init,
        lc_logits=args.lc_logits,
        scale=args.scale,
    )
    model = LCNet(cfg)
    if args.norm == "layer":
        add_layer_norms(model)
    if args.init == "output":  # only the output convolution starts at zero
        conv = model.decoders[-1].upsample[0]
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=mf)
    opt_cls = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    lc_params = {id(p) for m in model.modules() if isinstance(m, LCBlock) for p in m.parameters()}
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in lc_params], "mult": 1.0},
        {"params": [p for p in model.parameters() if id(p) in lc_params], "mult": args.lr_lc},
    ]
    optimizer = opt_cls(groups, lr=args.lr, betas=(0.9, args.beta2), weight_decay=args.weight_decay)
    ema = (
        torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema)
        )
        if args.ema > 0
        else None
    )
    loss_fn = DeblurLoss(content_weight=0.0)

    def loss_of(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if args.loss == "charbonnier":
            return torch.sqrt((pred - target) ** 2 + 1e-6).mean()
        if args.loss == "l2":
            return (pred - target).pow(2).mean()
        if args.loss == "l1fft":  # MIMO-UNet's frequency loss
            diff = torch.fft.rfft2(pred.float()) - torch.fft.rfft2(target.float())
            fft = (diff.real.abs() + diff.imag.abs()).mean()
            return loss_fn(pred, target) + args.fft_weight * fft
        return loss_fn(pred, target)

    log: list[dict] = []
    start = time.perf_counter()
    window, gmax, status = [], 0.0, "ok"
    for step in range(args.steps):
        lr = lr_at(step, args)
        for g in optimizer.param_groups:
            g["lr"] = lr * g["mult"]
        blur, sharp = batch_from(
            rng, train_b, train_s, args.batch, args.patch, args.crop_candidates
        )
        blur = blur.contiguous(memory_format=mf)
        sharp = sharp.contiguous(memory_format=mf)
        loss = loss_of(model(blur), sharp)
        if not torch.isfinite(loss):
            status = f"non-finite loss at step {step}"
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), args.clip if args.clip > 0 else float("inf")
        )
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        window.append(float(loss.detach()))
        gmax = max(gmax, float(gnorm))
        if (step + 1) % args.log_every == 0:
            rec = {
                "step": step + 1,
                "loss": round(float(np.mean(window)), 5),
                "lr": lr,
                "grad_norm_max": round(gmax, 3),
                "logit_max": logit_ranges(model, blur[:2]),
                "s": round(time.perf_counter() - start, 1),
            }
            window, gmax = [], 0.0
            if args.eval_every and (step + 1) % args.eval_every == 0:
                ev = evaluate(model, *tests[str(args.data)], bool(args.channels_last))
                rec["gain_db"] = round(ev["gain_db"], 3)
                rec["improved"] = ev["improved"]
            print(json.dumps(rec), flush=True)
            log.append(rec)
    elapsed = time.perf_counter() - start
    result = {k: v for k, v in vars(args).items() if k not in ("results", "test_data")}
    result["data"] = str(args.data)
    result.update(status=status, train_s=round(elapsed, 1), log=log)
    if status == "ok":
        final = ema.module if ema is not None else model
        cl = bool(args.channels_last)
        runs = {name: (data, False) for name, data in tests.items()}
        if args.eval_train:
            runs["train"] = ((train_b[: args.eval_train], train_s[: args.eval_train]), False)
        if args.tta:
            runs.update({f"{name}+tta": (data, True) for name, data in tests.items()})
        result["eval"] = {
            name: {k: round(v, 3) if isinstance(v, float) else v for k, v in ev.items()}
            for name, (data, tta) in runs.items()
            for ev in [evaluate(final, *data, cl, tta)]
        }
        if ema is not None:
            result["eval_raw"] = {
                name: round(evaluate(model, *data, cl)["gain_db"], 3)
                for name, data in tests.items()
            }
    summary = {
        "tag": args.tag,
        "status": status,
        "train_s": result["train_s"],
        **{
            Path(name).name or name: f"{e['gain_db']:+.2f} dB, {e['improved']}/{e['images']}"
            for name, e in result.get("eval", {}).items()
        },
    }
    print(json.dumps(summary), flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
