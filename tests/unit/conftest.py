"""Unit tests run in the model's own dtype on every machine, so that their exact numeric checks
do not depend on whether this CPU has native bf16 (``compute_dtype="auto"`` would pick bf16 on
one machine and float32 on another). Tests of the resolver itself clear this with monkeypatch."""
import os

os.environ["EMOLENS_COMPUTE_DTYPE"] = "model"
