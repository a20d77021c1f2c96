"""``svdlora fit|validate|test|predict``: LightningCLI over :class:`~svdlora_pl.model.QwenLoRAModule` and
:class:`~svdlora_pl.data.QADataModule`; :func:`resolve_fit_config` resolves the config ``svdlora fit`` would run
without running or building anything."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

SUBCOMMANDS = ("fit", "validate", "test", "predict")
FIT_SECTIONS = ("seed_everything", "trainer", "model", "data")
"""The keys of a resolved fit config."""


class SvdloraCLI(LightningCLI):
    """LightningCLI whose data module follows the model's tokenizer (one name in the config, not two).

    Two departures from LightningCLI, both for user errors: with ``--ckpt_path`` the config decides every option
    and the checkpoint only supplies the trained tensors (LightningCLI would let the checkpoint's saved arguments
    replace the config's; :func:`svdlora_pl.training.checkpoint.check_matches` refuses a checkpoint whose tensors
    do not fit the configured model instead); and a run that fails on bad input removes the log directory it
    created (config.yaml, event files), so a failed command leaves nothing behind.
    """

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.model_name_or_path", "data.tokenizer")
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """LightningCLI's Trainer with the TensorBoard dashboard defaults
        (:func:`svdlora_pl.callbacks.dashboard.apply_cli_defaults`): a ``DashboardLogger`` (no constant ``hp_metric``
        and ``epoch`` cards) when the config names no logger, and a ``TensorBoardDashboard`` unless it has one."""
        from svdlora_pl.callbacks.dashboard import apply_cli_defaults

        trainer = super().instantiate_trainer(**kwargs)
        section = self.config_init.get(str(self.subcommand), self.config_init)
        apply_cli_defaults(trainer, kwargs.get("logger", section.get("trainer", {}).get("logger")))
        return trainer

    @override
    def _parse_ckpt_path(self) -> None:
        """Check ``ckpt_path`` (readable, weights-only, matching the model) without taking options from it."""
        from svdlora_pl.training.checkpoint import LIGHTNING_NAMES, check_matches, read_checkpoint

        subcommand = self.config.get("subcommand")
        section = self.config[subcommand] if subcommand else self.config
        path = section.get("ckpt_path")
        if path and path not in LIGHTNING_NAMES:
            check_matches(read_checkpoint(path), section.model.as_dict(), str(path))

    @override
    def _run_subcommand(self, subcommand: str) -> None:
        from svdlora_pl.errors import InputError
        from svdlora_pl.io import check_writable

        log_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir).absolute()
        if rank_zero_only.rank != 0:  # only rank zero writes logs
            super()._run_subcommand(subcommand)
            return
        check_writable(log_dir, "trainer.default_root_dir")
        existing = next(path for path in (log_dir, *log_dir.parents) if path.exists())
        try:
            super()._run_subcommand(subcommand)
        except InputError:
            remove_created(log_dir, existing)
            raise


def remove_created(path: Path, existing: Path) -> None:
    """Remove ``path`` and its parents up to ``existing`` (the ancestor that existed before): what a run created."""
    if path == existing:
        return
    shutil.rmtree(path, ignore_errors=True)
    for parent in path.parents:
        if parent == existing or not parent.is_relative_to(existing):
            break
        with contextlib.suppress(OSError):
            parent.rmdir()  # only if empty


def parser_kwargs() -> dict[str, Any]:
    """Keyword arguments of every parser: bad arguments raise ``jsonargparse.ArgumentError`` instead of exiting."""
    return {"exit_on_error": False, **{name: {"exit_on_error": False} for name in SUBCOMMANDS}}


def run_lightning(args: Sequence[str] | None) -> None:
    """Parse ``args`` (``None``: ``sys.argv``) and run the LightningCLI subcommand they name."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from svdlora_pl.errors import Preempted
    from svdlora_pl.training.datamodule import QADataModule
    from svdlora_pl.training.module import QwenLoRAModule

    try:
        SvdloraCLI(
            QwenLoRAModule,
            QADataModule,
            args=None if args is None else list(args),
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            parser_kwargs=parser_kwargs(),
        )
    except SIGTERMException:  # Lightning's own stop (a SystemExit with status 0), before PreemptionCheckpoint was on
        raise Preempted(None, 0) from None


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
