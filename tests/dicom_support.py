"""Build DICOM Ophthalmic Photography files from photographs at test time (none are shipped).

Used by the tests and by benchmarks/bench_archive.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PATIENT_ID = "PSEUDO-0001"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"


def _dataset(width: int, height: int, *, laterality: str | None, modality: str, transfer_syntax: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import OphthalmicPhotography8BitImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = OphthalmicPhotography8BitImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = PATIENT_ID
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = generate_uid()
    if laterality is not None:
        ds.ImageLaterality = laterality
    ds.Rows, ds.Columns = height, width
    ds.SamplesPerPixel = 3
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PlanarConfiguration = 0
    return ds


def jpeg_to_dicom(jpeg: Path, out: Path, *, laterality: str | None = "R", modality: str = "OP") -> Path:
    """Wrap a JPEG file's bytes, unchanged, in a JPEG Baseline OP object (as fundus cameras do)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    data = Path(jpeg).read_bytes()
    with Image.open(jpeg) as im:
        width, height = im.size
    ds = _dataset(width, height, laterality=laterality, modality=modality, transfer_syntax=JPEGBaseline8Bit)
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = encapsulate([data])
    ds["PixelData"].VR = "OB"
    ds.save_as(out, enforce_file_format=True)
    return out


def rgb_to_dicom(rgb: np.ndarray, out: Path, *, laterality: str | None = "L", transfer_syntax: str | None = None,
                 frames: int = 1) -> Path:
    """Store RGB uint8 pixels in an OP object, uncompressed (default) or compressed by pydicom."""
    from pydicom.uid import ExplicitVRLittleEndian

    height, width = rgb.shape[:2]
    ds = _dataset(width, height, laterality=laterality, modality="OP", transfer_syntax=ExplicitVRLittleEndian)
    ds.PhotometricInterpretation = "RGB"
    pixels = np.ascontiguousarray(np.stack([rgb] * frames) if frames > 1 else rgb)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    if transfer_syntax is not None:
        ds.compress(transfer_syntax, pixels)
    ds.save_as(out, enforce_file_format=True)
    return out
