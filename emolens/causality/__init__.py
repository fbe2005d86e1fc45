"""Causal tests of emotion directions: patching, attribution, behaviour, statistics.

- ``patch_direction``: move the source run's component along emotion directions into the target
  run, beside a norm-matched random-subspace placebo, with intervals and permutation tests.
- ``patch_resid_pre`` / ``patch_attn_out`` / ``patch_mlp_out`` / ``patch_head_out`` /
  ``patch_head_out_by_pos``: TransformerLens's patching maps, batched (many patches per
  forward), also under TransformerLens's names (``get_act_patch_resid_pre``,
  ``get_act_patch_attn_head_out_all_pos``, ...); ``patching_map`` wraps tokenising and caching.
- ``direction_attribution``: how much each head and MLP writes along each direction, per token
  (exact decomposition); ``direction_logit_effects``: what a direction does to the logits.
- ``shortcut_experiment``, ``preference_experiment``, ``dose_response``: behaviour scored from
  answer logits (``ab_token_sets`` / ``score_ab``), steered with ``emolens.steering``; one
  module each (``shortcut``, ``preferences``, ``dose``) over the shared ``ab`` module.
- ``run_causality``: everything above on one model and registry, for ``emolens run``.

Results are data; ``emolens.views`` draws them (``plot_patching_map``, ``plot_pair_effects``,
``plot_component_writes``, ``plot_interval_lines``, ``plot_preferences``, ``plot_dose_panels``).
See docs/causality.md for methods and for what each result does and does not establish.
"""
from emolens.causality._common import CausalityError
from emolens.causality.ab import (
    Activity,
    BehaviourResult,
    ShortcutScenario,
    ab_token_sets,
    load_activities,
    load_shortcut_scenarios,
    score_ab,
)
from emolens.causality.ablation import (
    AblationResult,
    ablation_scan,
    choose_layer,
    massive_coordinates,
)
from emolens.causality.attribution import (
    DirectionAttribution,
    LogitEffects,
    direction_attribution,
    direction_logit_effects,
)
from emolens.causality.dose import dose_response
from emolens.causality.maps import (
    TL_ALIASES,
    PatchingMap,
    batched_activation_patch,
    get_act_patch_attn_head_k_all_pos,
    get_act_patch_attn_head_k_by_pos,
    get_act_patch_attn_head_out_all_pos,
    get_act_patch_attn_head_out_by_pos,
    get_act_patch_attn_head_q_all_pos,
    get_act_patch_attn_head_q_by_pos,
    get_act_patch_attn_head_v_all_pos,
    get_act_patch_attn_head_v_by_pos,
    get_act_patch_attn_out,
    get_act_patch_block_every,
    get_act_patch_mlp_out,
    get_act_patch_resid_mid,
    get_act_patch_resid_pre,
    patch_attn_out,
    patch_head_out,
    patch_head_out_by_pos,
    patch_mlp_out,
    patch_resid_mid,
    patch_resid_pre,
    patching_map,
)
from emolens.causality.metrics import (
    Metric,
    answer_prob,
    as_metric,
    contrast_tokens,
    kl_to_reference,
    logit_diff,
    readout_at,
)
from emolens.causality.patching import (
    DirectionPatchResult,
    orthonormal_basis,
    patch_direction,
    run_metric,
)
from emolens.causality.preferences import preference_experiment
from emolens.causality.report import run_causality
from emolens.causality.shortcut import shortcut_curves, shortcut_experiment
from emolens.positions import position_mask

__all__ = [
    "AblationResult",
    "Activity",
    "BehaviourResult",
    "CausalityError",
    "DirectionAttribution",
    "DirectionPatchResult",
    "LogitEffects",
    "Metric",
    "PatchingMap",
    "TL_ALIASES",
    "ShortcutScenario",
    "ab_token_sets",
    "ablation_scan",
    "answer_prob",
    "as_metric",
    "batched_activation_patch",
    "choose_layer",
    "contrast_tokens",
    "direction_attribution",
    "direction_logit_effects",
    "get_act_patch_attn_head_k_all_pos",
    "get_act_patch_attn_head_k_by_pos",
    "get_act_patch_attn_head_out_all_pos",
    "get_act_patch_attn_head_out_by_pos",
    "get_act_patch_attn_head_q_all_pos",
    "get_act_patch_attn_head_q_by_pos",
    "get_act_patch_attn_head_v_all_pos",
    "get_act_patch_attn_head_v_by_pos",
    "get_act_patch_attn_out",
    "get_act_patch_block_every",
    "get_act_patch_mlp_out",
    "get_act_patch_resid_mid",
    "get_act_patch_resid_pre",
    "dose_response",
    "kl_to_reference",
    "load_activities",
    "load_shortcut_scenarios",
    "logit_diff",
    "massive_coordinates",
    "orthonormal_basis",
    "patch_attn_out",
    "patch_direction",
    "patch_head_out",
    "patch_head_out_by_pos",
    "patch_mlp_out",
    "patch_resid_mid",
    "patch_resid_pre",
    "patching_map",
    "position_mask",
    "preference_experiment",
    "readout_at",
    "run_causality",
    "run_metric",
    "score_ab",
    "shortcut_curves",
    "shortcut_experiment",
]
