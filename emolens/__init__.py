"""emolens: emotion directions for TransformerLens models.

Build emotion directions from stimulus text, keep them in a registry, read them per token and
layer, steer with them, and test whether they are causal. Heavy modules load on first use, so
``import emolens`` is fast.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from emolens._lazy import attach
from emolens.errors import EmolensError

__version__ = "0.1.0"

# public name -> module that defines it (imported on first attribute access)
_NAMES: dict[str, str] = {
    "load_model": "emolens.models",
    "install_model": "emolens.models.install",
    "catalogue": "emolens.models.catalogue",
    "provision_default_model": "emolens.models",
    "model_provenance": "emolens.models",
    "ModelProvenance": "emolens.models",
    "DEFAULT_MODEL_ID": "emolens.models",
    "resolve_site": "emolens.sites",
    "resolve_sites": "emolens.sites",
    "Site": "emolens.sites",
    "to_inputs": "emolens.tokens",
    "TokenizedBatch": "emolens.tokens",
    "EmotionRegistry": "emolens.registry",
    "extract_emotions": "emolens.extraction",
    "extract_speaker_emotions": "emolens.extraction",
    "speaker_experiment": "emolens.extraction",
    "register_method": "emolens.extraction",
    "read_emotions": "emolens.readout",
    "Readout": "emolens.readout",
    "evaluate": "emolens.readout",
    "Evaluation": "emolens.readout",
    "load_corpus": "emolens.stimuli",
    "load_mixed_texts": "emolens.stimuli",
    "top_examples": "emolens.readout",
    "TopExamples": "emolens.readout",
    "pooled_scores": "emolens.readout",
    "Corpus": "emolens.stimuli",
    "load_affect_ratings": "emolens.stimuli",
    "generate_stories": "emolens.stimuli",
    "emotion_pca": "emolens.geometry",
    "affect_correlation": "emolens.geometry",
    "emotion_clusters": "emolens.geometry",
    "cosine_matrix": "emolens.geometry",
    "cross_layer_similarity": "emolens.geometry",
    "render_tokens": "emolens.views",
    "render_layers": "emolens.views",
    "Report": "emolens.views",
    "hidden_emotion_check": "emolens.readout",
    "neutral_baseline": "emolens.readout",
    "steer": "emolens.steering",
    "Steering": "emolens.steering",
    "generate": "emolens.generation",
    "Generation": "emolens.generation",
    "export_control_vector": "emolens.steering",
    "import_control_vector": "emolens.steering",
    "patch_direction": "emolens.causality",
    "patching_map": "emolens.causality",
    "direction_attribution": "emolens.causality",
    "shortcut_experiment": "emolens.causality",
    "preference_experiment": "emolens.causality",
    "ablation_scan": "emolens.causality",
    "sycophancy_experiment": "emolens.causality.sycophancy",
    "detection_auc": "emolens.steering",
    "steering_score": "emolens.steering",
    "reply_emotion_prediction": "emolens.readout",
}
_MODULES = ("compare", "distributed", "testing", "errors", "sites", "tokens", "models", "compat",
            "io", "geometry", "extraction", "readout", "stimuli", "views", "pipeline", "registry",
            "steering", "causality", "generation", "stats", "positions")

# ``compare`` is a package and callable: ``emolens.compare(models=[...])`` (docs/compare.md)
__all__ = ["EmolensError", "__version__", "compare", *sorted(_NAMES)]
__getattr__, __dir__ = attach(__name__, _NAMES, _MODULES)


if TYPE_CHECKING:  # pragma: no cover
    from emolens.causality import (
        direction_attribution,
        patch_direction,
        patching_map,
        preference_experiment,
        shortcut_experiment,
    )
    from emolens.extraction import extract_emotions, register_method
    from emolens.generation import Generation, generate
    from emolens.geometry import (
        affect_correlation,
        cosine_matrix,
        cross_layer_similarity,
        emotion_clusters,
        emotion_pca,
    )
    from emolens.models import (
        DEFAULT_MODEL_ID,
        ModelProvenance,
        load_model,
        model_provenance,
        provision_default_model,
    )
    from emolens.readout import Readout, hidden_emotion_check, neutral_baseline, read_emotions
    from emolens.readout.evaluation import Evaluation, evaluate
    from emolens.readout.scan import TopExamples, pooled_scores, top_examples
    from emolens.registry import EmotionRegistry
    from emolens.sites import Site, resolve_site, resolve_sites
    from emolens.steering import Steering, export_control_vector, import_control_vector, steer
    from emolens.stimuli import Corpus, generate_stories, load_affect_ratings, load_corpus
    from emolens.stimuli.mixed import load_mixed_texts
    from emolens.tokens import TokenizedBatch, to_inputs
    from emolens.views import Report, render_layers, render_tokens
