"""Modbus TCP meters, read through a register map.

One adapter owns one TCP connection to one meter (or to the serial gateway in front of it,
addressed by unit id). It connects on the first read and again on the first read after any
failure; it never retries or sleeps, because the gateway's poller owns timeouts and backoff.

A poll reads the register blocks of its :class:`~edge.registermaps.ReadPlan` one request at
a time. What can go wrong, and what the poller sees:

- no connection, a lost connection, no answer in time, a garbled answer: MeterReadError,
  and the connection is dropped so the next poll starts from a clean one;
- the caller's own timeout (cancellation) mid-request: the connection is dropped as well,
  since a late answer to the abandoned request must not be taken for the next one's;
- a Modbus exception response (e.g. illegal data address) for some blocks: the metrics of
  the other blocks are returned and the failed ones logged; if every block fails,
  MeterReadError names the exception;
- a value that decodes to NaN or infinity (meters use NaN for "not measured"): dropped and
  logged, because the telemetry contract carries finite numbers only and any stand-in
  number would be invented data;
- a finite value outside the map's plausible range, or a negative counter: kept with
  quality bad and its real value, so it stays visible while energy figures ignore it.

Repeated problems are logged when they start, change or clear, not on every poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Self

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from edge.adapters.base import MeterReadError
from edge.config import ModbusTcpDevice
from edge.registermaps import (
    DecodedValue,
    DecodeProblem,
    ReadBlock,
    ReadPlan,
    load_register_map,
)
from schemas.telemetry import Reading

__all__ = ["ModbusTcpAdapter"]

logger = logging.getLogger(__name__)


class _ExceptionResponseError(Exception):
    """The meter answered one read with a Modbus exception response."""


class ModbusTcpAdapter:
    """A meter read over Modbus TCP with a register map (implements ``MeterAdapter``)."""

    def __init__(
        self,
        *,
        device_id: str,
        host: str,
        port: int,
        unit_id: int,
        plan: ReadPlan,
        timeout_s: float,
    ) -> None:
        self._device_id = device_id
        # The config accepts bracketed IPv6 literals ("[fd00::5]"); sockets want them bare.
        self._host = host.removeprefix("[").removesuffix("]")
        self._port = port
        self._unit_id = unit_id
        self._plan = plan
        self._timeout_s = timeout_s
        self._client: AsyncModbusTcpClient | None = None
        self._reported: dict[str, str] = {}

    @classmethod
    def from_config(cls, device: ModbusTcpDevice) -> Self:
        """The adapter for a configured device; its register map is loaded and checked here."""
        plan = ReadPlan(load_register_map(device.register_map), device.metrics)
        return cls(
            device_id=device.device_id,
            host=device.host,
            port=device.port,
            unit_id=device.unit_id,
            plan=plan,
            timeout_s=device.timeout_s,
        )

    @property
    def device_id(self) -> str:
        return self._device_id

    @property
    def blocks(self) -> tuple[ReadBlock, ...]:
        """The read requests one poll sends, in order."""
        return self._plan.blocks

    async def read(self, now: datetime) -> list[Reading]:
        client = await self._connected_client()
        registers: dict[ReadBlock, Sequence[int]] = {}
        failures: dict[ReadBlock, str] = {}
        try:
            for block in self._plan.blocks:
                try:
                    registers[block] = await self._read_block(client, block)
                except _ExceptionResponseError as exc:
                    failures[block] = str(exc)
        except asyncio.CancelledError:
            self._drop_connection()
            raise
        except (ModbusException, OSError) as exc:
            self._drop_connection()
            raise self._error(f"read failed, connection dropped: {exc}") from exc
        if not registers:
            reasons = sorted(set(failures.values()))
            raise self._error(f"every read was refused: {'; '.join(reasons)}")
        return self._readings(now, registers, failures)

    async def close(self) -> None:
        self._drop_connection()

    # --- connection ------------------------------------------------------------------------

    async def _connected_client(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        self._drop_connection()
        # reconnect_delay=0: no background reconnect loop; the next poll reconnects.
        # retries=0: one attempt per request; retrying is the poller's decision.
        client = AsyncModbusTcpClient(
            self._host,
            port=self._port,
            timeout=self._timeout_s,
            retries=0,
            reconnect_delay=0,
            name=self._device_id,
        )
        self._client = client
        try:
            connected = await client.connect()
        except asyncio.CancelledError:
            self._drop_connection()
            raise
        if not connected:
            self._drop_connection()
            raise self._error(f"cannot connect to {self._host}:{self._port}")
        return client

    def _drop_connection(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- reads -----------------------------------------------------------------------------

    async def _read_block(self, client: AsyncModbusTcpClient, block: ReadBlock) -> list[int]:
        read = (
            client.read_holding_registers
            if block.register_type == "holding"
            else client.read_input_registers
        )
        response: ModbusPDU = await read(block.address, count=block.count, device_id=self._unit_id)
        if response.isError():
            raise _ExceptionResponseError(f"{_describe_block(block)}: {_exception_name(response)}")
        words = list(response.registers)
        if len(words) != block.count:
            raise ModbusException(
                f"{_describe_block(block)}: the meter returned {len(words)} registers"
            )
        return words

    # --- results ---------------------------------------------------------------------------

    def _readings(
        self,
        now: datetime,
        registers: dict[ReadBlock, Sequence[int]],
        failures: dict[ReadBlock, str],
    ) -> list[Reading]:
        readings: list[Reading] = []
        problems: dict[str, str] = {}
        for block, reason in failures.items():
            for metric in self._plan.metrics_in(block):
                problems[metric] = f"not read: {reason}"
        for result in self._plan.decode(registers):
            if isinstance(result, DecodeProblem):
                problems[result.metric] = f"dropped: {result.reason}"
                continue
            readings.append(_reading(now, result))
            if result.reason is not None:
                problems[result.metric] = f"quality bad: {result.reason}"
        self._report(problems)
        return readings

    def _report(self, problems: dict[str, str]) -> None:
        for metric, reason in problems.items():
            if self._reported.get(metric) != reason:
                logger.warning("%s %s %s", self._device_id, metric, reason)
        for metric in self._reported.keys() - problems.keys():
            logger.info("%s %s reads normally again", self._device_id, metric)
        self._reported = problems

    def _error(self, reason: str) -> MeterReadError:
        return MeterReadError(self._device_id, reason)


def _reading(now: datetime, value: DecodedValue) -> Reading:
    return Reading(
        ts=now, metric=value.metric, value=value.value, unit=value.unit, quality=value.quality
    )


def _describe_block(block: ReadBlock) -> str:
    return f"{block.register_type} registers {block.address}-{block.last_address}"


def _exception_name(response: ModbusPDU) -> str:
    code = response.exception_code
    try:
        name = ExcCodes(code).name.lower().replace("_", " ")
    except ValueError:
        name = "unknown exception"
    return f"{name} (Modbus exception code {code})"
