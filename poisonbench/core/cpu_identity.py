"""Which CPU a run or a craft ran on, beyond its model name: `env.cpu_id` and `env.cpu_isa` of a record
(docs/metrics.md, "Run records"). Execution only, like the rest of `env`: never part of a run id or a poison id.

Why: a virtual machine may show every generation of a vendor's server CPUs under one model name. In this project's
records a first-generation EPYC (Zen 1, AVX2 only) and an EPYC with AVX-512 both read `"cpu": "AMD EPYC"` and, under
the same AVX2 dispatch, `"cpu_capability": "AVX2"`, though the same ATDA run took 267 CPU-seconds on the first and
about 133 on the second (experiments/table3_powered.md): a reader could not tell which machine a timing came from.
The kernel's /proc/cpuinfo still names the vendor's family, model and stepping (x86) or implementer, part and
revision (Arm), and the instruction-set flags the CPU has, whatever ATen dispatches to.
"""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

# The /proc/cpuinfo fields that identify a CPU generation, in the order `cpu_id` names them: (field, its label in
# `cpu_id`; "" for the vendor string, which stands alone). x86 names the vendor and its family / model / stepping
# numbers; Arm names the implementer (0x41 is Arm Ltd.) and the part it designed, with the variant and revision.
X86_ID_FIELDS = (("vendor_id", ""), ("cpu family", "family"), ("model", "model"), ("stepping", "stepping"))
ARM_ID_FIELDS = (("CPU implementer", "implementer"), ("CPU architecture", "architecture"),
                 ("CPU variant", "variant"), ("CPU part", "part"), ("CPU revision", "revision"))

# The instruction-set extensions that decide which kernels can run, in the order `cpu_isa` lists them: the vector
# and matrix units, not the hundred other flags (mitigations, virtualisation) that change from host to host.
X86_ISA = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
           "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
ARM_ISA = ("asimd", "asimddp", "sve", "sve2", "bf16", "i8mm", "sme")


def first_processor(text: str) -> dict[str, str]:
    """The `field: value` pairs of /proc/cpuinfo's first processor block (the non-blank lines up to the first blank
    line after them), each stripped; a line without a colon is skipped. Every core of a machine with one kind of
    socket shows the same identity, and every Linux kernel writes a first block."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        name, colon, value = line.partition(":")
        if colon:
            fields[name.strip()] = value.strip()
    return fields


def parse_cpuinfo(text: str) -> dict:
    """`{"cpu_id": ..., "cpu_isa": [...]}` from the text of /proc/cpuinfo: `cpu_id` joins the first processor's
    identity fields that are present (x86's when it has a `vendor_id`, else Arm's), e.g.
    `AuthenticAMD family 23 model 1 stepping 2` or `implementer 0x41 architecture 8 variant 0x1 part 0xd0c
    revision 1`; `cpu_isa` lists which of `X86_ISA` (from its `flags`) or `ARM_ISA` (from its `Features`) it has, in
    that order. A key is left out when the text has nothing for it, so an unknown format gives `{}`."""
    fields = first_processor(text)
    x86 = "vendor_id" in fields
    named = [(label, fields[name]) for name, label in (X86_ID_FIELDS if x86 else ARM_ID_FIELDS) if fields.get(name)]
    identity: dict = {}
    if named:
        identity["cpu_id"] = " ".join(f"{label} {value}" if label else value for label, value in named)
    flags = set(fields.get("flags" if x86 else "Features", "").split())
    isa = [flag for flag in (X86_ISA if x86 else ARM_ISA) if flag in flags]
    if isa:
        identity["cpu_isa"] = isa
    return identity


def cpu_identity(path: Path = CPUINFO) -> dict:
    """`parse_cpuinfo` of this machine's /proc/cpuinfo; `{}` where there is none (macOS, Windows) or it cannot be
    read."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    return parse_cpuinfo(text)
