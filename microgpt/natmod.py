"""Build a C file into a MicroPython native module (.mpy): compile it with LLVM 22, link the
object ourselves, and write the .mpy that MicroPython's loader reads.

Why not MicroPython's own linker, tools/mpy_ld.py: it is not packaged (not on PyPI; it lives in
MicroPython's repository and imports pyelftools and the repository's py/makeqstrdata.py), and
it does not link LLVM 22's Xtensa object of cmodel.c (mpy_ld.py of MicroPython's master at
1c3c201; v1.25.0's and v1.28.0's stop at the same first assert; tests/test_natmod.py checks
both properties of the object):

- `build_got_xtensa` stops at `assert r["r_addend"] == 0`. Each literal-pool word that holds an
  address (R_XTENSA_32 in `.literal` against a section symbol: a static function `.text+280`, a
  static variable `.bss+4`) is 0 in LLVM's object with the offset in the relocation's addend;
  GNU as, which mpy_ld.py was written for, leaves the addend 0 and puts the offset in the word.
- With the addend read in, `build_mpy` stops at `assert len(jump) == env.entry_trampoline_len`:
  clang emits `mpy_init` first in `.text` (the static functions follow), so mpy_ld.py reserves no
  entry jump, then puts its GOT and literal table before `.text`, and `mpy_init` needs one.

(For x64 it refuses the module's static variables, "fixed relocation to bss (bss variables can't
be static)": it keeps x64's BSS apart from the code, where natmod keeps it inside, PC-relative.)

Facts used, from MicroPython's sources (read, not copied): the .mpy layout (py/persistentcode.c:
header, qstr and object tables, one viper raw code with scope flags, rodata and BSS sizes, the
rodata bytes, a relocation stream ending in 0xff), `mp_native_relocate`'s opcodes, that object
table entry type 0 loads as `&mp_fun_table`, and mp_fun_table_t's field order (py/nativeglue.h).

The module reaches MicroPython only through that function table and its qstr table; its entry
point, `mpy_init`, is what the loader runs at import. `glue_header` writes the C declarations of
both (mp_glue.h, beside the C file) from FUN_TABLE and the uses in the C file and the headers
it includes from beside it.
"""
import hashlib
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from . import mpy
from .errors import NatmodError

ENTRY = "mpy_init"
GLUE_HEADER = "mp_glue.h"
CLANG, LLC, LLVM_MC = "clang-22", "llc-22", "llvm-mc-22"

_COMMON = ["-O2", "-std=c11", "-ffreestanding", "-fno-builtin", "-nostdlib", "-fno-stack-protector",
           "-fno-asynchronous-unwind-tables", "-fno-unwind-tables", "-fno-jump-tables",
           "-ffp-contract=off", "-fno-math-errno", "-Wall", "-Werror"]


def compilers() -> dict[str, str | None]:
    return {tool: shutil.which(tool) for tool in (CLANG, LLC, LLVM_MC)}


def compiler_version() -> str:
    out = _run([CLANG, "--version"]).decode().splitlines()
    return out[0].strip() if out else "unknown"


def _run(argv: list[str]) -> bytes:
    try:
        r = subprocess.run(argv, capture_output=True, check=False)
    except FileNotFoundError:
        raise NatmodError(f"{argv[0]} not found: install LLVM 22 (Debian: apt-get install clang-22 llvm-22)") from None
    if r.returncode:
        raise NatmodError(f"{' '.join(argv[:2])} … failed:\n{r.stderr.decode(errors='replace').strip()}")
    return r.stdout


# ---- ELF: just what a relocatable object of one C file holds ----
class Header(NamedTuple):
    type: int
    machine: int
    version: int
    entry: int
    phoff: int
    shoff: int
    flags: int
    ehsize: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int


class Section(NamedTuple):
    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int


class Symbol(NamedTuple):
    name: str
    value: int
    size: int
    info: int
    other: int
    shndx: int

    @property
    def type(self) -> int:
        return self.info & 0xF


class Rela(NamedTuple):
    offset: int
    symbol: int
    type: int
    addend: int


class _ElfClass(NamedTuple):
    """Where an ELF class (32- or 64-bit, little-endian) keeps the fields above."""
    header: str                      # Header's fields, from byte 16
    section: str                     # Section's fields after index
    symbol: str
    symbol_order: tuple[str, ...]    # Symbol's fields in the order stored
    rela: str                        # offset, info, addend
    info_shift: int                  # info = symbol << info_shift | type


