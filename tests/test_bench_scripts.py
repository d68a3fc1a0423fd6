"""The scripts in benchmarks/ record the machine they ran on as edge_retina.bench.machine.machine_info()
gives it (CPU model and flags, INT8 kernel family, cores, memory, load, libraries): one record in
every benchmark JSON, read by one cpuinfo parser (devices.read_machine)."""
from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest

from edge_retina.bench.machine import machine_info

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def test_every_machine_record_is_machine_info():
    records = 0
    for script in SCRIPTS:
        source = script.read_text()
        assert "lscpu" not in source and "/proc/cpuinfo" not in source, script.name
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value == "machine":
                        records += 1
                        assert ast.unparse(value) == "machine_info()", (script.name, ast.unparse(value))
    assert records >= 10  # bench_bridge, bench_install, bench_int8, bench_preprocess and the older ones


@pytest.mark.parametrize("name", ["bench_bridge", "bench_install", "bench_int8", "bench_preprocess"])
def test_a_benchmark_imports_and_takes_machine_info(name, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    assert importlib.import_module(name).machine_info is machine_info
    assert "int8_kernels" in machine_info()


def test_the_benchmarks_parity_table_marks_an_auroc_on_fewer_than_10_positives_or_negatives(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from latency_tables import parity_table

    model = {"auroc": 0.42, "sensitivity": 0.5, "specificity": 0.9}
    conditions = [{"condition": name, "n_pos": n_pos, "n_neg": n_neg, "threshold": 0.5, "models": {"teacher": model}}
                  for name, n_pos, n_neg in [("hypertensive_retinopathy", 2, 118), ("glaucoma", 40, 80)]]
    (tmp_path / "parity-odir.json").write_text(json.dumps({"conditions": conditions}))
    lines = parity_table(tmp_path)
    assert "| 2 / 118 | 0.500 | teacher | 0.4200? |" in lines[2] and "| 0.4200 |" in lines[3]
    assert lines[-2:] == ["", "? fewer than 10 positives or negatives: AUROC unreliable"]
    (tmp_path / "parity-odir.json").write_text(json.dumps({"conditions": conditions[1:]}))
    assert "fewer than" not in "\n".join(parity_table(tmp_path))
