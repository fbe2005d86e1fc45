"""Where a model came from, recorded in one place registries and reports read.

emolens never attaches attributes to the model object: provenance is kept in a weak map keyed
by the model, filled by ``load_model`` and ``emolens.testing``; models loaded elsewhere get a
provenance derived from their config (``source="external"``).
"""
from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emolens.compat import Model

_PROVENANCE: weakref.WeakKeyDictionary[Any, ModelProvenance] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class ModelProvenance:
    """Identity of a loaded model.

    model_id: the name every record carries (``HuggingFaceTB/SmolLM2-135M-Instruct`` for the
        default); source: ``gguf`` | ``hub`` | ``local`` | ``native`` | ``external``;
    revision: hub revision or ``sha256:<hash>`` of the file the weights came from;
    quantisation: e.g. ``Q4_1 (de-quantised to float32)`` or ``none``;
    weight_processing: ``raw`` (HF weights as they are: norms not folded, writing weights not
        centred) or ``compat`` (``enable_compatibility_mode``: HookedTransformer numerics).
    """

    model_id: str
    source: str
    revision: str | None
    quantisation: str
    weight_processing: str
    dtype: str
    n_layers: int
    d_model: int
    d_vocab: int
    notes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelProvenance:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def record_provenance(model: Model, prov: ModelProvenance) -> None:
    _PROVENANCE[model] = prov


def _weight_processing(model: Model) -> str:
    cfg = model.cfg
    if getattr(model, "compatibility_mode", False) or getattr(cfg, "fold_ln", False):
        return "compat"
    return "raw"


def model_provenance(model: Model) -> ModelProvenance:
    """The provenance of ``model``: recorded at load time, else derived from its config."""
    try:
        prov = _PROVENANCE.get(model)
    except TypeError:  # unhashable / non-weakrefable
        prov = None
    wp = _weight_processing(model)
    if prov is not None:
        if prov.weight_processing != wp:  # the user called enable_compatibility_mode later
            prov = ModelProvenance(**{**prov.to_dict(), "weight_processing": wp})
        return prov
    cfg = model.cfg
    return ModelProvenance(
        model_id=str(getattr(cfg, "model_name", None) or type(model).__name__),
        source="external",
        revision=None,
        quantisation="unknown",
        weight_processing=wp,
        dtype=str(getattr(cfg, "dtype", "unknown")).replace("torch.", ""),
        n_layers=int(cfg.n_layers),
        d_model=int(cfg.d_model),
        d_vocab=int(getattr(cfg, "d_vocab", 0) or 0),
    )
