"""Build a C file into a MicroPython native module (.mpy): compile it with LLVM 22, link the
object ourselves, and write the .mpy that MicroPython's loader reads.

MicroPython's own native-module tools expect GCC's output. LLVM's Xtensa backend keeps its
literal pool (the constants `l32r` loads) in a section of its own, so this linker places that
section before the code, resolves every reference inside the module, and leaves the loader
only what depends on where the code lands. Facts used, from MicroPython's sources (read, not
copied): the .mpy layout (py/persistentcode.c: header, qstr and object tables, one viper raw
code with scope flags, BSS size and a relocation stream ending in 0xff), `mp_native_relocate`'s
relocation opcodes, and that object-table entry type 0 loads as `&mp_fun_table`.

The module reaches MicroPython only through `obj_table[0]` (the function table) and its qstr
table; its entry point, `mpy_init`, is what the loader runs at import.
"""
import hashlib
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

from . import mpy
from .errors import NatmodError

ARCHES = ("xtensawin", "x64")  # the ESP32, and the MicroPython VM on x86-64
ENTRY = "mpy_init"
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
        r = subprocess.run(argv, capture_output=True)
    except FileNotFoundError:
        raise NatmodError(f"{argv[0]} not found: install LLVM 22 (Debian: apt-get install clang-22 llvm-22)") from None
    if r.returncode:
        raise NatmodError(f"{' '.join(argv[:2])} … failed:\n{r.stderr.decode(errors='replace').strip()}")
    return r.stdout


def compile_object(source: Path, arch: str, workdir: Path) -> bytes:
    """`source` compiled to a relocatable ELF object for `arch`."""
    obj = workdir / f"{source.stem}-{arch}.o"
    if arch == "x64":
        # Position-independent: every reference inside the module is PC-relative, so the linker
        # resolves them all; hidden visibility keeps them off a GOT.
        _run([CLANG, "--target=x86_64-linux-gnu", *_COMMON, "-fPIC", "-fvisibility=hidden", "-mno-red-zone",
              "-c", str(source), "-o", str(obj)])
    elif arch == "xtensawin":
        # clang 22's driver has no -mcpu=esp32 for Xtensa; llc has (windowed ABI, single-precision FPU).
        ir, asm = workdir / f"{source.stem}.ll", workdir / f"{source.stem}.s"
        _run([CLANG, "--target=xtensa", *_COMMON, "-S", "-emit-llvm", str(source), "-o", str(ir)])
        _run([LLC, "-march=xtensa", "-mcpu=esp32", "-O2", str(ir), "-o", str(asm)])
        # llc marks a literal position before each function, where the assembler would then put
        # literals at unaligned offsets; without the marks they all go to one `.literal` section.
        text = "\n".join(line for line in asm.read_text().split("\n") if line.strip() != ".literal_position")
        asm.write_text(text)
        _run([LLVM_MC, "-triple=xtensa", "-mcpu=esp32", "-filetype=obj", str(asm), "-o", str(obj)])
    else:
        raise NatmodError(f"no native-module build for arch {arch}; known: {', '.join(ARCHES)}")
    return obj.read_bytes()


# ---- ELF: just what a relocatable object of one C file holds ----
class Section(NamedTuple):
    index: int
    name: str
    type: int
    flags: int
    offset: int
    size: int
    info: int
    align: int


class Symbol(NamedTuple):
    name: str
    value: int
    shndx: int


class Rela(NamedTuple):
    offset: int
    symbol: int
    type: int
    addend: int


SHT_PROGBITS, SHT_SYMTAB, SHT_RELA, SHT_NOBITS = 1, 2, 4, 8
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4


