"""Rich tables for the terminal; the CLI prints them, the library builds them."""
from __future__ import annotations

from rich.table import Table

from neurosql_med.data.discovery import Discovery


def _fmt(values, digits: int = 2) -> str:
    return " x ".join(f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in values)


def discovery_tables(found: Discovery) -> list[Table]:
    scans = Table(title=f"{len(found.scans)} scan(s) in {found.root} (layout: {found.layout})")
    for column in ("id", "format", "shape", "voxel size (mm)", "orientation", "intensity range"):
        scans.add_column(column)
    for s in found.scans:
        lo, hi = s.intensity
        scans.add_row(s.id, s.format, _fmt(s.shape), _fmt(s.spacing), s.orientation, f"{lo:.4g} .. {hi:.4g}")
    tables = [scans]
    if found.skipped:
        skipped = Table(title=f"{len(found.skipped)} file(s) skipped")
        skipped.add_column("path")
        skipped.add_column("reason")
        for item in found.skipped:
            skipped.add_row(str(item.path), item.reason)
        tables.append(skipped)
    return tables
