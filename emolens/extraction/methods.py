"""Extraction methods: small factories selected by name, open to plug-ins.

A method turns ``ExtractionData`` (per-class means, neutral covariance, optionally per-text
features) into one direction per (site, class). Built in:

- ``mean_diff`` (the study's recipe): class mean minus the mean over classes, then project out
  the top principal components of neutral-dialogue activations that together explain
  ``neutral_variance`` (default 0.5) of their variance;
- ``pca_pairs`` (RepE-style): first principal direction of differences between texts of the
  class and randomly paired texts of other classes (uncentred, sign set so the class scores
  higher);
- ``probe``: multinomial logistic regression (L2) on per-text means, in torch; the direction is
  the class's weight row mapped back to the residual basis, centred over classes.

Other packages add methods with ``register_method(name, factory)`` or an entry point in the
group ``emolens.methods`` (``name = "pkg.module:factory"``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int

from emolens.errors import ExtractionError, unknown_name_message
from emolens.sites import Site


@dataclass
class ExtractionData:
    """What a method sees. ``class_means``: ``[site, class, d_model]`` (float64);
    ``counts``: texts per class; ``neutral_cov``: ``[site, d_model, d_model]`` or None;
    ``features``/``labels``: per-text means ``[text, site, d_model]`` and class indices, present
    only for methods with ``needs_features``."""

    sites: list[Site]
    classes: list[str]
    class_means: Float[torch.Tensor, "site cls d_model"]
    counts: Float[torch.Tensor, " cls"]
    neutral_cov: Float[torch.Tensor, "site d_model d_model"] | None = None
    features: Float[torch.Tensor, "text site d_model"] | None = None
    labels: Int[torch.Tensor, " text"] | None = None
    axes_cache: dict[tuple[str, float], tuple[torch.Tensor, int]] | None = field(
        default=None, repr=False)

    def neutral_axes(self, site: int, variance: float
                     ) -> tuple[Float[torch.Tensor, "d_model k"], int]:
        """``neutral_projector`` of the neutral covariance at ``site``. ``axes_cache`` (a
        dict the caller owns, keyed by site name and variance) keeps the eigendecomposition
        across fits that share the neutral text: many re-fits on subsets of stories
        (``emolens.compare.bank``) then pay for it once."""
        if self.neutral_cov is None:
            raise ExtractionError("no neutral covariance to take axes from")
        key = (self.sites[site].name, float(variance))
        if self.axes_cache is not None and key in self.axes_cache:
            return self.axes_cache[key]
        out = neutral_projector(self.neutral_cov[site], variance)
        if self.axes_cache is not None:
            self.axes_cache[key] = out
        return out


@runtime_checkable
class ExtractionMethod(Protocol):
    name: str
    needs_features: bool

    def fit(self, data: ExtractionData) -> Float[torch.Tensor, "site cls d_model"]: ...

    def params(self) -> dict[str, Any]: ...


def neutral_projector(cov: Float[torch.Tensor, "d_model d_model"], variance: float
                      ) -> tuple[Float[torch.Tensor, "d_model k"], int]:
    """Top principal axes of a covariance that together explain ``variance`` of it."""
    evals, evecs = torch.linalg.eigh(cov.double())
    evals, evecs = evals.flip(0).clamp(min=0), evecs.flip(1)
    total = evals.sum()
    if total <= 0:
        return evecs[:, :0], 0
    share = evals.cumsum(0) / total
    k = int((share < variance).sum().item()) + 1
    return evecs[:, :k], k


class MeanDiff:
    """The study's recipe: one-vs-rest difference of means, then neutral denoising."""

    name = "mean_diff"
    needs_features = False

    def __init__(self, neutral_variance: float = 0.5):
        if not 0 <= neutral_variance < 1:
            raise ExtractionError(f"neutral_variance must be in [0, 1), got {neutral_variance!r}")
        self.neutral_variance = float(neutral_variance)
        self.removed_: list[int] = []

    def fit(self, data: ExtractionData) -> Float[torch.Tensor, "site cls d_model"]:
        v = data.class_means - data.class_means.mean(1, keepdim=True)
        self.removed_ = []
        if data.neutral_cov is not None and self.neutral_variance > 0:
            out = []
            for s in range(v.shape[0]):
                u, k = data.neutral_axes(s, self.neutral_variance)
                out.append(v[s] - (v[s] @ u) @ u.T)
                self.removed_.append(k)
            v = torch.stack(out)
        return v.float()

    def params(self) -> dict[str, Any]:
        return {"neutral_variance": self.neutral_variance,
                "neutral_components_removed": self.removed_}