class Elf:
    def __init__(self, data: bytes):
        if data[:4] != b"\x7fELF" or data[5] != 1:
            raise NatmodError("not a little-endian ELF object")
        self.data = data
        self.is64 = data[4] == 2
        if self.is64:
            shoff, = struct.unpack_from("<Q", data, 0x28)
            shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
        else:
            shoff, = struct.unpack_from("<I", data, 0x20)
            shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x2E)
        raw = []
        for i in range(shnum):
            at = shoff + i * shentsize
            if self.is64:
                name, typ, flags, _, off, size, link, info, align, _ = struct.unpack_from("<IIQQQQIIQQ", data, at)
            else:
                name, typ, flags, _, off, size, link, info, align, _ = struct.unpack_from("<IIIIIIIIII", data, at)
            raw.append((name, typ, flags, off, size, link, info, align))
        strtab_off = raw[shstrndx][3]
        self.sections = [Section(i, self._str(strtab_off, r[0]), r[1], r[2], r[3], r[4], r[6], max(r[7], 1))
                         for i, r in enumerate(raw)]
        symtab = next(i for i, s in enumerate(self.sections) if s.type == SHT_SYMTAB)
        self.symbols = self._symbols(self.sections[symtab], raw[raw[symtab][5]][3])

    def _str(self, table: int, at: int) -> str:
        end = self.data.index(b"\0", table + at)
        return self.data[table + at:end].decode()

    def _symbols(self, sec: Section, strtab: int) -> list[Symbol]:
        size, fmt = (24, "<IBBHQQ") if self.is64 else (16, "<IIIBBH")
        out = []
        for at in range(sec.offset, sec.offset + sec.size, size):
            f = struct.unpack_from(fmt, self.data, at)
            name, value, shndx = (f[0], f[4], f[3]) if self.is64 else (f[0], f[1], f[5])
            out.append(Symbol(self._str(strtab, name), value, shndx))
        return out

    def contents(self, sec: Section) -> bytes:
        return bytes(sec.size) if sec.type == SHT_NOBITS else self.data[sec.offset:sec.offset + sec.size]

    def relocations(self):
        """(section relocated, [Rela]) for each relocation section."""
        size, fmt = (24, "<QQq") if self.is64 else (12, "<IIi")
        for sec in self.sections:
            if sec.type != SHT_RELA:
                continue
            entries = []
            for at in range(sec.offset, sec.offset + sec.size, size):
                off, info, addend = struct.unpack_from(fmt, self.data, at)
                sym, typ = (info >> 32, info & 0xFFFFFFFF) if self.is64 else (info >> 8, info & 0xFF)
                entries.append(Rela(off, sym, typ, addend))
            yield self.sections[sec.info], entries


# ---- Linking ----
R_X86_64_PC32, R_X86_64_PLT32 = 2, 4
R_XTENSA_NONE, R_XTENSA_32, R_XTENSA_ASM_EXPAND, R_XTENSA_SLOT0_OP = 0, 1, 11, 20


class Linked(NamedTuple):
    text: bytes            # the code, its literals (and on x64 its data), entry jump at offset 0
    bss_size: int          # zeroed data the loader allocates apart from the code (Xtensa)
    relocs: list           # (word index in text, "text" | "bss"): add that region's address there


