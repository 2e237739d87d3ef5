"""What ``convlstm-dist data-check`` looks at: a plan's archives, and batches pulled through Ray Data.

:func:`check_batches` pulls the first batches of one training epoch exactly as training would
(the plan's ``train`` dataset, the recipe's seed, crops and augmentation) from a running Ray.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class BatchCheck:
    """The first batch's shapes and ranges (model range), and what all pulled batches held."""

    x_shape: tuple = ()
    x_dtype: str = ""
    x_range: tuple[float, float] = (0.0, 0.0)
    y_shape: tuple = ()
    y_range: tuple[float, float] = (0.0, 0.0)
    valid_fraction: float = 0.0
    samples: int = 0
    seconds: float = 0.0  # Ray Data start-up included
    per_source: dict[int, int] = field(default_factory=dict)  # samples per archive (src)


def distinct_archives(plan) -> list[tuple[int, object]]:
    """``(source index, archive)`` for each archive of ``plan`` once, in plan order."""
    seen, out = set(), []
    for src in plan.sources:
        for arc in src.archives.values():
            if arc.url not in seen:
                seen.add(arc.url)
                out.append((src.index, arc))
    return out


def check_batches(plan, data_cfg, n_batches: int) -> BatchCheck:
    """Pull up to ``n_batches`` batches of the ``train`` split of ``plan`` (Ray must be running)."""
    import numpy as np
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = plan.datasets(data_cfg.seed, None, data_cfg.crops_per_window, data_cfg.augment,
                       data_cfg.read_block_mb)["train"]
    out = BatchCheck()
    t0 = time.perf_counter()
    for i, batch in enumerate(ds.iter_batches(batch_size=data_cfg.batch_size, batch_format="numpy")):
        x, y, m = batch["x"], batch["y"], batch["mask"]
        out.samples += len(x)
        for s in batch["src"].tolist():
            out.per_source[int(s)] = out.per_source.get(int(s), 0) + 1
        if i == 0:
            out.x_shape, out.x_dtype, out.x_range = tuple(x.shape), str(x.dtype), (float(x.min()), float(x.max()))
            out.y_shape, out.y_range = tuple(y.shape), (float(y.min()), float(y.max()))
            out.valid_fraction = float(np.mean(m))
        if i + 1 >= n_batches:
            break
    out.seconds = time.perf_counter() - t0
    out.per_source = dict(sorted(out.per_source.items()))
    return out