class PCAPairs:
    """RepE-style: first principal direction of paired differences (class text - other text)."""

    name = "pca_pairs"
    needs_features = True

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def fit(self, data: ExtractionData) -> Float[torch.Tensor, "site cls d_model"]:
        if data.features is None or data.labels is None:
            raise ExtractionError("pca_pairs needs per-text features")
        g = torch.Generator().manual_seed(self.seed)
        x, y = data.features.double(), data.labels
        out = torch.zeros(x.shape[1], len(data.classes), x.shape[2], dtype=torch.float64)
        for c in range(len(data.classes)):
            pos, neg = (y == c).nonzero().flatten(), (y != c).nonzero().flatten()
            if len(pos) == 0 or len(neg) == 0:
                raise ExtractionError(f"class {data.classes[c]!r} needs texts of its own and others")
            partner = neg[torch.randint(len(neg), (len(pos),), generator=g)]
            diffs = x[pos] - x[partner]  # [pairs, site, d]
            for s in range(x.shape[1]):
                _, _, vh = torch.linalg.svd(diffs[:, s], full_matrices=False)
                v = vh[0]
                if (diffs[:, s] @ v).mean() < 0:
                    v = -v
                out[s, c] = v
        return out.float()

    def params(self) -> dict[str, Any]:
        return {"seed": self.seed, "pairs": "each class text with one random other-class text"}


class Probe:
    """Multinomial logistic regression on per-text means (standardised), one fit per site.

    Full-batch Adam from zero weights: deterministic, so there is no seed."""

    name = "probe"
    needs_features = True

    def __init__(self, l2: float = 1e-2, steps: int = 300, lr: float = 0.05):
        self.l2, self.steps, self.lr = float(l2), int(steps), float(lr)

    def fit(self, data: ExtractionData) -> Float[torch.Tensor, "site cls d_model"]:
        if data.features is None or data.labels is None:
            raise ExtractionError("probe needs per-text features")
        x_all, y = data.features.float(), data.labels
        n_cls = len(data.classes)
        out = []
        for s in range(x_all.shape[1]):
            x = x_all[:, s]
            mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
            z = (x - mu) / sd
            w = torch.zeros(x.shape[1], n_cls, requires_grad=True)
            b = torch.zeros(n_cls, requires_grad=True)
            opt = torch.optim.Adam([w, b], lr=self.lr)
            with torch.enable_grad():
                for _ in range(self.steps):
                    opt.zero_grad()
                    loss = torch.nn.functional.cross_entropy(z @ w + b, y) + self.l2 * (w ** 2).sum()
                    loss.backward()
                    opt.step()
            weights = (w.detach() / sd[:, None]).T  # back to the residual basis: [cls, d]
            out.append(weights - weights.mean(0, keepdim=True))
        return torch.stack(out)

    def params(self) -> dict[str, Any]:
        return {"l2": self.l2, "steps": self.steps, "lr": self.lr, "standardise": True,
                "init": "zeros, full batch (deterministic)"}


METHODS: dict[str, Callable[..., ExtractionMethod]] = {
    "mean_diff": MeanDiff,
    "pca_pairs": PCAPairs,
    "probe": Probe,
}


def register_method(name: str, factory: Callable[..., ExtractionMethod]) -> None:
    """Make ``factory(**params)`` available as ``extract_emotions(..., method=name)``."""
    METHODS[name] = factory


def _entry_point_methods() -> dict[str, Callable[..., ExtractionMethod]]:
    from importlib.metadata import entry_points

    found = {}
    for ep in entry_points(group="emolens.methods"):
        found[ep.name] = ep.load()
    return found


def get_method(method: str | ExtractionMethod, **params: Any) -> ExtractionMethod:
    """Build a method by name (``params`` go to its factory) or pass an instance through."""
    if not isinstance(method, str):
        if params:
            raise ExtractionError("method parameters go to the method's constructor when you "
                                  "pass an instance")
        return method
    if method not in METHODS:
        METHODS.update({k: v for k, v in _entry_point_methods().items() if k not in METHODS})
    if method not in METHODS:
        raise ExtractionError(unknown_name_message("extraction method", method, sorted(METHODS)))
    try:
        return METHODS[method](**params)
    except TypeError as e:
        raise ExtractionError(f"bad parameters {params} for method {method!r}: {e}") from e
