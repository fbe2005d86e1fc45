"""Implicit scenarios read at the reply-opening token: the study's diagonal check.

A scenario is a user message that implies an emotion without naming it (an eviction notice ->
desperate). ``scenario_matrix`` reads every registry emotion at the token that opens the
assistant's reply, averages the scenarios of each implied emotion (rows) and reports how often a
row's highest column is its own emotion (the diagonal), beside chance and the single-scenario
accuracy. ``ScenarioMatrix.column_standardised()`` z-scores each readout emotion over the
scenarios first, which removes a direction's constant offset at that token; it is a post-hoc
view (say so when reporting it), not the primary figure.
"""
from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float

from emolens.errors import InputError

if TYPE_CHECKING:
    from emolens.compat import Model

__all__ = ["ScenarioMatrix", "diagonal_accuracy", "scenario_matrix"]


def diagonal_accuracy(matrix: Any, scenario_emotions: Sequence[str],
                      readout_emotions: Sequence[str]) -> tuple[float, int, int]:
    """Share of rows whose highest column is the row's own emotion: ``(accuracy, hits, n)``.

    Rows whose emotion is not among the columns are not counted.
    """
    m = np.asarray(matrix.detach().cpu() if isinstance(matrix, torch.Tensor) else matrix,
                   dtype=np.float64)
    rows, cols = list(scenario_emotions), list(readout_emotions)
    if m.ndim != 2 or m.shape != (len(rows), len(cols)):
        raise InputError(f"matrix of shape {m.shape} does not match {len(rows)} scenario "
                         f"emotions x {len(cols)} readout emotions")
    counted = [(a, cols.index(e)) for a, e in enumerate(rows) if e in cols]
    if not counted:
        raise InputError("no scenario emotion is among the readout emotions; diagonal accuracy "
                         "needs shared names")
    hits = sum(int(np.nanargmax(m[a]) == b) for a, b in counted)
    return hits / len(counted), hits, len(counted)


@dataclass
class ScenarioMatrix:
    """Scenario emotion (rows) x readout emotion (columns) at the reply-opening token.

    ``matrix``: row means of ``per_scenario`` (``[scenario, emotion]`` readouts, in the order of
    ``scenario_emotions``); ``diagonal_*``: rows whose top column is their own emotion;
    ``per_scenario_accuracy``: single scenarios whose top column is their emotion.
    """

    matrix: Float[torch.Tensor, "row emotion"]
    rows: list[str]
    columns: list[str]
    per_scenario: Float[torch.Tensor, "scenario emotion"]
    scenario_emotions: list[str]
    layer: int
    standardised: bool
    diagonal_accuracy: float
    diagonal_hits: int
    n_rows: int
    per_scenario_accuracy: float

    @property
    def chance(self) -> float:
        return 1.0 / len(self.columns)

    @property
    def statement(self) -> str:
        kind = (" (post hoc: each readout emotion standardised over the scenarios)"
                if self.standardised else "")
        return (f"At the reply-opening token (layer {self.layer}){kind}, the top readout of "
                f"{self.diagonal_hits} of {self.n_rows} implied emotions is their own (chance "
                f"{self.chance:.3f} per row); single scenarios: "
                f"{self.per_scenario_accuracy:.3f} of {len(self.scenario_emotions)}. This shows "
                "whether the directions read an emotion that the text implies without naming; "
                "it does not show that the model uses them.")

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "rows": self.rows, "columns": self.columns,
                "matrix": [[round(float(x), 4) for x in r] for r in self.matrix],
                "standardised_columns": self.standardised,
                "diagonal_accuracy": self.diagonal_accuracy, "diagonal_hits": self.diagonal_hits,
                "n_rows": self.n_rows, "chance": self.chance,
                "per_scenario_accuracy": self.per_scenario_accuracy,
                "n_scenarios": len(self.scenario_emotions), "statement": self.statement}

    def column_standardised(self) -> ScenarioMatrix:
        """The same readouts with each column z-scored over the scenarios (post hoc; no new
        forward pass)."""
        per = self.per_scenario
        z = (per - per.mean(0, keepdim=True)) / per.std(0, keepdim=True).clamp(min=1e-8)
        return _aggregate(z, self.scenario_emotions, self.columns, self.layer, True)

    def _repr_html_(self) -> str:
        return (f"<div><b>ScenarioMatrix</b> {len(self.rows)} x {len(self.columns)}, layer "
                f"{self.layer}: diagonal {self.diagonal_hits}/{self.n_rows}<p>"
                f"{html.escape(self.statement)}</p></div>")


def _aggregate(per: torch.Tensor, emos: list[str], columns: list[str], layer: int,
               standardised: bool) -> ScenarioMatrix:
    rows = sorted(set(emos))
    mat = torch.stack([per[[i for i, e in enumerate(emos) if e == r]].mean(0) for r in rows])
    acc, hits, n = diagonal_accuracy(mat, rows, columns)
    single = sum(int(columns[int(per[i].argmax())] == e) for i, e in enumerate(emos))
    return ScenarioMatrix(mat, rows, columns, per, emos, layer, standardised, acc, hits, n,
                          single / len(emos))


def scenario_matrix(model: Model, registry: Any, scenarios: Sequence[Any], *,
                    layer: int | None = None, batch_size: int | None = None) -> ScenarioMatrix:
    """Read ``scenarios`` (corpus records with ``.emotion`` and ``.messages``, or
    ``(emotion, messages)`` pairs) at the reply-opening token and score the diagonal.

    Scenarios whose emotion is not in the registry are dropped (their rows could not be
    scored); raises ``InputError`` when none is left.
    """
    from emolens.readout.readout import read_emotions

    pairs = [(s.emotion, list(s.messages)) if hasattr(s, "emotion") else (s[0], list(s[1]))
             for s in scenarios]
    pairs = [(e, m) for e, m in pairs if e in registry.emotions]
    if not pairs:
        raise InputError(f"no scenario implies one of the registry's emotions "
                         f"{registry.emotions[:10]}...")
    ro = read_emotions(model, registry, [m for _, m in pairs], layer=layer,
                       batch_size=batch_size)
    return _aggregate(ro.at_reply(), [e for e, _ in pairs], list(registry.emotions),
                      ro.default_layer, False)

