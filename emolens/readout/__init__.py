"""Stage 4: reading emotion directions per token, per layer, per emotion."""
from emolens.readout.hidden import NeutralBaseline, hidden_emotion_check, neutral_baseline
from emolens.readout.readout import Readout, project, read_emotions

__all__ = ["NeutralBaseline", "Readout", "hidden_emotion_check", "neutral_baseline", "project",
           "read_emotions"]
