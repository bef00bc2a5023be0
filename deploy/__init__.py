"""Deployment data: bundled topologies and platform descriptions."""

from pathlib import Path

TOPOLOGIES = Path(__file__).resolve().parent / "topologies"
DEFAULT_TOPOLOGY = TOPOLOGIES / "default.toml"
