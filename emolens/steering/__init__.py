"""Steering with emotion directions: interventions, sweeps, causal word tests, control vectors.

``steer`` / ``Steering`` add, project out or clamp directions at chosen layers and positions
(strength in units of the site's mean residual-stream norm), on every row of the batch or only
on some (``rows=``); ``sweep`` measures dose-response with judges independent of the steered
direction, every strength a set of rows of one batched generation; ``emotion_word_test`` is
the study's "steering raises the matching word" check; ``export_control_vector`` writes a
llama.cpp control vector. See docs/steering.md for units, operations, rows and the position
rules with and without KV cache.
"""
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
    ScoreRules,
    SteeringScoreResult,
    detection_auc,
    steering_score,
)
from emolens.steering.positions import POSITION_NAMES, PositionPolicy, PositionTracker
from emolens.steering.sweep import (
    EmotionWordTest,
    emotion_word_test,
    neutral_kl,
    neutral_loss,
    plot_sweep,
    sweep,
    sweep_curves,
    sweep_generations,
)

__all__ = [
    "JUDGES",
    "OPS",
    "POSITION_NAMES",
    "DetectionResult",
    "DirectionJudge",
    "EmotionWordTest",
    "JudgeInput",
    "PositionPolicy",
    "PositionTracker",
    "ScoreRules",
    "SiteEdit",
    "Steering",
    "SteeringHandle",
    "SteeringScoreResult",
    "apply_steering",
    "control_vector_metadata",
    "detection_auc",
    "emotion_word_test",
    "export_control_vector",
    "import_control_vector",
    "measure_mean_norm",
    "neutral_kl",
    "neutral_loss",
    "plot_sweep",
    "random_direction",
    "register_judge",
    "steer",
    "steering_score",
    "steerings_from_control_vector",
    "sweep",
    "sweep_curves",
    "sweep_generations",
    "word_logprobs",
]
