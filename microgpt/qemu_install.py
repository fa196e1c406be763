"""Espressif's QEMU installed into the tool's cache (`microgpt sim install-qemu`): no package
registry carries it, so the tool fetches Espressif's own release build for this host through its
one downloader (or takes a given archive of the same layout), checks its sha256 before unpacking
it, unpacks it whole or not at all, and runs it once to see that it starts and emulates an esp32.

The install is `<cache>/qemu-xtensa/qemu/bin/qemu-system-xtensa` (the release's layout under one
directory), where `engines.qemu.find_qemu` looks after $QEMU_XTENSA and PATH."""
import contextlib
import logging
import os
import platform
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from . import download
from .errors import EngineError

try:
    import fcntl
except ImportError:  # Windows: two installs at once are not serialised there
    fcntl = None

log = logging.getLogger(__name__)

BINARY = "qemu-system-xtensa"
EXE = BINARY + (".exe" if os.name == "nt" else "")
INSTALL = "qemu-xtensa"  # the install's directory in the cache
MARKER = ".archive-sha256"  # in the install: the archive it was unpacked from
CHECK_TIMEOUT_S = 60

# The release the tool installs: Espressif's QEMU as ESP-IDF's idf_tools.py installs it. Every sha256
# below is copied from ESP-IDF's tools/tools.json, tool "qemu-xtensa", version esp_develop_9.2.2_20250817
# (github.com/espressif/esp-idf, tags v5.5.2 and v6.0). The release esp_develop_9.2.2_20250228 is in no
# commit of that file on any of ESP-IDF's branches, so no public source gave a hash of it.
TAG = "esp-develop-9.2.2-20250817"  # of github.com/espressif/qemu
RELEASE = TAG.replace("-", "_")  # as the archives' names spell it
PINNED = {  # (platform.system(), machine as below): (host in the archive's name, sha256)
    ("Linux", "x86_64"): ("x86_64-linux-gnu", "588bfaccd0f929650655d10a580f020c6ba9c131712d8fa519280081b8d126eb"),
    ("Linux", "aarch64"): ("aarch64-linux-gnu", "317f6e0fd1dba0886d8110709823d909593ef29438822a14f81ebe19d72ce7cd"),
    ("Darwin", "x86_64"): ("x86_64-apple-darwin", "00b9dbc2124cf7633cb86f264fbc524226ad4001bce68bbdba43c9bdc4eb026e"),
    ("Darwin", "aarch64"): ("aarch64-apple-darwin", "aa92e337461d482f5d9f31cd8efc0bd67b3de8fcfcfb567289cb43a59c184651"),
    ("Windows", "x86_64"): ("x86_64-w64-mingw32", "ef550b912726997f3c1ff4a4fb13c1569e2b692efdc5c9f9c3c926a8f7c540fa"),
}
MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}  # Windows' and macOS's names for them
BY_HAND = (f"download a qemu-xtensa-softmmu archive for your host from https://github.com/espressif/qemu/releases/tag/{TAG} "
           "and install it with `microgpt sim install-qemu --archive FILE --sha256 HEX` (HEX: the file's sha256), or "
           "build Espressif's QEMU and pass --qemu PATH")

# The shared libraries Espressif's builds load from the system, and what installs each:
# (its name's start, Debian/Ubuntu package, Homebrew formula).
LIBRARIES = [
    ("libSDL2", "libsdl2-2.0-0", "sdl2"),
    ("libslirp", "libslirp0", "libslirp"),
    ("libgcrypt", "libgcrypt20", "libgcrypt"),
    ("libgpg-error", "libgpg-error0", "libgpg-error"),
    ("libglib-2.0", "libglib2.0-0", "glib"),
    ("libgio-2.0", "libglib2.0-0", "glib"),
    ("libgobject-2.0", "libglib2.0-0", "glib"),
    ("libgmodule-2.0", "libglib2.0-0", "glib"),
    ("libpixman", "libpixman-1-0", "pixman"),
]


class Archive(NamedTuple):
    source: str  # a path or a URL
    sha256: str


def installed() -> Path | None:
    """The tool's installed qemu-system-xtensa, if there is one."""
    binary = download.cache_dir() / INSTALL / "qemu" / "bin" / EXE
    return binary if binary.is_file() else None


def pinned_archive() -> Archive:
    """Espressif's release archive for this host, or a refusal that says how to install by hand."""
    system, machine = platform.system(), platform.machine().lower()
    host = PINNED.get((system, MACHINES.get(machine, machine)))
    if host is None:
        raise EngineError(f"no Espressif QEMU build is pinned for {system} {machine}: {BY_HAND}")
    name, sha256 = host
    return Archive(f"https://github.com/espressif/qemu/releases/download/{TAG}/qemu-xtensa-softmmu-{RELEASE}-{name}.tar.xz",
                   sha256)


