"""What every command needs first: valid settings and an open runtime, or a clear exit."""

import sys

import click
from pydantic import ValidationError

from adapter.errors import MappingFileError
from adapter.runtime import Runtime, open_runtime
from adapter.settings import Settings, get_settings


def settings_or_exit() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        for err in exc.errors(include_url=False, include_input=False):
            name = "".join(f"ADAPTER_{str(part).upper()}: " for part in err["loc"][:1])
            click.echo(f"settings: {name}{err['msg']}", err=True)
        sys.exit(2)


def open_runtime_or_exit(settings: Settings) -> Runtime:
    try:
        return open_runtime(settings)
    except MappingFileError as exc:
        click.echo(f"refusing to start, a mapping file is broken:\n{exc}", err=True)
        sys.exit(2)