_ELF_CLASSES = {
    1: _ElfClass("<HHIIIIIHHHHHH", "<10I", "<IIIBBH", ("name", "value", "size", "info", "other", "shndx"), "<IIi", 8),
    2: _ElfClass("<HHIQQQIHHHHHH", "<IIQQQQIIQQ", "<IBBHQQ", ("name", "info", "other", "shndx", "value", "size"),
                 "<QQq", 32),
}
SHT_SYMTAB, SHT_RELA, SHT_NOBITS = 2, 4, 8
SHF_ALLOC, SHF_EXECINSTR = 2, 4
SHN_UNDEF = 0
STT_SECTION = 3


class Elf:
    def __init__(self, data: bytes):
        if data[:4] != b"\x7fELF" or data[5] != 1 or data[4] not in _ELF_CLASSES:
            raise NatmodError("not a little-endian ELF object")
        self.data = data
        self.cls = _ELF_CLASSES[data[4]]
        self.header = Header(*struct.unpack_from(self.cls.header, data, 16))
        h = self.header
        # Section names are offsets into the section-name table until that table is known.
        raw = [Section(i, *struct.unpack_from(self.cls.section, data, h.shoff + i * h.shentsize))
               for i in range(h.shnum)]
        self.sections = [s._replace(name=self._str(raw[h.shstrndx], s.name)) for s in raw]
        symtab = next(s for s in self.sections if s.type == SHT_SYMTAB)
        self.symbols = [self._symbol(symtab, at) for at in range(symtab.offset, symtab.offset + symtab.size,
                                                                 struct.calcsize(self.cls.symbol))]

    def _str(self, table: Section, at: int) -> str:
        start = table.offset + at
        return self.data[start:self.data.index(b"\0", start)].decode()

    def _symbol(self, symtab: Section, at: int) -> Symbol:
        fields = dict(zip(self.cls.symbol_order, struct.unpack_from(self.cls.symbol, self.data, at)))
        return Symbol(**{**fields, "name": self._str(self.sections[symtab.link], fields["name"])})

    def contents(self, sec: Section) -> bytes:
        return bytes(sec.size) if sec.type == SHT_NOBITS else self.data[sec.offset:sec.offset + sec.size]

    def relocations(self):
        """(section relocated, [Rela]) for each relocation section."""
        size, shift = struct.calcsize(self.cls.rela), self.cls.info_shift
        for sec in self.sections:
            if sec.type == SHT_RELA:
                entries = [struct.unpack_from(self.cls.rela, self.data, at)
                           for at in range(sec.offset, sec.offset + sec.size, size)]
                yield self.sections[sec.info], [Rela(off, info >> shift, info & ((1 << shift) - 1), addend)
                                                for off, info, addend in entries]


# ---- The targets ----
TEXT, RODATA, BSS = "text", "rodata", "bss"  # the loader's three regions
ABSOLUTE = "absolute"  # a relocation that writes an address: the target's offset, plus its region's base at load


class Arch(NamedTuple):
    """What linking for one target takes (mpy_ld.py keeps the same per target, as ArchData)."""
    name: str                                    # MicroPython's (mpy.ARCHES)
    machine: int                                 # ELF e_machine
    small_int_bits: int                          # a machine word less the tag bit
    compile: Callable[[Path, Path, Path], None]  # (source, object, scratch dir)
    region: Callable[[Section], str]             # where an allocated section goes: TEXT, RODATA or BSS
    stub: int                                    # bytes at the start of text for the entry jump
    entry_jump: Callable[[int], bytes]           # those bytes, jumping to the entry at that text offset
    relocations: dict                            # ELF relocation type -> ABSOLUTE or patch(text, at, target)
    code_room: int | None                        # the most code the target's loader can place, if it is short


def _compile_x64(source: Path, obj: Path, scratch: Path) -> None:
    # Position-independent: every reference inside the module is PC-relative, so the linker
    # resolves them all; hidden visibility keeps them off a GOT.
    _run([CLANG, "--target=x86_64-linux-gnu", *_COMMON, "-fPIC", "-fvisibility=hidden", "-mno-red-zone",
          "-c", str(source), "-o", str(obj)])


