"""Former home of the behaviour experiments; the names stay importable from here.

The code lives in one module per experiment over a shared A/B scoring module:
``emolens.causality.ab`` (bundled items, ``ab_token_sets``, ``score_ab``, ``steer_context``,
``BehaviourResult``), ``.shortcut`` (``shortcut_experiment``), ``.preferences``
(``preference_experiment``) and ``.dose`` (``dose_response``). Import from those or from
``emolens.causality``.
"""
from __future__ import annotations

from emolens.causality.ab import (
    DATA_DIR,
    QUANT_NOTE,
    ABScores,
    Activity,
    BehaviourResult,
    ShortcutScenario,
    SteerFactory,
    _read_jsonl,
    ab_token_sets,
    est_dict,
    load_activities,
    load_shortcut_scenarios,
    logit,
    score_ab,
    steer_context,
)
from emolens.causality.dose import dose_response
from emolens.causality.preferences import preference_experiment, preference_prompt, span_masks
from emolens.causality.shortcut import shortcut_curves, shortcut_experiment, shortcut_prompt

# the private names of the single-module version
_steer_ctx = steer_context
_logit = logit
_est_dict = est_dict
_shortcut_prompt = shortcut_prompt
_pref_prompt = preference_prompt
_span_masks = span_masks

__all__ = [
    "DATA_DIR", "QUANT_NOTE", "ABScores", "Activity", "BehaviourResult", "ShortcutScenario",
    "SteerFactory", "_read_jsonl", "ab_token_sets", "dose_response", "est_dict",
    "load_activities", "load_shortcut_scenarios", "logit", "preference_experiment",
    "preference_prompt", "score_ab", "shortcut_curves", "shortcut_experiment",
    "shortcut_prompt", "span_masks", "steer_context",
]
