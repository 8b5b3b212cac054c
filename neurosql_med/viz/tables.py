"""Rich tables for the terminal; the CLI prints them, the library builds them."""
from __future__ import annotations

from rich.table import Table

from neurosql_med.data.discovery import Discovery, Scan


def _fmt(values, digits: int = 2) -> str:
    return " x ".join(f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in values)


def discovery_tables(found: Discovery) -> list[Table]:
    scans = Table(title=f"{len(found.scans)} scan(s) in {found.root} (layout: {found.layout})",
                  caption=_labels_caption(found))
    show_labels = found.labels_option != "none"
    for column in ("id", "format", "shape", "voxel size (mm)", "orientation", "intensity range", "labels")[: 6 + show_labels]:
        scans.add_column(column)
    for s in found.scans:
        lo, hi = s.intensity
        row = [s.id, s.format, _fmt(s.shape), _fmt(s.spacing), s.orientation, f"{lo:.4g} .. {hi:.4g}"]
        scans.add_row(*row, *([_labels_cell(s)] if show_labels else []))
    tables = [scans]
    if found.skipped:
        skipped = Table(title=f"{len(found.skipped)} file(s) skipped")
        skipped.add_column("path")
        skipped.add_column("reason")
        for item in found.skipped:
            skipped.add_row(str(item.path), item.reason)
        tables.append(skipped)
    return tables


def skipped_lines(found: Discovery) -> list[str]:
    """What a fit leaves out, in the words of `inspect`'s table: a line per scan set aside as unusable
    (each one --strict refuses), then a count of the files the layout does not train on."""
    lines = [f"skipped {item.path}: {item.reason}" for item in found.skipped if item.unusable]
    others = len(found.skipped) - len(lines)
    if others:
        lines.append(f"{others} other file(s) not used (layout: {found.layout}); `nsql-med inspect` lists them")
    return lines


def _labels_cell(scan: Scan) -> str:
    if scan.labels_problem is None and scan.labels is not None:
        return "found"
    return scan.labels_problem or "missing"


def _labels_caption(found: Discovery) -> str | None:
    """Whether training will use label maps, and if not, why: the table says which scans lack one."""
    if found.labels_option == "none":
        return None
    if found.labels_used:
        names = found.label_names or []
        return f"label maps: used, {len(names)} classes ({', '.join(names)})"
    missing = sum(s.labels_problem is not None for s in found.scans)
    return f"label maps: not used ({missing} of {len(found.scans)} scan(s) have none that fits)"


def covariate_table(rows: list[dict]) -> Table:
    """The covariates found beside the scans (data/covariates.py ``summary``): what ``fit --condition`` can use."""
    table = Table(title=f"{len(rows)} covariate(s) (fit --condition NAME,...)")
    for column in ("name", "type", "range or levels (scans)", "scans without a value"):
        table.add_column(column)
    for row in rows:
        missing = row["missing"]
        shown = "none" if not missing else ", ".join(missing[:4]) + (f" (+{len(missing) - 4})" if len(missing) > 4 else "")
        table.add_row(row["name"], row["type"], row["values"], shown)
    return table
