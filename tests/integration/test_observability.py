"""The monitoring files against the running services: every metric the Grafana dashboard and the Prometheus alerts
name is one the services export (each service of the test stack scraped on its own metrics port, after a gift went
all the way through), the README's metrics list is exactly what they export, the polled gauges have values, every
alert has its runbook entry in docs/operations.md, and the ServiceMonitor scrapes the Services' metrics port."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.support.clients import SERVICE, Clients
from tests.support.factories import make_account
from tests.support.gifts import gift_request, go_live
from tests.support.payouts import eventually, wait_for_lifetime
from tests.support.stack import REPO_ROOT, Stack

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "coinstream.json"
RULES = REPO_ROOT / "deploy" / "prometheus" / "rules.yaml"
SERVICE_MONITOR = REPO_ROOT / "deploy" / "prometheus" / "servicemonitor.yaml"
RUNBOOK = REPO_ROOT / "docs" / "operations.md"
README = REPO_ROOT / "README.md"
SERVICE_NAMES = ("wallet", "gifts", "payouts")
KUBERNETES_SERVICES = [REPO_ROOT / "deploy" / "kubernetes" / "base" / f"{name}.yaml" for name in SERVICE_NAMES]

# What the issue asks the alerts to watch, by alert.
REQUIRED_ALERTS = {
    "CoinstreamSettlementLagHigh",
    "CoinstreamOutboxBacklog",
    "CoinstreamDeadLetters",
    "CoinstreamReconcileDiscrepancies",
    "CoinstreamHighErrorRate",
    "CoinstreamWorkerNotServing",
}
SAMPLE_SUFFIXES = {"histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}


# ---- reading /metrics


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback metrics of our own processes
        return str(response.read().decode())


def families(exposition: str) -> dict[str, str]:
    """Metric family → type, from the `# TYPE` lines (present for every registered metric, with samples or not).
    The `_created` gauges prometheus_client adds beside counters and histograms are left out."""
    found = dict(re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE))
    return {name: kind for name, kind in found.items() if not (name.endswith("_created") and kind == "gauge")}


def sample_names(family_types: dict[str, str]) -> set[str]:
    """The series names a query may use: a histogram's _bucket, _count and _sum; a counter's own (…_total)."""
    names = set(family_types)
    for name, kind in family_types.items():
        names |= {name + suffix for suffix in SAMPLE_SUFFIXES.get(kind, ())}
    return names


# ---- reading PromQL


PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
PROMQL_KEYWORDS |= {"offset", "inf", "nan", "atan2"}


def promql_metric_names(expression: str) -> set[str]:
    """The metric names an expression selects: identifiers that are neither functions, keywords, label names (in
    matchers and by/without/on/ignoring lists) nor inside strings, ranges or Grafana variables."""
    assert expression.count("(") == expression.count(")"), f"unbalanced parentheses: {expression}"
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expression)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    identifiers = re.finditer(r"(?<![\w:$.])([A-Za-z_:][\w:]*)(\s*\()?", text)
    return {m.group(1) for m in identifiers if m.group(2) is None and m.group(1) not in PROMQL_KEYWORDS}


def test_the_promql_reader_finds_metric_names_only() -> None:
    expression = (
        'histogram_quantile(0.99, sum by (le, job) (rate(coinstream_rpc_seconds_bucket{job=~"$job", code="OK"}'
        "[$__rate_interval]))) > 1e3 and on (job) time() - max(coinstream_x offset 5m) > bool 2"
    )
    assert promql_metric_names(expression) == {"coinstream_rpc_seconds_bucket", "coinstream_x"}


# ---- the files


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(metric, label): only its first argument is a metric.
            [metric] = re.findall(r"label_values\((\w+),\s*\w+\)", variable["query"]["query"])
            expressions.append(metric)
    return expressions


def alert_rules() -> list[dict[str, Any]]:
    rule_file = yaml.safe_load(RULES.read_text())
    assert (rule_file["apiVersion"], rule_file["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    return [rule for group in rule_file["spec"]["groups"] for rule in group["rules"]]


def readme_metrics() -> set[str]:
    """The names in the README's metrics list (its table's first column)."""
    section = README.read_text().split("### Metrics", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `(coinstream_\w+)`", section, re.MULTILINE))


def test_the_alerts_are_complete_and_each_has_its_runbook_entry() -> None:
    rules = alert_rules()
    runbook = RUNBOOK.read_text()
    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["for"], name
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{name.lower()}", name
        assert re.search(rf"^### {name}$", runbook, re.MULTILINE), f"no runbook entry for {name}"
    for heading in ("Secret and key rotation", "Scaling", "Backup and restore"):
        assert re.search(rf"^## {heading}$", runbook, re.MULTILINE), heading


def test_the_service_monitor_scrapes_the_services_metrics_port() -> None:
    monitor = yaml.safe_load(SERVICE_MONITOR.read_text())
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    [selector] = monitor["spec"]["selector"]["matchExpressions"]
    assert (selector["key"], selector["operator"], set(selector["values"])) == (
        "app.kubernetes.io/name",
        "In",
        {"wallet", "gifts", "payouts"},
    )
    assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == ["metrics"]
    for manifest in KUBERNETES_SERVICES:
        documents = [document for document in yaml.safe_load_all(manifest.read_text()) if document]
        # The Service named after the app (the wallet also has wallet-headless, for gifts' calls only).
        [service] = [d for d in documents if d["kind"] == "Service" and d["metadata"]["name"] in SERVICE_NAMES]
        assert service["metadata"]["labels"]["app.kubernetes.io/name"] in selector["values"]
        assert "metrics" in {port["name"] for port in service["spec"]["ports"]}, manifest.name


# ---- against the running services


async def send_one_gift_through(clients: Clients) -> None:
    """A gift from SendGift to the creator's diamonds: every labelled series on the path exists afterwards."""
    stream = await go_live(clients)
    fan = await make_account(clients, package_id="coins_65")
    reply = await clients.gifts.SendGift(gift_request(fan, stream.stream_id), metadata=SERVICE)
    await wait_for_lifetime(clients, stream.creator_id, reply.gift.coins)


