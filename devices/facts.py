"""What detection looks at: files under a root directory, and the inference libraries that import.

Machine facts come only from files under ``root`` (``/proc/cpuinfo``, ``/proc/device-tree/model`` and
``compatible``, ``/etc/nv_tegra_release``), so tests point ``root`` at prepared trees standing in for
each board. Library facts (OpenVINO's devices, TensorRT's version) come from the running interpreter.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# One "key : value" line of /proc/cpuinfo (flags on x86, Features on ARM, one block per processor).
_CPUINFO_FIELD = re.compile(r"^(?P<key>[^:\n]+?)[ \t]*:[ \t]*(?P<value>.*)$", re.MULTILINE)
#: The x86 CPU flags of the instructions that multiply INT8 and add into 32 bits (AVX-512 VNNI,
#: AVX-VNNI on Alder Lake and later, AMX on Sapphire Rapids and later): the ``x86-vnni`` family.
X86_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
#: The x86 CPU flags of bfloat16 arithmetic in hardware (AVX-512 BF16 on Cooper Lake and Zen 4 and
#: later, AMX on Sapphire Rapids and later); without them torch emulates bfloat16, slowly.
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# "# R36 (release), REVISION: 4.0, GCID: ..., BOARD: generic, EABI: aarch64, DATE: ..."
_L4T_RELEASE = re.compile(r"#\s*R(?P<major>\d+)\s*\(release\),\s*REVISION:\s*(?P<revision>[\d.]+)")

# L4T release -> JetPack, from NVIDIA's JetPack archive (developer.nvidia.com/embedded/jetpack-archive);
# only reported, to make a detection readable.
_JETPACK_OF_L4T = {
    "35.2": "5.1", "35.3": "5.1.1", "35.4": "5.1.2", "35.5": "5.1.3", "35.6": "5.1.4",
    "36.2": "6.0 DP", "36.3": "6.0", "36.4": "6.1 or 6.2",
}


@dataclass(frozen=True)
class MachineFacts:
    """What the files under ``root`` say about the machine."""

    root: str
    cpu_arch: str | None                      # "x86_64", "aarch64", or None when /proc/cpuinfo says neither
    cpu_model: str | None
    cpu_flags: frozenset[str]                 # flags every listed processor has
    cpu_count: int
    device_tree_model: str | None             # e.g. "NVIDIA Jetson Orin Nano Developer Kit"
    device_tree_compatible: tuple[str, ...]   # e.g. ("nvidia,p3768-0000+p3767-0005", "nvidia,tegra234")
    l4t_release: str | None                   # e.g. "36.4.0"

    @property
    def l4t_major(self) -> int | None:
        return None if self.l4t_release is None else int(self.l4t_release.split(".")[0])

    @property
    def jetpack(self) -> str | None:
        if self.l4t_release is None:
            return None
        return _JETPACK_OF_L4T.get(".".join(self.l4t_release.split(".")[:2]))

    @property
    def is_jetson(self) -> bool:
        model = (self.device_tree_model or "").lower()
        return self.l4t_release is not None or "jetson" in model or any(
            c.startswith("nvidia,tegra") for c in self.device_tree_compatible
        )

    @property
    def int8_kernels(self) -> str | None:
        """Which family of INT8 kernels the CPU inference libraries run here; INT8 engines compute
        different numbers on different families, so an accuracy guard's verdict holds within one.
        Profiles detect by it too (``int8_kernels`` in a detect rule), so both mean the same CPUs.

        - ``x86-vnni``: AVX-512 VNNI, AVX-VNNI or AMX (``X86_VNNI_FLAGS``) multiply INT8 and add
          into 32 bits;
        - ``x86-avx2``: without VNNI, u8 x s8 products are added in pairs in 16 bits, which can
          saturate (what NNCF's overflow fix and ONNX Runtime's ``reduce_range`` are for; the two
          families side by side: BENCHMARKS.md, "INT8 engines");
        - ``arm64``: NEON (and the dot-product and i8mm extensions) add into 32 bits;
        - None: another or an unknown CPU.
        """
        return self._int8_kernels()[0]

    @property
    def int8_kernels_evidence(self) -> str:
        """What ``int8_kernels`` follows from, in words a person can check against /proc/cpuinfo."""
        return self._int8_kernels()[1]

    def _int8_kernels(self) -> tuple[str | None, str]:
        """(the family, what it follows from)."""
        if self.cpu_arch == "aarch64":
            return "arm64", "CPU architecture aarch64"
        if self.cpu_arch == "x86_64":
            vnni = [f for f in X86_VNNI_FLAGS if f in self.cpu_flags]
            if vnni:
                return "x86-vnni", f"CPU flags include {', '.join(vnni)}"
            if "avx2" in self.cpu_flags:
                return "x86-avx2", f"CPU flags include avx2, none of {', '.join(X86_VNNI_FLAGS)}"
        return None, "no known family of INT8 kernels"

    @property
    def bf16_emulated(self) -> bool:
        """An x86 CPU without bfloat16 in hardware (``X86_BF16_FLAGS``), where bfloat16 autocast is
        slower than float32; False elsewhere (ARM's bf16 support is not looked at)."""
        return self.cpu_arch == "x86_64" and not any(f in self.cpu_flags for f in X86_BF16_FLAGS)

    @property
    def modules(self) -> frozenset[str]:
        """Board and module part numbers in the device tree's compatible list (p3767-0005, tegra234...)."""
        parts: set[str] = set()
        for entry in self.device_tree_compatible:
            _, _, name = entry.partition(",")
            parts.update(p for p in name.split("+") if p)
        return frozenset(parts)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cpu_flags"] = sorted(self.cpu_flags)
        data["device_tree_compatible"] = list(self.device_tree_compatible)
        data["jetpack"] = self.jetpack
        data["int8_kernels"] = self.int8_kernels
        return data


@dataclass(frozen=True)
class LibraryFacts:
    """Which inference libraries import in this interpreter, and what they see."""

    openvino_version: str | None = None
    openvino_devices: tuple[str, ...] = ()     # Core().available_devices, e.g. ("CPU", "GPU")
    tensorrt_version: str | None = None
    problems: tuple[str, ...] = ()             # why a library did not import

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["openvino_devices"] = list(self.openvino_devices)
        data["problems"] = list(self.problems)
        return data


def _read_text(path: Path) -> str | None:
    try:
        # Device-tree strings are NUL-terminated (and compatible is a NUL-separated list).
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None


def _parse_cpuinfo(text: str) -> tuple[str | None, str | None, frozenset[str], int]:
    """(arch, model name, flags common to every processor, processor count) from /proc/cpuinfo."""
    flag_sets: list[set[str]] = []
    arch = model_name = board_model = None
    processors = 0
    for match in _CPUINFO_FIELD.finditer(text):
        key, value = match.group("key").strip().lower(), match.group("value").strip()
        if key == "processor":
            processors += 1
        elif key == "flags":
            arch = "x86_64" if "lm" in value.split() else arch
            flag_sets.append(set(value.split()))
        elif key == "features":
            flag_sets.append(set(value.split()))
        elif key == "cpu architecture" and value == "8":
            arch = "aarch64"
        elif key == "model name" and model_name is None:
            model_name = value
        elif key == "model" and not value.isdigit():  # x86's "model" is a number; a Pi's names the board
            board_model = value
    flags = frozenset(set.intersection(*flag_sets)) if flag_sets else frozenset()
    return arch, model_name or board_model, flags, processors


def read_machine(root: str | Path = "/") -> MachineFacts:
    """Read the machine facts from the files under ``root``; missing files are simply absent facts."""
    root = Path(root)
    cpuinfo = _read_text(root / "proc" / "cpuinfo") or ""
    arch, cpu_model, flags, count = _parse_cpuinfo(cpuinfo)
    model = _read_text(root / "proc" / "device-tree" / "model")
    compatible = _read_text(root / "proc" / "device-tree" / "compatible")
    release_text = _read_text(root / "etc" / "nv_tegra_release")
    release = _L4T_RELEASE.search(release_text or "")
    return MachineFacts(
        root=str(root),
        cpu_arch=arch,
        cpu_model=cpu_model,
        cpu_flags=flags,
        cpu_count=count,
        device_tree_model=(model.strip("\x00").strip() or None) if model else None,
        device_tree_compatible=tuple(c.strip() for c in (compatible or "").split("\x00") if c.strip()),
        l4t_release=f"{release.group('major')}.{release.group('revision')}" if release else None,
    )


def probe_libraries() -> LibraryFacts:
    """Import OpenVINO and TensorRT if they are installed and ask what they offer here."""
    problems = []
    openvino_version, openvino_devices = None, ()
    try:
        ov = importlib.import_module("openvino")
        openvino_version = ov.get_version()
        openvino_devices = tuple(ov.Core().available_devices)
    except (ImportError, OSError, RuntimeError) as exc:  # OSError: native libraries missing
        problems.append(f"openvino: {exc}")
    tensorrt_version = None
    try:
        tensorrt_version = importlib.import_module("tensorrt").__version__
    except (ImportError, OSError) as exc:
        problems.append(f"tensorrt: {exc}")
    return LibraryFacts(openvino_version, openvino_devices, tensorrt_version, tuple(problems))
