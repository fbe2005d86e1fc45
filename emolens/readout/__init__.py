"""Stage 4: reading emotion directions per token, per layer, per emotion."""
from emolens.readout.readout import Readout, project, read_emotions

__all__ = ["Readout", "project", "read_emotions"]
