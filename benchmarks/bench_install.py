"""Signed A/B installs: how long signing, checking, installing and the start self-test take, and
whether a kill -9 after every step of an update leaves a bundle that starts.

    .venv/bin/python benchmarks/bench_install.py --repeats 5 --json bench_install.json

Without ``--bundle`` it builds a bundle of the reference architecture (ResNet-18 image tower,
randomly initialised: sizes and timings are the real model's, its scores mean nothing) with one
ONNX Runtime FP32 engine. Self-test files are added the way converters do (converters/selftest_files.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_retina.bench.machine import machine_info  # noqa: E402
from edge_retina.bundle import load_bundle, pack_bundle, write_bundle  # noqa: E402
from edge_retina.bundle.signing import (  # noqa: E402
    TrustedKeys, check_signature, generate_key_pair, load_private_key, sign_bundle,
)
from edge_retina.install import install_bundle, read_status, start  # noqa: E402
from edge_retina.selftest import EXPECTED_FILE  # noqa: E402

STEPS = ["staging-created", "staging-written", "staging-verified", "fallback-detached", "old-slot-moved",
         "slot-placed", "switched", "cleaned", "trial-counted", "selftest-done"]
CHILD = """
import os, signal, sys
from edge_retina.bundle.signing import TrustedKeys
from edge_retina.install import install_bundle, start
root, source, trusted, target = sys.argv[1:]
def hook(step):
    if step == target:
        os.kill(os.getpid(), signal.SIGKILL)
install_bundle(root, source, TrustedKeys.from_directory(trusted), on_step=hook)
start(root, on_step=hook)
"""


def build_reference_bundle(out: Path) -> Path:
    import torch

    from converters.bundle_builder import BundleRecipe
    from converters.convert_pipeline import ConvertSettings, convert
    from converters.engine_build import EngineTarget
    from converters.prompt_files import load_prompt_file
    from converters.reference.model import REFERENCE_INPUT_SPEC, build_reference_model

    torch.manual_seed(0)
    model = build_reference_model().eval()

    def embed_texts(texts: list[str]):
        with torch.no_grad():
            return model.encode_text(list(texts)).numpy()

    recipe = BundleRecipe(
        encoder=model.image_encoder, input_spec=REFERENCE_INPUT_SPEC, embed_texts=embed_texts,
        conditions=load_prompt_file(), ensembling="mean_renormalised", logit_scale=float(model.logit_scale.exp()),
        family="reference", name="reference-random-init", teacher_checkpoint_sha256="0" * 64,
    )
    with tempfile.TemporaryDirectory(prefix="bench-install-cache-") as cache:
        return convert(recipe, out, ConvertSettings([EngineTarget("onnxruntime", "fp32")], cache_dir=Path(cache)),
                       command="benchmarks/bench_install.py")


def with_selftest(bundle_dir: Path, out: Path, *, broken: bool = False) -> Path:
    from converters.selftest_files import selftest_files
    from edge_retina.backends import create_runner

    bundle = load_bundle(bundle_dir)
    engine = bundle.select_engine()
    with create_runner(engine.backend, bundle.path_of(engine.primary_file), precision=engine.precision) as runner:
        extra = selftest_files({engine.role: runner.infer}, bundle.manifest.input,
                               engine=f"{engine.backend}-{engine.precision}")
    if broken:  # a self-test the engine cannot pass: what a wrong runtime or driver looks like
        expected = json.loads(extra[EXPECTED_FILE])
        for reference in expected["references"].values():
            reference["embedding"] = [-v for v in reference["embedding"]]
        extra[EXPECTED_FILE] = json.dumps(expected).encode()
    files = {rel: bundle.path_of(rel) for rel in bundle.manifest.files if not rel.startswith("selftest/")}
    return write_bundle(out, bundle.manifest.to_dict(), {**files, **extra})


def timed(function) -> tuple[float, float]:
    """(wall ms, process CPU ms): on a shared machine wall time includes waiting for a CPU."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="a bundle directory to use instead of building one")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-install-") as tmp:
        work = Path(tmp)
        source = args.bundle or build_reference_bundle(work / "built")
        good = with_selftest(source, work / "good")
        broken = with_selftest(source, work / "broken", broken=True)
        generate_key_pair(work / "signing.key", work / "trusted" / "signing.pub")
        key, trusted = load_private_key(work / "signing.key"), TrustedKeys.from_directory(work / "trusted")
        sign_bundle(good, key)
        sign_bundle(broken, key)
        archive = pack_bundle(good, work / "good.erb.tar")
        size_mb = sum(p.stat().st_size for p in good.rglob("*") if p.is_file()) / 1e6

        rows: dict[str, list[tuple[float, float]]] = {name: [] for name in (
            "sign (directory)", "check signature (directory)", "check signature (archive)",
            "install from directory", "install from archive", "start: self-test (onnxruntime fp32)",
            "start: known-good slot")}
        for repeat in range(args.repeats):  # every variant once per round: drift hits them alike
            copy = shutil.copytree(good, work / f"sign-{repeat}")
            rows["sign (directory)"].append(timed(lambda: sign_bundle(copy, key)))
            rows["check signature (directory)"].append(timed(lambda: check_signature(good, trusted)))
            rows["check signature (archive)"].append(timed(lambda: check_signature(archive, trusted)))
            for label, src in (("install from directory", good), ("install from archive", archive)):
                root = work / f"root-{label[-4:]}-{repeat}"
                rows[label].append(timed(lambda: install_bundle(root, src, trusted)))
                if src is good:
                    rows["start: self-test (onnxruntime fp32)"].append(timed(lambda: start(root)))
                    rows["start: known-good slot"].append(timed(lambda: start(root)))
                shutil.rmtree(root)

        # kill -9 after every step of an update over a root with two good slots (v = good twice).
        template = work / "template"
        for _ in range(2):
            install_bundle(template, good, trusted)
            start(template)
        faults = {}
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        for label, new in (("passing update", good), ("failing update", broken)):
            survived = 0
            for step in STEPS + ["confirmed" if new is good else "rolled-back"]:
                root = shutil.copytree(template, work / f"fault-{label[:4]}-{step}")
                child = subprocess.run([sys.executable, "-c", CHILD, str(root), str(new), str(work / "trusted"), step],
                                       env=env, capture_output=True)
                started = start(root)
                ok = (child.returncode == -signal.SIGKILL and load_bundle(started.path, verify=True) is not None
                      and not read_status(root).on_trial)
                survived += ok
            faults[label] = {"kill_points": len(STEPS) + 1, "started_a_verified_bundle": survived}

    result = {
        "machine": machine_info(),  # its load_average_1min: read after the runs
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "bundle_mb": round(size_mb, 1),
        "repeats": args.repeats,
        "median_wall_ms": {k: round(statistics.median(w for w, _ in v), 1) for k, v in rows.items()},
        "median_cpu_ms": {k: round(statistics.median(c for _, c in v), 1) for k, v in rows.items()},
        "max_wall_ms": {k: round(max(w for w, _ in v), 1) for k, v in rows.items()},
        "power_cuts": faults,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
