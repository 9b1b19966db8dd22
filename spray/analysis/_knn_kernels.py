"""Compiled inner loops of spray's projected kNN search (:mod:`spray.analysis._projected`).

numba is a dependency of umap-learn (and so of spray). This module is imported only by the projected path
(``spray.analysis._projected._knn_kernels``), so ``import spray.analysis`` does not import numba. Every
kernel is compiled with ``cache=True``: the machine code is kept on disk (``__pycache__`` beside this file,
or ``NUMBA_CACHE_DIR``, or numba's per-user cache directory when this folder is read-only), so only a
machine's first process compiles; later ones load it. No kernel takes a function argument, which keeps the
cache entries valid across processes.

All kernels release the GIL (``nogil``): :mod:`spray.analysis._projected` runs them from a few Python threads on disjoint
rows. Inputs are finite float32: no NaN or inf ever reaches them (the "empty" entry is the largest finite
float32), which is what lets the scans use ``fastmath``.
"""

from __future__ import annotations

import numba
import numpy as np

# Elements compared at once before any is looked at on its own: most chunks hold no value below a row's
# current c-th smallest, and their minimum is a vectorised reduction.
_CHUNK = 32


@numba.njit(nogil=True, cache=True)
def keep_smallest(values: np.ndarray, indices: np.ndarray, count: int, keep: int) -> None:
    """Reorder ``values[:count]`` (and ``indices`` alike) so that the ``keep`` smallest come first (in no
    particular order): quickselect, median-of-three pivots, deterministic."""
    low, high = 0, count - 1
    while low < high:
        middle = (low + high) // 2
        a, b, c = values[low], values[middle], values[high]
        pivot = max(min(a, b), min(max(a, b), c))
        i, j = low, high
        while i <= j:
            while values[i] < pivot:
                i += 1
            while values[j] > pivot:
                j -= 1
            if i <= j:
                values[i], values[j] = values[j], values[i]
                indices[i], indices[j] = indices[j], indices[i]
                i += 1
                j -= 1
        # now values[low:j + 1] <= pivot <= values[i:high + 1]
        if keep - 1 <= j:
            high = j
        elif keep - 1 >= i:
            low = i
        else:
            break


@numba.njit(nogil=True, cache=True)
def keep_smallest_rows(
    values: np.ndarray, indices: np.ndarray, counts: np.ndarray, first: int, last: int, keep: int
) -> None:
    """:func:`keep_smallest` for the buffers of points ``first`` to ``last - 1``."""
    for point in range(first, last):
        keep_smallest(values[point], indices[point], counts[point], keep)


@numba.njit(nogil=True, cache=True, fastmath=True)
def scan_block(
    block: np.ndarray,
    slots: np.ndarray,
    owners: np.ndarray,
    columns: np.ndarray,
    values: np.ndarray,
    indices: np.ndarray,
    counts: np.ndarray,
    tops: np.ndarray,
) -> None:
    """Offer every entry of ``block`` to the candidate buffers.

    ``block[a, b]`` is the (squared, projected) distance of point ``owners[a]`` to point ``columns[b]``,
    for the buffer of slot ``slots[a]``. Slot s keeps ``values[s, :counts[s]]`` / ``indices[s, :counts[s]]``,
    room for 2 c; ``tops[s]`` is the c-th smallest distance seen so far (or the largest float32 before 2 c
    were seen): only entries below it are kept, and a full buffer is cut back to its c smallest. (Cheaper
    than a heap: most kept entries are just appended.) A point is never its own candidate. Threads scan
    blocks of disjoint slots.
    """
    n_rows, n_columns = block.shape
    room = values.shape[1]
    keep = room // 2
    full = n_columns - n_columns % _CHUNK
    for a in range(n_rows):
        slot = slots[a]
        point = owners[a]
        row = block[a]
        top = tops[slot]
        count = counts[slot]
        start = 0
        while start < n_columns:
            stop = start + _CHUNK if start < full else n_columns
            low = row[start]
            for b in range(start + 1, stop):
                value = row[b]
                low = value if value < low else low
            if low < top:
                for b in range(start, stop):
                    if row[b] < top and columns[b] != point:
                        values[slot, count] = row[b]
                        indices[slot, count] = columns[b]
                        count += 1
                        if count == room:
                            keep_smallest(values[slot], indices[slot], count, keep)
                            count = keep
                            top = values[slot, 0]
                            for t in range(1, keep):
                                top = max(top, values[slot, t])
            start = stop
        counts[slot] = count
        tops[slot] = top


@numba.njit(nogil=True, cache=True, fastmath=True)
def pair_sq_distances(x: np.ndarray, first: np.ndarray, second: np.ndarray, out: np.ndarray) -> None:
    """``out[t] = |x[first[t]] - x[second[t]]|^2``: float32 differences (exact to one rounding), squares
    summed in float64 (relative error ~1e-15, as in the exact path's re-ranking). ``fastmath`` lets the sum
    be vectorised, i.e. added in another order than one by one: deterministic for a machine, and within
    ~1e-15 of any other order."""
    n_features = x.shape[1]
    for t in range(first.shape[0]):
        u = x[first[t]]
        v = x[second[t]]
        total = 0.0
        for q in range(n_features):
            difference = np.float64(u[q] - v[q])
            total += difference * difference
        out[t] = total


def load() -> None:
    """Load (or compile) every kernel for the argument types spray passes, by calling each on tiny inputs."""
    values = np.zeros((2, 4), dtype=np.float32)
    indices = np.zeros((2, 4), dtype=np.int64)
    counts = np.zeros(2, dtype=np.int64)
    tops = np.zeros(2, dtype=np.float32)
    positions = np.arange(2, dtype=np.int64)
    scan_block(np.zeros((2, 2), dtype=np.float32), positions, positions, positions, values, indices, counts, tops)
    keep_smallest_rows(values, indices, counts, 0, 2, 2)
    pair_sq_distances(np.zeros((2, 3), dtype=np.float32), positions, positions, np.zeros(2))
