"""Generator networks."""

from hrstyle.models.hrnet import HRNet
from hrstyle.models.norm import StatsInstanceNorm2d, frozen_norm_stats, set_norm_mode
from hrstyle.models.stats import count_macs_per_pixel, count_parameters

__all__ = [
    "HRNet",
    "StatsInstanceNorm2d",
    "count_macs_per_pixel",
    "count_parameters",
    "frozen_norm_stats",
    "set_norm_mode",
]
