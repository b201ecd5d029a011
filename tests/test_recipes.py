"""Tests of the training recipes (`lcnet train --recipe`), the stop of a diverging run, the
model's init / logit options, channels_last equivalence and `lcnet plot`."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import TINY_TRAIN_ARGS

import lcblock_cuda
from lcnet import plot
from lcnet.checkpoint import non_finite_parameters
from lcnet.cli import main
from lcnet.model import LCBlock, LCNet, LCNetConfig
from lcnet.recipes import RECIPES, apply_recipe, cosine_factor, divergence_message
from lcnet.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
FUSED = pytest.mark.skipif(
    lcblock_cuda.extension_error() is not None, reason="compiled kernels not built"
)


def _config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())["train"]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------ recipes
def test_paper_recipe_is_the_default_config() -> None:
    defaults = TrainConfig()
    for name, value in RECIPES["paper"].items():
        assert getattr(defaults, name) == value, name
    assert defaults.recipe == "paper"


def test_every_recipe_field_is_a_train_flag() -> None:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for recipe in RECIPES.values():
        assert set(recipe) <= fields


def test_apply_recipe_keeps_explicit_values() -> None:
    cfg = TrainConfig(lr=5e-4, patch_size=64)
    quick = apply_recipe(cfg, "quick", {"lr"})
    assert quick.lr == 5e-4  # given explicitly
    assert quick.patch_size == RECIPES["quick"]["patch_size"]  # not given: the recipe's
    assert quick.schedule == "cosine" and quick.init == "identity"
    with pytest.raises(ValueError, match="--recipe must be one of .* got 'fast'"):
        apply_recipe(cfg, "fast", None)


def test_from_recipe() -> None:
    cfg = TrainConfig.from_recipe("quick", max_steps=7)
    assert cfg.recipe == "quick" and cfg.max_steps == 7 and cfg.warmup_steps == 100
    assert TrainConfig.from_recipe("paper") == TrainConfig()


def test_cosine_factor() -> None:
    assert cosine_factor(0, 4, 20) == pytest.approx(0.25)
    assert cosine_factor(3, 4, 20) == pytest.approx(1.0)
    assert cosine_factor(4, 4, 20) == pytest.approx(1.0)
    assert cosine_factor(12, 4, 20) == pytest.approx(0.5)
    assert cosine_factor(20, 4, 20) == pytest.approx(0.0, abs=1e-12)
    assert cosine_factor(0, 0, 10) == pytest.approx(1.0)


def test_cli_recipe_quick_with_overrides(tiny_gopro: Path, tmp_path: Path) -> None:
    run = tmp_path / "quick"
    args = ["train", "--data", str(tiny_gopro), "--out", str(run), "--recipe", "quick"]
    args += [*TINY_TRAIN_ARGS, "--max-steps", "6", "--warmup-steps", "2", "--lr", "5e-4"]
    assert main(args) == 0
    cfg = _config(run)
    # Explicit flags win...
    assert cfg["lr"] == 5e-4 and cfg["max_steps"] == 6 and cfg["warmup_steps"] == 2
    assert cfg["batch_size"] == 2 and cfg["patch_size"] == 32 and cfg["log_every"] == 1
    # ...the recipe sets the rest.
    assert cfg["recipe"] == "quick" and cfg["frequency_weight"] == 0.1
    assert cfg["schedule"] == "cosine" and cfg["init"] == "identity"
    assert cfg["clip_grad_norm"] == RECIPES["quick"]["clip_grad_norm"]
    lrs = [r["lr"] for r in _records(run) if r["kind"] == "train"]
    # The lr logged after step k is the next step's: warm-up (2.5e-4, 5e-4) over steps 1-2,
    # then cosine from 5e-4 down to 0 after step 6.
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(5e-4)
    assert lrs[2] < lrs[1] and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    train_records = [r for r in _records(run) if r["kind"] == "train"]
    assert all(r["grad_norm_max"] >= 0 for r in train_records)
    assert all(len(r["lc_logit_max"]) == 6 for r in train_records)


def test_cli_paper_recipe_is_unchanged(tiny_gopro: Path, tmp_path: Path) -> None:
    run = tmp_path / "paper"
    args = ["train", "--data", str(tiny_gopro), "--out", str(run), *TINY_TRAIN_ARGS]
    assert main([*args, "--max-steps", "2"]) == 0
    cfg = _config(run)
    assert cfg["recipe"] == "paper" and cfg["optimizer"] == "adam" and cfg["schedule"] == "step"
    assert cfg["init"] == "xavier" and cfg["lc_logits"] == "dot" and cfg["lr"] == 1e-3


def test_warmup_needs_cosine(tiny_gopro: Path, tmp_path: Path, capsys) -> None:
    args = ["train", "--data", str(tiny_gopro), "--out", str(tmp_path / "r"), *TINY_TRAIN_ARGS]
    assert main([*args, "--warmup-steps", "3"]) == 2
    assert "--warmup-steps 3 needs --schedule cosine" in capsys.readouterr().err


# --------------------------------------------------------------------------- a diverging run
def test_diverging_run_stops_with_one_line(tiny_gopro: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "diverged"
    args = ["-q", "train", "--data", str(tiny_gopro), "--out", str(run), *TINY_TRAIN_ARGS]
    assert main([*args, "--lr", "1e12", "--max-steps", "50", "--save-every", "1"]) == 2
    text = capsys.readouterr().err
    err = [line for line in text.splitlines() if "error" in line]
    assert "Traceback" not in text
    assert len(err) == 1 and err[0].startswith("lcnet train: error: step "), err
    assert "not finite" in err[0] and "lower --lr" in err[0]
    steps = [r["step"] for r in _records(run) if r["kind"] == "train"]
    assert max(steps) < 50  # stopped at once
    # Every checkpoint on disk holds finite weights.
    for name in ("last.pt", "best.pt"):
        if (run / name).exists():
            state = torch.load(run / name, map_location="cpu", weights_only=True)["model"]
            assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


@pytest.mark.parametrize(
    ("cfg", "said", "not_said"),
    [
        # The quick recipe already warms up and clips: the hint must not tell the user to add
        # what the run did (a 3600-step quick run diverged at step 918 with dot logits and was
        # stable with cosine logits, docs/recipes.md).
        (
            {"recipe": "quick", "clip_grad_norm": 1.0, "warmup_steps": 100, "lc_logits": "dot"},
            ["lower --lr", "--lc-logits cosine"],
            ["--clip-grad-norm", "--warmup-steps", "--recipe quick"],
        ),
        (
            {"recipe": "quick", "clip_grad_norm": 1.0, "warmup_steps": 100, "lc_logits": "cosine"},
            ["lower --lr"],
            ["--clip-grad-norm", "--warmup-steps", "--lc-logits"],
        ),
        (
            {"recipe": "paper", "clip_grad_norm": 0.0, "warmup_steps": 0, "lc_logits": "dot"},
            ["lower --lr", "--recipe quick", "--clip-grad-norm 1"],
            [],
        ),
    ],
)
def test_divergence_hint_names_only_what_the_run_did_not_do(cfg, said, not_said) -> None:
    message = divergence_message(918, float("nan"), 8.7e-4, **cfg)
    assert message.startswith("step 918: the training loss is nan (not finite)")
    assert "lr 0.00087" in message
    for text in said:
        assert text in message, (text, message)
    for text in not_said:
        assert text not in message, (text, message)


def _nan_checkpoint(tiny_run: Path, tmp_path: Path) -> Path:
    ckpt = torch.load(tiny_run / "last.pt", map_location="cpu", weights_only=True)
    first = next(iter(ckpt["model"]))
    ckpt["model"][first] = torch.full_like(ckpt["model"][first], float("nan"))
    path = tmp_path / "nan.pt"
    torch.save(ckpt, path)
    return path


def test_eval_and_deblur_refuse_non_finite_weights(
    tiny_run: Path, tiny_gopro: Path, tmp_path: Path, capsys
) -> None:
    path = _nan_checkpoint(tiny_run, tmp_path)
    assert main(["eval", "--checkpoint", str(path), "--data", str(tiny_gopro)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights are not finite" in err[0] and "diverged" in err[0]
    image = next((tiny_gopro / "test").rglob("*.png"))
    args = ["deblur", str(image), "--out", str(tmp_path / "out"), "--checkpoint", str(path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights are not finite" in err[0]


# ------------------------------------------------------------------------------ model options
def test_identity_init_returns_the_input() -> None:
    torch.manual_seed(0)
    model = LCNet(LCNetConfig(widths=(8, 16, 32), init="identity", lc_backend="reference"))
    x = torch.rand(2, 3, 24, 40)
    assert torch.equal(model(x), x)
    paper = LCNet(LCNetConfig(widths=(8, 16, 32), lc_backend="reference"))
    assert not torch.allclose(paper(x), x, atol=1e-3)
    # Same parameters either way: checkpoints move between the two.
    assert paper.state_dict().keys() == model.state_dict().keys()
    assert not LCNetConfig(init="identity").architecture_diff(LCNetConfig())


def test_cosine_logits_are_bounded() -> None:
    torch.manual_seed(0)
    block = LCBlock(8, logits="cosine", backend="reference")
    x = 100 * torch.randn(1, 8, 12, 12)  # large features: dot products would be huge
    bound = LCNet(LCNetConfig(widths=(8, 16, 32), lc_logits="cosine", lc_backend="reference"))
    assert all(v == pytest.approx(10.0) for v in bound.lc_logit_bounds(torch.rand(1, 3, 16, 16)))
    y = block(x)
    assert torch.isfinite(y).all() and y.shape == x.shape
    assert "log_temperature" in dict(block.named_parameters())
    assert LCNetConfig(lc_logits="cosine").architecture_diff(LCNetConfig()) == {
        "lc_logits": ("cosine", "dot")
    }
    with pytest.raises(ValueError, match="logits to be one of"):
        LCBlock(8, logits="softmax")
    with pytest.raises(ValueError, match="init to be one of"):
        LCNetConfig(init="kaiming")


# ---------------------------------------------------------------------------- channels_last
@pytest.mark.parametrize("backend", [pytest.param("fused", marks=FUSED), "reference"])
def test_channels_last_matches_nchw(backend: str) -> None:
    torch.manual_seed(0)
    nchw = LCNet(LCNetConfig(widths=(8, 16, 32), lc_backend=backend))
    cl = LCNet(LCNetConfig(widths=(8, 16, 32), lc_backend=backend))
    cl.load_state_dict(nchw.state_dict())
    cl = cl.to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 36, 52)
    target = torch.rand(2, 3, 36, 52)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    y, y_cl = nchw(x), cl(x_cl)
    # Float tolerance: the convolutions sum in another order in channels_last.
    torch.testing.assert_close(y_cl, y, rtol=1e-3, atol=2e-4)
    (y - target).pow(2).mean().backward()
    (y_cl - target).pow(2).mean().backward()
    grads = dict(nchw.named_parameters())
    for name, p in cl.named_parameters():
        ref = grads[name].grad
        assert (p.grad - ref).norm() <= 1e-3 * ref.norm() + 1e-7, name


def test_trainer_channels_last_matches_nchw(tiny_gopro: Path, tmp_path: Path) -> None:
    states = {}
    for flag in ("--channels-last", "--no-channels-last"):
        run = tmp_path / flag.strip("-")
        args = ["train", "--data", str(tiny_gopro), "--out", str(run), *TINY_TRAIN_ARGS, flag]
        assert main([*args, "--max-steps", "3"]) == 0
        states[flag] = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
        assert _config(run)["channels_last"] == (flag == "--channels-last")
    a, b = (states[f]["model"] for f in ("--channels-last", "--no-channels-last"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-5, msg=name)


def test_eval_runs_in_channels_last(tiny_run: Path, tiny_gopro: Path) -> None:
    from lcnet.inference import load_model, run_timed

    model, _ = load_model(str(tiny_run / "last.pt"), torch.device("cpu"), None)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not non_finite_parameters(model)
    image = np.array(PIL.Image.open(next((tiny_gopro / "test").rglob("blur/*.png"))))
    out, _ = run_timed(model, image, torch.device("cpu"), None)
    nchw = model.to(memory_format=torch.contiguous_format)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    ref = (nchw(x).clamp(0, 1)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


# -------------------------------------------------------------------------------------- plot
def test_plot_draws_the_curve(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    lines = [
        {"kind": "train", "step": s, "loss": 0.05 / s, "lr": 1e-3 * math.cos(s / 40)}
        for s in range(10, 60, 10)
    ]
    lines.append({"kind": "val", "step": 50, "val_psnr": 27.5})
    text = "\n".join(json.dumps(r) for r in lines) + "\n{broken"
    (run / "metrics.jsonl").write_text(text)
    path = plot.plot_run(run)
    assert path == run / "curve.png"
    image = PIL.Image.open(path)
    assert image.size == (plot.PANEL_W, 3 * plot.PANEL_H + 16)
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    for colour in plot.COLOURS.values():  # each curve is drawn
        assert (pixels == colour).all(axis=1).any(), colour
    assert main(["plot", str(run), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").is_file()


def test_plot_errors(tmp_path: Path, capsys) -> None:
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"kind": "val", "step": 1, "val_psnr": 3}\n')
    with pytest.raises(plot.PlotError, match="no training records"):
        plot.plot_run(tmp_path)
