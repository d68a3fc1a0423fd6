"""DICOM Ophthalmic Photography input: the same photograph as JPEG or DICOM screens the same, its
laterality and identifiers reach the results, and every non-photograph gets a clear code."""
from __future__ import annotations

import csv
import io
import json
import sys

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("pydicom")

from dicom_support import PATIENT_ID, STUDY_UID, jpeg_to_dicom, rgb_to_dicom  # noqa: E402

from edge_retina.cli.main import cli  # noqa: E402
from edge_retina.errors import ImageError  # noqa: E402
from edge_retina.preprocess import decode_image, probe_image  # noqa: E402
from edge_retina.screener import Screener  # noqa: E402


@pytest.fixture(scope="module")
def photo(retina_rgb):
    return cv2.resize(retina_rgb, (320, 320), interpolation=cv2.INTER_AREA)


def _expect(source, code):
    with pytest.raises(ImageError) as info:
        decode_image(source)
    assert info.value.code == code, str(info.value)
    return str(info.value)


@pytest.mark.shared_data
def test_dicom_wrapping_a_shared_jpeg_screens_identically(screener, shared_datasets, tmp_path):
    # A camera original (decoded at reduced size) and a small re-encoded photo.
    jpegs = [sorted((shared_datasets / "heimed" / "full").glob("*.jpg"))[0],
             sorted((shared_datasets / "eye4class").rglob("*.jpg"))[0]]
    for jpeg in jpegs:
        dcm = jpeg_to_dicom(jpeg, tmp_path / f"{jpeg.stem}.dcm", laterality="R")
        as_jpeg, as_dicom = screener.screen(jpeg), screener.screen(dcm)
        assert as_dicom.screened, as_dicom.error
        assert as_dicom.probabilities == as_jpeg.probabilities  # exact: the same libjpeg decode
        assert as_dicom.status == as_jpeg.status
        assert as_dicom.eye == "right" and as_jpeg.eye is None
        assert as_dicom.identifiers["patient_id"] == PATIENT_ID
        assert as_dicom.identifiers["study_instance_uid"] == STUDY_UID
        assert as_dicom.identifiers["sop_instance_uid"].startswith("1.2.")


@pytest.mark.parametrize("syntax", [None, "1.2.840.10008.1.2.5"])  # uncompressed, RLE Lossless
def test_native_and_rle_pixels_decode_exactly(photo, tmp_path, syntax):
    dcm = rgb_to_dicom(photo, tmp_path / "photo.dcm", transfer_syntax=syntax, laterality="L")
    decoded = decode_image(dcm)
    np.testing.assert_array_equal(decoded.rgb, photo)
    assert decoded.dicom.eye == "left"


def test_series_laterality_is_the_fallback(photo, tmp_path):
    import pydicom

    path = rgb_to_dicom(photo, tmp_path / "photo.dcm", laterality=None)
    assert decode_image(path).dicom.eye is None
    ds = pydicom.dcmread(path)
    ds.Laterality = "L"
    ds.save_as(path)
    assert decode_image(path).dicom.eye == "left"


