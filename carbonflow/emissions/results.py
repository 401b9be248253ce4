"""What every emissions calculation returns: a row that traces back to its inputs."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from carbonflow.emissions.factors import FactorRef
from carbonflow.emissions.units import Gas


class Method(StrEnum):
    """How a figure was computed; stored with every emissions row."""

    SCOPE1_CN = "scope1_cn"
    SCOPE1_IPCC = "scope1_ipcc"
    SCOPE2_LOCATION_ANNUAL = "scope2_location_annual"
    SCOPE2_LOCATION_HOURLY = "scope2_location_hourly"
    SCOPE2_MARKET = "scope2_market"


@dataclass(frozen=True, slots=True)
class GasAmount:
    """Mass of one gas and its CO2-equivalent (for CO2 and CO2e both numbers are equal)."""

    gas: Gas
    kg: float
    kg_co2e: float


@dataclass(frozen=True, slots=True)
class EmissionRow:
    """One emissions figure with its lineage.

    ``factors`` lists the id and version of every factor that went into ``kg_co2e`` (in the
    order used, without repeats); ``coverage`` is the measured fraction of the input interval,
    passed through unchanged so a report can say how complete it is.
    """

    method: Method
    kg_co2e: float
    gases: tuple[GasAmount, ...]
    factors: tuple[FactorRef, ...]
    coverage: float

    def kg_of(self, gas: Gas) -> float:
        """Mass of ``gas`` in this row (0 when the method does not produce it)."""
        return sum(g.kg for g in self.gases if g.gas is gas)


def unique_refs(*refs: FactorRef) -> tuple[FactorRef, ...]:
    """The refs in first-use order, each once."""
    return tuple(dict.fromkeys(refs))
