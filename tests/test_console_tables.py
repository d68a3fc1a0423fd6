"""Terminal tables fit 80 columns: columns that do not fit are named, identical rows folded."""
from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.text import Text

from edge_retina.bench.parity import ParityTable
from edge_retina.console_tables import (
    HANGING_INDENT,
    identical_rows,
    image_labels,
    parity_console_tables,
    print_results,
    print_wrapped,
    rich_table,
    summarise,
)
from edge_retina.screener import Result

HEADERS = ["pipeline", "total", "speed-up wall/CPU", "decode", "preprocess", "inference", "lookup", "total p90",
           "total p99", "CPU", "engine alone", "overhead over engine"]
ROWS = [["research (PIL + PyTorch fp32)", "123.45", "1.00x / 1.00x", "12.34", "45.67", "60.12", "0.12", "130.00",
         "140.00", "200.00", "55.00", "+10.0 %"],
        ["openvino/fp16/student", "23.45", "5.27x / 4.10x", "12.34", "5.67", "6.12", "0.12", "30.00", "40.00",
         "20.00", "5.00", "+10.0 %"]]


def printed(table, width=80) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text().splitlines()


def test_a_wide_table_keeps_the_leading_columns_that_fit_and_names_the_rest():
    lines = printed(rich_table("Latency per stage, median ms (4 images x 10 rounds)", HEADERS, ROWS, width=80))
    assert max(len(line.encode()) for line in lines) <= 80
    text = " ".join(" ".join(lines).split())  # the caption wraps
    assert "research (PIL + PyTorch fp32)" in text and "5.27x / 4.10x" in text  # never folded mid-cell
    assert "more in --json:" in text and "overhead over engine" in text
    wide = "\n".join(printed(rich_table("t", HEADERS, ROWS, width=200), width=200))
    assert "more in" not in wide and "+10.0 %" in wide


def test_rows_with_the_numbers_of_an_earlier_row_are_folded_into_a_note():
    rows = [["teacher (PyTorch fp32)", "0.9000", "(reference)"], ["student (PyTorch fp32)", "0.8800", "-0.0200"],
            ["onnxruntime/fp32/student", "0.8800", "-0.0200"], ["openvino/fp32/student", "0.8800", "-0.0200"],
            ["openvino/int8/student", "0.8700", "-0.0300"]]
    kept, notes = identical_rows(rows)
    assert [r[0] for r in kept] == ["teacher (PyTorch fp32)", "student (PyTorch fp32)", "openvino/int8/student"]
    assert notes == ["onnxruntime/fp32/student, openvino/fp32/student: same numbers as student (PyTorch fp32)"]
    [table] = parity_console_tables([ParityTable("glaucoma", ["model", "AUROC", "ΔAUROC"], rows)], width=80)
    text = " ".join(" ".join(printed(table)).split())  # the note wraps
    assert "same numbers as student (PyTorch fp32)" in text and text.count("onnxruntime/fp32/student") == 1


def test_a_free_text_last_column_wraps_in_the_room_left_or_is_named_when_there_is_too_little():
    rows = [["jetson-orin-nano", "int8", "2048", "NVIDIA Jetson Orin Nano (JetPack 6.x, TensorRT 10.3, no DLA)"]]
    headers = ["name", "precision", "memory MiB", "title"]
    lines = printed(rich_table("profiles", headers, rows, width=70, wrap_last=True), width=70)
    assert max(len(line.encode()) for line in lines) <= 70 and "more in" not in " ".join(lines)
    assert "no DLA)" in " ".join(lines) and sum("NVIDIA" in line for line in lines) == 1  # wrapped, whole
    narrow = " ".join(printed(rich_table("profiles", headers, rows, width=45, wrap_last=True), width=45))
    assert "more in --json: title" in narrow and "NVIDIA" not in narrow


def test_a_long_file_name_folds_and_leaves_the_status_in_the_table():
    name = "patient_0001_visit_2026-12-07_left_eye_macula_centred_capture_number_0003_highres.jpg"
    result = Result(f"site/{name}", probabilities={"glaucoma": 0.8}, referral={"glaucoma": True}, gradable=True)
    console = Console(width=80, record=True, file=io.StringIO())
    print_results(console, [result], ("glaucoma",), summarise([result]))
    lines = console.export_text().splitlines()
    assert max(len(line.encode()) for line in lines) <= 80
    assert "status" in lines[2] and "refer" in lines[4]  # the decision is on the photo's first line
    assert "".join(line.split()[0] for line in lines[4:6]) == name  # whole, folded in its column


def test_image_labels_tell_apart_photos_with_the_same_name():
    sources = ["/data/heimed/full/0003.jpg", "/data/heimed/test/0003.jpg", "/data/palm/P1.jpg", "/x/a/b/P2.jpg",
               "/y/a/b/P2.jpg", "0003.jpg"]
    assert image_labels(sources) == ["full/0003.jpg", "test/0003.jpg", "P1.jpg", "x/a/b/P2.jpg", "y/a/b/P2.jpg",
                                     "0003.jpg"]
    assert image_labels(["/a/x.jpg", "/a/x.jpg"]) == ["/a/x.jpg", "/a/x.jpg"]  # the same photo twice


def _printed(message, width: int) -> list[str]:
    out = io.StringIO()
    print_wrapped(Console(file=out, width=width, color_system=None), message)
    return out.getvalue().splitlines()


@pytest.mark.parametrize("width", [10, 20, 80])
@pytest.mark.parametrize("message", [
    "    int8 excluding 4 layer(s): " + "amd referral agreement 0.9801 < 0.99; " * 6,
    "error: cannot read /" + "a-site-folder/" * 12 + "x.jpg: no such file",
    " " * 30 + "word " * 20,
    "ΔAUROC 95% CI … " * 12 + "é" * 200,
    "a\tb word1 word2 word3 word4 word5 word6 word7 word8",
])
def test_a_wrapped_line_loses_nothing_and_no_line_is_wider_than_the_terminal_in_bytes(message, width):
    lines = _printed(message, width)
    assert "".join(message.expandtabs(8).split()) == "".join("".join(lines).split())  # every character, in order
    assert all(len(line.encode()) <= width for line in lines), lines


def test_continuation_lines_hang_under_the_first_and_styles_survive_the_split():
    lines = _printed("    step: " + "word " * 30, 40)
    assert len(lines) > 2 and lines[0].startswith("    step: ")
    assert all(line.startswith(" " * (4 + HANGING_INDENT) + "word") for line in lines[1:]), lines
    out = io.StringIO()
    print_wrapped(Console(file=out, width=30, color_system="standard", force_terminal=True),
                  Text.assemble(("error:", "red"), " " + "word " * 12))
    assert out.getvalue().startswith("\x1b[31merror:\x1b[0m")


def test_blank_and_multi_line_messages_keep_their_lines():
    assert _printed("", 80) == [""]
    assert _printed("first\n\nthird", 80) == ["first", "", "third"]
