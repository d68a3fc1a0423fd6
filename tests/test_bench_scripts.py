"""The scripts in benchmarks/ record the machine they ran on as edge_retina.bench.machine.machine_info()
gives it (CPU model and flags, INT8 kernel family, cores, memory, load, libraries): one record in
every benchmark JSON, read by one cpuinfo parser (devices.read_machine)."""
from __future__ import annotations

import ast
import importlib
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
