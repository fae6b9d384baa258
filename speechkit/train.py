"""``python -m speechkit.train task=... model=... criterion=... [overrides]``

Hydra composes ``configs/train.yaml`` with the registered structured configs; speechkit then
builds the task, its model and criterion, and runs the Trainer. Hydra only composes: the run
directory is ``checkpoint.save_dir`` (the same on every rank, no timestamp) and speechkit writes
``config.yaml``, ``train.log`` and TensorBoard events there from rank 0.

Exit status: 0 done; 2 bad input (one ``speechkit: error: ...`` line); 75 pre-empted by
SIGUSR1/SIGTERM (``speechkit.preemption``: handled from the first line of this module on; after
saving ``checkpoint_last.pt`` when training had started; requeue the job to resume); 130
interrupted (Ctrl-C); 1 other errors. The command-line process leaves through ``os._exit`` after
flushing its logs and killing its data-loader workers, so no error, in training or validation,
can leave it waiting for workers at interpreter exit.
"""

from __future__ import annotations

# first, before torch and Hydra are imported: a pre-emption signal during start-up must end the
# job with status 75 (requeue), not kill it
from speechkit import preemption

if __name__ == "__main__":
    preemption.install()
    preemption.install_exit_hook()

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

import hydra
from omegaconf import DictConfig, OmegaConf

from speechkit import components
from speechkit.config import register_train_schema
from speechkit.distributed import DistributedEnv, destroy_distributed, detect_env, init_distributed
from speechkit.errors import SpeechkitError
from speechkit.preemption import EXIT_PREEMPTED, Preempted
from speechkit.registry import TASK_REGISTRY
from speechkit.trainer.checkpoint import check_save_dir
from speechkit.trainer.rng import seed_everything
from speechkit.trainer.trainer import Trainer
from speechkit.user_dir import import_user_module, user_dir_from_argv

CONFIG_DIR = os.environ.get(
    "SPEECHKIT_CONFIG_DIR", str(Path(__file__).resolve().parents[1] / "configs")
)
logger = logging.getLogger("speechkit.train")


def setup_logging(env: DistributedEnv, save_dir: str | None) -> None:
    """Rank 0 logs INFO to stderr and ``<save_dir>/train.log``; other ranks WARNING only."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    prefix = f"[rank {env.rank}] " if env.is_distributed else ""
    fmt = logging.Formatter(
        f"%(asctime)s | %(levelname)s | {prefix}%(name)s | %(message)s", "%Y-%m-%d %H:%M:%S"
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(fmt)
    root.addHandler(handler)
    root.setLevel(logging.INFO if env.is_master else logging.WARNING)
    if env.is_master and save_dir:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(Path(save_dir) / "train.log")
        fh.setFormatter(fmt)
        root.addHandler(fh)


def build_components(cfg: DictConfig):
    """Build ``(task, model, criterion)`` from a composed config; the task gets
    ``common.seed``."""
    task = TASK_REGISTRY.build(cfg.task, seed=cfg.common.seed)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    return task, model, criterion


def main(cfg: DictConfig) -> int:
    """Train with a composed config; returns 0 when done.

    Raises:
        SpeechkitError: bad input (config, data, checkpoint); ``run_guarded`` prints one line.
        Preempted: SIGUSR1/SIGTERM (after saving ``checkpoint_last.pt`` once training began).
    """
    env = detect_env()
    save_dir = Path(cfg.checkpoint.save_dir)
    created_here = env.is_master and not save_dir.exists()
    if env.is_master:  # before train.log is opened: an unwritable folder is one line
        check_save_dir(save_dir)
    setup_logging(env, cfg.checkpoint.save_dir)
    try:
        try:
            device, task, model, criterion = _start(cfg, env)
        except SpeechkitError:
            if created_here:  # bad input before anything was trained: leave no folder behind
                _remove_new_save_dir(save_dir)
            raise
        if env.is_master:
            Path(cfg.checkpoint.save_dir).mkdir(parents=True, exist_ok=True)
            OmegaConf.save(cfg, Path(cfg.checkpoint.save_dir) / "config.yaml", resolve=True)
            n_params = sum(p.numel() for p in model.parameters())
            logger.info(
                "task %s | model %s (%.2fM parameters) | criterion %s | %d process(es) "
                "via %s | device %s",
                cfg.task._name,
                cfg.model._name,
                n_params / 1e6,
                cfg.criterion._name,
                env.world_size,
                env.launcher,
                device,
            )
        trainer = Trainer(cfg, task, model, criterion, env, device)
        trainer.train()
        logger.info(
            "done: %d updates, best %s = %s",
            trainer.num_updates,
            cfg.checkpoint.best_checkpoint_metric,
            trainer.best_metric,
        )
        return 0
    finally:
        destroy_distributed()


def _start(cfg: DictConfig, env: DistributedEnv):
    """Process group, seeded ``(task, model, criterion)``; returns them with the device."""
    device = init_distributed(
        env,
        expected_world_size=cfg.distributed.world_size,
        backend=str(cfg.distributed.backend),
        use_cuda=not cfg.common.cpu,
        timeout_minutes=cfg.distributed.timeout_minutes,
    )
    seed_everything(cfg.common.seed)  # identical initial weights on every rank
    return (device, *build_components(cfg))


def _remove_new_save_dir(save_dir: Path) -> None:
    """Remove a save folder this run created, when it holds nothing but its ``train.log``."""
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, logging.FileHandler):
            logging.getLogger().removeHandler(handler)
            handler.close()
    (save_dir / "train.log").unlink(missing_ok=True)
    try:
        save_dir.rmdir()  # only when empty: nothing else is ever removed
    except OSError:
        pass


EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as a shell reports it."""


