"""The `driftloop` command: each subcommand loads the settings once and calls a flow or a task.

    driftloop init && driftloop up && driftloop train     # or simply: driftloop demo

Every command reads `./driftloop.yaml` unless given `--config PATH` (or `DRIFTLOOP_CONFIG`), keeps
its state under `DRIFTLOOP_HOME`, exits 0 on success and non-zero with a one-line reason on failure.
Heavy imports (Prefect, Ray, GX) happen inside the commands, so `--help` answers at once.
"""

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flows import connect, views
from tasks.errors import DriftloopError, quiet_expected_failures
from tasks.settings import (
    CONFIG_FILE,
    Settings,
    StackConfig,
    load_settings,
    load_stack_settings,
)

if TYPE_CHECKING:
    from tasks.stack import StackStatus

app = typer.Typer(
    name="driftloop",
    help="A closed-loop MLOps pipeline for tabular models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigPath = Annotated[
    Path,
    typer.Option(
        "--config", "-c", envvar="DRIFTLOOP_CONFIG", help="The settings file.", show_default=True
    ),
]


JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]


class Failure(DriftloopError):
    """A failure the user can act on: printed as one line, exit status 1."""


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to write the config and data.")] = Path(
        "."
    ),
    task: Annotated[str, typer.Option(help="classification or regression.")] = "classification",
    rows: Annotated[int, typer.Option(min=100, help="Rows of synthetic data.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data.")] = 0,
    force: Annotated[bool, typer.Option(help="Overwrite an existing config.")] = False,
) -> None:
    """Write an example driftloop.yaml and a synthetic data set to start from."""
    if task not in ("classification", "regression"):
        raise Failure(f"--task {task!r}: allowed: classification, regression")
    config = directory / CONFIG_FILE
    if config.exists() and not force:
        raise Failure(f"{config} exists; pass --force to overwrite it")
    typer.echo(_write_example(config, task=task, rows=rows, seed=seed, demo=False))


@app.command()
def generate(
    scenario: Annotated[
        str,
        typer.Option(
            help="clean, covariate_shift, prior_shift, concept_drift, unseen_categories, "
            "missing_spike or schema_break."
        ),
    ],
    out: Annotated[
        Path | None, typer.Option(help="Parquet file to write (default: data/<scenario>.parquet).")
    ] = None,
    rows: Annotated[int, typer.Option(min=1, help="Rows in the batch.")] = 5_000,
    seed: Annotated[int, typer.Option(min=0, help="Seed (init's data uses 0).")] = 1,
    severity: Annotated[float, typer.Option(help="Strength; 1.0 is the documented one.")] = 1.0,
    kind: Annotated[
        str | None, typer.Option(help="schema_break only: drop, rename or retype.")
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="classification or regression (default: the config's).")
    ] = None,
    config: ConfigPath = Path(CONFIG_FILE),
) -> None:
    """Write a "production" batch of a drift scenario, from the same generator as `init`'s data."""
    from tasks import synthetic

    if task is None:
        task = load_settings(config, check_source=False).dataset.task if config.exists() else None
    try:
        table = synthetic.generate(
            rows=rows,
            seed=seed,
            task=task or "classification",  # type: ignore[arg-type]  # checked by generate
            scenario=scenario,
            severity=severity,
            kind=kind,
        )
    except ValueError as exc:
        raise Failure(f"generate: {exc}") from None
    path = synthetic.write_parquet(table, out or Path("data") / f"{scenario}.parquet")
    typer.echo(f"wrote {path} ({table.num_rows:,} rows of scenario {scenario}, seed {seed})")


@app.command()
def up(config: ConfigPath = Path(CONFIG_FILE), as_json: JsonFlag = False) -> None:
    """Start the local stack: Prefect server + UI, a Ray head, the Serve app with the champion
    (when there is one) and the runner of the training, monitor and retraining deployments (when
    there is a config), all on 127.0.0.1."""
    home, ports = load_stack_settings(config)
    state = _start_stack(home, ports, echo=not as_json)
    serving = _serve_champion(config, echo=not as_json)
    runner = _run_deployments(config, ports, echo=not as_json)
    if as_json:
        from tasks import stack

        state = stack.status(home=state.home) if runner else state
        out = {**views.stack_json(state), "serving": serving, "deployments": runner}
        typer.echo(json.dumps(out, indent=1))


