"""`env.cpu_id` and `env.cpu_isa` (poisonbench/core/cpu_identity.py): the CPU generation a record ran on, read from
/proc/cpuinfo's first processor block, whole values asserted."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from poisonbench.core import cpu_identity as ci
from poisonbench.core import provenance

# The first two blocks of a real x86 /proc/cpuinfo (this project's Zen 1 EPYC, 2026-12-02), the flags shortened;
# the second block's numbers are altered so that reading past the first block shows.
X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 1
model name\t: AMD EPYC
stepping\t: 2
flags\t\t: fpu vme sse sse2 avx fma avx2 f16c mmxext

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: AMD EPYC
stepping\t: 8
flags\t\t: fpu avx avx2 avx512f amx_tile
"""

# An aarch64 /proc/cpuinfo (Neoverse N1): no vendor_id; "CPU architecture" has no space before its colon.
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1

processor\t: 1
Features\t: fp asimd sve sve2
CPU implementer\t: 0x61
"""


def test_x86_names_vendor_family_model_stepping_and_the_vector_units_of_the_first_block_only():
    assert ci.parse_cpuinfo(X86) == {"cpu_id": "AuthenticAMD family 23 model 1 stepping 2",
                                     "cpu_isa": ["avx", "avx2", "fma", "f16c"]}


def test_arm_names_implementer_architecture_variant_part_revision_and_its_features():
    assert ci.parse_cpuinfo(ARM) == {"cpu_id": "implementer 0x41 architecture 8 variant 0x3 part 0xd0c revision 1",
                                     "cpu_isa": ["asimd", "asimddp"]}


def test_blank_lines_before_the_first_block_and_lines_without_a_colon_are_skipped():
    text = "\n\n  \nprocessor : 0\nnot a field\nvendor_id : AuthenticAMD\ncpu family : 25\n\nvendor_id : Other\n"
    assert ci.first_processor(text) == {"processor": "0", "vendor_id": "AuthenticAMD", "cpu family": "25"}
    assert ci.parse_cpuinfo(text) == {"cpu_id": "AuthenticAMD family 25"}


def test_a_value_keeps_its_own_colons():
    text = "vendor_id : Vendor:X\ncpu family : 6\nCPU part: 0x1\n"
    assert ci.first_processor(text) == {"vendor_id": "Vendor:X", "cpu family": "6", "CPU part": "0x1"}
    assert ci.parse_cpuinfo(text) == {"cpu_id": "Vendor:X family 6"}


def test_absent_or_empty_fields_are_left_out_not_named_empty():
    text = "vendor_id : GenuineIntel\ncpu family : 6\nmodel :\nstepping : 7\nflags : sse2\n"
    assert ci.parse_cpuinfo(text) == {"cpu_id": "GenuineIntel family 6 stepping 7"}
    arm = "CPU implementer : 0x41\nCPU part : 0xd40\nFeatures : fp sve\n"
    assert ci.parse_cpuinfo(arm) == {"cpu_id": "implementer 0x41 part 0xd40", "cpu_isa": ["sve"]}


def test_an_x86_block_reads_flags_not_features_and_an_arm_block_features_not_flags():
    assert ci.parse_cpuinfo("vendor_id : V\nFeatures : avx2\n") == {"cpu_id": "V"}
    assert ci.parse_cpuinfo("CPU part : 0x1\nflags : sve\n") == {"cpu_id": "part 0x1"}


def test_an_unknown_or_empty_format_gives_nothing():
    assert ci.parse_cpuinfo("") == {}
    assert ci.parse_cpuinfo("\n\n") == {}
    assert ci.parse_cpuinfo("cpu : POWER9 (raw), altivec supported\nrevision : 2.2\n") == {}


@given(st.sets(st.sampled_from(ci.X86_ISA)), st.lists(st.sampled_from(["fpu", "sse2", "avx512", "avx2x", "ht"])),
       st.randoms(use_true_random=False))
def test_x86_isa_is_the_known_flags_present_in_the_tuples_order_whole_words_only(present, others, rnd):
    flags = list(present) + others
    rnd.shuffle(flags)
    got = ci.parse_cpuinfo("vendor_id : V\nflags : " + " ".join(flags) + "\n")
    expected = [f for f in ci.X86_ISA if f in present]
    assert got == ({"cpu_id": "V", "cpu_isa": expected} if expected else {"cpu_id": "V"})


@given(st.sets(st.sampled_from(ci.ARM_ISA)), st.randoms(use_true_random=False))
def test_arm_isa_is_the_known_features_present_in_the_tuples_order(present, rnd):
    features = list(present) + ["fp", "evtstrm", "sve3"]
    rnd.shuffle(features)
    got = ci.parse_cpuinfo("CPU part : 0xd0c\nFeatures : " + " ".join(features) + "\n")
    expected = [f for f in ci.ARM_ISA if f in present]
    assert got == ({"cpu_id": "part 0xd0c", "cpu_isa": expected} if expected else {"cpu_id": "part 0xd0c"})


def test_cpu_identity_reads_the_file_and_gives_nothing_without_one(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_bytes(X86.encode() + b"\xff\n")  # a stray byte does not make it unreadable
    assert ci.cpu_identity(path) == ci.parse_cpuinfo(X86)
    assert ci.cpu_identity(tmp_path / "absent") == {}
    assert ci.cpu_identity(tmp_path) == {}  # a directory: an OSError, not a crash


def test_a_cpu_runs_environment_carries_the_identity_and_keeps_the_model_name(monkeypatch):
    monkeypatch.setattr(provenance, "cpu_identity", lambda: {"cpu_id": "V family 1", "cpu_isa": ["avx2"]})
    env = provenance.environment(torch.device("cpu"))
    assert env["cpu_id"] == "V family 1" and env["cpu_isa"] == ["avx2"]
    assert env["cpu"] == provenance.cpu_model() and env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    monkeypatch.setattr(provenance, "cpu_identity", dict)
    assert not {"cpu_id", "cpu_isa"} & set(provenance.environment(torch.device("cpu")))
