"""Host -> device: batches cut in a background thread, pinned and copied ahead of the step.

Used by both backends whenever batches come from memory (``train --local``, and Ray Train workers
with ``data.loader: memory``); Ray Data's ``iter_torch_batches(prefetch_batches=2, pin_memory=...)``
does the same for streamed batches. Rows stay compact (float16 values, uint8 mask) until they are on
the device (``samples.to_compute``).
"""

from __future__ import annotations

import queue
import threading

import torch


def prefetch(it, device: torch.device, depth: int = 2):
    """Iterate ``it`` (numpy batch dicts) cut in a background thread, yielding tensors on ``device``.

    The thread converts (and on CUDA pins) up to ``depth`` batches ahead; the next batch's
    non-blocking copy to the device is issued before the current one is handed out. Stopping early
    (``break``, an error) ends the thread at its next batch."""
    pin = device.type == "cuda"
    q: queue.Queue = queue.Queue(maxsize=depth)
    done, stop = object(), threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for b in it:
                t = {k: torch.from_numpy(v) for k, v in b.items()}
                if not put({k: v.pin_memory() for k, v in t.items()} if pin else t):
                    return
        except BaseException as err:  # surfaced in the consumer
            put(err)
        put(done)

    def take():
        b = q.get()
        if isinstance(b, BaseException):
            raise b
        return None if b is done else {k: v.to(device, non_blocking=pin) for k, v in b.items()}

    threading.Thread(target=work, name="batch-prefetch", daemon=True).start()
    try:
        nxt = take()
        while nxt is not None:
            if pin:  # the next copy is queued on the stream before this batch's step
                cur, nxt = nxt, take()
                yield cur
            else:
                yield nxt
                nxt = take()
    finally:
        stop.set()