async def scrape_all(stack: Stack) -> dict[str, str]:
    return {name: await asyncio.to_thread(scrape, process.metrics_url) for name, process in stack.services.items()}


async def test_dashboard_alerts_and_readme_name_only_metrics_the_services_export(
    stack: Stack, clients: Clients
) -> None:
    await send_one_gift_through(clients)
    # The polled gauges (every second in the test stack) have values once their probes ran.
    polled = 'coinstream_consumer_pending_messages{consumer="payouts-settlement"}'
    expositions = await eventually(lambda: scrape_all(stack), lambda found: polled in found["payouts"])
    exported = {name: families(text) for name, text in expositions.items()}
    every_family = {family: kind for kinds in exported.values() for family, kind in kinds.items()}
    exported_names = sample_names(every_family)

    named = {expression: promql_metric_names(expression) for expression in dashboard_expressions()}
    named |= {rule["expr"]: promql_metric_names(rule["expr"]) for rule in alert_rules()}
    unknown = {expression: names - exported_names for expression, names in named.items() if names - exported_names}
    assert unknown == {}, f"metrics no service exports: {unknown}"
    assert all(named.values()), "an expression without any metric"

    ours = {family for family in every_family if family.startswith("coinstream_")}
    assert readme_metrics() == ours, "the README's metrics list and the exported metrics differ"

    assert_polled_and_observed(expositions)


def assert_polled_and_observed(expositions: dict[str, str]) -> None:
    gifts, payouts = expositions["gifts"], expositions["payouts"]
    assert re.search(r"^coinstream_outbox_backlog \d", gifts, re.MULTILINE)
    assert re.search(r'^coinstream_worker_up\{worker="outbox_relay"\} 1\.0$', gifts, re.MULTILINE)
    assert re.search(r'^coinstream_rpc_seconds_count\{code="OK",method="[^"]*/SendGift"\} [1-9]', gifts, re.MULTILINE)
    assert re.search(r"^coinstream_payouts_dead_letters_waiting \d", payouts, re.MULTILINE)
    assert re.search(r'^coinstream_payouts_withdrawals_pending\{stage="queued"\} \d', payouts, re.MULTILINE)
    assert re.search(r"^coinstream_settlement_lag_seconds_count [1-9]", payouts, re.MULTILINE)


def test_the_dashboard_is_grafana_json_with_a_prometheus_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "coinstream" and dashboard["panels"]
    [datasource] = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert datasource["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]


def test_every_monitoring_file_parses() -> None:
    for path in [RULES, SERVICE_MONITOR, *sorted((REPO_ROOT / "deploy" / "prometheus").glob("*.yaml"))]:
        assert list(yaml.safe_load_all(path.read_text())), path
    assert yaml.safe_load((REPO_ROOT / "deploy" / "grafana" / "kustomization.yaml").read_text())
    assert Path(DASHBOARD).stat().st_size > 0