def test_non_photographs_get_clear_codes(retina_jpeg, photo, tmp_path):
    import pydicom

    ct = _expect(jpeg_to_dicom(retina_jpeg, tmp_path / "ct.dcm", modality="CT"), "not_a_photograph")
    # The object's own modality is named as such, apart from the one we take.
    assert "a DICOM CT object (Modality CT), not an ophthalmic photograph (Modality OP)" in ct

    ds = pydicom.dcmread(jpeg_to_dicom(retina_jpeg, tmp_path / "nopixels.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    assert "without pixel data" in _expect(tmp_path / "nopixels.dcm", "not_a_photograph")

    stereo = rgb_to_dicom(photo, tmp_path / "stereo.dcm", frames=2)
    assert "2-frame" in _expect(stereo, "unsupported")

    ds = pydicom.dcmread(jpeg_to_dicom(retina_jpeg, tmp_path / "video.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    ds.save_as(tmp_path / "video.dcm")
    assert "MPEG2" in _expect(tmp_path / "video.dcm", "unsupported")

    data = jpeg_to_dicom(retina_jpeg, tmp_path / "whole.dcm").read_bytes()
    _expect(data[: len(data) // 2], "corrupt")  # cut inside the pixel data


def test_header_size_is_checked_before_decoding(retina_jpeg, tmp_path):
    import pydicom

    ds = pydicom.dcmread(jpeg_to_dicom(retina_jpeg, tmp_path / "bomb.dcm"))
    ds.Rows = ds.Columns = 60_000  # 3.6 GP claimed by the header
    ds.save_as(tmp_path / "bomb.dcm")
    assert "possible decompression bomb" in _expect(tmp_path / "bomb.dcm", "too_large")
    with pytest.raises(ImageError, match="possible decompression bomb"):
        probe_image(tmp_path / "bomb.dcm")
    assert probe_image(jpeg_to_dicom(retina_jpeg, tmp_path / "ok.dcm")).format == "DICOM"


def test_without_pydicom_dicom_is_refused_naming_the_extra(retina_jpeg, tmp_path, monkeypatch):
    dcm = jpeg_to_dicom(retina_jpeg, tmp_path / "photo.dcm")
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now raises ImportError
    message = _expect(dcm, "missing_extra")
    assert "pip install 'edge-retina[dicom]'" in message
    assert decode_image(retina_jpeg).rgb.shape[2] == 3  # image files are unaffected


def test_screen_command_reads_a_folder_with_dicom(tiny_bundle, retina_jpeg, tmp_path):
    folder = tmp_path / "captures"
    folder.mkdir()
    jpeg_to_dicom(retina_jpeg, folder / "right.dcm", laterality="R")
    jpeg_to_dicom(retina_jpeg, folder / "ct.dcm", modality="CT")
    out = tmp_path / "results.csv"
    run = CliRunner().invoke(cli, ["screen", str(folder), "--bundle", str(tiny_bundle), "--out", str(out), "--json"])
    assert run.exit_code == 0, run.output
    rows = {r["source"].rsplit("/", 1)[-1]: r for r in csv.DictReader(io.StringIO(out.read_text()))}
    assert rows["right.dcm"]["eye"] == "right" and rows["right.dcm"]["patient_id"] == PATIENT_ID
    assert rows["right.dcm"]["status"] != "error"
    assert rows["ct.dcm"]["error_code"] == "not_a_photograph"


def test_hot_folder_screens_dicom_captures(screener, retina_jpeg, tmp_path):
    from firmware_bridge.hotfolder import HotFolder, sidecar_path
    from firmware_bridge.store import ResultStore

    folder = tmp_path / "captures"
    folder.mkdir()
    dcm = jpeg_to_dicom(retina_jpeg, folder / "IMG_0001.dcm", laterality="L")
    store = ResultStore(tmp_path / "store.sqlite")
    assert HotFolder(screener, store, folder, settle_seconds=0).scan_once() == [sidecar_path(dcm)]
    result = json.loads(sidecar_path(dcm).read_text())["result"]
    assert result["eye"] == "left" and result["identifiers"]["patient_id"] == PATIENT_ID


def test_bench_latency_times_a_dicom_photo(tiny_bundle, retina_jpeg, tmp_path):
    dcm = jpeg_to_dicom(retina_jpeg, tmp_path / "photo.dcm")
    run = CliRunner().invoke(cli, ["bench", "latency", "--bundle", str(tiny_bundle), "--images", str(dcm),
                                   "--backend", "onnxruntime", "--iterations", "1", "--streams", "1",
                                   "--cold-runs", "0", "--json"], catch_exceptions=False)
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)["pipelines"]["onnxruntime/fp32/teacher"]["stages_ms"]["decode"]["n"] >= 1
