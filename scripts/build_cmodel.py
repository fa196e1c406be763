"""Rebuild the C kernels (firmware/cmodel/cmodel.c) into the committed native modules
firmware/cmodel/cmodel-<arch>.mpy, for the ESP32 (xtensawin) and the MicroPython VM (x64),
and record what they were built from in firmware/cmodel/build.json.

Needs LLVM 22 (Debian: apt-get install clang-22 llvm-22). Users need none of it: `microgpt
build` ships the committed .mpy. Run it after every change to cmodel.c; a test checks that the
committed builds match the source.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from microgpt import natmod, payload

SOURCE = payload.CMODEL_DIR / "cmodel.c"
MANIFEST = payload.CMODEL_DIR / "build.json"


def main():
    built = {}
    for arch in natmod.ARCHES:
        blob = natmod.build(SOURCE, arch)
        out = payload.CMODEL_DIR / f"cmodel-{arch}.mpy"
        out.write_bytes(blob)
        built[out.name] = natmod.sha256(blob)
        print(f"{out}: {len(blob):,} bytes")
    manifest = {"source": SOURCE.name, "source_sha256": natmod.sha256(SOURCE.read_bytes()),
                "compiler": natmod.compiler_version(), "files": built}
    MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