@app.command()
def down(
    config: ConfigPath = Path(CONFIG_FILE),
    force: Annotated[
        bool,
        typer.Option(
            help="Also when the state file is corrupt: stop every process the stack started "
            "under this home, found by the mark it gave them."
        ),
    ] = False,
) -> None:
    """Stop what `driftloop up` started, and only that."""
    from tasks import stack

    home, _ = _stack_settings(config)
    served = connect.stop_serving(config, home)  # first: its replicas flush their prediction logs
    stopped = ["serve"] * served + stack.down(home=home, force=force)
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def status(config: ConfigPath = Path(CONFIG_FILE), as_json: JsonFlag = False) -> None:
    """Say what runs, where, which version is champion and which one the Serve app serves."""
    from tasks import registry, stack, traffic
    from tasks.serve.probe import probe

    home, _ = _stack_settings(config)
    state = stack.status(home=home)
    out: dict[str, Any] = {**views.stack_json(state), "serving": None, "champion": None}
    if not as_json:
        typer.echo(views.describe(state))
    if config.exists():  # the champion is the model's, named in the config
        settings = load_settings(config, check_source=False)
        model = settings.dataset.name
        champion = registry.champion(root=settings.home, model=model)
        served = probe(settings.serving, model=model)
        out["serving"] = served.as_dict()
        out["champion"] = {"model": model, "version": champion.version if champion else None}
        log_usage = traffic.usage(home=settings.home, model=model)
        out["log"] = log_usage.to_dict()
        record = registry.read_rollout(root=settings.home, model=model)
        out["rollout"] = views.rollout_json(record)
        if not as_json:
            typer.echo(views.serving_line(served))
            typer.echo(f"champion: {model} {views.v(champion.version if champion else None)}")
            if record is not None:
                typer.echo(views.rollout_line(record))
            typer.echo(f"prediction log and labels: {log_usage.describe()}")
    if as_json:
        typer.echo(json.dumps(out, indent=1))


@app.command()
def monitor(config: ConfigPath = Path(CONFIG_FILE), as_json: JsonFlag = False) -> None:
    """Run one monitoring pass now: drift, data and model quality of the recent traffic against
    the champion's training sample, and the retrain governor's decision (and why)."""
    settings = load_settings(config, check_source=False)
    connect.to_stack(settings)  # before Prefect is imported: it reads its settings once
    from tasks.monitor import champion_ref, verdict

    champion_ref(settings)  # fail in one line before a flow run starts: nothing to judge
    from flows.monitoring import monitoring_pass

    found = monitoring_pass(config=str(config))
    if as_json:
        typer.echo(json.dumps(found, indent=1))
    else:
        for line in verdict(found):
            typer.echo(line)
    if found["governor"]["undeliverable"]:
        raise Failure(
            "a retraining is due but no Prefect server of the stack is reachable to take the "
            "request: nothing was recorded; start the stack (driftloop up) and run it again"
        )


@app.command()
def validate(
    config: ConfigPath = Path(CONFIG_FILE),
    data: Annotated[
        Path | None, typer.Option(help="A Parquet file or folder to check (default: the source).")
    ] = None,
) -> None:
    """Check a data set against the contract and the reference profile (Great Expectations)."""
    settings = _settings(config)
    from tasks import validation

    report = validation.validate_path(str(data or settings.dataset.source), settings=settings)
    typer.echo(validation.summary(report))
    if not report.success:
        raise Failure(f"validation failed: {report.failed_count} expectation(s) not met")


@app.command()
def train(config: ConfigPath = Path(CONFIG_FILE)) -> None:
    """Run the training pipeline: validate, split, train (Ray Train), evaluate, gate, register."""
    # fail fast on a bad config file; the pipeline checks its columns against the data and the
    # champion's sample, so that a column the new data lost fails validation, not the config
    settings = load_settings(config, check_source=False)
    connect.to_stack(settings)
    from flows.training import training_pipeline

    summary = training_pipeline(config=str(config))
    typer.echo(summary)


