"""Latency tables shipped with the toolkit (CSV + JSON per device), installed as package data
so that ``qfa run`` finds its default table outside a source checkout too."""
from pathlib import Path

__all__ = ["SHIPPED", "shipped"]

SHIPPED = Path(__file__).resolve().parent


def shipped(name: str) -> Path:
    """The CSV of the shipped table ``name`` (e.g. ``amd-epyc-zen4-1t-hswish-decomposed``)."""
    return SHIPPED / f"{name}.csv"
