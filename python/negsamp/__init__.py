"""negsamp — negative sampling for contrastive training.

A ctypes binding over libnegsamp (no compiled Python extension): a numpy API for every
operation, and, when PyTorch is installed, custom ops and an InfoNCELoss module in
negsamp.torch_ops (imported lazily: ``negsamp.torch_ops`` or ``negsamp.InfoNCELoss``).

The library is found through $NEGSAMP_LIBRARY, else negsamp/_lib/libnegsamp.so (put there by
``pip install ./python``), else the system's library path.
"""
from ._errors import (NegsampError, InvalidArgument, Unsupported, OutOfMemory, NoDevice,
                      CudaError, CommError, NonFinite, NegsampIOError, InternalError)
from ._errors import NegsampIOError as IOError  # noqa: A001  (negsamp.IOError, by design)
from ._ffi import LibraryNotFound, library_path, NS_INFONCE_SAVED_PER_QUERY, NS_MAX_K
from ._core import (Context, default_context, version, version_info, status_string,
                    cuda_built, cuda_device_count, cuda_info, IdLists, similarity, mine_topk,
                    NpyFile, npy_open, filter, sample, Sample, infonce_forward,
                    infonce_backward, InfoNCEForward, InfoNCEGrads, Queue, Step, StepResult,
                    StepGrads, Comm, nccl_unique_id)
from ._weighted import sample_corpus, CorpusSample
from ._kmeans import kmeans, KMeans
from ._plan import plan_batches, BatchPlan

__version__ = "0.1.0"

__all__ = [
    "NegsampError", "InvalidArgument", "Unsupported", "OutOfMemory", "NoDevice", "CudaError",
    "CommError", "NonFinite", "NegsampIOError", "IOError", "InternalError", "LibraryNotFound",
    "library_path", "Context", "default_context", "version", "version_info", "status_string",
    "cuda_built", "cuda_device_count", "cuda_info", "IdLists", "similarity", "mine_topk",
    "NpyFile", "npy_open", "filter", "sample", "Sample", "infonce_forward", "infonce_backward",
    "InfoNCEForward", "InfoNCEGrads", "Queue", "Step", "StepResult", "StepGrads",
    "NS_INFONCE_SAVED_PER_QUERY", "NS_MAX_K", "Comm", "nccl_unique_id", "sample_corpus",
    "CorpusSample", "kmeans", "KMeans", "plan_batches", "BatchPlan",
]


def __getattr__(name):
    # torch is heavy and optional: load the torch side only when asked for.
    if name == "ClusterBatchSampler":
        import importlib
        return importlib.import_module(".batch_sampler", __name__).ClusterBatchSampler
    if name in ("torch_ops", "InfoNCELoss"):
        import importlib
        mod = importlib.import_module(".torch_ops", __name__)
        return mod if name == "torch_ops" else mod.InfoNCELoss
    raise AttributeError(f"module 'negsamp' has no attribute {name!r}")
