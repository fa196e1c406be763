"""The library's one error family. Every failure a user can fix raises a MicrogptError whose
message names the fix; the CLI turns it into an error message in one place (microgpt/cli)."""


class MicrogptError(Exception):
    """Something the user can fix; the message says what."""


class DatasetError(MicrogptError, ValueError):
    """The names file is missing, malformed, or not the file it should be."""


class FirmwareError(MicrogptError):
    """The base MicroPython firmware is missing, not a MicroPython ESP32 image, or corrupt."""


class ImageError(MicrogptError):
    """A flash image, partition table or filesystem is unusable, or the files do not fit."""


class NoPartitionTable(ImageError):
    """There is no partition table where one was looked for."""


class BuildError(MicrogptError):
    """The trainer cannot be compiled, or not for the target that is to import it."""


class NatmodError(BuildError):
    """The C kernels could not become a native module."""


class FlashError(MicrogptError):
    """esptool could not write the board, or the board does not match the image."""


class OutputError(MicrogptError):
    """An output path the run would write is unusable, occupied or in use."""


class PlanError(MicrogptError):
    """The run cannot fit the chip (its heap or its flash); the message gives the planner's figures."""


class EngineError(MicrogptError):
    """The engine could not run, or lost the chip; the message says what to do."""


class Silence(EngineError):
    """Nothing arrived on the UART for too long."""


class MissingFile(EngineError):
    """The file asked for is not on the board."""
