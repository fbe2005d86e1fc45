"""Reading emotion directions per token, per layer, per emotion.

Names load lazily (``emolens.readout.read_emotions`` imports torch only when first used), so the
``emolens`` command line starts fast.
"""
from __future__ import annotations

from emolens._lazy import attach

_NAMES = {
    "Evaluation": "emolens.readout.evaluation",
    "evaluate": "emolens.readout.evaluation",
    "load_labelled": "emolens.readout.evaluation",
    "NeutralBaseline": "emolens.readout.hidden",
    "hidden_emotion_check": "emolens.readout.hidden",
    "neutral_baseline": "emolens.readout.hidden",
    "Readout": "emolens.readout.readout",
    "project": "emolens.scoring",
    "read_emotions": "emolens.readout.readout",
    "ScenarioMatrix": "emolens.readout.scenarios",
    "diagonal_accuracy": "emolens.readout.scenarios",
    "scenario_matrix": "emolens.readout.scenarios",
    "TopExamples": "emolens.readout.scan",
    "pooled_scores": "emolens.readout.scan",
    "top_examples": "emolens.readout.scan",
    "ReplyPredictionResult": "emolens.readout.reply_prediction",
    "compare_predictors": "emolens.readout.reply_prediction",
    "reply_emotion_prediction": "emolens.readout.reply_prediction",
    "user_last_positions": "emolens.readout.reply_prediction",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = attach(__name__, _NAMES)
