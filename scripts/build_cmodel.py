"""Rebuild the C kernels (firmware/cmodel/cmodel.c) into the committed native modules
firmware/cmodel/cmodel-<arch>.mpy, for the ESP32 (xtensawin) and the MicroPython VM (x64),
and record what they were built from in firmware/cmodel/build.json.

First it regenerates firmware/cmodel/mp_glue.h, the C declarations of MicroPython's function
table and of the module's qstrs (microgpt/natmod.py's FUN_TABLE and the names cmodel.c and the
headers it includes use).

Needs LLVM 22 (Debian: apt-get install clang-22 llvm-22). Users need none of it: `microgpt
build` ships the committed .mpy. Run it after every change to cmodel.c or its headers; a test
checks that the committed builds match the sources.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from microgpt import natmod, payload

SOURCE = payload.CMODEL_DIR / "cmodel.c"
GLUE = payload.CMODEL_DIR / natmod.GLUE_HEADER
MANIFEST = payload.CMODEL_DIR / "build.json"


def main():
    GLUE.write_text(natmod.glue_header(SOURCE))
    built = {}
    for arch in natmod.ARCHES:
        blob = natmod.build(SOURCE, arch)
        out = payload.CMODEL_DIR / f"cmodel-{arch}.mpy"
        out.write_bytes(blob)
        built[out.name] = natmod.sha256(blob)
        print(f"{out}: {len(blob):,} bytes")
    manifest = {"sources": {p.name: natmod.sha256(p.read_bytes()) for p in [*natmod.sources(SOURCE), GLUE]},
                "compiler": natmod.compiler_version(), "files": built}
    MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
