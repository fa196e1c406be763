"""The `microgpt` command: build the image, run the trainer in a simulator or on a board, report."""
import functools
import time
from pathlib import Path

import click

from . import dataset, payload
from .engines import EngineError

BUILD_IMAGE = Path("build/flash.bin")


def run_options(f):
    """The options that define a training run, shared by build, sim run and device run;
    they reach the command as `cfg` (a payload.RunConfig) and `docs` (the names)."""

    @click.option("--steps", type=click.IntRange(1, 1_000_000), default=1000, show_default=True, help="Training steps.")
    @click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Names file, one a-z name per line [default: makemore's names.txt, downloaded once].")
    @click.option("--init", type=click.Choice(["microgpt", "device"]), default="microgpt", show_default=True,
                  help="microgpt: the host makes microgpt.py's initial weights and ships them; device: drawn on the chip.")
    @click.option("--seed", type=int, default=42, show_default=True, help="Seed of the data order, the weights and sampling.")
    @click.option("--samples", type=click.IntRange(min=0), default=20, show_default=True, help="Names to sample after training.")
    @click.option("--log-every", type=click.IntRange(min=1), default=1, show_default=True, help="Steps per UART step record.")
    @click.option("--ckpt-every", type=click.IntRange(min=0), default=0, show_default=True,
                  help="Checkpoint to flash every N steps, so a reset resumes the run (0: never).")
    @click.option("--emit", type=click.Choice(payload.EMITS), default="auto", show_default=True,
                  help="How mpy-cross compiles the trainer's hot loops: auto is native in the VM, bytecode on the ESP32 (little executable RAM).")
    @click.option("--kernels", type=click.Choice(payload.KERNELS), default="auto", show_default=True,
                  help="The model's arithmetic: c (a native module, ~50x fewer instructions per step on the chip) "
                       "or python; auto is c wherever it is built for the target (the ESP32 and the x64 VM).")
    @functools.wraps(f)
    def wrapper(steps, data, init, seed, samples, log_every, ckpt_every, emit, kernels, **kwargs):
        cfg = payload.RunConfig(steps=steps, seed=seed, init=init, samples=samples, log_every=log_every,
                                ckpt_every=ckpt_every, emit=emit, kernels=kernels)
        try:
            docs = dataset.load_names(data)
        except dataset.DatasetError as e:
            raise click.ClickException(str(e)) from None
        return f(cfg=cfg, docs=docs, **kwargs)

    return wrapper


@click.group()
def main():
    """microgpt on the ESP32: train Karpathy's 4,192-parameter GPT on the chip, in MicroPython."""


@main.command()
@run_options
@click.option("--firmware", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Base MicroPython ESP32 firmware [default: the pinned official v1.25.0, downloaded once].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=BUILD_IMAGE, show_default=True)
def build(cfg, docs, firmware, out):
    """Build the flash image: MicroPython + a littlefs filesystem holding the trainer and the run."""
    from . import build as builder

    info = builder.build(cfg, docs, firmware, out)
    click.echo(f"{info['image']}: {info['flash_size'] >> 20} MB, MicroPython {info['firmware']}, "
               f"vfs at {info['vfs_offset']:#x} ({info['vfs_size'] >> 10} KB, {info['bytes_free'] >> 10} KB free)")
    for name, size in sorted(info["files"].items()):
        click.echo(f"  {name:<14} {size:>9,} bytes")


@main.group()
def sim():
    """Run the trainer without a board."""


@sim.command("run")
@click.option("--engine", type=click.Choice(["host", "qemu", "wokwi"]), default="host", show_default=True,
              help="host: the MicroPython VM; qemu: Espressif's QEMU; wokwi: the Wokwi simulator (needs WOKWI_CLI_TOKEN).")
@run_options
@click.option("--heap", type=click.IntRange(min=16384), default=166_592, show_default=True,
              help="GC heap of the VM in bytes (host engine); the default is ESP32_GENERIC's.")
@click.option("--image", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Flash image to run; built (or rebuilt when stale) first. qemu and wokwi use build/flash.bin by default.")
@click.option("--firmware", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Base firmware when the image must be built.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Report JSON [default: runs/<engine>-<time>/report.json]; the UART log and loss curve go beside it.")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds without UART output before the run is declared dead.")
@click.option("--micropython", default=None, help="MicroPython VM executable (host engine).")
@click.option("--qemu", default=None, help="qemu-system-xtensa executable (qemu engine).")
@click.option("--quiet", is_flag=True, help="No UART echo or progress.")
def sim_run(engine, cfg, docs, heap, image, firmware, report, timeout, micropython, qemu, quiet):
    """Train in the MicroPython VM, QEMU or Wokwi; write a JSON report, loss curve and UART log."""
    from . import build as builder
    from .report import write_report
    from .runner import run

    report = report or Path("runs") / f"{engine}-{time.strftime('%Y%m%d-%H%M%S')}" / "report.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    try:
        if engine == "host":
            from .engines.host import HostEngine

            vfs = report.with_name("vfs.bin")  # the VM's flash; the run's weights end up in it
            builder.host_flash(cfg, docs, vfs, micropython, image, firmware)
            eng = HostEngine(vfs, heap=heap, micropython=micropython, silence_s=timeout)
        else:
            image = builder.fresh_image(cfg, docs, image or BUILD_IMAGE, firmware)
            if engine == "qemu":
                from .engines.qemu import QemuEngine

                eng = QemuEngine(image, qemu=qemu, silence_s=timeout, workdir=report.parent)
            else:
                from .engines.wokwi import WokwiEngine

                eng = WokwiEngine(image, silence_s=timeout)
    except EngineError as e:
        raise click.ClickException(str(e)) from None
    result = run(eng, report.with_suffix(".uart.log"), echo=not quiet, expect_steps=cfg.steps)
    if engine == "host":
        result["weights"] = builder.save_weights(vfs, report.with_name("weights.bin"))
    write_report(result, report)
    _summary(result, report)


def _summary(result, report_path):
    losses = [x for x in result["losses"] if x is not None]
    if result["status"] == "ok":
        tail = losses[-100:]
        curve = f"loss {losses[0]:.4f} -> mean of last {len(tail)} {sum(tail) / len(tail):.4f}, " if tail else ""
        click.echo(f"ok: {result['steps']} steps, {curve}{result['ms_per_step'] or 0:.2f} ms/step, "
                   f"peak heap {result['peak_heap_bytes']:,} B")
        if result["samples"]:
            click.echo("samples: " + " ".join(result["samples"]))
    click.echo(f"report: {report_path}  (UART log: {result['uart_log']})")
    if result["status"] != "ok":
        raise click.ClickException(f"run failed: {result['error']}")


@main.command("sample")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Trained weights: weights.bin from `device pull` or beside a sim run's report.")
@click.option("--count", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True)
def sample_names(weights, count, seed, temperature):
    """Sample names on the host from trained weights, with the numpy reference and the chip's
    own PRNG: the chip's sampling rule and draws, so the same seed gives the chip's names."""
    import importlib.util

    import numpy as np

    from .reference import N_PARAMS, sample

    params = np.fromfile(weights, dtype="<f4").astype(np.float64)
    if params.shape != (N_PARAMS,):
        raise click.ClickException(f"{weights} holds {params.size * 4:,} bytes, not {N_PARAMS} float32 weights "
                                   f"({N_PARAMS * 4:,} bytes): pull it again with `microgpt device pull`")
    spec = importlib.util.spec_from_file_location("chip_rng", payload.FIRMWARE_DIR / "rng.py")
    chip_rng = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chip_rng)
    rng = chip_rng.Rng(seed)
    for i in range(count):
        click.echo(f"{i + 1:2d} {sample(params, rng.uniform, temperature)}")


# `device` needs run_options and _summary from this module: attached once they exist.
from .cli_device import device  # noqa: E402

main.add_command(device)
