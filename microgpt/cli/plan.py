"""`microgpt plan`: the heap a shape needs on the chip, and the largest shapes that fit."""
import click

from .. import chip, payload, planner
from .options import shape_options


@click.command("plan")
@shape_options
@click.option("--kernels", type=click.Choice(planner.KERNELS), default="c", show_default=True,
              help="The model's arithmetic: c (cmodel.mpy) or python (the MicroPython loops, as bytecode).")
def plan(n_embd, n_head, n_layer, block_size, kernels):
    """Predict a training run's peak heap on the ESP32 for a model shape: its parameters, the bytes
    of each buffer, and whether it fits ESP32_GENERIC's GC heap; then the largest shapes that fit.
    Exits 1 when the shape does not fit, so a script can use it as a check."""
    shape = chip.Shape(n_embd, n_head, n_layer, block_size)
    p = planner.plan(shape, kernels, payload.LOG_EVERY)
    click.echo(f"{shape}: {shape.n_params:,} parameters, {kernels} kernels, on {p.platform.name}")
    for what, size in p.buffers:
        click.echo(f"  {what:<40} {size:>9,} B")
    click.echo(f"  {'code, objects, interpreter (measured)':<40} {p.overhead:>9,} B")
    click.echo(f"  {'predicted peak':<40} {p.peak:>9,} B")
    room = f"{p.spare:,} B to spare" if p.spare >= 0 else f"{-p.spare:,} B short"
    click.echo(f"  {'with the collector headroom (measured)':<40} {p.peak + p.platform.headroom:>9,} B  of the "
               f"{p.platform.heap:,} B heap: {room}")
    placed = p.placement
    for size, arrays in zip(p.platform.areas, placed or [[] for _ in p.platform.areas]):
        click.echo(f"  {f'area of {size:,} B (measured)':<40} " + ("; ".join(arrays) or "(no room found)"))
    click.echo(f"{shape}: " + ("fits" if p.fits else "does NOT fit"))
    click.echo(f"largest that fit (n_head {n_head}, block_size {block_size}, {kernels} kernels):")
    fitting = planner.largest(kernels, payload.LOG_EVERY, n_head, block_size)
    for best in fitting:
        click.echo(f"  {best.shape}: {best.shape.n_params:>7,} parameters, peak {best.peak:,} B")
    if not fitting:
        click.echo(f"  none: not even n_embd {n_head} with one layer fits; choose fewer heads or a smaller block size")
    if not p.fits:
        raise SystemExit(1)
