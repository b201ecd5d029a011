"""LCNet: the dynamic-scene deblurring network of "Deep Image Deblurring Using Local
Correlation Block" (Su, Yuan, Wang), with its data, losses, metrics, trainer and evaluator."""

from .model import LCBlock, LCNet, LCNetConfig

__all__ = ["LCBlock", "LCNet", "LCNetConfig"]
