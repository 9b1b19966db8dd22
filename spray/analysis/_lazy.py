"""Lazy imports of the numba-compiled packages (umap-learn, pynndescent), each once per process.

They are imported only when asked for, so their first import can happen in several task threads at once;
one lock makes it happen once (see the scikit-learn imports at the top of :mod:`spray.analysis.spectral`).
"""

from __future__ import annotations

import sys
import threading
import uuid
import warnings
from typing import Any

IMPORT_LOCK = threading.RLock()
_CACHED_PACKAGES: set[str] = set()


def cache_numba_functions(package: str) -> None:
    """Switch numba's on-disk cache on for every compiled function of ``package``, so that a fresh process
    loads what an earlier one compiled instead of compiling it again.

    umap-learn compiles its functions (``smooth_knn_dist``, ``compute_membership_strengths``, the layout
    optimisers) with numba's cache off, so every fresh process paid their JIT again (first-fit times:
    ``docs/scaling.md``). Functions are found with ``numba.extending.is_jitted`` and switched with the
    dispatcher's ``enable_caching()``, the call numba's own ``cache=True`` makes: the compiled code goes to
    ``__pycache__`` beside the package's sources (or ``NUMBA_CACHE_DIR``, or a per-user cache directory
    when site-packages is read-only), keyed by the source file's timestamp and size, so upgrading the
    package invalidates it. Functions numba cannot cache just compile as before.

    pynndescent's kernels (``init_rp_tree``, ``process_candidates``, ...) take the distance function as an
    argument, and numba's cache key holds that argument's type: a compiled function known by a random
    per-process UUID, so their cache never hits. numba has no public call for this; the dispatcher's
    ``_set_uuid`` (what numba itself uses to match functions across pickling) gives each such function a
    UUID derived from its module and name, only where none was assigned yet, so keys match across processes
    (a fresh NNDescent of 3,000 maps: docs/benchmarks.md, Constants). Where numba lacks it, the functions
    compile in every process, as the package would.
    """
    with IMPORT_LOCK:
        if package in _CACHED_PACKAGES:
            return
        _CACHED_PACKAGES.add(package)
        try:
            from numba.extending import is_jitted
        except ImportError:  # a numba without it: compile every time, as the package would
            return
        for name, module in list(sys.modules.items()):
            if module is None or not (name == package or name.startswith(package + ".")):
                continue
            for obj in list(vars(module).values()):
                if is_jitted(obj) and getattr(obj.py_func, "__module__", None) == name:
                    _stable_identity(obj, name)
                    obj.enable_caching()


def _stable_identity(dispatcher: Any, module: str) -> None:
    if getattr(dispatcher, "_MemoMixin__uuid", "") is None and hasattr(dispatcher, "_set_uuid"):
        dispatcher._set_uuid(str(uuid.uuid5(uuid.NAMESPACE_URL,
                                            f"spray-numba:{module}.{dispatcher.py_func.__qualname__}")))


def import_umap() -> Any:
    """Import umap-learn with numba's on-disk cache switched on for it (:func:`cache_numba_functions`).

    Call it once from the main thread before task threads embed: concurrent first imports can race.
    """
    with IMPORT_LOCK:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # umap's import warns about optional TensorFlow
            import umap
            import umap.layouts
            import umap.sparse
            import umap.spectral
            import umap.umap_
            import umap.utils
        cache_numba_functions("umap")
        import_pynndescent()  # umap searches neighbours with it above a few thousand points
    return umap


def import_pynndescent() -> Any:
    """Import pynndescent (NN-descent kNN, a dependency of umap-learn) with numba's on-disk cache switched on
    for it (:func:`cache_numba_functions`)."""
    with IMPORT_LOCK:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numba threading-layer notices
            import pynndescent
            import pynndescent.distances
            import pynndescent.pynndescent_
            import pynndescent.rp_trees
            import pynndescent.utils
        cache_numba_functions("pynndescent")
    return pynndescent
