"""Data-parallel training over several devices and hosts (Keras distribution API, JAX only).

Every device holds a full copy of the weights and takes an equal slice of each batch; the
gradients are averaged across devices before each update, so one step equals one step on a
single device with the whole batch (up to the order of floating-point sums).

Several hosts: start one process per host with ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` (the
coordinator's ``host:port`` first), ``KERAS_DISTRIBUTION_NUM_PROCESSES`` and
``KERAS_DISTRIBUTION_PROCESS_ID`` set; :func:`data_parallel` then calls
``keras.distribution.initialize()``, which reads them.
"""

from __future__ import annotations

import os

from covidxray.errors import CovidXrayError

MULTI_HOST_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                        "KERAS_DISTRIBUTION_PROCESS_ID")


def data_parallel(batch_size: int, devices: int | None = None):
    """A ``keras.distribution.DataParallel`` over ``devices`` devices (None: all of them).

    Raises :class:`CovidXrayError` when the backend is not JAX, when fewer devices are
    visible than asked for, or when ``batch_size`` does not split evenly over the devices.
    """
    import keras

    backend = keras.backend.backend()
    if backend != "jax":
        asked = "N" if devices is None else devices
        raise CovidXrayError(f"--devices {asked} (data-parallel) needs the JAX backend, not {backend}; "
                             "run with KERAS_BACKEND=jax (pip install 'covidxray[jax]')")
    if any(os.environ.get(name) for name in MULTI_HOST_VARIABLES) and not _initialized():
        keras.distribution.initialize()
    available = keras.distribution.list_devices()
    if devices is not None and devices > len(available):
        raise CovidXrayError(f"--devices {devices}: only {len(available)} device(s) visible ({', '.join(available)}); "
                             "on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N virtual devices")
    chosen = available if devices is None else available[:devices]
    if batch_size % len(chosen):
        raise CovidXrayError(f"--batch-size {batch_size} does not split evenly over {len(chosen)} devices; "
                             f"use a multiple of {len(chosen)}")
    return keras.distribution.DataParallel(devices=chosen)


def _initialized() -> bool:
    import jax

    return jax.distributed.is_initialized()


def process_slice() -> tuple[int, int]:
    """This process's index and the number of processes (hosts) taking part (JAX)."""
    import jax

    return jax.process_index(), jax.process_count()
