"""The `microgpt` command. Thin commands over the library: each module here is one command
group; library errors (microgpt.errors) become one-line messages here (options.Group) and
nowhere else, and the library's progress messages (logger "microgpt") go to stderr."""
import importlib.metadata
import logging

import click

from . import build, device, plan, sample, sim
from .options import Group


class _Echo(logging.Handler):
    def emit(self, record):
        click.echo(self.format(record), err=True)


_log = logging.getLogger("microgpt")
_log.addHandler(_Echo())
_log.setLevel(logging.INFO)


@click.group(cls=Group)
@click.version_option(importlib.metadata.version("microgpt-esp32"), prog_name="microgpt")
def main():
    """microgpt on the ESP32: train Karpathy's 4,192-parameter GPT on the chip, in MicroPython."""
    _log.setLevel(logging.INFO)  # a --quiet run lowers it for itself


main.add_command(build.build)
main.add_command(sim.sim)
main.add_command(device.device)
main.add_command(sample.sample_names)
main.add_command(plan.plan)