def _x64_pc32(text: bytearray, at: int, target: int) -> None:
    struct.pack_into("<i", text, at, target - at)


def _x64_jump(target: int) -> bytes:
    return b"\xe9" + struct.pack("<i", target - 5) + b"\xcc" * 11  # jmp rel32, int3 up to the code's alignment


def _compile_xtensawin(source: Path, obj: Path, scratch: Path) -> None:
    # clang 22's driver has no -mcpu=esp32 for Xtensa; llc has (windowed ABI, single-precision FPU).
    ir, asm = scratch / f"{source.stem}.ll", scratch / f"{source.stem}.s"
    _run([CLANG, "--target=xtensa", *_COMMON, "-S", "-emit-llvm", str(source), "-o", str(ir)])
    # The Xtensa backend has no scheduling model: its default pre-RA list scheduler hoists every
    # load of an unrolled block ahead of the arithmetic and then spills them. Source order keeps
    # a dot product a load and a madd.s per term.
    _run([LLC, "-march=xtensa", "-mcpu=esp32", "-O2", "-pre-RA-sched=source", str(ir), "-o", str(asm)])
    # llc marks a literal position before each function, where the assembler would then put
    # literals at unaligned offsets; without the marks they all go to one `.literal` section.
    asm.write_text("\n".join(line for line in asm.read_text().split("\n") if line.strip() != ".literal_position"))
    _run([LLVM_MC, "-triple=xtensa", "-mcpu=esp32", "-filetype=obj", str(asm), "-o", str(obj)])


def _xtensa_region(sec: Section) -> str:
    # The ESP32 runs native code from IRAM, which only takes 32-bit loads: data read byte by byte
    # (strings) lives apart, in the RAM the loader allocates for rodata and BSS.
    if sec.flags & SHF_EXECINSTR:
        return TEXT
    return BSS if sec.type == SHT_NOBITS else RODATA


def _xtensa_l32r(text: bytearray, at: int, target: int) -> None:
    # l32r: address = ((pc + 3) & ~3) + (imm16 | ~0xffff) * 4, so its literal lies behind it.
    word = int.from_bytes(text[at:at + 3], "little")
    if word & 0xF != 1:
        raise NatmodError(f"cannot relocate the instruction {word:06x} at {at:#x}: only l32r is supported")
    delta = target - ((at + 3) & ~3)
    if delta >= 0 or delta % 4 or delta < -(1 << 18):
        raise NatmodError(f"l32r at {at:#x} cannot reach its literal at {target:#x}")
    text[at:at + 3] = ((word & 0xFF) | ((delta >> 2) & 0xFFFF) << 8).to_bytes(3, "little")


def _xtensa_jump(target: int) -> bytes:
    # j: CALL format, op0 6, n 0; target = pc + 4 + offset. One byte pads it to a word.
    return (6 | ((target - 4) & 0x3FFFF) << 6).to_bytes(3, "little") + b"\0"


R_X86_64_PC32 = 2
R_XTENSA_32, R_XTENSA_SLOT0_OP = 1, 20
ARCHES = {
    # The ESP32: code in IRAM, strings and zeroed data in the loader's RAM.
    # ESP32_GENERIC v1.25 leaves 14,336 bytes of executable RAM in one block after boot
    # (esp32.idf_heap_info(esp32.HEAP_EXEC)); the port's loader takes a 4-byte link from it.
    "xtensawin": Arch("xtensawin", 94, 31, _compile_xtensawin, _xtensa_region, 4, _xtensa_jump,
                      {R_XTENSA_32: ABSOLUTE, R_XTENSA_SLOT0_OP: _xtensa_l32r}, 14_336 - 4),
    # The MicroPython VM on x86-64: everything in the code's own (writable) memory.
    "x64": Arch("x64", 62, 63, _compile_x64, lambda sec: TEXT, 16, _x64_jump, {R_X86_64_PC32: _x64_pc32}, None),
}


def _arch(name: str) -> Arch:
    if name not in ARCHES:
        raise NatmodError(f"no native-module build for arch {name}; known: {', '.join(ARCHES)}")
    return ARCHES[name]


def compile_object(source: Path, arch: str, workdir: Path) -> bytes:
    """`source` compiled to a relocatable ELF object for `arch`."""
    obj = workdir / f"{source.stem}-{arch}.o"
    _arch(arch).compile(source, obj, workdir)
    return obj.read_bytes()


