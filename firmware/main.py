# microgpt boot entry
# MicroPython runs main.py at power-up; a host that uploaded a run over the raw REPL runs this
# same text there instead. Train, and turn any failure into protocol lines (MGPT error / MGPT tb)
# so the host learns why the run ended.
import io
import sys


def mount_flash(fast):
    # ESP32_GENERIC mounts its littlefs with 32-byte reads and programs: the least RAM (128-byte
    # caches), one flash operation per 128 bytes. Loading the trainer and saving what it made run
    # with 512-byte reads (2 KB caches, 4 KB of RAM), so that importing a module is a few flash
    # operations, not hundreds (each ~10 ms in QEMU, whose start goes from ~40 s to ~5 s);
    # training runs with the defaults, at the heap's peak. The sizes are not kept on the flash:
    # any mount reads the same filesystem. Here first, so that even `import train` is quick;
    # nothing on a port without the ESP32's vfs partition (the VM).
    try:
        import esp32
        import vfs

        part = esp32.Partition.find(esp32.Partition.TYPE_DATA, label="vfs")[0]
    except (ImportError, IndexError):
        return
    vfs.umount("/")
    try:
        vfs.mount(vfs.VfsLfs2(part, readsize=512 if fast else 32, progsize=256 if fast else 32,
                              lookahead=64 if fast else 32), "/")
    except OSError:  # not littlefs: as the board mounted it
        vfs.mount(part, "/")


try:
    mount_flash(True)
    import train

    train.main(mount_flash)
except BaseException as e:  # MemoryError and Ctrl-C included: the host must hear of them
    trace = io.StringIO()
    sys.print_exception(e, trace)
    print("MGPT error %s: %s" % (type(e).__name__, e))
    for line in trace.getvalue().split("\n"):
        if line:
            print("MGPT tb " + line)
