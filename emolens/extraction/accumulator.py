"""Streaming sums for extraction: per-(class, site) sums of per-text means, mergeable.

Nothing here holds per-token activations beyond one batch: each hook call reduces its batch to
per-text means (over the positions a policy selects) and adds them into running float64 sums.
Two accumulators over disjoint halves of a corpus ``merge`` into exactly the whole-corpus one,
so extraction can be split across processes or machines.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int

from emolens.errors import ExtractionError


@dataclass
class ClassMeanAccumulator:
    """Running sums of per-text mean activations for each class at each site.

    ``sums[site, class]`` is the sum over texts of that class of the text's mean activation;
    ``counts[class]`` is the number of texts; ``norm_sum[site]``/``norm_count`` track the mean
    residual norm over selected tokens (the steering unit).
    """

    n_sites: int
    n_classes: int
    d_model: int
    sums: torch.Tensor = field(init=False)
    counts: torch.Tensor = field(init=False)
    norm_sum: torch.Tensor = field(init=False)
    norm_count: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.sums = torch.zeros(self.n_sites, self.n_classes, self.d_model, dtype=torch.float64)
        self.counts = torch.zeros(self.n_classes, dtype=torch.float64)
        self.norm_sum = torch.zeros(self.n_sites, dtype=torch.float64)
        self.norm_count = torch.zeros(self.n_sites, dtype=torch.float64)

    def add(self, site: int, act: Float[torch.Tensor, "batch pos d_model"],
            mask: Bool[torch.Tensor, "batch pos"], labels: Int[torch.Tensor, " batch"],
            *, count_texts: bool) -> Float[torch.Tensor, "batch d_model"]:
        """Add one batch at one site; returns the per-text means (rows with no selected
        position are zero and are not counted)."""
        means, keep = masked_means(act, mask)
        means, keep = means.cpu(), keep.cpu()  # reduced on the model's device, then copied
        idx = labels[keep]
        self.sums[site].index_add_(0, idx, means[keep].double())
        if count_texts:
            self.counts.index_add_(0, idx, torch.ones(len(idx), dtype=torch.float64))
        norms = act.detach().norm(dim=-1)[mask.to(act.device)]
        self.norm_sum[site] += norms.double().sum().cpu()
        self.norm_count[site] += norms.numel()
        return means

    def merge(self, other: ClassMeanAccumulator) -> ClassMeanAccumulator:
        """A new accumulator holding the sums of both."""
        if (self.n_sites, self.n_classes, self.d_model) != (other.n_sites, other.n_classes,
                                                             other.d_model):
            raise ExtractionError("cannot merge accumulators of different shapes")
        out = ClassMeanAccumulator(self.n_sites, self.n_classes, self.d_model)
        out.sums = self.sums + other.sums
        out.counts = self.counts + other.counts
        out.norm_sum = self.norm_sum + other.norm_sum
        out.norm_count = self.norm_count + other.norm_count
        return out

    def class_means(self) -> Float[torch.Tensor, "site cls d_model"]:
        if (self.counts == 0).any():
            raise ExtractionError(
                f"classes {(self.counts == 0).nonzero().flatten().tolist()} have no texts with "
                "selected positions; give every class texts (or a looser position policy)")
        return self.sums / self.counts[None, :, None]

    def mean_norm(self) -> Float[torch.Tensor, " site"]:
        return self.norm_sum / self.norm_count.clamp(min=1)


@dataclass
class MomentAccumulator:
    """Running first and second moments of token activations at each site (for neutral PCA)."""

    n_sites: int
    d_model: int
    total: torch.Tensor = field(init=False)
    outer: torch.Tensor = field(init=False)
    count: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.total = torch.zeros(self.n_sites, self.d_model, dtype=torch.float64)
        self.outer = torch.zeros(self.n_sites, self.d_model, self.d_model, dtype=torch.float64)
        self.count = torch.zeros(self.n_sites, dtype=torch.float64)

    def add(self, site: int, act: Float[torch.Tensor, "batch pos d_model"],
            mask: Bool[torch.Tensor, "batch pos"]) -> None:
        x = act.detach()[mask.to(act.device)].double()
        self.total[site] += x.sum(0).cpu()
        self.outer[site] += (x.T @ x).cpu()
        self.count[site] += x.shape[0]

    def merge(self, other: MomentAccumulator) -> MomentAccumulator:
        out = MomentAccumulator(self.n_sites, self.d_model)
        out.total = self.total + other.total
        out.outer = self.outer + other.outer
        out.count = self.count + other.count
        return out

    def covariance(self) -> Float[torch.Tensor, "site d_model d_model"]:
        n = self.count.clamp(min=1)[:, None, None]
        mu = self.total / n[..., 0]
        return self.outer / n - mu[:, :, None] * mu[:, None, :]


def masked_means(act: Float[torch.Tensor, "batch pos d_model"], mask: Bool[torch.Tensor, "batch pos"]
                 ) -> tuple[Float[torch.Tensor, "batch d_model"], Bool[torch.Tensor, " batch"]]:
    """Mean of ``act`` over the masked positions of each row, and which rows had any."""
    w = mask.to(device=act.device, dtype=act.dtype)
    n = w.sum(-1)
    means = (act * w[..., None]).sum(1) / n.clamp(min=1)[:, None]
    return means, n > 0