def link(obj: bytes, arch: str) -> Linked:
    """Lay out the object's sections after an entry jump and resolve what the module can itself."""
    elf = Elf(obj)
    alloc = [s for s in elf.sections if s.flags & SHF_ALLOC and s.size]
    for s in alloc:
        if arch == "xtensawin" and not s.flags & SHF_EXECINSTR and s.type != SHT_NOBITS:
            # The ESP32 runs native code from IRAM, which only takes 32-bit loads: no byte data there.
            raise NatmodError(f"section {s.name} ({s.size} bytes): constant or initialised data is not "
                              "supported on Xtensa; keep constants in code and data zero-initialised")
    apart = [s for s in alloc if arch == "xtensawin" and s.type == SHT_NOBITS]  # the loader's BSS
    inside = [s for s in alloc if s not in apart]
    # Literal pools first: l32r only reaches backwards.
    inside.sort(key=lambda s: (not s.name.startswith(".literal"), not s.flags & SHF_EXECINSTR, s.index))

    stub = 16 if arch == "x64" else 4
    base, text = {}, bytearray(stub)
    for s in inside:
        text += bytes(-len(text) % max(s.align, 4))
        base[s.index] = ("text", len(text))
        text += elf.contents(s)
    bss_size = 0
    for s in apart:
        bss_size += -bss_size % max(s.align, 4)
        base[s.index] = ("bss", bss_size)
        bss_size += s.size

    def address(sym: Symbol) -> tuple[str, int]:
        if sym.shndx == 0:
            raise NatmodError(f"{sym.name} is not defined in the module: a freestanding module cannot "
                              "call libraries (the compiler may have turned a division, sqrt or a "
                              "copy loop into one)")
        if sym.shndx not in base:
            raise NatmodError(f"symbol {sym.name or '?'} lies in a section the module does not load")
        region, at = base[sym.shndx]
        return region, at + sym.value

    relocs = []
    for sec, entries in elf.relocations():
        if sec.index not in base:
            continue  # debug or comment sections
        region, start = base[sec.index]
        for r in entries:
            if r.type in (R_XTENSA_NONE, R_XTENSA_ASM_EXPAND) and arch == "xtensawin":
                continue
            where = start + r.offset
            target_region, target = address(elf.symbols[r.symbol])
            target += r.addend
            if arch == "x64" and r.type in (R_X86_64_PC32, R_X86_64_PLT32):
                struct.pack_into("<i", text, where, target - where)
            elif arch == "xtensawin" and r.type == R_XTENSA_32:
                if where % 4:
                    raise NatmodError(f"unaligned 32-bit relocation at {sec.name}+{r.offset:#x}")
                struct.pack_into("<I", text, where, target)
                relocs.append((where // 4, target_region))
            elif arch == "xtensawin" and r.type == R_XTENSA_SLOT0_OP and target_region == "text":
                _patch_xtensa(text, where, target)
            else:
                raise NatmodError(f"relocation type {r.type} against {elf.symbols[r.symbol].name or sec.name} "
                                  f"is not supported for {arch}")

    entry = next((s for s in elf.symbols if s.name == ENTRY and s.shndx), None)
    if entry is None:
        raise NatmodError(f"the C file defines no {ENTRY}(), the function the loader runs at import")
    _, at = address(entry)
    if arch == "x64":
        text[0:5] = b"\xe9" + struct.pack("<i", at - 5)  # jmp rel32
        text[5:stub] = b"\xcc" * (stub - 5)
    else:
        _patch_xtensa(text, 0, at, opcode=0x000006)  # j: CALL format, op0 6, n 0
    return Linked(bytes(text), bss_size, sorted(relocs))


def _patch_xtensa(text: bytearray, pc: int, target: int, opcode: int | None = None) -> None:
    """Point the PC-relative instruction at `pc` (l32r, call or j) at `target`."""
    word = int.from_bytes(text[pc:pc + 3], "little") if opcode is None else opcode
    op0 = word & 0xF
    if op0 == 1:  # l32r: target = ((pc + 3) & ~3) + (imm16 | ~0xffff) * 4, always backwards
        delta = target - ((pc + 3) & ~3)
        if delta >= 0 or delta % 4 or delta < -(1 << 18):
            raise NatmodError(f"l32r at {pc:#x} cannot reach its literal at {target:#x}")
        word = (word & 0xFF) | ((delta >> 2) & 0xFFFF) << 8
    elif op0 == 5:  # call0/4/8/12: target = (pc & ~3) + 4 + offset * 4
        delta = target - ((pc & ~3) + 4)
        word = (word & 0x3F) | ((delta >> 2) & 0x3FFFF) << 6
    elif op0 == 6 and (word >> 4) & 3 == 0:  # j: target = pc + 4 + offset
        delta = target - (pc + 4)
        word = (word & 0x3F) | (delta & 0x3FFFF) << 6
    else:
        raise NatmodError(f"cannot relocate the instruction {word:06x} at {pc:#x}")
    text[pc:pc + 3] = word.to_bytes(3, "little")


# ---- The .mpy ----
MPY_VERSION, MPY_SUB_VERSION = 6, 3
KIND_VIPER = 2  # MP_CODE_NATIVE_VIPER - MP_CODE_BYTECODE
SCOPE_VIPERRELOC, SCOPE_VIPERBSS = 0x10, 0x40
OBJ_FUN_TABLE = 0
RELOC_DEST = {"text": 0, "bss": 2}
SMALL_INT_BITS = {"xtensawin": 31, "x64": 63}


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
    out = bytearray(b"M" + bytes([MPY_VERSION, MPY_SUB_VERSION | mpy.ARCHES.index(arch) << 2, SMALL_INT_BITS[arch]]))
    out += _uint(len(qstrs)) + _uint(1)
    for q in qstrs:
        out += _qstr(q)
    out += bytes([OBJ_FUN_TABLE])
    out += _uint(len(linked.text) << 3 | KIND_VIPER) + linked.text
    flags = (SCOPE_VIPERRELOC if linked.relocs else 0) | (SCOPE_VIPERBSS if linked.bss_size else 0)
    out += _uint(flags)
    if linked.bss_size:
        out += _uint(linked.bss_size)
    if linked.relocs:
        for word, region in linked.relocs:
            # opcode: bit 0 "a location follows", bits 2-3 the region whose address is added
            out += bytes([RELOC_DEST[region] << 2 | 1]) + _uint(word << 1)
        out += b"\xff"
    return bytes(out)


def qstr_names(source_text: str) -> list[str]:
    """The names the C file indexes its qstr table with: its `enum { Q_FILE, Q_name, ... }`."""
    m = re.search(r"enum\s*\{\s*Q_FILE\s*,([^}]*)\}", source_text)
    if not m:
        raise NatmodError("the C file has no `enum { Q_FILE, Q_name, ... }` naming its qstrs")
    return [n.strip()[2:] for n in m.group(1).split(",") if n.strip()]


def build(source: Path, arch: str) -> bytes:
    """The C file `source` as a .mpy for `arch`."""
    source = Path(source)
    with tempfile.TemporaryDirectory() as tmp:
        obj = compile_object(source, arch, Path(tmp))
    return mpy_bytes(link(obj, arch), arch, [source.name] + qstr_names(source.read_text()))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
