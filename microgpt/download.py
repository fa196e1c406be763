"""The tool's one downloader and cache, for the firmware and the dataset: a file is fetched
once, checked against its pinned sha256 before it is kept, and checked again whenever the
cached copy is used, so a truncated or replaced file is never trusted."""
import hashlib
import logging
import os
import tempfile
import urllib.request
from pathlib import Path

from .errors import MicrogptError

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where downloads are kept: $MICROGPT_CACHE, else ~/.cache/microgpt."""
    return Path(os.environ.get("MICROGPT_CACHE") or Path.home() / ".cache" / "microgpt")


def sha256_of(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fetch(url: str, sha256: str, name: str, error: type[MicrogptError], by_hand: str) -> Path:
    """The cached file `name`, downloaded from `url` first if it is missing or fails its hash.
    `by_hand` says what the user can do instead (in errors, after the reason); failures raise
    `error`. The download goes to a temporary file and becomes the cached copy only once its
    sha256 matches, so a failed or altered download leaves nothing behind."""
    directory = cache_dir()
    path = directory / name
    if path.is_file():
        if sha256_of(path) == sha256:
            return path
        log.info("%s in the cache fails its sha256 check: downloading it again", path)
    directory.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except OSError as e:
        raise error(f"could not download {url}: {e}; check the network, or {by_hand}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise error(f"{url} has sha256 {digest}, expected {sha256}; nothing was cached. The file changed "
                    f"upstream or the download was altered (a proxy?): {by_hand}")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
