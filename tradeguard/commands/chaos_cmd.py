"""``tradeguard chaos run|list``."""
from __future__ import annotations

import datetime as dt
import shlex
import sys
from pathlib import Path

import click

from tradeguard.commands._common import common_options


@click.group("chaos")
def chaos() -> None:
    """Break the system on purpose and prove nothing is lost."""


@chaos.command("list")
@common_options
def list_scenarios(config_path: str | None, data_dir: str | None, logs_dir: str | None) -> None:
    """Describe every scenario (the common options are accepted; scenarios do not depend on them)."""
    from chaos.scenarios import SCENARIOS

    for s in SCENARIOS.values():
        flags = " [baseline]" if s.baseline else ""
        click.echo(f"{s.name:<18} {s.description}{flags}")


@chaos.command("run")
@click.option("--scenario", "names", multiple=True, metavar="NAME",
              help="Scenario to run (repeatable; default: all). See `tradeguard chaos list`.")
@click.option("--iterations", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="Injections per scenario.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of every random choice.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Directory for report.md, report.json and recovery.svg "
                   "(default: LOGS_DIR/chaos-report with --logs-dir, else ./chaos-report).")
@click.option("--keep", is_flag=True, help="Keep the scratch systems (data, logs) for inspection.")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also run the hang and crash scenarios under plain supervisord.")
@click.option("--quick", is_flag=True, help="Shorter waits between faults (the CI smoke).")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Where the scratch systems live (default: DATA_DIR/chaos with --data-dir, "
                   "else the system temp dir).")
@common_options
def run(names: tuple[str, ...], iterations: int, seed: int, report_dir: str | None, keep: bool,
        baseline: bool, quick: bool, workdir: str | None, config_path: str | None,
        data_dir: str | None, logs_dir: str | None) -> None:
    """Run scenarios against scratch systems of their own (never your bot's data dir); exit 1 if
    any invariant fails. ``--config`` is validated; the scratch systems use the scenario settings."""
    from chaos import harness, report
    from chaos.scenarios import SCENARIOS
    from tradeguard.config import load_config

    load_config(config_path, data_dir=data_dir, logs_dir=logs_dir)
    workdir = workdir or (str(Path(data_dir) / "chaos") if data_dir else None)
    report_dir = report_dir or (str(Path(logs_dir) / "chaos-report") if logs_dir else "chaos-report")

    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise click.BadParameter(f"unknown scenario(s) {unknown}; see `tradeguard chaos list`",
                                 param_hint="--scenario")
    chosen = list(names) or list(SCENARIOS)
    started = dt.datetime.now(dt.timezone.utc)

    def live(o: harness.Outcome, n: int, total: int) -> None:
        bar = "#" * round(20 * n / total)
        status = "FAIL" if o.failed else "ok"
        rec = f"recovered in {o.recovery_s:.2f} s" if o.recovered else "not recovered"
        why = "; ".join(v["invariant"] for v in o.violations)
        click.echo(f"[{bar:<20}] {n}/{total} {o.scenario}#{o.iteration} ({o.mode}) {rec} "
                   f"{status}{': ' + why if why else ''}{' — ' + o.note if o.note else ''}")

    wd = Path(workdir) if workdir else None
    if wd:
        wd.mkdir(parents=True, exist_ok=True)
    outcomes = harness.run(chosen, iterations, seed, wd, keep, baseline, quick, on_outcome=live)
    passed = not any(o.failed for o in outcomes)
    meta = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "seed": seed, "iterations": iterations,
            "scenarios": chosen, "passed": passed,
            "command": "tradeguard " + " ".join(shlex.quote(a) for a in sys.argv[1:])}
    md = report.write(outcomes, Path(report_dir), meta)
    click.echo(f"report: {md}")
    raise SystemExit(0 if passed else 1)
