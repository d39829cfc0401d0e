"""SeparableConv1D: SeparableConv2D's rule at rank 1 (``rules/conv.py``'s family), a 1-D layer on a
channels-last tensor running as a 2-D one of height 1 (``conv.torch_rank``), its pointwise
convolution included."""
from __future__ import annotations

from profiler.rules.conv import SeparableConvRule, torch_rank
from profiler.rules.registry import register


class SeparableConv1DRule(SeparableConvRule):
    """A depthwise convolution along the steps, then a pointwise one to ``filters``."""

    def build(self, a, x, ctx):
        from torch import nn
        spatial, channels = self._split(a, x, ctx)
        middle = channels * a.depth_multiplier
        parts = self._windowed(a, channels, middle, channels, self._pads(a, spatial), False, ctx)
        pointwise_cls = {1: nn.Conv1d, 2: nn.Conv2d}[torch_rank(self.rank, ctx)]
        parts.append(pointwise_cls(middle, a.filters, 1, bias=a.use_bias))
        return self._finish(a, parts, ctx)


register(SeparableConv1DRule("SeparableConv1D", rank=1))
