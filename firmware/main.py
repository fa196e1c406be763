# microgpt boot entry
# MicroPython runs main.py at power-up; a host that uploaded a run over the raw REPL runs this
# same text there instead. Train, and turn any failure into protocol lines (MGPT error / MGPT tb)
# so the host learns why the run ended.
import io
import sys

try:
    import train

    train.main()
except BaseException as e:  # MemoryError and Ctrl-C included: the host must hear of them
    trace = io.StringIO()
    sys.print_exception(e, trace)
    print("MGPT error %s: %s" % (type(e).__name__, e))
    for line in trace.getvalue().split("\n"):
        if line:
            print("MGPT tb " + line)
