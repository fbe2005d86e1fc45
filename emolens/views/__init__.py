"""Views: token views (circuitsvis), static figures (matplotlib, from plain arrays, never
through pyplot; ``figures`` for extraction/readout/geometry, ``causality`` for the causal tests
and behaviour experiments) and one self-contained HTML report that opens with no network."""
from emolens.views.causality import (
    plot_component_writes,
    plot_dose_panels,
    plot_interval_lines,
    plot_pair_effects,
    plot_patching_map,
    plot_preferences,
)
from emolens.views.figures import (
    figure_to_data_uri,
    figure_to_svg,
    plot_cosine_matrix,
    plot_dose_response,
    plot_effects,
    plot_emotion_pca,
    plot_heatmap,
    plot_layer_accuracy,
    plot_layer_similarity,
    plot_scenario_matrix,
)
from emolens.views.report import Report, markdown_lite, table_html
from emolens.views.tokens import TokenView, render_layers, render_tokens, view_from_circuitsvis

__all__ = [
    "Report",
    "TokenView",
    "figure_to_data_uri",
    "figure_to_svg",
    "markdown_lite",
    "plot_component_writes",
    "plot_cosine_matrix",
    "plot_dose_panels",
    "plot_dose_response",
    "plot_effects",
    "plot_emotion_pca",
    "plot_heatmap",
    "plot_interval_lines",
    "plot_layer_accuracy",
    "plot_layer_similarity",
    "plot_pair_effects",
    "plot_patching_map",
    "plot_preferences",
    "plot_scenario_matrix",
    "render_layers",
    "render_tokens",
    "table_html",
    "view_from_circuitsvis",
]
