"""bench_lcnet's yardstick: LCNet's convolutions at full cost with the op made free."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import bench_lcnet  # noqa: E402
from lcnet.model import LCBlock  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _pattern_grads(variant: str) -> list[torch.Tensor | None]:
    model = bench_lcnet.build(variant, channels_last=True)
    model(torch.rand(1, 3, 16, 16)).abs().mean().backward()
    return [m.pattern.weight.grad for m in model.modules() if isinstance(m, LCBlock)]


def test_yardstick_runs_the_pattern_convolutions_backward() -> None:
    grads = _pattern_grads("yardstick")
    assert grads and all(g is not None and not g.any() for g in grads)  # computed, zero


def test_plain_copy_skips_the_pattern_convolutions_backward() -> None:
    assert all(g is None for g in _pattern_grads("copy-no-pattern-grad"))


def test_yardstick_output_is_the_content_copy() -> None:
    pattern, content = torch.rand(2, 4, 5, 5), torch.rand(2, 4, 5, 5, requires_grad=True)
    out = bench_lcnet._Copy()(pattern, content)
    assert torch.equal(out, content) and out.data_ptr() != content.data_ptr()
    out.sum().backward()
    assert torch.equal(content.grad, torch.ones_like(content))
