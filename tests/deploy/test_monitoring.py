"""deploy/: the Prometheus alert rules pass their unit tests under the real ``promtool``, and the
rules and the Grafana dashboard only name metrics that ``/metrics`` serves."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from tests.helpers.proc import REPO

DEPLOY = REPO / "deploy"
METRIC_RE = re.compile(r"\btradeguard_[a-z_]+")
SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def _promtool() -> str:
    tool = shutil.which("promtool")
    assert tool, ("promtool not found: install Debian's 'prometheus' package "
                  "(apt-get install --no-install-recommends prometheus; .ci/run does)")
    return tool


def test_alert_rules_pass_promtool_unit_tests() -> None:
    tool = _promtool()
    rules = DEPLOY / "prometheus"
    check = subprocess.run([tool, "check", "rules", "tradeguard-rules.yml"], cwd=rules,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([tool, "test", "rules", "tradeguard-rules.test.yml"], cwd=rules,
                          capture_output=True, text=True, timeout=120)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout


def _served_metric_names() -> set[str]:
    source = (REPO / "watchdog" / "health" / "metrics.py").read_text()
    return set(re.findall(r'"(tradeguard_[a-z_]+)"', source))


def _known(name: str, served: set[str]) -> bool:
    return name in served or any(name.endswith(s) and name[: -len(s)] in served for s in SUFFIXES)


def test_rules_and_dashboard_name_only_served_metrics() -> None:
    served = _served_metric_names()
    dashboard = json.loads((DEPLOY / "grafana" / "tradeguard-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = (DEPLOY / "prometheus" / "tradeguard-rules.yml").read_text()
    used = set(METRIC_RE.findall(rules)) | {m for e in exprs for m in METRIC_RE.findall(e)}
    assert {"tradeguard_equity", "tradeguard_pnl_realized_total", "tradeguard_position_unprotected",
            "tradeguard_daily_loss_limit_used_ratio"} <= used
    unknown = sorted(m for m in used if not _known(m, served))
    assert unknown == [], f"not served by /metrics: {unknown}"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