# ---- Linking: lay the sections out, resolve what the module can itself, jump to the entry ----
class Layout(NamedTuple):
    text: bytearray
    rodata: bytearray
    bss_size: int
    placed: dict  # section index -> (region, offset in it)


class Reloc(NamedTuple):
    """A word to which the loader adds a region's address."""
    region: str  # where the word is: TEXT or RODATA
    word: int    # its index there, in words
    base: str    # whose address: TEXT, RODATA or BSS


class Linked(NamedTuple):
    text: bytes          # the code (with x64's data), the entry jump at offset 0
    rodata: bytes        # constant data the loader copies to RAM (Xtensa)
    bss_size: int        # zeroed data the loader allocates (Xtensa)
    relocs: list[Reloc]


def layout(elf: Elf, arch: Arch) -> Layout:
    """Every allocated section in its region, the text after room for the entry jump; literal
    pools first, as l32r only reaches backwards."""
    text, rodata, bss_size, placed = bytearray(arch.stub), bytearray(), 0, {}
    loaded = [s for s in elf.sections if s.flags & SHF_ALLOC and s.size]
    for s in sorted(loaded, key=lambda s: (not s.name.startswith(".literal"), not s.flags & SHF_EXECINSTR, s.index)):
        region, align = arch.region(s), max(s.addralign, 4)
        if region != TEXT and align > 4:
            raise NatmodError(f"section {s.name} needs {align}-byte alignment; the loader's RAM gives 4")
        if region == BSS:
            bss_size += -bss_size % align
            placed[s.index] = (BSS, bss_size)
            bss_size += s.size
        else:
            buf = text if region == TEXT else rodata
            buf += bytes(-len(buf) % align)
            placed[s.index] = (region, len(buf))
            buf += elf.contents(s)
    return Layout(text, rodata, bss_size, placed)


def _address(lay: Layout, sym: Symbol) -> tuple[str, int]:
    if sym.shndx == SHN_UNDEF:
        raise NatmodError(f"{sym.name} is not defined in the module: a freestanding module cannot call "
                          "libraries (the compiler may have turned a division, sqrt or a copy loop into one)")
    if sym.shndx not in lay.placed:
        raise NatmodError(f"symbol {sym.name or '?'} lies in a section the module does not load")
    region, at = lay.placed[sym.shndx]
    return region, at + sym.value


