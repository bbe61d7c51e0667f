"""deploy/kubernetes: the manifests fit together (labels, selectors, ports, job
name, Secret), the probes answer on a real exporter started the way the
Deployment starts it, and the generated ConfigMap and PrometheusRule are the
committed config and rule files (not stale, and accepted by promtool)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from conftest import require_binary
from support import http_get, launch, wait_until

REPO = Path(__file__).resolve().parent.parent
KUBE = REPO / "deploy" / "kubernetes"
API_VERSIONS = {  # every kind this directory may hold; add one here when you add it
    "ConfigMap": "v1",
    "Secret": "v1",
    "Service": "v1",
    "ServiceAccount": "v1",
    "PersistentVolumeClaim": "v1",
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "CronJob": "batch/v1",
    "Job": "batch/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "PodDisruptionBudget": "policy/v1",
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kube_generate", KUBE / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def manifests() -> list[dict[str, Any]]:
    """Every object of every YAML file in deploy/kubernetes."""
    found = []
    for path in sorted(KUBE.glob("*.yaml")):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return found


ALL = manifests()


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    """The object of ``kind`` (named ``name``, for kinds that other files may add too)."""
    matches = [
        doc for doc in ALL
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]  # fmt: skip
    assert len(matches) == 1, f"{len(matches)} objects of kind {kind} named {name}"
    return matches[0]


DEPLOYMENT = one("Deployment", "credit-exporter")
POD = DEPLOYMENT["spec"]["template"]
CONTAINER = POD["spec"]["containers"][0]
SERVICE = one("Service", "credit-exporter")
MONITOR = one("ServiceMonitor", "credit-exporter")
CONFIGMAP = one("ConfigMap", "credit-exporter-config")
RULE = one("PrometheusRule", "credit-exporter-rules")
KUSTOMIZATION = one("Kustomization")


def container_port(name: str) -> int:
    ports = {port["name"]: port["containerPort"] for port in CONTAINER["ports"]}
    assert name in ports, f"no container port named {name!r} ({ports})"
    return int(ports[name])


def option(name: str) -> str:
    """The value of ``--name=value`` in the container's args."""
    values = [arg.split("=", 1)[1] for arg in CONTAINER["args"] if arg.startswith(f"{name}=")]
    assert len(values) == 1, (name, CONTAINER["args"])
    return values[0]


def test_every_manifest_has_the_api_version_of_its_kind() -> None:
    for document in ALL:
        kind = document["kind"]
        assert kind in API_VERSIONS, f"unexpected kind {kind}"
        assert document["apiVersion"] == API_VERSIONS[kind], kind
        assert document.get("metadata", {}).get("name") or kind == "Kustomization", document


def test_the_kustomization_lists_only_files_that_exist() -> None:
    resources = KUSTOMIZATION["resources"]
    assert resources
    for resource in resources:
        assert (KUBE / resource).is_file(), resource


def test_the_deployment_selects_its_own_pods() -> None:
    selector = DEPLOYMENT["spec"]["selector"]["matchLabels"]
    assert selector.items() <= POD["metadata"]["labels"].items()


def test_the_service_selects_the_deployment_pods() -> None:
    selector = SERVICE["spec"]["selector"]
    assert selector and selector.items() <= POD["metadata"]["labels"].items()


def test_the_service_port_targets_the_port_the_exporter_listens_on() -> None:
    (port,) = SERVICE["spec"]["ports"]
    assert container_port(port["targetPort"]) == int(option("--listen").rpartition(":")[2])


