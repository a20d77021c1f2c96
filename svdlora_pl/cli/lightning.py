"""``svdlora fit|validate|test|predict``: LightningCLI over :class:`~svdlora_pl.model.QwenLoRAModule` and
:class:`~svdlora_pl.data.QADataModule`; :func:`resolve_fit_config` resolves the config ``svdlora fit`` would run
without running or building anything."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from typing_extensions import override

SUBCOMMANDS = ("fit", "validate", "test", "predict")
FIT_SECTIONS = ("seed_everything", "trainer", "model", "data")
"""The keys of a resolved fit config."""


class SvdloraCLI(LightningCLI):
    """LightningCLI whose data module follows the model's tokenizer (one name in the config, not two)."""

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.model_name_or_path", "data.tokenizer")
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")


def parser_kwargs() -> dict[str, Any]:
    """Keyword arguments of every parser: bad arguments raise ``jsonargparse.ArgumentError`` instead of exiting."""
    return {"exit_on_error": False, **{name: {"exit_on_error": False} for name in SUBCOMMANDS}}


def run_lightning(args: Sequence[str] | None) -> None:
    """Parse ``args`` (``None``: ``sys.argv``) and run the LightningCLI subcommand they name."""
    from svdlora_pl.training.datamodule import QADataModule
    from svdlora_pl.training.module import QwenLoRAModule

    SvdloraCLI(
        QwenLoRAModule,
        QADataModule,
        args=None if args is None else list(args),
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs=parser_kwargs(),
    )


class FitConfigCLI(SvdloraCLI):
    """``svdlora fit``'s options without the subcommand, parsed but not run: ``self.config`` is the config resolved
    (``-c`` files stacked, links applied, defaults filled, types checked) and nothing is instantiated or seeded: no
    model, tokenizer, data or Trainer, so a GPU config resolves on a CPU without a download.

    Args:
        args: The command line, e.g. ``["-c", "a.yaml", "-c", "b.yaml", "--data.batch_size=2"]``.
        **kwargs: Keyword arguments of the parser (``prog``, ``description``, ...); it raises
            ``jsonargparse.ArgumentError`` on a bad argument instead of exiting.
    """

    def __init__(self, args: Sequence[str], **kwargs: Any) -> None:
        from svdlora_pl.training.datamodule import QADataModule
        from svdlora_pl.training.module import QwenLoRAModule

        super().__init__(
            QwenLoRAModule,
            QADataModule,
            args=list(args),
            run=False,
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False, **kwargs},
        )

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse ``args`` into ``self.config`` (they are always given: ``sys.argv`` is not looked at)."""
        self.config = parser.parse_object(args) if isinstance(args, dict | Namespace) else parser.parse_args(args)

    @override
    def _set_seed(self) -> None:
        """Seed nothing: ``seed_everything`` stays a value of the config."""

    @override
    def instantiate_classes(self) -> None:
        """Instantiate nothing."""


def fit_values(config: Namespace) -> dict[str, Any]:
    """The ``seed_everything``/``trainer``/``model``/``data`` values of a parsed fit namespace, as plain dicts."""
    values = config.as_dict()
    return {key: values[key] for key in FIT_SECTIONS}


def resolve_fit_config(args: Sequence[str]) -> dict[str, Any]:
    """The config that ``svdlora fit ARGS`` would run, resolved by its own parser but not run.

    Args:
        args: ``svdlora fit``'s options, without the subcommand: ``["-c", "a.yaml", "-c", "b.yaml"]`` stacks two
            files (the later wins), ``--model.lora.r=8`` overrides one value.

    Returns:
        ``{"seed_everything": ..., "trainer": {...}, "model": {...}, "data": {...}}``: every value, defaults
        filled in (classes given by ``class_path`` as ``{"class_path": ..., "init_args": {...}}``).

    Raises:
        jsonargparse.ArgumentError: A missing or malformed file, an unknown key, a value of the wrong type.
    """
    return fit_values(FitConfigCLI(args).config)
