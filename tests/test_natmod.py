"""The project's linker (microgpt/natmod.py) on LLVM 22's objects: what it reads of them, what it
places where, and what it refuses."""
import pytest

from microgpt import natmod, payload

SOURCE = payload.CMODEL_DIR / "cmodel.c"
needs_llvm = pytest.mark.skipif(not all(natmod.compilers().values()),
                                reason="LLVM 22 (clang-22, llc-22, llvm-mc-22) is not installed")


def test_uint_is_micropythons_variable_length_encoding():
    assert [natmod._uint(n) for n in (0, 127, 128, 300)] == [b"\x00", b"\x7f", b"\x81\x00", b"\x82\x2c"]


@pytest.fixture(scope="module")
def xtensa_object(tmp_path_factory):
    if not all(natmod.compilers().values()):
        pytest.skip("LLVM 22 (clang-22, llc-22, llvm-mc-22) is not installed")
    return natmod.compile_object(SOURCE, "xtensawin", tmp_path_factory.mktemp("obj"))


def test_llvm_keeps_literal_offsets_in_the_addend_which_mpy_ld_asserts_is_zero(xtensa_object):
    # MicroPython's tools/mpy_ld.py (build_got_xtensa) asserts r_addend == 0 for a literal
    # relocation against a section symbol and reads the offset from the literal word, as GNU as
    # writes it; LLVM writes the word 0 and the offset in the addend. natmod adds the addend.
    elf = natmod.Elf(xtensa_object)
    literal = next(s for s in elf.sections if s.name == ".literal")
    words = elf.contents(literal)
    [(_, relas)] = [(sec, relas) for sec, relas in elf.relocations() if sec.name == ".literal"]
    to_sections = [r for r in relas if elf.symbols[r.symbol].type == natmod.STT_SECTION]
    assert to_sections and all(r.type == natmod.R_XTENSA_32 for r in to_sections)
    assert all(words[r.offset:r.offset + 4] == bytes(4) for r in to_sections)
    assert any(r.addend for r in to_sections)
    # natmod: each such word holds its target's offset and the loader adds the region's address.
    linked = natmod.link(xtensa_object, "xtensawin")
    lay = natmod.layout(elf, natmod.ARCHES["xtensawin"])
    start = lay.placed[literal.index][1]
    loader = {(r.region, r.word * 4) for r in linked.relocs}
    for r in to_sections:
        assert (natmod.TEXT, start + r.offset) in loader
        _, at = lay.placed[elf.symbols[r.symbol].shndx]
        assert int.from_bytes(linked.text[start + r.offset:][:4], "little") == at + r.addend


def test_llvm_puts_the_entry_first_in_text_where_mpy_ld_reserves_it_no_jump(xtensa_object):
    # mpy_ld.py emits no entry jump for an mpy_init at offset 0 of .text, then puts its GOT and
    # literals before .text; natmod always starts the text with a jump to mpy_init.
    elf = natmod.Elf(xtensa_object)
    entry = next(s for s in elf.symbols if s.name == natmod.ENTRY)
    assert elf.sections[entry.shndx].name == ".text" and entry.value == 0
    linked = natmod.link(xtensa_object, "xtensawin")
    text_at = natmod.layout(elf, natmod.ARCHES["xtensawin"]).placed[entry.shndx][1]
    assert text_at > 4 and linked.text[:4] == natmod._xtensa_jump(text_at)


def _build(tmp_path, source, arch):
    src = tmp_path / "probe.c"
    src.write_text(source + "\n")
    obj = natmod.compile_object(src, arch, tmp_path)
    return natmod.Elf(obj), natmod.link(obj, arch)


STRING = 'static const char t[] = "abcdefgh";\nint mpy_init(int i) { return t[i & 7]; }'


@needs_llvm
def test_strings_go_to_the_loaders_ram_on_xtensa_and_follow_the_code_on_x64(tmp_path):
    # IRAM, where the ESP32 runs native code, only takes 32-bit loads: a byte read there faults.
    _, linked = _build(tmp_path, STRING, "xtensawin")
    assert linked.rodata.startswith(b"abcdefgh") and b"abcdefgh" not in linked.text
    assert any(r.region == natmod.TEXT and r.base == natmod.RODATA for r in linked.relocs)  # its literal
    blob = natmod.mpy_bytes(linked, "xtensawin", ["probe.c"])
    flags = blob[blob.index(linked.text) + len(linked.text)]  # the scope flags follow the code
    assert flags & natmod.SCOPE_VIPERRODATA and linked.rodata in blob
    _, linked = _build(tmp_path, STRING, "x64")
    assert b"abcdefgh" in linked.text and not linked.rodata and not linked.relocs


@needs_llvm
@pytest.mark.parametrize("source, reason", [
    # The ESP32's FPU has no divide: clang makes `a / b` a call to __divsf3, which a freestanding module lacks.
    ("float mpy_init(float a, float b) { return a / b; }", "__divsf3 is not defined"),
    # The loader's RAM for rodata is word-aligned only.
    ("typedef float v4 __attribute__((vector_size(16)));\nstatic const v4 t = {1, 2, 3, 4};\n"
     + "const v4 *mpy_init(void) { return &t; }", "needs 16-byte alignment"),
    # The firmware leaves 14,336 bytes of executable RAM: a bigger module fails to import on the chip.
    ("void mpy_init(volatile int *p) {" + "".join(f" p[{i % 200}] = {i};" for i in range(5000)) + " }",
     "places at most 14,332"),
])
def test_what_the_chip_cannot_load_is_refused_with_the_reason(tmp_path, source, reason):
    with pytest.raises(natmod.NatmodError, match=reason):
        _build(tmp_path, source, "xtensawin")
