"""The main job (``emolens run``): every experiment, one report."""
from emolens.pipeline.run import RunConfig, run

__all__ = ["RunConfig", "run"]