@app.command()
def models(config: ConfigPath = Path(CONFIG_FILE), as_json: JsonFlag = False) -> None:
    """List the registry's versions, their metrics and aliases, and the alias history."""
    from tasks import registry

    settings = load_settings(config, check_source=False)
    root, model = settings.home, settings.dataset.name
    by_version: dict[int, list[str]] = {}
    for alias, version in registry.aliases(root=root, model=model).items():
        by_version.setdefault(version, []).append(alias)
    versions = registry.list_versions(root=root, model=model)
    if as_json:
        typer.echo(json.dumps(views.models_json(settings, versions, by_version), indent=1))
        return
    if not versions:
        typer.echo(f"no versions of {model!r} under {settings.location('registry')} yet")
    for version in versions:
        meta = registry.get_version(root=root, model=model, version=version)
        metrics = meta.get("metrics", {})
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        tags = ",".join(by_version.get(version, []))
        typer.echo(f"v{version:<4} {tags:<12} {meta.get('created_at', '')}  {shown}")
    for change in registry.history(root=root, model=model)[-5:]:
        typer.echo(
            f"  {change.at} {change.alias}: {views.v(change.from_version)} -> "
            f"{views.v(change.to_version)} ({change.action}: {change.reason})"
        )


@app.command()
def deploy(
    config: ConfigPath = Path(CONFIG_FILE),
    version: Annotated[int | None, typer.Option(help="The version to serve.")] = None,
    alias: Annotated[str | None, typer.Option(help="Serve the version of this alias.")] = None,
    canary: Annotated[
        bool,
        typer.Option(
            help="Beside the champion, on rollout.share of requests, until judged (not at once)."
        ),
    ] = False,
    shadow: Annotated[
        bool, typer.Option(help="Beside the champion, on a copy of each request, until judged.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Make a version (or an alias's) the champion, at once or as a judged canary or shadow
    (`serving.rollout` when neither flag is given)."""
    from tasks import registry

    if (version is None) == (alias is None):
        raise Failure("give exactly one of --version N or --alias NAME")
    if canary and shadow:
        raise Failure("give at most one of --canary and --shadow")
    settings = load_settings(config, check_source=False)
    root, model = settings.home, settings.dataset.name
    try:
        ref = version if version is not None else str(alias)
        target = registry.find(root=root, model=model, ref=ref).version
    except registry.RegistryError:
        asked = f"version {version}" if version is not None else f"alias {alias!r}"
        listed = ", ".join(map(str, registry.list_versions(root=root, model=model))) or "none yet"
        names = ", ".join(sorted(registry.aliases(root=root, model=model))) or "none yet"
        raise Failure(
            f"the {model!r} registry under {settings.home} has no {asked}; "
            f"versions: {listed}; aliases: {names}"
        ) from None
    policy = "canary" if canary else "shadow" if shadow else settings.serving.rollout
    connect.to_served(settings)
    if policy == "direct":
        from tasks.serve import ServeArgs, rollout

        previous = rollout.direct(ServeArgs.of(settings), version=target, reason="driftloop deploy")
        ended: dict[str, Any] = {"model": model, "champion": target, "previous": previous}
    else:
        from flows.serving import rollout as rollout_flow

        if not as_json:
            typer.echo(f"{policy} of v{target}: judged every {settings.rollout.check_seconds:g} s "
                       "until promoted or rolled back (Ctrl-C leaves it running)")  # fmt: skip
        ended = rollout_flow(config=str(config), candidate=target, mode=policy,
                             reason="driftloop deploy")  # fmt: skip
    _said(settings, ended, as_json=as_json)


@app.command()
def rollback(config: ConfigPath = Path(CONFIG_FILE), as_json: JsonFlag = False) -> None:
    """End a running canary or shadow, else give the champion alias back to the previous one."""
    from flows.serving import rollback as rollback_flow

    settings = load_settings(config, check_source=False)
    connect.to_served(settings)
    _said(settings, rollback_flow(config=str(config)), as_json=as_json)


@app.command()
def demo(
    directory: Annotated[Path, typer.Argument(help="Where the demo's config and data live.")] = (
        Path(".")
    ),
    as_json: JsonFlag = False,
) -> None:
    """Run the whole loop on synthetic data: stack, training, serving, clean and drifted traffic,
    the monitor, and the retraining its event starts. It owns its folder: it writes the config
    and data there, and a second run starts afresh (a config of your own is refused)."""
    from rich.console import Console

    config = directory / CONFIG_FILE
    if config.exists():
        from flows import demo as story

        typer.echo(story.clear_previous(config), err=as_json)
    typer.echo(_write_example(config, task="classification", rows=20_000, seed=0, demo=True),
               err=as_json)  # fmt: skip
    settings = _settings(config)
    from flows import demo as story

    found = story.run(config=config, settings=settings, console=Console(stderr=as_json))
    if as_json:
        typer.echo(json.dumps(found, indent=1))


def _write_example(config: Path, *, task: str, rows: int, seed: int, demo: bool) -> str:
    """`init` (and `demo` in a new folder): the example config and its synthetic data."""
    import yaml

    from tasks import synthetic

    dataset = synthetic.example_dataset_config(task)  # type: ignore[arg-type]
    table = synthetic.generate(rows=rows, seed=seed, task=task)  # type: ignore[arg-type]
    data_path = synthetic.write_parquet(table, config.parent / str(dataset["source"]))
    config.parent.mkdir(parents=True, exist_ok=True)
    text = views.example_yaml(yaml.safe_dump({"dataset": dataset}, sort_keys=False), demo=demo)
    config.write_text(text)
    return f"wrote {config} and {data_path} ({table.num_rows:,} rows)"


def _settings(config: Path) -> Settings:
    return load_settings(config)


def _stack_settings(config: Path) -> tuple[Path, StackConfig]:
    """The stack's local home and ports (from the config, else DRIFTLOOP_* alone)."""
    from tasks import stack

    home, ports = load_stack_settings(config)
    return stack.local_home(home), ports


def _start_stack(home: str, ports: StackConfig, *, echo: bool = True) -> "StackStatus":
    """`driftloop up` with settings already loaded (`demo` reuses its own)."""
    from tasks import stack

    state = stack.up(
        home=stack.local_home(home),
        prefect_port=ports.prefect_port,
        ray_port=ports.ray_port,
        dashboard_port=ports.dashboard_port,
    )
    if echo:
        typer.echo(views.describe(state))
    return state


def _serve_champion(config: Path, *, echo: bool) -> dict[str, Any] | None:
    """`up`: the Serve app with the champion, on the stack's Ray (None: no config or champion).
    It outlives this command (Serve's controller is detached); `down` stops it."""
    if not config.exists():
        return None
    settings = load_settings(config, check_source=False)
    from tasks import serve

    connect.to_stack(settings)
    served = serve.start_champion(settings)
    if echo:
        typer.echo(views.serving_line(served))
    return None if served is None else served.as_dict()


def _run_deployments(config: Path, ports: StackConfig, *, echo: bool) -> dict[str, Any] | None:
    """`up`: the process that registers the project's deployments with the Prefect API in use
    and executes their runs (None: no config). It outlives this command; `down` stops it."""
    if not config.exists():
        return None
    settings = load_settings(config, check_source=False)
    from tasks import stack

    connect.to_stack(settings)  # it inherits this process's Prefect and Ray addresses
    service = stack.deployments_service(config=config, port=ports.runner_port)
    runner = stack.start(home=stack.local_home(settings.home), services=[service])
    found = runner.services[service.name]
    from flows.deployments import describe

    listed = describe(str(config))
    if echo:
        typer.echo(f"deployments: {'; '.join(listed)}: run by pid {found.pid}")
    return {
        "running": found.running,
        "pid": found.pid,
        "log": str(found.log),
        "deployments": listed,
    }


def _said(settings: Settings, ended: dict[str, Any], *, as_json: bool) -> None:
    """What a deploy or a rollback did: JSON, or its line and what serves now."""
    from tasks.serve.probe import probe

    if as_json:
        typer.echo(json.dumps(ended))
        return
    if "mode" in ended:
        typer.echo(views.rollout_line(ended))
    else:
        typer.echo(f"champion: {views.v(ended['previous'])} -> {views.v(ended['champion'])}")
    served = probe(settings.serving, model=settings.dataset.name)
    if served.running:
        typer.echo(views.serving_line(served))


def main() -> None:
    """Entry point: known failures become one line on stderr and exit 1.

    Usage errors are click's: a message naming the option, exit 2.
    """
    quiet_expected_failures()
    try:
        app()
    except DriftloopError as exc:
        typer.echo(f"driftloop: error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
