"""Put exact faiss indexes on the GPUs when the installed faiss has any (faiss-gpu builds).

Full-catalogue search (EIMF evaluation, CFT grounding) is one dense matmul per query batch, so
on a GPU machine with ``faiss-gpu`` it moves there; with ``faiss-cpu`` (this repository's
default) ``faiss.get_num_gpus()`` is 0 and the index stays where it is. Flat indexes give the
same neighbours on either device, up to float ties. Training-side k-means stays on the CPU so
typical-user selection is identical across machines.
"""

from __future__ import annotations

from typing import Any


def on_gpus_if_any(index: Any) -> Any:
    """``index`` copied to every visible GPU (sharded) when faiss sees one, else ``index`` itself."""
    import faiss

    if getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
        return faiss.index_cpu_to_all_gpus(index)
    return index
