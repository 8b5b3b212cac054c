"""`nsql-med inspect`'s options: the reading options `fit` shares, and what to show. No torch here."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from neurosql_med.options import Options, config_option, labels_option, option, pattern_option, strict_option


@dataclass(frozen=True, kw_only=True)
class InspectOptions(Options):
    """What to read (as a fit would) and whether to preprocess a preview."""

    path: Path = option(help="Folder of scans (NIfTI, Analyze .hdr/.img, DICOM series).", argument=True)
    pattern: Optional[str] = pattern_option()
    strict: bool = strict_option()
    config: str = config_option(what="Preprocessing config of --preview.")
    preview: Optional[Path] = option(None, "Also preprocess as training would and save a PNG of the samples.")
    labels: Optional[str] = labels_option()
    covariates: Optional[Path] = option(
        None, "A TSV/CSV of covariates with a subject column, listed with the dataset's own.")
