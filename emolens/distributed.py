"""Data parallelism on ``torch.distributed``: process-group detection, sharding, reductions.

emolens's streaming passes are sums (``ClassMeanAccumulator``, ``MomentAccumulator``, confusion
counts, top-k lists), so N processes can each stream a shard of the texts and add their sums
together. This module is the only place that talks to ``torch.distributed``:

- ``context(distributed)``: the ``DistContext`` a call runs under. ``"auto"`` (the default of
  every entry point) uses a process group that is already initialised and otherwise runs in
  one process; ``True`` also initialises one from the ``torchrun`` environment (``RANK``,
  ``WORLD_SIZE``, ``MASTER_ADDR``, ...); ``False`` never uses one.
- ``init_distributed()``: ``init_process_group`` with ``gloo`` on CPUs and ``nccl`` on GPUs and a
  timeout on every collective (``EMOLENS_DIST_TIMEOUT`` seconds, default 1800).
- ``shard_by_tokens(lengths, world_size)``: a deterministic split balanced by token count
  (longest first, each text to the rank with the fewest tokens so far).
- ``DistContext.all_reduce_``: sums in float64 (integers stay integers), on the collective's
  device (CUDA for nccl) and copied back in place.
- ``DistContext.guard(step)``: a failure on one rank ends every rank with that rank's error.
  Each rank runs the step's local work; on leaving the block all ranks exchange a status (a
  small tensor, no pickle); if any failed, every rank raises ``DistributedError`` naming the
  rank and its error. A rank that dies without reaching the exchange (killed, segfault) makes
  the others fail at the collective's timeout instead of hanging; ``torchrun`` also stops the
  other workers when one exits non-zero.

No process pool, queue or RPC of our own: ``torchrun`` (or ``torch.multiprocessing.spawn``)
starts the processes, ``torch.distributed`` moves the numbers.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from emolens.errors import DistributedError, InputError

if TYPE_CHECKING:
    from emolens.compat import Model

DEFAULT_TIMEOUT_S = 1800.0
_CHUNK = 1 << 25  # elements per all-reduce call: bounds the collective's extra memory
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def timeout_seconds() -> float:
    """Collective timeout: ``$EMOLENS_DIST_TIMEOUT`` seconds, default 1800."""
    raw = os.environ.get("EMOLENS_DIST_TIMEOUT")
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise InputError(f"EMOLENS_DIST_TIMEOUT must be a positive number of seconds, got {raw!r}")
    return value


def launched_by_torchrun() -> bool:
    """True when the torchrun environment is set with more than one process."""
    return all(v in os.environ for v in _TORCHRUN_VARS) and int(os.environ["WORLD_SIZE"]) > 1


def default_backend() -> str:
    """``nccl`` when CUDA is usable, else ``gloo``."""
    return "nccl" if torch.cuda.is_available() and torch.distributed.is_nccl_available() else "gloo"


def init_distributed(backend: str | None = None, *, timeout_s: float | None = None) -> DistContext:
    """Initialise the default process group from the torchrun environment (if not yet done).

    ``backend``: ``"gloo"`` or ``"nccl"`` (default: nccl with CUDA, else gloo). With nccl each
    process uses ``cuda:$LOCAL_RANK``. Every collective times out after ``timeout_s`` (default
    ``timeout_seconds()``). Raises ``DistributedError`` when the environment is incomplete.
    """
    import torch.distributed as dist

    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed; install a standard "
                               "torch build or run without distributed=True")
    if dist.is_initialized():
        return _from_group()
    missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise DistributedError(
            f"distributed=True but the process-group environment is incomplete (missing "
            f"{missing}); launch with `torchrun --nproc-per-node N ...`, or initialise "
            "torch.distributed yourself before calling emolens")
    backend = backend or default_backend()
    if backend not in ("gloo", "nccl"):
        raise InputError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    seconds = timeout_s if timeout_s is not None else timeout_seconds()
    dist.init_process_group(backend=backend, timeout=_dt.timedelta(seconds=seconds))
    return _from_group()


def _from_group() -> DistContext:
    import torch.distributed as dist

    backend = str(dist.get_backend())
    device = (torch.device("cuda", torch.cuda.current_device()) if backend == "nccl"
              else torch.device("cpu"))
    return DistContext(dist.get_rank(), dist.get_world_size(), backend, device)


def context(distributed: bool | str | None = "auto") -> DistContext:
    """The ``DistContext`` for a call's ``distributed=`` argument (see the module docstring)."""
    if distributed in (False, None):
        return SINGLE
    if distributed == "auto":
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return _from_group()
        return SINGLE
    if distributed is True:
        return init_distributed()
    raise InputError(f"distributed must be True, False or 'auto', got {distributed!r}")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size`` over ``backend`` (None: one process).

    ``device``: where collectives run (CUDA for nccl, CPU for gloo).
    """

    rank: int = 0
    world_size: int = 1
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend,
                "sharding": "balanced by token count" if self.active else None}

    # ----------------------------------------------------------------- collectives
    def all_reduce_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum each (contiguous) tensor over ranks, in place. Floating tensors are summed in
        float64, in chunks of 2^25 elements (the extra memory on the collective's device is at
        most 256 MiB, whatever the accumulator's size)."""
        if not self.active:
            return
        import torch.distributed as dist

        for t in tensors:
            flat = t.view(-1)  # accumulators are contiguous; reduced in chunks of <= 32 Mi
            for start in range(0, flat.numel(), _CHUNK):  # elements (256 MiB in float64)
                part = flat[start:start + _CHUNK]
                work = part.to(self.device,
                               torch.float64 if t.is_floating_point() else torch.int64)
                dist.all_reduce(work, op=dist.ReduceOp.SUM)
                part.copy_(work.to(part.device, part.dtype))

    def broadcast_(self, tensors: Sequence[torch.Tensor], src: int = 0) -> None:
        """Copy each tensor from rank ``src`` to every rank, in place (bit-identical results)."""
        if not self.active:
            return
        import torch.distributed as dist

        for t in tensors:
            work = t.to(self.device)
            dist.broadcast(work, src=src)
            t.copy_(work.to(t.device))

    def all_gather_bytes(self, data: bytes) -> list[bytes]:
        """Every rank's ``data``, in rank order (tensors of uint8: nothing is pickled)."""
        if not self.active:
            return [data]
        import torch.distributed as dist

        n = torch.tensor([len(data)], dtype=torch.int64, device=self.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        dist.all_gather(sizes, n)
        width = max(int(s) for s in sizes) or 1
        buf = torch.zeros(width, dtype=torch.uint8)
        if data:
            buf[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        buf = buf.to(self.device)
        got = [torch.zeros_like(buf) for _ in range(self.world_size)]
        dist.all_gather(got, buf)
        return [bytes(g[:int(s)].cpu().tolist()) for g, s in zip(got, sizes)]

    def all_gather_json(self, obj: Any) -> list[Any]:
        """Every rank's JSON-serialisable ``obj``, in rank order."""
        return [json.loads(b.decode("utf-8"))
                for b in self.all_gather_bytes(json.dumps(obj).encode("utf-8"))]

    def all_gather_rows(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``rows`` (same trailing shape and dtype, any first dimension)."""
        if not self.active:
            return [rows]
        import torch.distributed as dist

        n = torch.tensor([rows.shape[0]], dtype=torch.int64, device=self.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        dist.all_gather(sizes, n)
        width = max(int(s) for s in sizes)
        buf = torch.zeros((width, *rows.shape[1:]), dtype=rows.dtype)
        buf[:rows.shape[0]] = rows
        buf = buf.to(self.device)
        got = [torch.zeros_like(buf) for _ in range(self.world_size)]
        dist.all_gather(got, buf)
        return [g[:int(s)].cpu() for g, s in zip(got, sizes)]

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    @contextlib.contextmanager
    def guard(self, step: str) -> Iterator[None]:
        """Run a step's local work; afterwards every rank learns whether any rank failed.

        On one process this is transparent. On several, an exception on rank r is held until
        every rank reaches the end of the block; then every rank raises ``DistributedError``
        ``"rank r failed during <step>: <error>"`` (rank r chains its original exception).
        Put collectives after the block, never inside it.
        """
        if not self.active:
            yield
            return
        error: BaseException | None = None
        try:
            yield
        except Exception as e:  # noqa: BLE001 - reported to every rank below
            error = e
        message = "" if error is None else f"{type(error).__name__}: {error}"
        try:
            statuses = self.all_gather_bytes(message.encode("utf-8"))
        except Exception as e:  # the exchange itself failed: another rank is gone
            raise DistributedError(
                f"rank {self.rank}: lost contact with the other ranks during {step} ({e}); "
                "another rank probably crashed or was killed: see its log") from (error or e)
        failed = [(r, s.decode("utf-8")) for r, s in enumerate(statuses) if s]
        if failed:
            r, msg = failed[0]
            more = f" (and ranks {[f[0] for f in failed[1:]]})" if len(failed) > 1 else ""
            raise DistributedError(f"rank {r} failed during {step}{more}: {msg}") from error


SINGLE = DistContext()


def shard_by_tokens(lengths: Sequence[int], world_size: int) -> list[list[int]]:
    """Split item indices into ``world_size`` shards with nearly equal token totals.

    Deterministic (same lengths -> same shards on every rank): items are taken longest first
    (ties by index) and each goes to the shard with the fewest tokens so far (ties: the lowest
    rank). Each shard's indices are returned in ascending order. The largest shard exceeds the
    mean by at most the longest item.
    """
    if world_size < 1:
        raise InputError(f"world_size must be >= 1, got {world_size!r}")
    import heapq

    heap = [(0, r) for r in range(world_size)]
    shards: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i)):
        total, r = heapq.heappop(heap)
        shards[r].append(i)
        heapq.heappush(heap, (total + int(lengths[i]), r))
    return [sorted(s) for s in shards]


def token_lengths(model: Model, texts: Sequence[Any]) -> list[int]:
    """Token count of each text (strings with the model's BOS; conversations rendered with the
    chat template), computed with the tokenizer in one batched call."""
    from emolens.tokens import render_chat

    rendered = [t if isinstance(t, str) else render_chat(model, t) for t in texts]
    if not rendered:
        return []
    ids = model.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    bos = 1 if bool(getattr(model.cfg, "default_prepend_bos", True)) else 0
    return [len(x) + (bos if isinstance(t, str) else 0) for x, t in zip(ids, texts)]


def shard(ctx: DistContext, model: Model, texts: Sequence[Any]) -> list[int]:
    """This rank's indices into ``texts`` (all of them on one process)."""
    if not ctx.active:
        return list(range(len(texts)))
    return shard_by_tokens(token_lengths(model, texts), ctx.world_size)[ctx.rank]


__all__ = ["DistContext", "DistributedError", "context", "default_backend", "init_distributed",
           "launched_by_torchrun", "shard", "shard_by_tokens", "timeout_seconds",
           "token_lengths"]
