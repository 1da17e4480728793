"""The `medsign` command. Each sub-command lives in its own module, which exposes ``register(app)``.

Only commands that work are registered, so `medsign --help` never advertises something unfinished.
"""

from __future__ import annotations

import os

import typer

# transformers warns on import that its image processors (for SD's optional safety checker, unused here) fall
# back from torchvision to PIL, and that long reports exceed 77 tokens; on a command line that is two lines of
# noise before every result. The environment variable is read lazily, so this costs no import; a user's own
# TRANSFORMERS_VERBOSITY still wins.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from medsign_forensics import __version__

app = typer.Typer(
    name="medsign",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    help="Pathology-aware watermarking and forensic verification of AI-generated medical images.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medsign-forensics {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Pathology-aware watermarking and forensic verification of AI-generated medical images."""


# Command modules: one import and one register() call each, in the order `--help` lists them:
# the end-to-end demo, the provider's and the auditor's commands, then the research and training tools.
# isort: off
from medsign_forensics.cli import demo as _demo  # noqa: E402
from medsign_forensics.cli import generate as _generate  # noqa: E402
from medsign_forensics.cli import verify as _verify  # noqa: E402
from medsign_forensics.cli import scan as _scan  # noqa: E402
from medsign_forensics.cli import keys as _keys  # noqa: E402
from medsign_forensics.cli import phantom as _phantom  # noqa: E402
from medsign_forensics.cli import base as _base  # noqa: E402
from medsign_forensics.cli import localize as _localize  # noqa: E402
from medsign_forensics.cli import train as _train  # noqa: E402
from medsign_forensics.cli import evaluate as _evaluate  # noqa: E402
from medsign_forensics.cli import classifier as _classifier  # noqa: E402
# isort: on

_demo.register(app)
_generate.register(app)
_verify.register(app)
_scan.register(app)
_keys.register(app)
_phantom.register(app)
_base.register(app)
_localize.register(app)
_train.register(app)
_evaluate.register(app)
_classifier.register(app)


def run() -> None:
    """Console-script entry point."""
    app()
