"""Multi-process runs through accelerate: what pruning adds to plain data parallelism.

DDP averages the gradients of parameters. Pruning state is not parameters: movement scores
get their gradients averaged here, Taylor scores read the already-averaged gradients, so
every rank computes the same masks and applies the same shrink. Only the main process
writes files; the others wait at a barrier and then read what it wrote.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import torch
import torch.distributed as torch_dist

_accelerator = None


def launched() -> bool:
    """True under `accelerate launch` / `torchrun` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def accelerator():
    """The process's one Accelerator (created on first use; it sets up the process group)."""
    global _accelerator
    if _accelerator is None:
        from accelerate import Accelerator

        # Without CUDA, accelerate only goes multi-process on the CPU (gloo) when told cpu=True.
        _accelerator = Accelerator(cpu=not torch.cuda.is_available())
    return _accelerator


def world_size() -> int:
    return torch_dist.get_world_size() if torch_dist.is_available() and torch_dist.is_initialized() else 1


def rank() -> int:
    return torch_dist.get_rank() if torch_dist.is_available() and torch_dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        torch_dist.barrier()


def _comm_device() -> torch.device:
    """Where small tensors for collectives live: NCCL takes GPU tensors only, gloo CPU ones."""
    if torch_dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any (one all-reduce; a sync point like a barrier)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int64, device=_comm_device())
    torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
    return bool(value.item())


def average_grads(tensors: Iterable[torch.Tensor]) -> None:
    """All-reduce (mean) the gradients of tensors DDP does not know about (movement scores)."""
    if world_size() == 1:
        return
    for t in tensors:
        if t.grad is not None:
            torch_dist.all_reduce(t.grad, op=torch_dist.ReduceOp.SUM)
            t.grad /= world_size()


def sum_over_ranks(tensors: Iterable[torch.Tensor]) -> None:
    """All-reduce (sum) `tensors` in place across the processes (moments gathered on each rank's rows)."""
    if world_size() == 1:
        return
    for t in tensors:
        moved = t.to(_comm_device())
        torch_dist.all_reduce(moved, op=torch_dist.ReduceOp.SUM)
        t.copy_(moved)


def on_main(write: Callable[[], object]) -> None:
    """Run a file write on the main process only, then let every rank continue."""
    if is_main():
        write()
    barrier()


def shard(indices: list[int]) -> list[int]:
    """This rank's contiguous share of a global batch (sizes differ by at most one)."""
    n, r = world_size(), rank()
    if n == 1:
        return indices
    per, extra = divmod(len(indices), n)
    start = r * per + min(r, extra)
    return indices[start:start + per + (1 if r < extra else 0)]


def check_identical(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise unless every rank holds bit-identical `tensors` (masks, weights): a cheap digest,
    gathered as int64 tensors (no pickling between processes)."""
    if world_size() == 1:
        return
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digest = torch.tensor([int.from_bytes(h.digest()[:8], "little", signed=True)], dtype=torch.int64,
                          device=_comm_device())
    gathered = [torch.zeros_like(digest) for _ in range(world_size())]
    torch_dist.all_gather(gathered, digest)
    if any(int(g) != int(digest) for g in gathered):
        raise RuntimeError(f"ranks disagree on {what}: the processes would shrink different models")
    import logging

    logging.getLogger("trimformer").info("%d ranks agree on %s", world_size(), what)
