"""Training recipes of ``lcnet train --recipe NAME``: named sets of flag values.

- ``paper``: section 3.1 of the paper, unchanged: Adam at 1e-3 times 0.1 every 500 epochs,
  1500 epochs of batches of 32 crops of 200x200, L1 + 0.1 VGG-19 content loss, Xavier init,
  dot-product LCBlock logits. The flags' defaults are this recipe.
- ``quick``: the recipe for minutes on a CPU (the README's main job): see :data:`RECIPES`
  and docs/DESIGN.md, 'Training recipe', for what each departure from the paper fixes and the
  measurements behind it.

A recipe sets every flag it names unless that flag is given on the command line: explicit
flags override a recipe's values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["RECIPES", "apply_recipe", "cosine_factor", "divergence_message"]

#: The flags each recipe sets (TrainConfig field names).
RECIPES: Mapping[str, Mapping[str, Any]] = {
    "paper": {
        "epochs": 1500,
        "max_steps": None,
        "batch_size": 32,
        "patch_size": 200,
        "lr": 1e-3,
        "optimizer": "adam",
        "weight_decay": 0.0,
        "schedule": "step",
        "lr_step_epochs": 500,
        "lr_gamma": 0.1,
        "warmup_steps": 0,
        "clip_grad_norm": 0.0,
        "content_weight": 0.1,
        "frequency_weight": 0.0,
        "init": "xavier",
        "lc_logits": "dot",
    },
    "quick": {
        "epochs": 1_000_000,  # --max-steps ends the run
        "max_steps": 1800,  # 1200 gained less on both test splits (docs/recipes.md)
        "blur_dir": "both",  # blur or blur_gamma per crop: the gain carries to other blur
        "batch_size": 8,
        "patch_size": 96,
        "lr": 1e-3,
        "optimizer": "adam",  # AdamW's decay was not measured to help in minutes
        "weight_decay": 0.0,
        "schedule": "cosine",
        "warmup_steps": 100,
        "clip_grad_norm": 1.0,  # a guard: healthy runs stay below 0.3
        "content_weight": 0.0,  # no VGG-19: its weights cannot be downloaded offline
        "frequency_weight": 0.1,
        "init": "identity",
        "lc_logits": "dot",
        "val_every": 200,
        "val_images": 4,
        "log_every": 50,
    },
}


def apply_recipe(cfg: Any, name: str, explicit: Iterable[str] | None) -> Any:
    """A copy of the dataclass ``cfg`` with recipe ``name``'s values for every field not in
    ``explicit`` (None: nothing was given explicitly). Raises ``ValueError`` for an unknown
    recipe."""
    if name not in RECIPES:
        raise ValueError(f"--recipe must be one of {tuple(RECIPES)}, got {name!r}")
    given = frozenset(explicit or ())
    values = {k: v for k, v in RECIPES[name].items() if k not in given}
    return dataclasses.replace(cfg, **values)


def cosine_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor at ``step`` (0-based): linear warm-up from 1/warmup to 1 over
    ``warmup_steps`` steps, then half a cosine from 1 down to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def divergence_message(
    step: int,
    loss: float,
    lr: float,
    *,
    recipe: str,
    clip_grad_norm: float,
    warmup_steps: int,
    lc_logits: str,
) -> str:
    """The one line a diverged run ends with: what happened and what to change.

    It names only what the run did not already do: a quick run warms up and clips, so telling
    its user to add those would send them nowhere (docs/recipes.md: a 3600-step quick run with
    dot logits diverged at step 918; the same with ``--lc-logits cosine`` did not).
    """
    hints = ["lower --lr (e.g. half)"]
    if recipe != "quick":
        hints.append("use --recipe quick (warm-up, gradient clipping, zero-initialised branches)")
    if clip_grad_norm <= 0:
        hints.append("add --clip-grad-norm 1")
    if warmup_steps <= 0:
        hints.append("add --warmup-steps 100 (with --schedule cosine)")
    if lc_logits == "dot":
        hints.append("use --lc-logits cosine (bounded logits)")
    return (
        f"step {step}: the training loss is {loss} (not finite): the run diverged at "
        f"lr {lr:.3g}; {', or '.join(hints)}"
    )
