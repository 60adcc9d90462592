"""The CUPTI subscriber: sees every module the driver loads (with its binary, and, where code
loads it explicitly, e.g. Triton's JIT, the CUmodule handle it got), every graph instantiation,
and the start of every stream capture, in any code (no cooperation needed).

One subscriber exists per process (a CUPTI rule). Callbacks copy what they need and hand it to
the listener; a binary is only valid during its callback.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from foundry_alloc.profiling import annotate
from foundry_trace.binary.cubin import image_extent
from foundry_trace.errors import CuptiUnavailableError, TracerStateError


class _ModuleResourceData(ctypes.Structure):
    _fields_ = [("module_id", ctypes.c_uint32), ("cubin_size", ctypes.c_size_t), ("cubin", ctypes.c_void_p)]


class _GraphData(ctypes.Structure):
    _fields_ = [
        ("graph", ctypes.c_void_p),
        ("original_graph", ctypes.c_void_p),
        ("node", ctypes.c_void_p),
        ("original_node", ctypes.c_void_p),
        ("node_type", ctypes.c_int),
        ("dependency", ctypes.c_void_p),
        ("graph_exec", ctypes.c_void_p),
    ]


# Explicit module loads: their parameters begin with the CUmodule* that receives the handle, then
# the image (a pointer, or for cuModuleLoad a file name: Inductor's static launcher loads its
# cubins from files) (generated_cuda_meta.h). The CUpti_CallbackData holds the parameters' and
# the return value's addresses at these offsets. Under lazy loading the module-loaded resource
# callback comes later, at first use, so the image is read here, from the call itself.
_MODULE_LOADS = {"cuModuleLoadData": "image", "cuModuleLoadDataEx": "image", "cuModuleLoadFatBinary": "image", "cuModuleLoad": "file"}
_PARAMS_OFFSET, _RETURN_OFFSET = 16, 24


@dataclass
class Listener:
    """What the tracer reports to."""

    module_loaded: Callable[[bytes], None]
    module_handle: Callable[[int, bytes], None]  # (CUmodule, image) of an explicit load
    graph_instantiated: Callable[[int, int], None]  # (graph, graph exec), while the graph still exists
    capture_beginning: Callable[[], None]


class Tracer:
    """Subscribes to CUPTI while started."""

    _active: Tracer | None = None
    _lock = threading.Lock()

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._subscriber = None
        self.errors: list[BaseException] = []  # raised inside callbacks, re-raised by the recording
        self._load_kinds: dict[int, str] = {}  # driver callback id -> how its image is passed

    def start(self) -> None:
        cupti = _import_cupti()
        with Tracer._lock, annotate("save.tracer.start"):
            if Tracer._active is not None:
                raise TracerStateError("a Foundry tracer is already running in this process (CUPTI allows one)")
            self._subscriber = cupti.subscribe(self._callback, None)
            resource = cupti.CallbackDomain.RESOURCE
            for cbid in (cupti.CallbackIdResource.MODULE_LOADED, cupti.CallbackIdResource.GRAPHEXEC_CREATED):
                cupti.enable_callback(1, self._subscriber, resource, cbid)
            for name, kind in _MODULE_LOADS.items():
                cbid = getattr(cupti.driver_api_trace_cbid, name)
                self._load_kinds[int(cbid)] = kind
                cupti.enable_callback(1, self._subscriber, cupti.CallbackDomain.DRIVER_API, cbid)
            runtime = cupti.CallbackDomain.RUNTIME_API
            for name in ("cudaStreamBeginCapture_v10000", "cudaStreamBeginCapture_ptsz_v10000"):
                cupti.enable_callback(1, self._subscriber, runtime, getattr(cupti.runtime_api_trace_cbid, name))
            Tracer._active = self

    def stop(self) -> None:
        cupti = _import_cupti()
        with Tracer._lock:
            if Tracer._active is not self:
                raise TracerStateError("this tracer is not running")
            cupti.unsubscribe(self._subscriber)
            self._subscriber = None
            Tracer._active = None

    @property
    def running(self) -> bool:
        return Tracer._active is self

    def _callback(self, _userdata: object, domain: int, cbid: int, data: object) -> None:
        try:
            cupti = _import_cupti()
            if domain == cupti.CallbackDomain.RESOURCE:
                descriptor = int(_field(data, "resource_descriptor", cupti.ResourceData))
                if cbid == cupti.CallbackIdResource.MODULE_LOADED:
                    module = _ModuleResourceData.from_address(descriptor)
                    if module.cubin and module.cubin_size:
                        self._listener.module_loaded(ctypes.string_at(module.cubin, module.cubin_size))
                elif cbid == cupti.CallbackIdResource.GRAPHEXEC_CREATED:
                    graph = _GraphData.from_address(descriptor)
                    self._listener.graph_instantiated(graph.graph or 0, graph.graph_exec or 0)
            elif domain == cupti.CallbackDomain.DRIVER_API:
                address = data if isinstance(data, int) else int(data.ptr)
                if int(_field(data, "callback_site", cupti.CallbackData)) == int(cupti.ApiCallbackSite.API_EXIT):
                    result = ctypes.c_int.from_address(ctypes.c_void_p.from_address(address + _RETURN_OFFSET).value).value
                    params = ctypes.c_void_p.from_address(address + _PARAMS_OFFSET).value
                    receiver, image = ctypes.c_void_p.from_address(params).value, ctypes.c_void_p.from_address(params + 8).value
                    if result == 0 and receiver and image:
                        data = _image_bytes(image) if self._load_kinds[int(cbid)] == "image" else _file_bytes(image)
                        self._listener.module_handle(ctypes.c_void_p.from_address(receiver).value or 0, data)
            elif domain == cupti.CallbackDomain.RUNTIME_API:
                site = int(_field(data, "callback_site", cupti.CallbackData))
                if site == int(cupti.ApiCallbackSite.API_ENTER):
                    self._listener.capture_beginning()
        except BaseException as error:  # noqa: BLE001 - never unwind through the driver
            self.errors.append(error)


def _image_bytes(address: int) -> bytes:
    extent = image_extent(lambda offset, length: ctypes.string_at(address + offset, length))
    return ctypes.string_at(address, extent) if extent >= 0 else ctypes.string_at(address) + b"\0"


def _file_bytes(name: int) -> bytes:
    return Path(ctypes.string_at(name).decode()).read_bytes()


def _field(data: object, name: str, kind: type) -> object:
    """cupti-python hands callback data as an object or as an address, depending on the release."""
    if isinstance(data, int):
        data = kind.from_ptr(data)
    return getattr(data, name)


def _import_cupti():  # noqa: ANN202 - the cupti module
    try:
        from cupti import cupti
    except ImportError as error:
        raise CuptiUnavailableError(
            f"CUPTI is not available ({error}): install cupti-python matching your CUDA driver "
            "(pip install cupti-python==13.0.*) next to PyTorch's libcupti"
        ) from None
    return cupti
