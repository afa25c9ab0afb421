"""The southbound client for a device, by its protocol: the one place a new protocol's adapter
(say, DNP3 in ``gateway/adapters/dnp3/``) is plugged in."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config.schema import ModbusDevice

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.adapters.base import DeviceClient, TagStore
    from gateway.config.schema import Device, Tag


def make_client(device: Device, tags: list[Tag], store: TagStore,
                clock: Callable[[], float], polling: bool) -> DeviceClient:
    """The client that keeps ``tags`` of ``device`` current in ``store`` (``polling``: read
    on its own schedule; otherwise only when refreshed, as stepped drills do)."""
    # Imported here: the protocol libraries load only for the devices a site really has.
    if isinstance(device, ModbusDevice):
        from gateway.adapters.modbus.client import ModbusDeviceClient

        return ModbusDeviceClient(device, tags, store, clock=clock, polling=polling)
    from gateway.adapters.opcua.client import OpcUaDeviceClient

    return OpcUaDeviceClient(device, tags, store, clock=clock, polling=polling)
