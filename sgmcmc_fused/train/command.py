"""The skeleton every training command runs: options, the output folder or the resumed run, the
processes of torchrun, messages and Ctrl-C, around a task's own data loading and training.

A task (``lm``, ``classify``) is a `Task` subclass that says what is particular to it: its options,
how they become its configuration, how its data load and are checked, and how its methods train and
report. `Task.register` adds it to ``python -m sgmcmc_fused.train``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..kernels.registry import select_backend, select_lstm_backend
from .checkpoint import CheckpointError
from .config import RunConfig
from .distributed import World, barrier, gather_objects, run_in_world
from .options import RUN_CONTROL, ConfigError, cpu_threads, given_learning_rates
from .run_control import InterruptFlag, Printer, Stop, resolve_device
from .run_folder import RunFolder, chain_dir
from .runlog import write_json, write_text_atomic


@dataclass
class Session:
    """One execution of a command: what a task's `Task.train` works with.

    Attributes:
        cfg: the run's configuration (new, or the resumed run's).
        out: the run's folder (what --resume takes).
        say: prints a message (rank 0 only; none with --quiet unless forced).
        progress: whether to show progress bars (rank 0 only).
        interrupted: true once Ctrl-C was pressed; trainers checkpoint and stop.
    """

    args: argparse.Namespace
    cfg: Any
    out: Path
    world: World
    device: torch.device
    say: Printer
    progress: bool
    interrupted: InterruptFlag

    def trainer_options(self) -> dict[str, Any]:
        """The keyword arguments every `SamplerTrainer` takes from the session."""
        return dict(world=self.world, say=self.say, progress=self.progress, run_root=self.out)

    def train_options(self) -> dict[str, Any]:
        """The keyword arguments of `SamplerTrainer.train`."""
        return dict(
            stop_after=self.args.stop_after_steps,
            checkpoint_every=self.args.checkpoint_every,
            interrupted=self.interrupted,
        )


class Task(ABC):
    """A training command: ``python -m sgmcmc_fused.train NAME``."""

    name: ClassVar[str]
    help: ClassVar[str]
    #: The --help text (the command module's docstring).
    description: ClassVar[str]
    config_type: ClassVar[type[RunConfig]]
    #: Options that --resume accepts (they do not change what the run computes).
    run_control: ClassVar[frozenset[str]] = RUN_CONTROL

    @abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the task's options (`sgmcmc_fused.train.options` has the shared groups)."""

    @abstractmethod
    def new_config(self, args: argparse.Namespace) -> RunConfig:
        """The configuration of a new run from the options. Raises ConfigError."""

    @abstractmethod
    def run_name(self, cfg: RunConfig) -> str:
        """The default folder name under runs/ (a time stamp is appended)."""

    @abstractmethod
    def load_data(self, cfg: RunConfig, args: argparse.Namespace, world: World) -> tuple[RunConfig, Any]:
        """Load and check the data; returns the configuration (completed from the data where it
        depends on them) and the data. Raises ConfigError."""

    @abstractmethod
    def train(self, session: Session, data: Any) -> int:
        """Train every method, write the results and print the table (rank 0); returns the exit status."""

    # -- the skeleton --------------------------------------------------------------------------------

    def register(self, subparsers: argparse._SubParsersAction) -> None:
        """Add the subcommand."""
        parser = subparsers.add_parser(
            self.name,
            help=self.help,
            description=self.description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self.add_arguments(parser)
        parser.set_defaults(func=self.run, parser=parser)

    def run(self, args: argparse.Namespace) -> int:
        """Run the command; bad options, data and checkpoints become a usage error (exit status 2)."""
        try:
            if args.checkpoint_every < 0:
                raise ConfigError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
            if args.stop_after_steps is not None and args.stop_after_steps < 1:
                raise ConfigError(f"--stop-after-steps must be >= 1, got {args.stop_after_steps}")
            with cpu_threads(args.threads):
                return run_in_world(resolve_device(args.device), lambda world, device: self._run(args, world, device))
        except (ConfigError, CheckpointError) as e:
            args.parser.error(str(e))
        except OSError as e:
            if e.errno not in _STORAGE_ERRNOS:
                raise
            # A log, sample or results file that cannot be written: every write is atomic, so the
            # files are whole, and the last checkpoint (written before its logs) too.
            args.parser.error(
                f"{e.filename or 'a file of the run'}: {e.strerror}; the run's files and its last checkpoint are "
                "whole: free space (or fix the folder) and continue the run with --resume"
            )
        return 2  # not reached: parser.error exits

    def run_dirs(self, cfg: RunConfig, out: Path, method: str) -> list[Path]:
        """The folders of `method`'s runs in the run folder `out`: its own, or one per chain."""
        chains = getattr(cfg, "chains", 1)
        return [out / method] if chains == 1 else [chain_dir(out, method, k) for k in range(chains)]

    def claim(self, cfg: RunConfig, out: Path, resumed: bool) -> Callable[[], None] | None:
        """Take what else the run writes to besides its folder (rank 0, holding the folder's lock).
        Returns what undoes the claim (for a run refused before it begins), or None. Raises
        ConfigError if another run has it."""
        return None

    def _run(self, args: argparse.Namespace, world: World, device: torch.device) -> int:
        notes: list[str] = []  # what the resume says of the options it was given
        if args.resume:
            out = Path(args.resume)
            cfg = self._resumed_config(args, out, notes)
        else:
            cfg = self.new_config(args)
            default = f"runs/{self.run_name(cfg)}-{time.strftime('%Y%m%d-%H%M%S')}"
            # Every rank must write to rank 0's folder (the clock may pass a second between ranks).
            out = Path(args.out) if args.out else Path(gather_objects(default, world)[0])
        _check_backends(cfg, device)
        folder = RunFolder(out, "--resume" if args.resume else "--out")
        self._take(folder, cfg, args, world)
        began = False
        try:
            cfg, data = self.load_data(cfg, args, world)
            # A resume that the checkpoints refuse (other data, a damaged file) before any of them
            # moves on leaves config.json as it was: it may only change --epochs of a run that goes on.
            saved_config = (out / "config.json").read_text(encoding="utf-8") if args.resume and world.is_main else None
            checkpoints = _checkpoint_times(out) if saved_config is not None else None
            if world.is_main:
                write_json(out / "config.json", cfg.to_json())
            began = True
            barrier(world)
            progress = args.progress if args.progress is not None else (sys.stderr.isatty() and not args.quiet)
            say = Printer(args.quiet, silent=not world.is_main)
            for note in notes:
                say(note, force=True)
            with InterruptFlag() as interrupted:
                session = Session(args, cfg, out, world, device, say, progress and world.is_main, interrupted)
                try:
                    return self.train(session, data)
                except Stop as stop:
                    say(str(stop), force=True)
                    return stop.status
                except (ConfigError, CheckpointError):
                    if saved_config is not None and _checkpoint_times(out) == checkpoints:
                        write_text_atomic(out / "config.json", saved_config)
                    elif not args.resume and not _checkpoint_times(out):
                        # A new run refused before it checkpointed anything (a schedule its data cannot
                        # hold, found when a trainer is built) has not begun: it leaves nothing behind,
                        # so that the corrected command can use the folder.
                        if world.is_main:
                            _remove_unbegun_run(out)
                        began = False
                    raise
        except OSError as e:
            if began or e.errno not in _STORAGE_ERRNOS:
                raise
            raise ConfigError(
                f"{e.filename or out}: {e.strerror}; the run had not begun"
                + (", and its checkpoints are as they were" if args.resume else " and leaves nothing behind")
                + ": free space (or fix the folder) and run the command again"
            ) from e
        finally:
            if began:
                folder.release()
            else:  # a new run whose data would not load leaves no folder behind
                folder.discard()

    def _take(self, folder: RunFolder, cfg: RunConfig, args: argparse.Namespace, world: World) -> None:
        """Rank 0 takes the run's folder (and whatever `claim` takes) for the life of the command: a
        new run needs a new or empty folder, and no other command may be writing into it. Every rank
        raises the same ConfigError if that fails."""
        problem = None
        if world.is_main:
            try:
                folder.acquire()
                out = folder.path
                if not args.resume and (out / "config.json").exists():
                    raise ConfigError(
                        f"--out {out} already holds a run: continue it with --resume {out}, or choose another --out"
                    )
                if not args.resume and (others := folder.foreign_entries()):
                    shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
                    raise ConfigError(
                        f"--out {out} is a folder of other files ({shown}): a new run needs a new or empty folder"
                    )
                folder.undo_on_discard(self.claim(cfg, out, resumed=bool(args.resume)))
            except ConfigError as e:
                folder.discard()
                problem = str(e)
        problem = gather_objects(problem, world)[0]
        if problem is not None:
            raise ConfigError(problem)

    def _resumed_config(self, args: argparse.Namespace, out: Path, notes: list[str]) -> RunConfig:
        """The saved configuration of the run in `out`, with --epochs, --lr and --nan-policy changed if
        given (`notes` gets what the user should know of them).

        Raises:
            ConfigError: no run in `out`, or options that would change what the run computes.
        """
        path = out / "config.json"
        if not path.is_file():
            raise ConfigError(f"--resume {out}: no run there (no config.json)")
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"--resume {out}: {path} is not readable JSON ({e})") from None
        if not isinstance(saved, dict):
            raise ConfigError(f"--resume {out}: {path} holds a JSON {type(saved).__name__}, not a configuration")
        try:
            cfg = self.config_type.from_json(saved)
        except ConfigError as e:
            raise ConfigError(f"--resume {out}: {path}: {e}") from None
        parser: argparse.ArgumentParser = args.parser
        given = _given_options(args)
        if "out" in given:
            raise ConfigError(f"--resume continues the run in its own folder, {out}; --out cannot be given with it")
        changed = frozenset(k for k in given if k not in self.run_control and k not in cfg.RESUMABLE)
        if changed:
            names = ", ".join(sorted(_option_names(parser, changed) or ("--" + k.replace("_", "-") for k in changed)))
            accepted = ", ".join(sorted(_option_names(parser, self.run_control - {"resume", "out"})))
            raise ConfigError(
                f"--resume continues the run with its saved configuration; {names} cannot be given "
                f"(only --epochs, --lr, --nan-policy and the run options {accepted})"
            )
        changes: dict[str, Any] = {}
        if args.epochs is not None:
            if cfg.schedule == "cyclical" and args.epochs != cfg.epochs:
                raise ConfigError(
                    f"--resume {out}: the cyclical schedule's cycles span the run's {cfg.epochs} epochs, so --epochs "
                    "cannot change"
                )
            changes["epochs"] = args.epochs
        if args.lr:
            given_lrs = given_learning_rates(args.lr, cfg.methods)
            epochs = changes.get("epochs", cfg.epochs)
            changes["lr"] = {**cfg.lr, **self._lrs_for_unfinished(cfg, out, given_lrs, epochs, notes)}
        if "nan_policy" in given:
            changes["nan_policy"] = args.nan_policy
        return cfg.replace(**changes) if changes else cfg

    def _lrs_for_unfinished(
        self, cfg: RunConfig, out: Path, given: dict[str, float], epochs: int, notes: list[str]
    ) -> dict[str, float]:
        """The --lr values of the methods that still train: a method whose every run (chain, fold) has
        finished its `epochs` trains no more, so its lr stays in config.json (for a later --epochs), and
        `notes` gets a line saying so. Within a method, finished chains or folds keep theirs
        (`SamplerTrainer`)."""
        kept = {}
        for method, lr in given.items():
            results = [_finished_result(d, epochs) for d in self.run_dirs(cfg, out, method)]
            if lr == cfg.lr[method] or not all(results):
                kept[method] = lr
                continue
            trained = sorted({r["lr"] for r in results})
            at = "lr " + ", ".join(f"{x:g}" for x in trained)
            notes.append(
                f"{method}: finished its {epochs} epochs at {at}; --lr {lr:g} changes nothing for it (give --epochs "
                "to train it further)"
            )
        return kept