def resolve(elf: Elf, arch: Arch, lay: Layout) -> list[Reloc]:
    """Patch every relocation; returns those only the loader can finish (absolute addresses)."""
    relocs = []
    for sec, entries in elf.relocations():
        if sec.index not in lay.placed:
            continue  # debug or comment sections
        region, start = lay.placed[sec.index]
        buf = lay.text if region == TEXT else lay.rodata
        for r in entries:
            sym = elf.symbols[r.symbol]
            how = arch.relocations.get(r.type)
            if how is None:
                raise NatmodError(f"relocation type {r.type} against {sym.name or sec.name} is not supported "
                                  f"for {arch.name}")
            base, target = _address(lay, sym)
            at, target = start + r.offset, target + r.addend
            if how == ABSOLUTE:
                if at % 4:
                    raise NatmodError(f"unaligned 32-bit relocation at {sec.name}+{r.offset:#x}")
                struct.pack_into("<I", buf, at, target)
                relocs.append(Reloc(region, at // 4, base))
            elif base != region:
                raise NatmodError(f"{sec.name}+{r.offset:#x} refers PC-relative from {region} to {base}")
            else:
                how(buf, at, target)
    return sorted(relocs)


def place_entry(elf: Elf, arch: Arch, lay: Layout) -> None:
    """The jump at offset 0, where the loader starts the module, to `mpy_init`."""
    entry = next((s for s in elf.symbols if s.name == ENTRY and s.shndx), None)
    if entry is None:
        raise NatmodError(f"the C file defines no {ENTRY}(), the function the loader runs at import")
    lay.text[:arch.stub] = arch.entry_jump(_address(lay, entry)[1])


def link(obj: bytes, arch: str) -> Linked:
    target = _arch(arch)
    elf = Elf(obj)
    if elf.header.machine != target.machine:
        raise NatmodError(f"the object is for ELF machine {elf.header.machine}, not {arch}")
    lay = layout(elf, target)
    if target.code_room is not None and len(lay.text) > target.code_room:
        raise NatmodError(f"{len(lay.text):,} bytes of code: {arch}'s loader places at most {target.code_room:,} "
                          "(the executable RAM the firmware leaves); make the C smaller")
    relocs = resolve(elf, target, lay)
    place_entry(elf, target, lay)
    return Linked(bytes(lay.text), bytes(lay.rodata), lay.bss_size, relocs)


# ---- The .mpy ----
MPY_VERSION, MPY_SUB_VERSION = 6, 3
KIND_VIPER = 2  # MP_CODE_NATIVE_VIPER - MP_CODE_BYTECODE
SCOPE_VIPERRELOC, SCOPE_VIPERRODATA, SCOPE_VIPERBSS = 0x10, 0x20, 0x40
OBJ_FUN_TABLE = 0
REGION_CODE = {TEXT: 0, RODATA: 1, BSS: 2}  # mp_native_relocate's destinations


def _uint(n: int) -> bytes:
    # MicroPython's variable-length uint: 7 bits a byte, most significant first, high bit = more.
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def _qstr(s: str) -> bytes:
    raw = s.encode()
    return _uint(len(raw) << 1) + raw + b"\0"


def mpy_bytes(linked: Linked, arch: str, qstrs: list[str]) -> bytes:
    """The .mpy: qstrs[0] is the source file name, the rest the names the C looks up by index."""
    target = _arch(arch)
    out = bytearray(b"M" + bytes([MPY_VERSION, MPY_SUB_VERSION | mpy.ARCHES.index(arch) << 2, target.small_int_bits]))
    out += _uint(len(qstrs)) + _uint(1)
    for q in qstrs:
        out += _qstr(q)
    out += bytes([OBJ_FUN_TABLE])
    out += _uint(len(linked.text) << 3 | KIND_VIPER) + linked.text
    out += _uint((SCOPE_VIPERRELOC if linked.relocs else 0) | (SCOPE_VIPERRODATA if linked.rodata else 0)
                 | (SCOPE_VIPERBSS if linked.bss_size else 0))
    if linked.rodata:
        out += _uint(len(linked.rodata))
    if linked.bss_size:
        out += _uint(linked.bss_size)
    out += linked.rodata
    if linked.relocs:
        for r in linked.relocs:
            # opcode: bit 0 "a location follows", bits 2-3 the region whose address is added;
            # location: the word's index, bit 0 set when it lies in rodata
            out += bytes([REGION_CODE[r.base] << 2 | 1]) + _uint(r.word << 1 | (r.region == RODATA))
        out += b"\xff"
    return bytes(out)


# ---- The C side of the glue: MicroPython's function table and the module's qstrs ----
# mp_fun_table_t (py/nativeglue.h), field by field in order; the same in v1.25 (the ESP32
# firmware) and v1.29 (the VM). One place: mp_glue.h is generated from it.
FUN_TABLE = (
    # 0: the native emitter's
    "const_none", "const_false", "const_true", "native_from_obj", "native_to_obj", "swap_globals", "load_name",
    "load_global", "load_build_class", "load_attr", "load_method", "load_super_method", "store_name",
    "store_global", "store_attr", "obj_subscr", "obj_is_true", "unary_op", "binary_op", "new_tuple", "new_list",
    "new_dict", "new_set", "set_store", "list_append", "dict_store", "make_function_from_proto_fun",
    "call_function_n_kw", "call_method_n_kw", "call_method_n_kw_var", "getiter", "iternext", "nlr_push", "nlr_pop",
    "raise", "import_name", "import_from", "import_all", "new_slice", "unpack_sequence", "unpack_ex", "delete_name",
    "delete_global", "new_closure", "arg_check_num_sig", "setup_code_state_native", "small_int_floor_divide",
    "small_int_modulo", "yield_from", "setjmp_",
    # 50: the dynamic runtime's (py/dynruntime.h)
    "memset_", "memmove_", "realloc_", "printf_", "vprintf_", "raise_msg", "obj_get_type", "obj_new_str",
    "obj_new_bytes", "obj_new_bytearray_by_ref", "obj_new_float_from_f", "obj_new_float_from_d",
    "obj_get_float_to_f", "obj_get_float_to_d", "load_method_maybe", "get_buffer", "get_stream_raise",
    "arg_parse_all", "arg_parse_all_kw_array", "binary_get_size", "binary_get_val_array", "binary_set_val_array",
    "plat_print",
    # 73: types and stream functions
    "type_type", "type_str", "type_list", "type_dict", "type_fun_builtin_0", "type_fun_builtin_1",
    "type_fun_builtin_2", "type_fun_builtin_3", "type_fun_builtin_var", "type_Exception", "stream_read_obj",
    "stream_readinto_obj", "stream_unbuffered_readline_obj", "stream_write_obj",
)

_COMMENTS_AND_DIRECTIVES = re.compile(r"//[^\n]*|/\*.*?\*/|^[ \t]*#[^\n]*", re.DOTALL | re.MULTILINE)
_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"', re.MULTILINE)


def sources(source: Path) -> list[Path]:
    """The C file and the headers it includes from beside it (`#include "name.h"`, and theirs), the
    C file first: what its build is made of, but mp_glue.h, which is generated from them."""
    found, pending = [], [Path(source)]
    while pending:
        path = pending.pop(0)
        if path not in found:
            found.append(path)
            pending += [path.parent / name for name in _LOCAL_INCLUDE.findall(path.read_text()) if name != GLUE_HEADER]
    return found


def source_text(source: Path) -> str:
    """The text of the C file and of the headers it includes (sources), one after the other."""
    return "\n".join(path.read_text() for path in sources(source))


def _code(source_text: str) -> str:
    return _COMMENTS_AND_DIRECTIVES.sub("", source_text)


def fun_table_uses(source_text: str) -> list[str]:
    """The function-table entries the C file calls or reads, as `mp->name`."""
    used = sorted(set(re.findall(r"\bmp->(\w+)", _code(source_text))))
    unknown = [name for name in used if name not in FUN_TABLE]
    if unknown:
        raise NatmodError(f"mp->{', mp->'.join(unknown)}: not in MicroPython's function table (natmod.FUN_TABLE)")
    return used


def qstr_names(source_text: str) -> list[str]:
    """The names the C file uses as `QSTR(name)`: its qstr table after the file name."""
    return sorted(set(re.findall(r"\bQSTR\((\w+)\)", _code(source_text))))


def glue_header(source: Path) -> str:
    """mp_glue.h for the C file `source`: the function table with every entry at its index, those
    the C uses typed as it declares them (mp_<name>_t), and the indices of its qstrs."""
    source = Path(source)
    text = source_text(source)
    used = set(fun_table_uses(text))
    width = max(len(f"mp_{name}_t") for name in used) if used else len("void *")
    fields = [f"    {(f'mp_{name}_t' if name in used else 'void *').ljust(width)} {name};  // {i}"
              for i, name in enumerate(FUN_TABLE)]
    return "\n".join([
        f"// Generated by microgpt/natmod.py from its FUN_TABLE and {source.name}: do not edit (scripts/build_cmodel.py",
        "// rewrites it).",
        "",
        "// MicroPython's function table (mp_fun_table_t, py/nativeglue.h), every entry at its index. The",
        f"// entries {source.name} uses as mp->name have the types it declares, mp_<name>_t.",
        "typedef struct {", *fields, "} mp_fun_table_t;",
        "",
        "// Indices into the .mpy's qstr table: the file name, then each name the C file uses as QSTR(name).",
        f"enum {{ {', '.join(['Q_FILE'] + [f'Q_{q}' for q in qstr_names(text)])} }};",
        "",
    ])


def check_glue(source: Path) -> None:
    """Refuse to build against an mp_glue.h that the C file or FUN_TABLE has moved on from."""
    header = Path(source).with_name(GLUE_HEADER)
    if header.is_file() and header.read_text() != glue_header(source):
        raise NatmodError(f"{header} is not the one {Path(source).name} needs: rerun scripts/build_cmodel.py")


def build(source: Path, arch: str) -> bytes:
    """The C file `source` as a .mpy for `arch`."""
    source = Path(source)
    check_glue(source)
    with tempfile.TemporaryDirectory() as tmp:
        obj = compile_object(source, arch, Path(tmp))
    return mpy_bytes(link(obj, arch), arch, [source.name] + qstr_names(source_text(source)))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
