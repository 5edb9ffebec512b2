"""Peak memory of the tensors a block of code creates, on any device (CPU has no allocator statistics).

`PeakMemory` is a TorchDispatchMode: every tensor an op returns is counted by its storage until the last
tensor object holding that storage is freed. The fused cross-entropy's test and benchmark use it to show
that no [N, V] logits tensor is ever alive; on CUDA, torch.cuda.max_memory_allocated gives the same.
"""

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakMemory(TorchDispatchMode):
    """`with PeakMemory() as m: ...` then m.peak (bytes alive at most at once) and m.largest (one storage)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.largest = 0
        self._holders: dict[int, list[int]] = {}  # storage pointer -> [bytes, tensor objects holding it]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if key == 0:
            return
        if key in self._holders:
            self._holders[key][1] += 1
        else:
            self._holders[key] = [size, 1]
            self.live += size
            self.peak = max(self.peak, self.live)
            self.largest = max(self.largest, size)
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._holders[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._holders[key]
