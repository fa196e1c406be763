"""The tool's one downloader and cache, for the firmware, the dataset and Espressif's QEMU: a file
is fetched once, checked against its pinned sha256 before it is kept, and checked again whenever
the cached copy is used, so a truncated or replaced file is never trusted."""
import hashlib
import http.client
import logging
import os
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .errors import MicrogptError
from .fileio import output_error

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes read at a time: a download streams to its temporary file, never whole into memory
TIMEOUT_S = 60


def cache_dir() -> Path:
    """Where downloads are kept: $MICROGPT_CACHE, else ~/.cache/microgpt."""
    given = os.environ.get("MICROGPT_CACHE")
    if given and os.path.exists(given) and not os.path.isdir(given):
        raise MicrogptError(f"MICROGPT_CACHE={given} is a file, not a directory: point it at a directory (made if "
                            "missing), or unset it to use ~/.cache/microgpt")
    return Path(given or Path.home() / ".cache" / "microgpt")


def sha256_of(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fetch(url: str, sha256: str, name: str, error: type[MicrogptError], by_hand: str,
          progress: Callable[[int, int | None], None] | None = None) -> Path:
    """The cached file `name`, downloaded from `url` first if it is missing or fails its hash.
    `by_hand` says what the user can do instead (in errors, after the reason); failures raise
    `error`; `progress(bytes so far, bytes in all or None)` is called as the download goes. The
    download goes to a temporary file and becomes the cached copy only once its sha256 matches,
    so a failed, cut or altered download leaves nothing behind."""
    directory = cache_dir()
    path = directory / name
    if path.is_file():
        if sha256_of(path) == sha256:
            return path
        log.info("%s in the cache fails its sha256 check: downloading it again", path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}-", suffix=".part")
    except OSError as e:
        raise error(unwritable_cache(e, directory)) from None
    log.info("downloading %s", url)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _download(url, out, error, by_hand, progress)
        if digest != sha256:
            raise error(f"{url} has sha256 {digest}, expected {sha256}; nothing was cached. The file changed "
                        f"upstream or the download was altered (a proxy?): {by_hand}")
        os.replace(tmp, path)
    except OSError as e:
        raise error(unwritable_cache(e, directory)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def unwritable_cache(e: OSError, directory: Path) -> str:
    return f"{output_error(e, directory)} (the tool's cache: set MICROGPT_CACHE to a writable directory)"


def _download(url: str, out, error: type[MicrogptError], by_hand: str,
              progress: Callable[[int, int | None], None] | None) -> str:
    """Stream `url` into `out`; its sha256. Only the network's failures become `error` here (a
    failed write is the cache's, reported by the caller)."""
    def unreachable(e: Exception) -> MicrogptError:
        return error(f"could not download {url}: {e}; check the network, or {by_hand}")

    digest = hashlib.sha256()
    try:
        response = urllib.request.urlopen(url, timeout=TIMEOUT_S)
    except (OSError, http.client.HTTPException) as e:
        raise unreachable(e) from None
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length else None
        received = 0
        while True:
            try:
                chunk = response.read(CHUNK)
            except (OSError, http.client.HTTPException) as e:
                raise unreachable(e) from None
            if not chunk:
                break
            out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            if progress:
                progress(received, total)
    # http.client ends a body cut short as if it were whole: the length it announced tells.
    if total is not None and received < total:
        raise error(f"the download of {url} was cut short ({received:,} of {total:,} bytes); nothing was cached: "
                    f"try again, or {by_hand}")
    return digest.hexdigest()
