"""Reading kernel resources from compiled device code: cuobjdump's resource usage and
ELF attributes, and ptxas's -v log (the only place spills are reported).

Units: registers per thread; spill, stack and parameter sizes in bytes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: 32-bit registers of one SM on sm_80 and sm_90 (CUDA Programming Guide, technical specifications).
REGISTERS_PER_SM = 65536
#: The most registers a thread can have.
MAX_REGISTERS_PER_THREAD = 255
#: Registers are allocated per warp in units of 256, i.e. 8 per thread.
REGISTER_ALLOCATION_UNIT = 8


@dataclass
class KernelResources:
    """What one kernel uses on one target."""

    kernel: str  # demangled (CUDA) or Triton function name
    source: str  # "cuda" or "triton"
    target: str  # "sm_80", "sm_90"
    registers: int
    spill_bytes: int  # spill stores + spill loads (ptxas -v)
    stack_bytes: int
    param_bytes: int  # the kernel's parameter buffer
    max_threads: int | None  # its launch bound (.maxntid / .reqntid), None if it declares none

    @property
    def register_budget(self) -> int:
        """Registers a thread may use so that one block of max_threads threads fits on an
        SM (what ptxas itself honours for __launch_bounds__(max_threads))."""
        if not self.max_threads:
            return MAX_REGISTERS_PER_THREAD
        threads = -(-self.max_threads // 32) * 32
        per_thread = REGISTERS_PER_SM // threads // REGISTER_ALLOCATION_UNIT * REGISTER_ALLOCATION_UNIT
        return min(MAX_REGISTERS_PER_THREAD, per_thread)

    def problems(self) -> list[str]:
        """Why this kernel fails the report (empty when it passes). Stack alone is no
        problem: sincosf's slow argument reduction uses a small frame without spilling."""
        out = []
        if self.spill_bytes:
            out.append(f"spills {self.spill_bytes} bytes")
        if self.registers > self.register_budget:
            out.append(f"{self.registers} registers exceed the {self.register_budget} its launch bound allows")
        if self.max_threads is None:
            out.append("declares no __launch_bounds__")
        return out


def _tool(name: str) -> str:
    """A CUDA binary utility: the CUDA toolkit's, else the one in Triton's wheel."""
    found = shutil.which(name)
    if found:
        return found
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if bundled.exists():
        return str(bundled)
    raise FileNotFoundError(f"{name} not found on PATH nor in the Triton wheel")


def cuobjdump(*args: str) -> str:
    return subprocess.run([_tool("cuobjdump"), *args], check=True, capture_output=True, text=True).stdout


def demangle(names: list[str]) -> dict[str, str]:
    """Mangled C++ names to readable ones (c++filt), unchanged where it is missing."""
    if not shutil.which("c++filt"):
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out, strict=True)) if len(out) == len(names) else {n: n for n in names}


def short_name(demangled: str) -> str:
    """`void sgmcmc_fused::cuda::k<c10::Half, true>(args...)` -> `k<Half, true>`."""
    name = demangled.removeprefix("void ")
    depth = 0
    for i, ch in enumerate(name):
        depth += {"<": 1, ">": -1}.get(ch, 0)
        if ch == "(" and depth == 0:
            name = name[:i]
            break
    return re.sub(r"\b(sgmcmc_fused::cuda::|c10::)", "", name)


def _arch(name: str) -> str:
    """sm_90a -> sm_90."""
    return re.sub(r"^(sm_\d+)[a-z]?$", r"\1", name)


def read_binary(path: Path, default_arch: str | None = None) -> dict[tuple[str, str], dict[str, int]]:
    """{(mangled kernel, arch): {registers, stack_bytes, param_bytes, max_threads}} of a
    cubin or an object file holding one per arch."""
    found: dict[tuple[str, str], dict[str, int]] = {}
    arch = default_arch
    function = None
    for line in cuobjdump("--dump-resource-usage", str(path)).splitlines():
        if m := re.match(r"\s*arch = (sm_\w+)", line):
            arch = _arch(m.group(1))
        elif m := re.match(r"\s*Function (\S+):$", line):
            function = m.group(1)
        elif function and (m := re.search(r"REG:(\d+) STACK:(\d+)", line)):
            found[(function, arch)] = {"registers": int(m.group(1)), "stack_bytes": int(m.group(2))}
            function = None
    arch, section, attribute = default_arch, None, None
    for line in cuobjdump("-elf", str(path)).splitlines():
        if m := re.match(r"\s*arch = (sm_\w+)", line):
            arch = _arch(m.group(1))
        elif m := re.match(r"\.nv\.info\.(\S+)$", line):
            section = m.group(1)
        elif m := re.match(r"\s*Attribute:\s*(EIATTR_\w+)", line):
            attribute = m.group(1)
        elif section and (m := re.match(r"\s*Value:\s*(.*)", line)) and (section, arch) in found:
            values = [int(v, 16) for v in re.findall(r"0x[0-9a-fA-F]+", m.group(1))]
            if attribute == "EIATTR_CBANK_PARAM_SIZE":
                found[(section, arch)]["param_bytes"] = values[0]
            elif attribute in ("EIATTR_MAX_THREADS", "EIATTR_REQNTID"):  # .maxntid (CUDA), .reqntid (Triton)
                found[(section, arch)]["max_threads"] = values[0] * values[1] * values[2]
    return found


def spills_from_ptxas_log(log: str) -> dict[tuple[str, str], int]:
    """{(mangled entry function, arch): spill store + load bytes} from ptxas -v output;
    what the functions compiled along with an entry spill counts towards it."""
    spills: dict[tuple[str, str], int] = {}
    entry = None
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '(\S+)' for '(sm_\w+)'", line):
            entry = (m.group(1), _arch(m.group(2)))
            spills.setdefault(entry, 0)
        elif entry and (m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            spills[entry] += int(m.group(1)) + int(m.group(2))
    return spills


def combine(binary: dict, spills: dict[tuple[str, str], int], source: str) -> list[KernelResources]:
    """KernelResources of every kernel in `binary`, its spills from `spills`."""
    names = {k: short_name(v) for k, v in demangle(sorted({name for name, _ in binary})).items()}
    rows = []
    for (name, arch), info in sorted(binary.items(), key=lambda kv: (names[kv[0][0]], kv[0][1])):
        rows.append(
            KernelResources(
                kernel=names[name],
                source=source,
                target=arch,
                registers=info["registers"],
                spill_bytes=spills.get((name, arch), 0),
                stack_bytes=info["stack_bytes"],
                param_bytes=info.get("param_bytes", 0),
                max_threads=info.get("max_threads"),
            )
        )
    return rows
