# Runs inside the MicroPython VM (not on the host's Python): mount a littlefs partition image as
# the board's filesystem and boot main.py from it, as the ESP32 firmware does at power-up.
# Usage: micropython host_boot.py VFS_IMAGE
import os
import sys

import vfs

BLOCK = 4096  # MicroPython's ESP32 flash block device erases and maps 4 KiB sectors


class FileBlockDevice:
    # MicroPython's extended block protocol (readblocks/writeblocks with offsets), which littlefs needs.
    def __init__(self, path):
        self.f = open(path, "r+b")
        self.count = self.f.seek(0, 2) // BLOCK

    def readblocks(self, block, buf, offset=0):
        self.f.seek(block * BLOCK + offset)
        self.f.readinto(buf)

    def writeblocks(self, block, buf, offset=0):
        self.f.seek(block * BLOCK + offset)
        self.f.write(buf)
        self.f.flush()  # a killed VM (a "reset") keeps what littlefs believes is on flash

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return self.count
        if op == 5:  # block size
            return BLOCK
        if op == 6:  # erase: littlefs never relies on erased contents
            return 0


vfs.mount(vfs.VfsLfs2(FileBlockDevice(sys.argv[1])), "/flash")
os.chdir("/flash")
sys.path[:] = ["", ".frozen"]  # imports come from the board's filesystem, as on the chip
del sys.argv[:]
with open("main.py") as f:
    main = compile(f.read(), "main.py", "exec")  # the source is garbage from here, as on the chip
exec(main, {"__name__": "__main__"})
