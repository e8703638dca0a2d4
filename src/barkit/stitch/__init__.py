"""Branch-Train-Stitch (BTS, arXiv 2502.00075): frozen dense experts joined to a frozen seed by stitches.

* :mod:`barkit.stitch.layers`: the stitched model and its stitch layers (math and initialisation);
* :mod:`barkit.stitch.store`: the on-disk format (``stitch.safetensors`` + ``stitch.json``) and loading;
* :mod:`barkit.stitch.build`: create, add an expert, remove an expert (training through the one loop);
* :mod:`barkit.stitch.cost`: parameters touched per token and generation throughput.
"""

from __future__ import annotations

from barkit.stitch.build import TrainOptions, stitch_add, stitch_create, stitch_remove
from barkit.stitch.cost import measure_tokens_per_second, stitched_cost
from barkit.stitch.layers import StitchedCache, StitchedCausalLM, stitch_points
from barkit.stitch.store import STITCH_CONFIG, is_stitched, load_stitched

__all__ = [
    "STITCH_CONFIG",
    "StitchedCache",
    "StitchedCausalLM",
    "TrainOptions",
    "is_stitched",
    "load_stitched",
    "measure_tokens_per_second",
    "stitch_add",
    "stitch_create",
    "stitch_points",
    "stitch_remove",
    "stitched_cost",
]
