"""Unit tests run in the model's own dtype on every machine, so that their exact numeric checks
do not depend on whether this CPU has native bf16 (``compute_dtype="auto"`` would pick bf16 on
one machine and float32 on another). Tests of the resolver itself clear this with monkeypatch.
Scoped to the unit tests (an autouse fixture), so the integration tests and the main job see
the real ``auto``."""
import pytest


@pytest.fixture(autouse=True)
def _compute_dtype_of_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOLENS_COMPUTE_DTYPE", "model")
