"""A synthetic sample's label map as one DICOM Segmentation (SEG) instance beside its MR series.

A SEG, unlike a second image series, references the MR instances it segments by UID, so
a viewer overlays it on the right slices; it names each class with a code a program can
read; and nothing will take it for a scan. highdicom builds the instance (frames,
functional groups, references); this module only removes what would make it depend on
the clock: highdicom stamps creation and content dates and draws a random dimension
organisation UID, which are replaced here by empty values and `dicom_uid` hashes. The
label is the MR series' own: Synthetic Data YES, the same patient, study and frame of
reference, the provenance JSON in the same private element.
"""
from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from neurosql_med.errors import UserError
from neurosql_med.io.dicom import (
    IMPLEMENTATION_UID, PRIVATE_CREATOR, PRIVATE_GROUP, PROVENANCE_ELEMENT, READ_ERRORS, SEG_SUFFIX, dicom_uid, identity,
    implementation_version, software, write_dataset,
)

CATEGORY = codes.SCT.Tissue  # SCT 85756007, CID 7150 "Segmentation Property Categories"
# Content Date and Time are Type 1 in a multi-frame instance: the Unix epoch, a fixed value that tells no one when
CONTENT_DATE, CONTENT_TIME = "19700101", "000000"
TISSUE_TYPES = {  # class names (lower case) -> CID 7151 "Segmentation Property Types"
    "csf": codes.SCT.CerebrospinalFluid, "cerebrospinal fluid": codes.SCT.CerebrospinalFluid,  # SCT 65216001
    "gm": codes.SCT.GrayMatter, "grey matter": codes.SCT.GrayMatter, "gray matter": codes.SCT.GrayMatter,  # 389081007
    "wm": codes.SCT.WhiteMatter, "white matter": codes.SCT.WhiteMatter,  # SCT 389080008
}


def segment_type(name: str) -> pydicom.sr.coding.Code:
    """The tissue code of a class name; any other class is coded as plain Tissue and told apart by its label."""
    return TISSUE_TYPES.get(name.strip().lower().replace("_", " "), codes.SCT.Tissue)


def _segments(names: list[str], version: str) -> list[hd.seg.SegmentDescription]:
    """One description per class but the background (index 0), numbered as the class index."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name="nsql-med NeuroSQL", family=codes.cid7162.ArtificialIntelligence, version=version)
    return [hd.seg.SegmentDescription(
        segment_number=index, segment_label=name[:64], segmented_property_category=CATEGORY,
        segmented_property_type=segment_type(name), algorithm_type="AUTOMATIC", algorithm_identification=algorithm,
    ) for index, name in enumerate(names) if index > 0]


def _frames(label_volume: np.ndarray, slice_axis: int, n_classes: int) -> np.ndarray:
    """(slices, rows, columns) class indices, each slice laid out as its MR instance's pixels."""
    if label_volume.min() < 0 or label_volume.max() >= n_classes:
        raise ValueError(f"label values must lie in 0..{n_classes - 1}, got {label_volume.min()}..{label_volume.max()}")
    return np.ascontiguousarray(np.moveaxis(label_volume, slice_axis, 0).transpose(0, 2, 1).astype(np.uint8))


def _timeless(seg: Dataset, uid: str, versions: list[str]) -> None:
    """Replace what highdicom took from the clock or a random generator: the same inputs give the same bytes."""
    for keyword in ("InstanceCreationDate", "InstanceCreationTime"):  # Type 3: absent, as in the MR instances
        seg.pop(keyword, None)
    seg.ContentDate, seg.ContentTime = CONTENT_DATE, CONTENT_TIME
    for item in seg.get("ContributingEquipmentSequence", []):
        item.pop("ContributionDateTime", None)  # Type 3
    organisation = dicom_uid(uid, "dimension organisation")
    seg.DimensionOrganizationSequence[0].DimensionOrganizationUID = organisation
    for item in seg.DimensionIndexSequence:
        item.DimensionOrganizationUID = organisation
    seg.file_meta.ImplementationClassUID = IMPLEMENTATION_UID
    seg.file_meta.ImplementationVersionName = implementation_version(versions)


def _label_synthetic(seg: Dataset, source: Dataset, record: dict) -> None:
    """The marks every MR instance of the sample carries, so the SEG is as plainly synthetic."""
    seg.SyntheticData = "YES"
    seg.SeriesDescription = f"{source.SeriesDescription[:59]} dseg"
    seg.DerivationDescription = source.DerivationDescription
    seg.BodyPartExamined = source.BodyPartExamined
    block = seg.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(PROVENANCE_ELEMENT, "UT", json.dumps(record, sort_keys=True))


def segmentation(
    label_volume: np.ndarray, names: list[str], source_datasets: list[Dataset], slice_axis: int,
    subject: str, record: dict,
) -> Dataset:
    """The BINARY SEG of ``label_volume`` (the dseg's NIfTI array) over the MR instances it was cut like."""
    versions = software(record)
    uid = dicom_uid(*identity(record, subject), "seg")
    seg = hd.seg.Segmentation(
        source_images=source_datasets, pixel_array=_frames(label_volume, slice_axis, len(names)),
        segmentation_type="BINARY", segment_descriptions=_segments(names, versions[0].split()[-1]),
        series_instance_uid=dicom_uid(uid, "series"), series_number=2, sop_instance_uid=dicom_uid(uid, "instance"),
        instance_number=1, manufacturer="nsql-med", manufacturer_model_name="NeuroSQL synthetic generator",
        software_versions=versions, device_serial_number="none", omit_empty_frames=False,
        content_label="SYNTHETIC_DSEG", content_description="tissue classes of a synthetic image",
    )
    _timeless(seg, uid, versions)
    _label_synthetic(seg, source_datasets[0], record)
    return seg


def write_segmentation(
    folder: Path, stem: str, label_volume: np.ndarray, names: list[str], source_datasets: list[Dataset],
    slice_axis: int, subject: str, record: dict,
) -> dict[str, str]:
    """Write ``<stem>_dseg.dcm`` in ``folder``; returns its name and sha256, as `write_series` does for its instances."""
    seg = segmentation(label_volume, names, source_datasets, slice_axis, subject, record)
    return write_dataset(folder, f"{stem}{SEG_SUFFIX}", seg)


def read_segmentation(path: Path, source_datasets: list[Dataset], slice_axis: int) -> np.ndarray:
    """A SEG's class indices in the NIfTI layout it was written from: frame k belongs to source instance k."""
    try:
        seg = hd.seg.segread(path)
        uids = [ds.SOPInstanceUID for ds in source_datasets]
        frames = seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False)
    except READ_ERRORS as exc:
        raise UserError(f"{path}: unreadable DICOM SEG ({exc})") from None
    return np.moveaxis(np.asarray(frames).transpose(0, 2, 1), 0, slice_axis)
