"""DICOM Ophthalmic Photography input: the photograph a DICOM file carries, and who and which eye it is.

Clinical fundus cameras and PACS store photographs as DICOM Ophthalmic Photography objects (Modality
OP), usually with the camera's JPEG encapsulated as it is. ``decode.py`` recognises a DICOM file by
its preamble and hands it here; what comes back (the photograph) then goes through the very same
decoding as an image file.

Policy (README "DICOM input" points here):

- **Accepted:** Modality ``OP``, 8 bits allocated, 1 or 3 samples per pixel, a single frame, with
  pixel data in an uncompressed transfer syntax, in JPEG Baseline (decoded by the same libjpeg path
  as a ``.jpg``, including its reduced-size decoding, so a DICOM and the JPEG it wraps give identical
  results) or in any other compressed syntax pydicom has a decoder for here (RLE always; JPEG
  lossless/extended and JPEG-LS with pylibjpeg-libjpeg; JPEG 2000 with pylibjpeg-openjpeg or Pillow).
- **Refused with a code:** another modality or no pixel data -> ``not_a_photograph``; multi-frame
  objects (stereo pairs, sequences: export single frames), other bit depths, video and undecodable
  transfer syntaxes -> ``unsupported``; a file pydicom cannot parse -> ``corrupt``; pydicom not
  installed -> ``missing_extra``, naming the ``dicom`` extra.
- **Size guard:** Rows x Columns from the DICOM header are checked against the pixel limits before
  any pixel is decoded (the caller does it, with the same limits as for image files); an
  encapsulated JPEG's own header is checked again when it is decoded.
- **Attributes:** ImageLaterality (or the series' Laterality when the image has none) becomes the
  result's eye (``right``, ``left``, ``both``; none when absent or ``U``), and PatientID,
  StudyInstanceUID and SOPInstanceUID go into the result.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_retina.errors import ImageError, MissingExtraError

#: File suffixes the CLI treats as DICOM when it expands a folder (lower case).
DICOM_EXTENSIONS = (".dcm", ".dicom")
#: Result field -> DICOM keyword of the identifiers copied into results.
IDENTIFIERS = {
    "patient_id": "PatientID",
    "study_instance_uid": "StudyInstanceUID",
    "sop_instance_uid": "SOPInstanceUID",
}
_LATERALITY = {"R": "right", "L": "left", "B": "both"}
_PHOTOMETRIC = ("MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
_JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def is_dicom(data: Any) -> bool:
    """A DICOM Part 10 file: 128-byte preamble, then "DICM"."""
    return isinstance(data, bytes) and data[128:132] == b"DICM"


@dataclass(frozen=True)
class DicomAttributes:
    """What the DICOM header says about the photograph, carried into the result."""

    eye: str | None = None
    identifiers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DicomPhoto:
    """A parsed, checked Ophthalmic Photography object whose pixels are not decoded yet."""

    dataset: Any  # pydicom.Dataset
    name: str
    attributes: DicomAttributes

    @property
    def width(self) -> int:
        return int(self.dataset.Columns)

    @property
    def height(self) -> int:
        return int(self.dataset.Rows)

    @property
    def photometric(self) -> str:
        return str(self.dataset.PhotometricInterpretation)

    def pixels(self) -> bytes | np.ndarray:
        """The encapsulated JPEG's bytes (JPEG Baseline), else the decoded uint8 pixels."""
        ds = self.dataset
        if ds.file_meta.TransferSyntaxUID == _JPEG_BASELINE:
            from pydicom.encaps import get_frame

            try:
                return get_frame(ds.PixelData, 0, number_of_frames=1)
            except (ValueError, IndexError) as exc:
                raise ImageError("corrupt", f"{self.name}: damaged encapsulated pixel data ({exc})") from None
        try:
            # as_rgb: YBR colour data arrives as RGB, like every other source.
            return ds.pixel_array
        except (NotImplementedError, RuntimeError) as exc:  # no usable decoder plugin here
            raise ImageError("unsupported", f"{self.name}: cannot decode its pixel data ({exc})") from None
        except (ValueError, AttributeError, EOFError) as exc:
            raise ImageError("corrupt", f"{self.name}: damaged pixel data ({exc})") from None


def read_photo(data: bytes, name: str) -> DicomPhoto:
    """Parse a DICOM file and check it is an 8-bit single-frame ophthalmic photograph we can decode."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise ImageError("missing_extra", f"{name}: {MissingExtraError('DICOM input', 'dicom', 'pydicom')}") from None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # pydicom warns (and reads nothing) where it should fail
            ds = pydicom.dcmread(io.BytesIO(data))
        if len(ds) == 0:
            why = "; ".join(str(w.message) for w in caught) or "no data elements"
            raise ImageError("corrupt", f"{name}: truncated or unreadable DICOM file ({why})")
        modality = str(ds.get("Modality", "") or "")
        syntax = ds.file_meta.get("TransferSyntaxUID")
    except (InvalidDicomError, ValueError, KeyError, EOFError, OSError, AttributeError) as exc:
        raise ImageError("corrupt", f"{name}: unreadable DICOM file ({exc})") from None
    if modality != "OP":
        what = f"a DICOM {modality} object (Modality {modality})" if modality else "a DICOM object without a Modality"
        raise ImageError("not_a_photograph", f"{name}: {what}, not an ophthalmic photograph (Modality OP)")
    if "PixelData" not in ds:
        raise ImageError("not_a_photograph", f"{name}: a DICOM OP object without pixel data")
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageError("corrupt", f"{name}: DICOM pixel data without Rows/Columns")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ImageError("unsupported", f"{name}: a {frames}-frame DICOM object; only single-frame photographs "
                         "are screened (export the frames as separate objects)")
    bits, samples = ds.get("BitsAllocated"), ds.get("SamplesPerPixel")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if bits != 8 or samples not in (1, 3) or photometric not in _PHOTOMETRIC:
        raise ImageError("unsupported", f"{name}: {bits}-bit {photometric or '?'} pixels with {samples} samples; "
                         "only 8-bit colour or MONOCHROME2 photographs are screened")
    _check_decodable(syntax, name)
    return DicomPhoto(ds, name, _attributes(ds))


def _check_decodable(syntax: Any, name: str) -> None:
    from pydicom.pixels import get_decoder

    if syntax is None:
        raise ImageError("corrupt", f"{name}: DICOM file meta without a transfer syntax")
    if syntax == _JPEG_BASELINE:
        return  # decoded by our own JPEG path
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageError("unsupported", f"{name}: transfer syntax {syntax.name} ({syntax}) is not a "
                         "photograph encoding pydicom can decode") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise ImageError("unsupported", f"{name}: no decoder here for {syntax.name} ({missing})")


def _attributes(ds: Any) -> DicomAttributes:
    laterality = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or "").strip().upper()
    identifiers = {key: str(ds.get(keyword)) for key, keyword in IDENTIFIERS.items() if ds.get(keyword)}
    return DicomAttributes(_LATERALITY.get(laterality), identifiers)
