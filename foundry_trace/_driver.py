"""Thin helpers over cuda.bindings' driver API: checked calls and raw memory reads."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from cuda.bindings import driver

from foundry_trace.errors import DriverCallError

SUCCESS = driver.CUresult.CUDA_SUCCESS
# The `extra` launch form: {BUFFER_POINTER, p, BUFFER_SIZE, &n, END}.
CU_LAUNCH_PARAM_END, CU_LAUNCH_PARAM_BUFFER_POINTER, CU_LAUNCH_PARAM_BUFFER_SIZE = 0, 1, 2


def call(function: Callable[..., Any], *arguments: Any) -> Any:
    """Calls a cuda.bindings driver function; returns its outputs (one value or a tuple) or raises
    DriverCallError naming the call and the driver's error."""
    result = function(*arguments)
    status, outputs = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if status != SUCCESS:
        raise_failure(function.__name__, status)
    if not outputs:
        return None
    return outputs[0] if len(outputs) == 1 else outputs


def raise_failure(call_name: str, status: driver.CUresult) -> None:
    """Raises DriverCallError naming the call and the driver's error (CUresult's own name: no
    driver call on the way out of a failure)."""
    raise DriverCallError(f"{call_name} failed with {getattr(status, 'name', status)}")


def try_call(function: Callable[..., Any], *arguments: Any) -> Any | None:
    """Like call(), but None where the driver refuses (for optional queries)."""
    result = function(*arguments)
    status, outputs = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if status != SUCCESS:
        return None
    return outputs[0] if len(outputs) == 1 else outputs


def current_context(device: int) -> int:
    """The current CUcontext, making `device`'s primary context (the one torch uses) current
    where none is: LOAD may start before torch has touched the GPU (prefetch at process start),
    and an allocation to make torch create it would enter the layout."""
    context = int(call(driver.cuCtxGetCurrent))
    if context == 0:
        call(driver.cuInit, 0)
        context = int(call(driver.cuDevicePrimaryCtxRetain, call(driver.cuDeviceGet, device)))
        call(driver.cuCtxSetCurrent, driver.CUcontext(context))
    return context


def host_bytes(address: int, size: int) -> bytes:
    """Copies `size` bytes of host memory (driver-owned parameter buffers) at `address`."""
    return ctypes.string_at(address, size) if size else b""


def host_pointers(address: int, count: int) -> list[int]:
    return [p or 0 for p in (ctypes.c_void_p * count).from_address(address)]


def device_bytes(address: int, size: int) -> bytes:
    """Copies `size` bytes of device memory to the host (synchronously)."""
    buffer = ctypes.create_string_buffer(size)
    call(driver.cuMemcpyDtoH, ctypes.addressof(buffer), address, size)
    return buffer.raw
