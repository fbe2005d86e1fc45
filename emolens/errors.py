"""Every error emolens raises on purpose: one base class, one subclass per kind of mistake.

Each message names the offending value and says what to do instead.
"""
from __future__ import annotations

from collections.abc import Iterable
from difflib import get_close_matches


class EmolensError(Exception):
    """Base class of every error emolens raises on purpose."""


class ModelNotAvailableError(EmolensError):
    """The requested model cannot be loaded here (file absent, no hub access, bad name)."""


class CacheError(EmolensError):
    """A cached artefact is missing, truncated or does not match its recorded hash."""


class SiteError(EmolensError, ValueError):
    """A hook name, alias or layer index does not exist on this model."""


class CorpusError(EmolensError, ValueError):
    """A stimulus record or file is malformed (names the file, line and field)."""


class ExtractionError(EmolensError, ValueError):
    """Extraction cannot go on: non-finite activations, an empty class, bad parameters."""


class RegistryError(EmolensError, ValueError):
    """A registry is malformed, was edited or truncated on disk, or a lookup failed."""


class ModelMismatchError(RegistryError):
    """A registry was built on another model (id, d_model or layer count differ)."""


class InputError(EmolensError, ValueError):
    """User input (texts, messages, positions, strengths) cannot be used as given."""


class SteeringError(EmolensError, ValueError):
    """A steering specification is invalid."""


class NormsNotAvailableError(EmolensError):
    """The published affect norms (a package installed at set-up time) cannot be found."""


class SteeringWarning(EmolensError, UserWarning):
    """A steering setting that runs but will not give a meaningful result (an absurd strength).
    A warning; under ``-W error`` it is raised, and is then an ``EmolensError`` like the rest."""


class FormatError(EmolensError, ValueError):
    """A file on disk is not in the format emolens expects (GGUF, JSON, safetensors)."""


def check_positive_int(value: object, name: str, *, error: type[EmolensError] | None = None,
                       allow_none: bool = False) -> None:
    """Refuse anything but an int >= 1 (``bool``, floats such as 2.5 and strings such as
    ``"8"`` included) for a count such as ``batch_size``: ``error`` (default ``InputError``)."""
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise (error or InputError)(
            f"{name} must be a positive integer{' or None' if allow_none else ''}, got "
            f"{value!r} ({type(value).__name__})")


def unknown_name_message(kind: str, name: object, valid: Iterable[str], fix: str = "") -> str:
    """Build ``unknown <kind> 'x'; did you mean 'y'? Valid: ...`` with close-match suggestions."""
    valid = list(valid)
    hint = get_close_matches(str(name), valid, n=3, cutoff=0.6)
    parts = [f"unknown {kind} {name!r}"]
    if hint:
        parts.append(f"did you mean {', '.join(repr(h) for h in hint)}?")
    shown = ", ".join(repr(v) for v in valid[:40]) + (" ..." if len(valid) > 40 else "")
    parts.append(f"valid: {shown}")
    if fix:
        parts.append(fix)
    return "; ".join(parts)


class DistributedError(EmolensError, RuntimeError):
    """A distributed run failed: a rank raised (named in the message), lost contact with the
    others, or the process-group environment is incomplete."""


class CausalityError(EmolensError, ValueError):
    """A causal analysis cannot run as asked (mismatched pairs, positions, sites, metrics)."""


class StatsError(EmolensError, ValueError):
    """Data a statistic cannot be computed from (empty, mismatched lengths, bad options)."""
