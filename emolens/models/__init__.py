"""Loading models: the embedded offline default, hub names and local folders, provenance."""
from emolens.models.loading import DEFAULT_MODEL_ID, load_model, provision_default_model
from emolens.models.provenance import ModelProvenance, model_provenance, record_provenance

__all__ = [
    "DEFAULT_MODEL_ID",
    "ModelProvenance",
    "load_model",
    "model_provenance",
    "provision_default_model",
    "record_provenance",
]
