"""Metrics for causal experiments: one number per prompt, read from logits or activations.

A ``Metric`` maps ``(logits [batch, pos, d_vocab], batch, acts, rows)`` to ``[batch]``. ``acts``
holds the activations at the hook names listed in ``reads`` (captured in the same forward pass),
so a metric can read the residual stream as well as the output; ``rows`` are the indices of the
batch's rows in the whole experiment (for per-prompt constants such as one token id per pair).
Plain callables ``f(logits, batch)``
are accepted everywhere and wrapped with ``as_metric``. Factories that name tokens by string are
bound to a model (``metric.bind(model)``) before use; the experiment functions do that for you.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int

from emolens.causality._common import CausalityError, TokenSpec, token_ids
from emolens.positions import PositionSpec, position_mask
from emolens.scoring import score
from emolens.tokens import TokenizedBatch

if TYPE_CHECKING:
    from emolens.compat import Model

MetricFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Metric:
    """A per-prompt measurement. ``fn(logits, batch, acts, rows) -> [batch]``; ``reads``: hook
    names whose activations ``fn`` needs; ``binder(model) -> Metric`` resolves token strings."""

    fn: MetricFn
    name: str = "metric"
    reads: tuple[str, ...] = ()
    binder: Callable[[Any], Metric] | None = field(default=None, repr=False)
    higher_means: str = ""

    def bind(self, model: Model) -> Metric:
        return self.binder(model) if self.binder is not None else self

    def __call__(self, logits: Float[torch.Tensor, "batch pos d_vocab"], batch: TokenizedBatch,
                 acts: Mapping[str, Float[torch.Tensor, "batch ..."]] | None = None,
                 rows: Int[torch.Tensor, " batch"] | None = None) -> Float[torch.Tensor, " batch"]:
        if self.binder is not None:
            raise CausalityError(f"metric {self.name!r} names tokens by string; call "
                                 "metric.bind(model) first (experiment functions do this)")
        if rows is None:
            rows = torch.arange(len(batch))
        out = self.fn(logits, batch, dict(acts or {}), rows)
        out = torch.as_tensor(out)
        if out.ndim != 1 or out.shape[0] != len(batch):
            raise CausalityError(f"metric {self.name!r} must return one value per prompt, shape "
                                 f"[{len(batch)}], got {tuple(out.shape)}")
        return out.float().detach().cpu()


def _unbound(*args: Any) -> torch.Tensor:
    raise CausalityError("this metric names tokens by string; call metric.bind(model) first")


def as_metric(metric: Metric | MetricFn, name: str | None = None) -> Metric:
    """Wrap ``f(logits, batch) -> [batch]`` (or ``f(logits, batch, acts)`` or
    ``f(logits, batch, acts, rows)``) as a ``Metric``."""
    if isinstance(metric, Metric):
        return metric
    if not callable(metric):
        raise CausalityError(f"metric must be a Metric or a callable f(logits, batch), got "
                             f"{type(metric).__name__}")
    import inspect

    try:
        n_args = len([p for p in inspect.signature(metric).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])
    except (TypeError, ValueError):
        n_args = 2
    if n_args >= 4:
        fn = metric
    elif n_args == 3:
        def fn(logits: torch.Tensor, batch: TokenizedBatch, acts: dict[str, torch.Tensor],
               rows: torch.Tensor) -> torch.Tensor:
            return metric(logits, batch, acts)
    else:
        def fn(logits: torch.Tensor, batch: TokenizedBatch, acts: dict[str, torch.Tensor],
               rows: torch.Tensor) -> torch.Tensor:
            return metric(logits, batch)
    return Metric(fn, str(name or getattr(metric, "__name__", "metric")))


def _gather_pos(x: torch.Tensor, batch: TokenizedBatch, pos: PositionSpec) -> torch.Tensor:
    """``x[row, pos_row]`` for a spec selecting exactly one position per row."""
    mask = position_mask(batch, pos)
    if not bool((mask.sum(-1) == 1).all()):
        raise CausalityError(f"metric position {pos!r} must select exactly one token per row "
                             "(use 'reply_or_last', 'reply', 'last', an int or a [batch] index tensor)")
    idx = mask.int().argmax(-1).to(x.device)
    return x[torch.arange(x.shape[0], device=x.device), idx]


def _set_logit(logits_at: torch.Tensor, ids: list[int] | torch.Tensor, rows: torch.Tensor
               ) -> torch.Tensor:
    """log-sum-exp of the logits of a token set (one set for all rows, or one id per row of the
    whole experiment, picked by ``rows``)."""
    if isinstance(ids, torch.Tensor):
        return logits_at[torch.arange(logits_at.shape[0], device=logits_at.device),
                         ids[rows].to(logits_at.device)]
    return logits_at[:, ids].logsumexp(-1)


def logit_diff(tokens_a: TokenSpec, tokens_b: TokenSpec, *, pos: PositionSpec = "reply_or_last"
               ) -> Metric:
    """``logit(a) - logit(b)`` at one position per prompt (default ``"reply_or_last"``: the
    reply-opening token of a chat, the last token of plain text; see ``emolens.positions``).

    A string or id names one token; a list names a set of alternatives (combined by
    log-sum-exp, e.g. ``["A", " A"]``); a ``[batch]`` integer tensor gives one token per row.
    """
    def binder(model: Model) -> Metric:
        a = tokens_a.long().cpu() if isinstance(tokens_a, torch.Tensor) and tokens_a.ndim == 1 \
            and tokens_a.numel() > 1 else token_ids(model, tokens_a)
        b = tokens_b.long().cpu() if isinstance(tokens_b, torch.Tensor) and tokens_b.ndim == 1 \
            and tokens_b.numel() > 1 else token_ids(model, tokens_b)

        def fn(logits: torch.Tensor, batch: TokenizedBatch, acts: dict[str, torch.Tensor],
               rows: torch.Tensor) -> torch.Tensor:
            at = _gather_pos(logits, batch, pos).float()
            return _set_logit(at, a, rows) - _set_logit(at, b, rows)
        return Metric(fn, "logit_diff", higher_means="more like tokens_a than tokens_b")
    return Metric(_unbound, "logit_diff", binder=binder)


def answer_prob(token_ids_: TokenSpec, *, among: TokenSpec | None = None,
                pos: PositionSpec = "reply_or_last") -> Metric:
    """Probability of a token set at one position per prompt.

    Without ``among``: the full-vocabulary softmax mass of the set. With ``among`` (a list of
    tokens or of token sets, e.g. ``[["A", " A"], ["B", " B"]]``): the softmax restricted to
    those options, so the options' probabilities sum to 1 (an A/B choice).
    """
    def binder(model: Model) -> Metric:
        target = token_ids(model, token_ids_)
        options: list[list[int]] | None = None
        if among is not None:
            if isinstance(among, (str, int)):
                raise CausalityError("among must list at least two options")
            options = [token_ids(model, o) for o in among]

        def fn(logits: torch.Tensor, batch: TokenizedBatch, acts: dict[str, torch.Tensor],
               rows: torch.Tensor) -> torch.Tensor:
            at = _gather_pos(logits, batch, pos).float()
            if options is None:
                return at.log_softmax(-1)[:, target].logsumexp(-1).exp()
            opt = torch.stack([at[:, o].logsumexp(-1) for o in options], -1)
            tgt = at[:, target].logsumexp(-1)
            return (tgt - opt.logsumexp(-1)).exp()
        return Metric(fn, "answer_prob", higher_means="the answer is more probable")
    return Metric(_unbound, "answer_prob", binder=binder)


def readout_at(registry: Any, layer: int | str | None, emotion: str | Mapping[str, float],
               pos: PositionSpec = "reply_or_last") -> Metric:
    """The readout of that emotion probe after the intervention: the centred projection
    (``emolens.scoring``) of the residual at ``registry.site(layer)`` onto the emotion's unit
    vector (or a weighted mix of emotions), at one position per prompt."""
    site = registry.site(layer)
    vec = registry.vector(emotion, site.layer)
    center = registry.center(site.layer)
    name = site.name

    def fn(logits: torch.Tensor, batch: TokenizedBatch, acts: dict[str, torch.Tensor],
           rows: torch.Tensor) -> torch.Tensor:
        if name not in acts:
            raise CausalityError(f"readout_at needs activations at {name!r}; run it through an "
                                 "emolens experiment function, which captures them")
        x = _gather_pos(acts[name], batch, pos).float()
        return score(x, vec[None], center)[..., 0]
    return Metric(fn, f"readout[{emotion}@{site.layer}]", reads=(name,),
                  higher_means=f"more {emotion} at {name}")


def kl_to_reference(reference: Float[torch.Tensor, "batch d_vocab"], *,
                    pos: PositionSpec = "reply_or_last") -> Metric:
    """KL(reference || model) at one position per prompt, in nats (``reference``: logits, one
    row per prompt of the whole experiment)."""
    ref = reference.float().log_softmax(-1)

    def fn(logits: torch.Tensor, batch: TokenizedBatch, acts: dict[str, torch.Tensor],
           rows: torch.Tensor) -> torch.Tensor:
        lp = _gather_pos(logits, batch, pos).float().log_softmax(-1)
        r = ref[rows.to(ref.device)].to(lp.device)
        if r.shape != lp.shape:
            raise CausalityError(f"reference logits {tuple(r.shape)} do not match {tuple(lp.shape)}")
        return (r.exp() * (r - lp)).sum(-1)
    return Metric(fn, "kl_to_reference", higher_means="further from the reference")


def contrast_tokens(model: Model, source_logits: Float[torch.Tensor, "batch d_vocab"],
                    target_logits: Float[torch.Tensor, "batch d_vocab"], *, top_k: int = 20
                    ) -> tuple[Int[torch.Tensor, " batch"], Int[torch.Tensor, " batch"]]:
    """Per pair, the token the source favours most over the target (among the source's top
    ``top_k``) and the reverse: ids for ``logit_diff`` that measure movement from target toward
    source."""
    s = source_logits.float().log_softmax(-1)
    t = target_logits.float().log_softmax(-1)
    diff = s - t
    top_s = s.topk(top_k, -1).indices
    top_t = t.topk(top_k, -1).indices
    a = top_s.gather(-1, diff.gather(-1, top_s).argmax(-1, keepdim=True))[:, 0]
    b = top_t.gather(-1, (-diff).gather(-1, top_t).argmax(-1, keepdim=True))[:, 0]
    return a.long().cpu(), b.long().cpu()


def renamed(metric: Metric, name: str) -> Metric:
    return replace(metric, name=name)