def _finished_result(run_dir: Path, epochs: int) -> dict[str, Any] | None:
    """The result in run_dir/log.json if that run has finished `epochs` epochs, else None."""
    try:
        result = json.loads((run_dir / "log.json").read_text(encoding="utf-8")).get("result")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return result if isinstance(result, dict) and result.get("epochs", 0) >= epochs else None


#: OSErrors of the storage (a full disk or quota, an I/O error, a read-only file system): reported
#: as a usage error (exit 2) with what to do, like a checkpoint that cannot be written.
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


def _check_backends(cfg: RunConfig, device: torch.device) -> None:
    """The step and LSTM backends asked for can run the model (fp32) on `device`.

    Raises:
        ConfigError: naming the option and every reason.
    """
    for option, impl, select in (
        ("--step-impl", cfg.step_impl, select_backend),
        ("--lstm-impl", cfg.lstm_impl, select_lstm_backend),
    ):
        try:
            select(impl, device, [torch.float32])
        except ValueError as e:
            raise ConfigError(f"{option} {impl} on {device}: {e}") from None


def _remove_unbegun_run(out: Path) -> None:
    """Remove what a new run wrote in its folder before it trained (config.json, empty method folders);
    its lock file and the folder itself go with `RunFolder.discard`."""
    (out / "config.json").unlink(missing_ok=True)
    for folder in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: something else stays
            folder.rmdir()


def _checkpoint_times(out: Path) -> dict[Path, int]:
    """The modification time (ns) of every checkpoint in the run folder `out` (methods, chains)."""
    return {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint.pt")}


def _given_options(args: argparse.Namespace) -> frozenset[str]:
    """The dests of the options on the command line: ``args.given`` from `cli.main`, else (a
    namespace built by hand) those whose value differs from the parser's default."""
    if hasattr(args, "given"):
        return args.given
    return frozenset(k for k, v in vars(args).items() if v != args.parser.get_default(k))


def _option_names(parser: argparse.ArgumentParser, dests: frozenset[str]) -> list[str]:
    """The option strings of the arguments with these dests (the longest spelling of each)."""
    return [
        max(action.option_strings, key=len)
        for action in parser._actions
        if action.dest in dests and action.option_strings and action.help != argparse.SUPPRESS
    ]
