"""The research workers, under the names the topology files and older imports use."""

from __future__ import annotations

from examples.research.coordinator import Coordinator, Report
from examples.research.researcher import Researcher

__all__ = ["Coordinator", "Report", "Researcher"]
