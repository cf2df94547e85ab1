"""The gateway's port under `flowbus up`: one gateway process binds it alone."""

from __future__ import annotations

import socket

import pytest

from flowbus.settings import GatewaySettings, Settings, UpSettings
from flowbus_services.gateway.main import bind
from flowbus_services.up import free_port, with_gateway_port


def test_one_gateway_process_binds_its_port_alone() -> None:
    settings = with_gateway_port(Settings(gateway=GatewaySettings(port=free_port())))
    assert settings.gateway.reuse_port is False
    first = bind(settings.gateway)
    try:
        # A second `flowbus up` that found the port free a moment before
        # fails to bind it, instead of sharing it with the first.
        with pytest.raises(OSError, match="in use"):
            bind(settings.gateway).close()
    finally:
        first.close()


def test_gateway_processes_of_one_stack_share_the_port() -> None:
    layout = UpSettings(processes={"gateway": 2})
    settings = with_gateway_port(Settings(gateway=GatewaySettings(port=free_port()), up=layout))
    assert settings.gateway.reuse_port is True
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT on this platform")
    first = bind(settings.gateway)
    second = bind(settings.gateway)
    first.close()
    second.close()
