"""The Ray options of ``signals generate`` and ``predict``: ``--ray``, ``--ray-address``, ``--actors``, ...

``--ray`` is a flag and the cluster is a separate option, ``--ray-address HOST:PORT``: typer has no option whose
value may be left out, and a flag keeps ``--ray --out S`` unambiguous. ``--ray`` alone starts a local cluster for
the job (and stops it after); ``--ray-address`` joins a running cluster and implies ``--ray``. The library side is
:class:`agentrec.llm.raypool.RayConfig` (its fields are these options' names, so its range errors name them as
typed). Nothing here imports ray.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from agentrec.core.errors import UsageError
from agentrec.core.options import COUNT, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, OptionError, flag
from agentrec.llm import EngineConfig
from agentrec.llm.raypool import RAY_INSTALL, RayConfig

RAY_PANEL = "Ray (distributed engine)"
INSTALL_HELP = RAY_INSTALL.replace("[", "\\[")  # help is rich markup: [ray] would be read as a style
_DEFAULTS = RayConfig()

RayFlag = Annotated[bool, typer.Option(
    "--ray", rich_help_panel=RAY_PANEL,
    help="Generate on a pool of Ray actors, one engine each, instead of in this process: a local Ray cluster is "
         "started for the job (--ray-address joins a running one). Results are stored as they come back, so a "
         f"killed job resumes like any other; the outputs equal a run without --ray. Needs: {INSTALL_HELP}.")]
RayAddressOption = Annotated[Optional[str], typer.Option(
    "--ray-address", rich_help_panel=RAY_PANEL,
    help="A running Ray cluster to join instead of starting a local one (HOST:PORT, auto, ray://HOST:10001); every "
         "node needs agentrec installed. Implies --ray.")]
ActorsOption = Annotated[int, typer.Option(
    rich_help_panel=RAY_PANEL, help="Ray actors, each holding one engine (with --ray).")]
CpusPerActorOption = Annotated[float, typer.Option(
    rich_help_panel=RAY_PANEL, help="CPUs reserved per actor; an hf actor runs this many torch threads (with --ray).")]
GpusPerActorOption = Annotated[float, typer.Option(
    rich_help_panel=RAY_PANEL, help="GPUs per actor (with --ray): --engine vllm, or hf with --llm-device cuda/auto.")]
ActorTimeoutOption = Annotated[float, typer.Option(
    "--actor-timeout-s", rich_help_panel=RAY_PANEL,
    help="Stop the job with an error when no chunk has come back from the actors for this many seconds (a hung "
         "actor or engine; the first wait includes loading the model). What came back stays stored.")]
ActorRetriesOption = Annotated[int, typer.Option(
    rich_help_panel=RAY_PANEL,
    help="A chunk whose generation raises is tried again this often on its actor, and a dead actor is restarted "
         "as often; then the chunk's items or sessions are reported (with --ray).")]

# the range checks of the options above, for agentrec.cli.options.checked
RAY_RULES = dict(actors=COUNT, cpus_per_actor=POSITIVE, gpus_per_actor=NON_NEGATIVE, actor_timeout_s=POSITIVE,
                 actor_retries=NON_NEGATIVE_INT)
GPU_ENGINES = ("vllm", "hf")


def ray_config(*, ray: bool, ray_address: str | None, actors: int, cpus_per_actor: float, gpus_per_actor: float,
               actor_timeout_s: float, actor_retries: int, engine: str,
               engine_config: EngineConfig | None) -> RayConfig | None:
    """The :class:`RayConfig` of the options, or None without ``--ray`` / ``--ray-address``.

    Raises:
        UsageError: a Ray option given without ``--ray``, or GPUs per actor for an engine that cannot use them.
    """
    settings = dict(actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor,
                    actor_timeout_s=actor_timeout_s, actor_retries=actor_retries)
    if not ray and ray_address is None:
        given = [flag(name) for name, value in settings.items() if value != getattr(_DEFAULTS, name)]
        if given:
            raise UsageError(f"{', '.join(given)} {'apply' if len(given) > 1 else 'applies'} with --ray only")
        return None
    if gpus_per_actor > 0:
        if engine not in GPU_ENGINES:
            raise OptionError("--gpus-per-actor", f"needs an engine that runs on GPUs ({', '.join(GPU_ENGINES)}); "
                                                  f"--engine {engine} does not", typed=True)
        if engine == "hf" and engine_config is not None and engine_config.device == "cpu":
            raise OptionError("--gpus-per-actor", "with --engine hf needs --llm-device cuda (or auto), not cpu",
                              typed=True)
    if ray_address is not None and not ray_address.strip():
        raise OptionError("--ray-address", "is empty; give HOST:PORT, auto or ray://HOST:PORT", typed=True)
    return RayConfig(address=ray_address.strip() if ray_address else None, **settings)