def given_archive(source: str, sha256: str) -> Archive:
    """--archive PATH_OR_URL --sha256 HEX, checked before anything is fetched or written."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise EngineError(f"--sha256 {sha256}: not a sha256 (64 hex digits); `sha256sum FILE` prints it")
    if "://" not in source and not Path(source).is_file():
        raise EngineError(f"--archive {source}: no such file (give a .tar.xz of Espressif's QEMU, or its URL)")
    return Archive(source, sha256.lower())


def install(archive: Archive, progress: Callable[[int, int | None], None] | None = None) -> tuple[Path, str]:
    """Install `archive` into the cache (a no-op but for the check when it is installed already):
    the installed qemu-system-xtensa and its version line, once it is seen to start (`check`)."""
    cache = download.cache_dir()
    with _locked(cache):
        target = cache / INSTALL
        if installed() and (target / MARKER).is_file() and (target / MARKER).read_text() == archive.sha256:
            log.info("%s is installed already: checking it", target / "qemu")
        else:
            _unpack(_archive_file(archive, progress), archive.sha256, target)
    binary = installed()
    return binary, check(binary)


@contextlib.contextmanager
def _locked(cache: Path):
    """Held while one install runs: a second one at the same time waits for it, then finds it done."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = open(cache / f".{INSTALL}.lock", "a+")
    except OSError as e:
        raise EngineError(download.unwritable_cache(e, cache)) from None
    with lock:
        if fcntl:
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _archive_file(archive: Archive, progress) -> Path:
    """The archive as a local file whose sha256 is the one given."""
    if "://" in archive.source:
        name = archive.source.rstrip("/").rsplit("/", 1)[-1] or "qemu-xtensa.tar.xz"
        return download.fetch(archive.source, archive.sha256, name, EngineError, BY_HAND, progress)
    digest = download.sha256_of(archive.source)
    if digest != archive.sha256:
        raise EngineError(f"{archive.source} has sha256 {digest}, expected {archive.sha256}: not the archive meant "
                          "(or a damaged copy); nothing was installed")
    return Path(archive.source)


def _unpack(path: Path, sha256: str, target: Path) -> None:
    """Unpack the release archive at `path` into `target`, replacing what is there only once all of it
    is unpacked; an entry that would land outside `target` refuses the whole archive."""
    try:
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{INSTALL}-"))
    except OSError as e:
        raise EngineError(download.unwritable_cache(e, target.parent)) from None
    try:
        try:
            with tarfile.open(path) as tar:
                members = tar.getmembers()
                for member in members:
                    _refuse_escape(member, path)
                # `tar` keeps the files' modes (the binary stays executable), clearing only set-id bits;
                # Python before 3.11.4 has no filters: the check above refuses what it would.
                tar.extractall(staging, members, **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))
        except (tarfile.TarError, EOFError, OSError) as e:
            raise EngineError(f"{path} could not be unpacked ({e}): it is damaged or not a .tar.xz archive; "
                              "nothing was installed") from None
        if not (staging / "qemu" / "bin" / EXE).is_file():
            raise EngineError(f"{path} has no qemu/bin/{EXE}: not the layout of Espressif's QEMU release archives; "
                              "nothing was installed")
        (staging / MARKER).write_text(sha256)
        old = target.with_name(f"{staging.name}-old")
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        log.info("installed %s from %s", target / "qemu", path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _refuse_escape(member: tarfile.TarInfo, archive: Path) -> None:
    """An entry with an absolute path, a `..` that climbs out, a link pointing out, or a device."""
    def outside(name: str) -> bool:
        return name.startswith(("/", "\\")) or bool(re.match(r"[A-Za-z]:", name)) or \
            os.path.normpath(name).replace("\\", "/").split("/")[0] == ".."

    linked = os.path.join(os.path.dirname(member.name), member.linkname) if member.issym() else member.linkname
    if outside(member.name) or ((member.issym() or member.islnk()) and
                                (outside(member.linkname) or outside(linked))):
        raise EngineError(f"{archive} has an entry that would land outside the install ({member.name}"
                          f"{' -> ' + member.linkname if member.linkname else ''}): refused, nothing was installed")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise EngineError(f"{archive} has a device or pipe entry ({member.name}): not a QEMU release; "
                          "nothing was installed")


def check(binary: Path) -> str:
    """Run the installed QEMU once: its version line, if it starts and emulates an esp32. Where it
    cannot start for want of shared libraries, the error names them and the command that installs
    them (the install stays: `install` again only checks again)."""
    version = _run(binary, "--version")
    if version.returncode != 0:
        missing = _missing_libraries(binary, version.stdout)
        if missing:
            raise EngineError(f"{binary} cannot start: the system lacks {', '.join(missing)}; {_install_command(missing)}, "
                              "then run `microgpt sim install-qemu` again (it only checks again)")
        raise EngineError(f"{binary} --version failed (exit {version.returncode}): {version.stdout.strip()[-300:]}")
    machines = _run(binary, "-machine", "help")
    if not re.search(r"^esp32\s", machines.stdout, re.M):
        raise EngineError(f"{binary} emulates no esp32 machine: not Espressif's QEMU fork; {BY_HAND}")
    return version.stdout.splitlines()[0]


def _run(binary: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([str(binary), *args], capture_output=True, text=True, errors="replace",
                              timeout=CHECK_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise EngineError(f"{binary} cannot be run ({e.strerror}): not a build for this host? {BY_HAND}") from None
    except subprocess.TimeoutExpired:
        raise EngineError(f"{binary} {' '.join(args)} did not answer within {CHECK_TIMEOUT_S} s") from None


def _missing_libraries(binary: Path, said: str) -> list[str]:
    """The shared libraries the loader could not find: all of them from ldd where it exists (the
    loader itself names only the first), else the one the loader's message names."""
    if platform.system() == "Linux" and shutil.which("ldd"):
        listed = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, errors="replace")
        found = re.findall(r"^\s*(\S+) => not found", listed.stdout, re.M)
        if found:
            return found
    return (re.findall(r"error while loading shared libraries: ([^:\s]+)", said)  # Linux's loader
            + re.findall(r"Library not loaded: \S*?([^/\s]+)(?:\s|$)", said))  # macOS's dyld


def _install_command(missing: list[str]) -> str:
    darwin = platform.system() == "Darwin"
    packages = [brew if darwin else apt for lib in missing for start, apt, brew in LIBRARIES if lib.startswith(start)]
    if not packages:
        return "install the packages that provide them"
    unique = " ".join(dict.fromkeys(packages))
    return f"install them: brew install {unique}" if darwin else f"install them: sudo apt-get install -y {unique}"
