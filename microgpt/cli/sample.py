"""`microgpt sample`: names from trained weights, on the host, as the chip samples them."""
from pathlib import Path

import click

from .. import reference
from ..errors import MicrogptError


@click.command("sample")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Trained weights: weights.bin from `device pull` or beside a run's report.")
@click.option("--count", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=reference.TEMPERATURE, show_default=True)
def sample_names(weights, count, seed, temperature):
    """Sample names on the host from trained weights, with the numpy reference and the chip's
    own PRNG: the chip's sampling rule and draws, so the same seed gives the chip's names."""
    import numpy as np

    from ..chip import firmware_module

    params = np.fromfile(weights, dtype="<f4").astype(np.float64)
    if params.shape != (reference.N_PARAMS,):
        raise MicrogptError(f"{weights} holds {params.size * 4:,} bytes, not {reference.N_PARAMS} float32 weights "
                          f"({reference.N_PARAMS * 4:,} bytes): pull it again with `microgpt device pull`")
    rng = firmware_module("rng").Rng(seed)
    for i in range(count):
        click.echo(f"{i + 1:2d} {reference.sample(params, rng.uniform, temperature)}")