def exit_process(status: int) -> NoReturn:
    """End the command-line process now with ``status``, whatever its threads and children do.

    A process leaving with :data:`EXIT_PREEMPTED` first writes ``$SPEECHKIT_STATUS_FILE``. Logs
    and standard streams are flushed, data-loader workers (which ignore SIGTERM so that a
    pre-emption save is never cut short) are killed, and ``os._exit`` skips the interpreter's
    exit handlers, which would otherwise wait for those workers forever.
    """
    if status == EXIT_PREEMPTED:
        preemption.write_status_file(status)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    _kill_children()
    os._exit(status)


def _kill_children() -> None:
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()


def run_guarded(cfg: DictConfig) -> int:
    """``main(cfg)`` with every way out turned into an exit status (traceback logged for bugs)."""
    try:
        return main(cfg)
    except SpeechkitError as e:
        print(f"speechkit: error: {e}", file=sys.stderr)
        return 2
    except Preempted as e:
        logger.warning("pre-empted: %s; exiting with status %d for requeue", e, EXIT_PREEMPTED)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        logger.error("interrupted (Ctrl-C); exiting with status %d", EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except BaseException:
        logger.exception("training failed with an unexpected error")
        return 1
    finally:
        destroy_distributed()


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> None:
    preemption.take_over_from_submitit()  # a submitit job: save on its signal, don't drop it
    status = run_guarded(cfg)
    if not _is_multirun():
        exit_process(status)
    # a Hydra sweep (``-m``, e.g. the submitit launcher) runs several jobs: report, don't exit
    if status == EXIT_PREEMPTED and preemption.under_submitit():
        preemption.requeue_slurm_job()  # after the save: rank 0 passed the barrier behind it
    if status:
        _kill_children()  # its data-loader workers must not keep the job alive
        raise SystemExit(status)


def prepare(argv: list[str] | None = None) -> None:
    """Register everything Hydra needs before composing (built-ins, schema, user module)."""
    components.import_all()
    register_train_schema()
    user_dir = user_dir_from_argv(sys.argv[1:] if argv is None else argv)
    if user_dir:
        import_user_module(user_dir)


HELP_FLAGS = ("--help", "-h")


def help_text() -> str:
    """``--help``: usage, the config groups with their registered names, each task's default
    model and criterion, and the settings groups; read from the registries, the ConfigStore and
    ``CONFIG_DIR`` (call :func:`prepare` first), without composing a config."""
    import textwrap

    from hydra.core.config_store import ConfigStore

    from speechkit import registry
    from speechkit.config import TrainConfig

    def names_in(group: str) -> list[str]:
        found = {p.stem for p in Path(CONFIG_DIR, group).glob("*.yaml")}
        try:
            found.update(n.removesuffix(".yaml") for n in ConfigStore.instance().list(group))
        except OSError:  # the group is not in the ConfigStore
            pass
        return sorted(found)

    groups = {
        "task": registry.TASK_REGISTRY.names(),
        "model": registry.MODEL_REGISTRY.names(),
        "criterion": registry.CRITERION_REGISTRY.names(),
        "optimizer": registry.OPTIMIZER_REGISTRY.names(),
        "lr_scheduler": registry.LR_SCHEDULER_REGISTRY.names(),
        "experiment": names_in("experiment"),
        "debug": names_in("debug"),
    }
    first = {"optimizer": "adam", "lr_scheduler": "fixed"}  # configs/train.yaml's defaults
    lines = [
        "usage: python -m speechkit.train [experiment=NAME] [task=NAME] [model=NAME]",
        "           [criterion=NAME] [optimizer=NAME] [lr_scheduler=NAME] [GROUP.KEY=VALUE ...]",
        "       python -m speechkit.train ... --cfg job   print the composed config; no training",
        "       python -m speechkit.train -m ...          Hydra multirun (sweeps, Slurm launcher)",
        "       python -m speechkit.train --hydra-help    Hydra's own options",
        "",
        "Trains the task's model with its criterion; every argument is a Hydra override of",
        f"{Path(CONFIG_DIR) / 'train.yaml'}. model and criterion default to the task's (below);",
        "an experiment preset chooses its own, and model=/criterion= on the command line win over",
        "both. common.user_dir=PATH imports your own registrations first (listed here as well).",
        "",
        "Config groups (GROUP=NAME):",
    ]
    for group, names in groups.items():
        shown = [f"{n} (default)" if first.get(group) == n else n for n in names]
        text = ", ".join(shown) if shown else "(none)"
        lines += textwrap.wrap(
            text, 96, initial_indent=f"  {group:<14}", subsequent_indent=" " * 16
        )
    lines += ["", "Task defaults (model, criterion):"]
    for task in groups["task"]:
        model = registry.TASK_REGISTRY.default_choice(task, "model") or "-"
        criterion = registry.TASK_REGISTRY.default_choice(task, "criterion") or "-"
        lines.append(f"  {task:<28}{model}, {criterion}")
    settings = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in groups]
    lines += [""] + textwrap.wrap(
        f"Settings (GROUP.KEY=VALUE): {', '.join(settings)}, and the fields of the chosen "
        "task, model, criterion, optimizer and lr_scheduler; all keys with their values:",
        92,
    )
    lines += [
        "  python -m speechkit.train task=NAME --cfg job",
        "",
        "Exit status: 0 done, 2 bad input (one 'speechkit: error:' line), 75 pre-empted",
        "(requeue to resume), 130 interrupted, 1 other errors.",
    ]
    return "\n".join(lines) + "\n"


def exit_if_help(argv: list[str]) -> None:
    """Print :func:`help_text` and exit with status 0 when ``argv`` holds ``--help``/``-h``."""
    if any(a in HELP_FLAGS for a in argv):
        sys.stdout.write(help_text())
        sys.stdout.flush()
        raise SystemExit(0)


def cli_main() -> None:
    # again for the console script, which does not run this module as __main__
    preemption.install()
    preemption.install_exit_hook()  # a signal before main() runs (e.g. during composition)
    try:
        prepare()
    except SpeechkitError as e:
        print(f"speechkit: error: {e}", file=sys.stderr)
        exit_process(2)
    exit_if_help(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    cli_main()
