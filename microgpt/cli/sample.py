"""`microgpt sample`: names from trained weights, on the host, as the chip samples them."""
from pathlib import Path

import click
import numpy as np

from .. import chip, reference
from ..errors import MicrogptError
from .options import sampling_options


@click.command("sample")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Trained weights: from `device pull`, or <report>.weights.bin beside a run's report.")
@sampling_options
def sample_names(weights, count, seed, temperature, prefix):
    """Sample names on the host from trained weights, with the chip's sampling rule and its PRNG:
    a run's weights and --seed (and temperature) give exactly the names the chip sampled after
    training, whatever its --init (the chip draws its samples from a PRNG seeded afresh); with
    --prefix, the names `microgpt device sample` makes on the board from the same weights."""
    try:
        shape, floats = chip.read_weights_file(weights)
        check_prefix(prefix, shape)
    except MicrogptError as e:
        raise click.ClickException(f"{e}") from None
    params = np.frombuffer(floats, dtype="<f4").astype(np.float64)
    if not np.isfinite(params).all():
        bad = int((~np.isfinite(params)).sum())
        raise click.ClickException(f"{weights} holds {bad:,} weights that are not numbers (nan or inf): the run "
                                   "diverged; train again (a lower learning rate or another seed)")
    rng = chip.firmware_module("rng").Rng(seed)
    for i in range(count):
        click.echo(f"{i + 1:2d} {reference.sample(params, rng.uniform, temperature, shape, prefix)}")


def check_prefix(prefix: str, shape: chip.Shape | None = None) -> None:
    """A prefix is letters a-z, and leaves `shape`'s model room for at least one letter of its own."""
    if not all("a" <= c <= "z" for c in prefix):
        raise MicrogptError(f"--prefix {prefix!r}: names are lowercase letters a-z")
    if shape and len(prefix) >= shape.block_size:
        raise MicrogptError(f"--prefix {prefix!r} is {len(prefix)} letters: the model's names are at most "
                            f"{shape.block_size} (its block size), so it leaves the model no letter to choose; give "
                            f"at most {shape.block_size - 1}")
