"""Steering with emotion directions: interventions, sweeps, causal word tests, control vectors.

``steer`` / ``Steering`` add, project out or clamp directions at chosen layers and positions
(strength in units of the site's mean residual-stream norm), on every row of the batch or only
on some (``rows=``); ``sweep`` measures dose-response with judges independent of the steered
direction, every strength a set of rows of one batched generation; ``emotion_word_test`` is
the study's "steering raises the matching word" check; ``export_control_vector`` writes a
llama.cpp control vector. See docs/steering.md for units, operations, rows and the position
rules with and without KV cache.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from emolens._lazy import attach

_NAMES = {
    "control_vector_metadata": "emolens.steering.control_vectors",
    "export_control_vector": "emolens.steering.control_vectors",
    "import_control_vector": "emolens.steering.control_vectors",
    "steerings_from_control_vector": "emolens.steering.control_vectors",
    "OPS": "emolens.steering.interventions",
    "SiteEdit": "emolens.steering.interventions",
    "Steering": "emolens.steering.interventions",
    "SteeringHandle": "emolens.steering.interventions",
    "apply_steering": "emolens.steering.interventions",
    "measure_mean_norm": "emolens.steering.interventions",
    "random_direction": "emolens.steering.interventions",
    "steer": "emolens.steering.interventions",
    "DirectionJudge": "emolens.steering.judges",
    "JUDGES": "emolens.steering.judges",
    "JudgeInput": "emolens.steering.judges",
    "register_judge": "emolens.steering.judges",
    "word_logprobs": "emolens.steering.judges",
    "DetectionResult": "emolens.steering.metrics",
    "JudgeRecall": "emolens.steering.metrics",
    "ScoreRules": "emolens.steering.metrics",
    "SteeringScoreResult": "emolens.steering.metrics",
    "concept_judge_recall": "emolens.steering.metrics",
    "detection_auc": "emolens.steering.metrics",
    "steering_score": "emolens.steering.metrics",
    "POSITION_NAMES": "emolens.steering.positions",
    "PositionPolicy": "emolens.steering.positions",
    "PositionTracker": "emolens.steering.positions",
    "EmotionWordTest": "emolens.steering.sweeps",
    "emotion_word_test": "emolens.steering.sweeps",
    "neutral_kl": "emolens.steering.sweeps",
    "neutral_kls": "emolens.steering.sweeps",
    "neutral_loss": "emolens.steering.sweeps",
    "plot_sweep": "emolens.steering.sweeps",
    "sweep": "emolens.steering.sweeps",
    "sweep_curves": "emolens.steering.sweeps",
    "sweep_generations": "emolens.steering.sweeps",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = attach(__name__, _NAMES)

if TYPE_CHECKING:  # pragma: no cover
    from emolens.steering.control_vectors import (
        control_vector_metadata,
        export_control_vector,
        import_control_vector,
        steerings_from_control_vector,
    )
    from emolens.steering.interventions import (
        OPS,
        SiteEdit,
        Steering,
        SteeringHandle,
        apply_steering,
        measure_mean_norm,
        random_direction,
        steer,
    )
    from emolens.steering.judges import (
        JUDGES,
        DirectionJudge,
        JudgeInput,
        register_judge,
        word_logprobs,
    )
    from emolens.steering.metrics import (
        DetectionResult,
        JudgeRecall,
        ScoreRules,
        SteeringScoreResult,
        concept_judge_recall,
        detection_auc,
        steering_score,
    )
    from emolens.steering.positions import POSITION_NAMES, PositionPolicy, PositionTracker
    from emolens.steering.sweeps import (
        EmotionWordTest,
        emotion_word_test,
        neutral_kl,
        neutral_kls,
        neutral_loss,
        plot_sweep,
        sweep,
        sweep_curves,
        sweep_generations,
    )
