"""pyproject's scoped warning filters: a deprecation raised from emolens code fails the test
suite, the known third-party warning is hidden, anything else still shows."""
from __future__ import annotations

import warnings

import pytest


def _warn(category, message, module):
    warnings.warn_explicit(message, category, f"{module.replace('.', '/')}.py", 1, module=module)


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
def test_deprecations_from_emolens_code_are_errors(category):
    with pytest.raises(category, match="old call"):
        _warn(category, "old call", "emolens.stats")
    with pytest.raises(category):
        _warn(category, "old call", "emolens")


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
def test_deprecations_from_elsewhere_still_show(category):
    for module in ("emolensx.other", "numpy.core", "tests.unit.test_x"):
        with pytest.warns(category, match="old call"):
            _warn(category, "old call", module)


def test_the_known_transformers_warning_is_hidden_and_only_it():
    with warnings.catch_warnings(record=True) as seen:
        # catch_warnings(record=True) keeps the active filters; "always" is not added
        _warn(FutureWarning, "`past_key_values` is deprecated and will be removed in version "
              "5.40.0 for `LlamaForCausalLM.forward`. Use `cache` instead.", "torch.nn.modules")
    assert not seen
    with pytest.warns(FutureWarning, match="something else"):
        _warn(FutureWarning, "something else is deprecated", "torch.nn.modules")
