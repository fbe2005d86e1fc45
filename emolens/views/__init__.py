"""Stage 6: views. Token views (circuitsvis), static figures (matplotlib) and one
self-contained HTML report that opens with no network."""
from emolens.views.figures import (
    diagonal_accuracy,
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
    "diagonal_accuracy",
    "figure_to_data_uri",
    "figure_to_svg",
    "markdown_lite",
    "plot_cosine_matrix",
    "plot_dose_response",
    "plot_effects",
    "plot_emotion_pca",
    "plot_heatmap",
    "plot_layer_accuracy",
    "plot_layer_similarity",
    "plot_scenario_matrix",
    "render_layers",
    "render_tokens",
    "table_html",
    "view_from_circuitsvis",
]