def test_the_service_monitor_selects_the_service_and_its_port_name() -> None:
    selector = MONITOR["spec"]["selector"]["matchLabels"]
    assert selector.items() <= SERVICE["metadata"]["labels"].items()
    port_names = {port["name"] for port in SERVICE["spec"]["ports"]}
    for endpoint in MONITOR["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint.get("path", "/metrics") == "/metrics"


def test_the_scrape_job_is_the_one_the_exporter_alerts_watch() -> None:
    """prometheus-operator names the job after the Service (no jobLabel set)."""
    settings = yaml.safe_load((REPO / "alert_rules" / "settings.yml").read_text())
    assert "jobLabel" not in MONITOR["spec"]
    assert SERVICE["metadata"]["name"] == settings["exporter"]["job"]


def test_the_pod_runs_as_non_root_on_a_read_only_root_filesystem() -> None:
    assert POD["spec"]["securityContext"]["runAsNonRoot"] is True
    assert POD["spec"]["securityContext"]["runAsUser"] > 0
    context = CONTAINER["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    resources = CONTAINER["resources"]
    assert resources["requests"]["memory"] and resources["requests"]["cpu"]
    assert resources["limits"]["memory"]


def test_the_config_comes_from_the_configmap_and_the_dsn_from_a_secret() -> None:
    config_path = Path(option("--config"))
    mounts = {m["name"]: m for m in CONTAINER["volumeMounts"]}
    volumes = {v["name"]: v for v in POD["spec"]["volumes"]}
    (mount,) = [m for m in mounts.values() if config_path.parent == Path(m["mountPath"])]
    assert volumes[mount["name"]]["configMap"]["name"] == CONFIGMAP["metadata"]["name"]
    config = yaml.safe_load(CONFIGMAP["data"][config_path.name])
    env = {item["name"]: item for item in CONTAINER["env"]}
    for name, database in config["databases"].items():
        assert "dsn" not in database, f"databases.{name}: a literal DSN in a ConfigMap"
        variable = database["dsn_env"]
        assert "secretKeyRef" in env[variable]["valueFrom"], variable


def test_the_report_cronjob_runs_an_image_built_with_the_report_extra() -> None:
    """`report --format pdf` needs matplotlib, which only the report extra installs:
    the CronJob's image must be the one the Dockerfile builds with EXTRAS=report."""
    job = one("CronJob", "credit-report-monthly")
    (container,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert "--format pdf" in " ".join(container["args"])
    image = container["image"]
    text = (KUBE / "report-cronjob.yaml").read_text()
    assert f"--build-arg EXTRAS=report -t {image} ." in text, image
    dockerfile = (REPO / "Dockerfile").read_text()
    assert 'ARG EXTRAS=""' in dockerfile
    assert re.search(r"^RUN pip wheel .* \"\.\$\{EXTRAS:\+\[\$EXTRAS\]\}\"$", dockerfile, re.M)
    report_extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["report"]
    assert any(requirement.startswith("matplotlib") for requirement in report_extra)


def test_the_generated_files_are_not_stale() -> None:
    generate = load_generator()
    for path, text in generate.outputs().items():
        assert path.read_text() == text, f"{path.name} is stale: run deploy/kubernetes/generate.py"
    assert generate.main(["--check"]) == 0


def test_the_configmap_holds_the_example_config_verbatim() -> None:
    text = CONFIGMAP["data"]["config.yaml"]
    assert text == (REPO / "config.example.yaml").read_text()


def rule_file_groups() -> list[dict[str, Any]]:
    groups = []
    for path in (REPO / "alert_rules" / "credit-exporter.rules.yml",
                 REPO / "dashboards" / "recording_rules.yml"):  # fmt: skip
        groups += yaml.safe_load(path.read_text())["groups"]
    return groups


def test_the_prometheus_rule_holds_exactly_the_committed_rule_groups() -> None:
    groups = RULE["spec"]["groups"]
    assert groups == rule_file_groups()
    names = [group["name"] for group in groups]
    assert len(names) == len(set(names))
    kinds = {"alert" if "alert" in rule else "record" for g in groups for rule in g["rules"]}
    assert kinds == {"alert", "record"}


def test_the_prometheus_rule_groups_pass_promtool(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    path = tmp_path / "groups.yml"
    path.write_text(yaml.safe_dump({"groups": RULE["spec"]["groups"]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(group["rules"]) for group in rule_file_groups())
    assert f"SUCCESS: {count} rules found" in result.stdout


@pytest.fixture
def pod_like_exporter(demo_db: str, tmp_path: Path):
    """The exporter started with the Deployment's command, args and ConfigMap
    (the listen port moved to a free loopback port, the DSN from the env)."""
    config_path = tmp_path / "etc" / Path(option("--config")).name
    config_path.parent.mkdir(parents=True)
    config_path.write_text(CONFIGMAP["data"][config_path.name])

    def argv(port: int) -> list[str]:
        args = [
            f"--config={config_path}" if arg.startswith("--config=")
            else f"--listen=127.0.0.1:{port}" if arg.startswith("--listen=")
            else arg
            for arg in CONTAINER["args"]
        ]  # fmt: skip
        assert CONTAINER["command"] == ["credit-exporter"]
        return [sys.executable, "-m", "credit_exporter", *args]

    env = {"CREDIT_EXPORTER_DSN": demo_db, "PYTHONDONTWRITEBYTECODE": "1"}
    process, url, _ = launch("exporter", argv, tmp_path, "/-/healthy", timeout=20, env=env)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(15)


def test_the_probes_answer_on_the_exporter_the_deployment_starts(pod_like_exporter: str) -> None:
    for probe in ("livenessProbe", "readinessProbe"):
        assert CONTAINER[probe]["httpGet"]["port"] == "metrics"
        container_port("metrics")
    live = CONTAINER["livenessProbe"]["httpGet"]["path"]
    ready = CONTAINER["readinessProbe"]["httpGet"]["path"]
    assert (live, ready) == ("/-/healthy", "/-/ready")
    assert http_get(pod_like_exporter + live)[0] == 200
    wait_until(lambda: http_get(pod_like_exporter + ready)[0] == 200, 60, "readiness probe 200")
    status, body, _ = http_get(pod_like_exporter + "/metrics")
    assert status == 200 and b"credit_balance_credits{" in body
