"""The Kubernetes manifests, offline: every overlay builds, every object validates against the Kubernetes schemas
(1.30, the oldest supported, and the newest kubernetes-validate ships) or, for the operators' objects, against
their CRDs' schemas (crd-schemas/), and they agree with the services: ports, probes, entrypoints, settings."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import jsonschema
import pytest
from kubernetes_validate import utils as kubernetes_schemas

from services.runtime.nats_permissions import SERVICE_USERS, USERS, environment_variable_for
from services.runtime.server import LIVENESS_HEALTH_NAME
from tests.deploy.manifests import (
    KUBERNETES,
    NAMESPACE,
    OVERLAYS,
    RAIL_SETTINGS,
    SETTINGS,
    Manifest,
    config_map_data,
    container_environment,
    named,
    objects,
    pod_templates,
    render,
    service_containers,
    service_of,
    setting_names,
)

KUBERNETES_VERSIONS = ("1.30.0", kubernetes_schemas.latest_version())
CRD_SCHEMAS = Path(__file__).parent / "crd-schemas"


def crd_schema(manifest: Manifest) -> dict | None:
    if "/" not in manifest["apiVersion"]:
        return None
    group, version = manifest["apiVersion"].split("/")
    path = CRD_SCHEMAS / f"{group}_{version}_{manifest['kind']}.json"
    return json.loads(path.read_text())["openAPIV3Schema"] if path.exists() else None


def strict(schema: object) -> object:
    """An openAPIV3Schema as the API server applies it: unknown fields are an error here (the server would drop them
    silently, e.g. a misspelt `synchronous`), unless the schema keeps unknown fields on purpose."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    tightened = {key: strict(value) for key, value in schema.items() if key != "properties"}
    if "properties" in schema:
        tightened["properties"] = {key: strict(value) for key, value in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            tightened["additionalProperties"] = False
    return tightened


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_object_validates_against_the_kubernetes_or_its_crd_schema(overlay: str) -> None:
    manifests = render(f"overlays/{overlay}")
    failures = []
    for manifest in manifests:
        where = f"{manifest['kind']} {manifest['metadata']['name']}"
        schema = crd_schema(manifest)
        if schema is not None:
            for error in jsonschema.Draft202012Validator(strict(schema)).iter_errors(manifest):
                failures.append(f"{where} {list(error.path)}: {error.message[:200]}")
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_schemas.validate(manifest, version, strict=True)
            except kubernetes_schemas.SchemaNotFoundError:
                failures.append(f"{where}: no Kubernetes {version} schema and no CRD schema in {CRD_SCHEMAS.name}/")
            except kubernetes_schemas.ValidationError as error:
                failures.append(f"{where} (Kubernetes {version}) {list(error.path)}: {error.message[:200]}")
    assert failures == []
    assert len(manifests) > 20


def test_the_base_and_the_nats_kustomizations_build_on_their_own() -> None:
    assert objects(render("base"), "Deployment") and objects(render("nats"), "StatefulSet")


@pytest.mark.parametrize("directory", ["base", "nats", "overlays/prod"])
def test_no_secret_is_in_the_base_or_prod(directory: str) -> None:
    """Production's Secrets are made outside git (deploy/README.md): none rendered, not even a placeholder."""
    assert objects(render(directory), "Secret") == []


def test_the_dev_secrets_are_generated_and_visibly_dev_only() -> None:
    secrets = objects(render("overlays/dev"), "Secret")
    assert len(secrets) >= 8
    for secret in secrets:
        for key, value in secret["data"].items():
            if key != "username":
                assert "dev-only" in base64.b64decode(value).decode(), f"{secret['metadata']['name']} {key}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_coinstream_container_runs_the_overlays_image(overlay: str) -> None:
    """The base names the image `coinstream` and sets none; the overlay's `images:` entry (keyed `coinstream`, as
    deploy/README.md documents for your own overlay) reaches every service and Job."""
    overlay_images = [
        line.split(":", 1)[1].strip().strip('"')
        for line in (KUBERNETES / "overlays" / overlay / "kustomization.yaml").read_text().splitlines()
        if line.strip().startswith(("newName:", "newTag:"))
    ]
    expected = ":".join(overlay_images)
    containers = [c for _, pod in pod_templates(render(f"overlays/{overlay}")) for c in pod["spec"]["containers"]]
    ours = [c["image"] for c in containers if service_of(c)]
    assert len(ours) == 6 and set(ours) == {expected}


def test_your_own_overlay_sets_the_image_by_the_documented_name(tmp_path: Path) -> None:
    base = os.path.relpath(KUBERNETES / "base", tmp_path)  # kustomize takes relative paths only
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{base}]\n"
        "images:\n  - name: coinstream\n    newName: registry.example.org/team/coinstream\n    newTag: '1.2.3'\n"
    )
    containers = [c for _, pod in pod_templates(render(tmp_path)) for c in pod["spec"]["containers"]]
    assert {c["image"] for c in containers} == {"registry.example.org/team/coinstream:1.2.3"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_entrypoints_ports_and_probes_agree_with_the_services(overlay: str) -> None:
    manifests = render(f"overlays/{overlay}")
    servers = {}
    migrations = set()
    for workload, container, service, migrate in service_containers(manifests):
        if migrate:
            assert workload["kind"] == "Job" and workload["metadata"]["name"] == f"{service}-migrate"
            migrations.add(service)
            continue
        assert workload["kind"] == "Deployment" and workload["metadata"]["name"] == service
        servers[service] = (workload, container)
    assert set(servers) == set(migrations) == set(SETTINGS)
    for service, (deployment, container) in servers.items():
        env = container_environment(manifests, container)
        settings = SETTINGS[service]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports["grpc"] == int(env[f"COINSTREAM_{service.upper()}_PORT"] or 0)
        assert ports["grpc"] == settings.model_fields[f"{service}_port"].default  # the documented port
        assert ports["metrics"] == int(env[f"COINSTREAM_{service.upper()}_METRICS_PORT"] or 0)
        assert ports["health"] == int(env["COINSTREAM_GRPC_HEALTH_PORT"] or 0)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == ports["health"], probe
        assert container["livenessProbe"]["grpc"]["service"] == LIVENESS_HEALTH_NAME
        assert "service" not in container["readinessProbe"]["grpc"]  # "": the database is connected and migrated
        # The probes outlast a start that waits for the migration Jobs.
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] > float(
            env["COINSTREAM_DB_MIGRATION_LOCK_WAIT_SECONDS"] or 0
        )
        assert env["COINSTREAM_DB_MIGRATE_ON_START"] == "false"
        service_object = named(manifests, "Service", service)
        assert {p["targetPort"] for p in service_object["spec"]["ports"]} <= set(ports)
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > container["lifecycle"]["preStop"]["sleep"]["seconds"] + 10  # + the service's own drain


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_coinstream_setting_given_is_a_setting_of_that_service(overlay: str) -> None:
    """Settings are read from COINSTREAM_* variables and unknown ones are ignored: a misspelt or misplaced name
    would silently do nothing. Each one given to a container must be a field of its service's settings class."""
    manifests = render(f"overlays/{overlay}")
    wrong = []
    for workload, pod in pod_templates(manifests):
        for container in pod["spec"]["containers"]:
            found = service_of(container)
            names = set(container_environment(manifests, container))
            if found is None:
                wrong += [f"{workload['metadata']['name']}: {n}" for n in names if n.startswith("COINSTREAM_")]
                continue
            known = setting_names(found[0])
            unknown = [n for n in names if n.startswith("COINSTREAM_") and n not in known]
            wrong += [f"{workload['metadata']['name']}: {n}" for n in unknown]
    assert wrong == []


RAILS_DIRECTORY = "/etc/coinstream/rails/"
# What the Secrets coinstream-rails-<service> hold, as far as the settings check a file's content at start.
RAIL_FILE_CONTENT = {"stripe-secret-key": "sk_live_not-a-real-key", "webhook-secret": "whsec_not-a-real-secret"}


def test_prod_gives_each_service_everything_production_mode_requires(tmp_path: Path) -> None:
    """The rendered settings of each prod container, read by its settings classes (its own and its rails') in
    production mode: nothing is refused, the real money rails included, whose secret files (made outside git) are
    stood in for here. The migration Jobs' settings pass the migration's own check (a verified database
    connection)."""
    from services.runtime.config import migration_only

    manifests = render("overlays/prod")
    for _, container, service, migrate in service_containers(manifests):
        env = {k: v for k, v in container_environment(manifests, container).items() if v is not None}
        assert env["COINSTREAM_ENVIRONMENT"] == "production"
        assert "COINSTREAM_ALLOW_SANDBOX_PROVIDERS" not in env
        with pytest.MonkeyPatch.context() as patch:
            for name in list(os.environ):
                if name.startswith("COINSTREAM_"):
                    patch.delenv(name)
            for name, value in env.items():
                patch.setenv(name, _stand_in_for_a_rail_secret(value, tmp_path))
            if migrate:
                with migration_only():
                    SETTINGS[service]()
                continue
            settings = SETTINGS[service]()
            assert settings.grpc_tls_enabled and settings.auth_algorithm == "RS256"
            assert settings.production_problems() == []
            for rail in RAIL_SETTINGS[service]:
                rail()  # each refuses, at construction or in the service's production_problems above, what it lacks
    wallet = _prod_settings_of(manifests, "wallet")
    assert wallet["COINSTREAM_PAYMENT_PROVIDER"] == "stripe"
    assert wallet["COINSTREAM_APP_STORE_ENABLED"] == wallet["COINSTREAM_GOOGLE_PLAY_ENABLED"] == "true"
    assert _prod_settings_of(manifests, "payouts")["COINSTREAM_PAYOUT_PROVIDER"] == "stripe_connect"


def _stand_in_for_a_rail_secret(value: str, directory: Path) -> str:
    if not value.startswith(RAILS_DIRECTORY):
        return value
    name = value.removeprefix(RAILS_DIRECTORY)
    content = next((text for ending, text in RAIL_FILE_CONTENT.items() if name.endswith(ending)), "stand-in")
    stand_in = directory / name
    stand_in.write_text(content)
    return str(stand_in)


def _prod_settings_of(manifests: list[Manifest], service: str) -> dict[str, str | None]:
    [container] = [c for _, c, name, migrate in service_containers(manifests) if (name, migrate) == (service, False)]
    return container_environment(manifests, container)


def _is_the_nats_secret(name: str) -> bool:
    """coinstream-nats, with the hash suffix kustomize gives a generated Secret (dev) or without (prod)."""
    return name == "coinstream-nats" or (
        name.startswith("coinstream-nats-") and name.removeprefix("coinstream-nats-").isalnum()
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_logs_in_to_nats_as_its_own_user_with_only_its_own_password(overlay: str) -> None:
    """Every service is a NATS client with a user of its own (services/runtime/nats_permissions.py): its password
    file holds its own key of coinstream-nats and no other, and nats-server takes every user's key from that Secret.
    The migration Jobs get no NATS login."""
    manifests = render(f"overlays/{overlay}")
    servers = set()
    for workload, container, service, migrate in service_containers(manifests):
        env = container_environment(manifests, container)
        if migrate:
            assert not [n for n in env if n.startswith("COINSTREAM_NATS_")], workload["metadata"]["name"]
            continue
        user = SERVICE_USERS[service]
        assert env["COINSTREAM_NATS_USER"] == user, service
        assert "COINSTREAM_NATS_PASSWORD" not in env  # a file, read at connect: never a plain variable
        password_file = Path(env["COINSTREAM_NATS_PASSWORD_FILE"] or "")
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == str(password_file.parent)]
        assert mount["readOnly"] is True
        [volume] = [v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
        assert _is_the_nats_secret(volume["secret"]["secretName"]), service
        assert volume["secret"]["items"] == [{"key": environment_variable_for(user), "path": password_file.name}]
        servers.add(service)
    assert servers == set(SERVICE_USERS) == set(SETTINGS)
    [nats] = named(manifests, "StatefulSet", "nats")["spec"]["template"]["spec"]["containers"]
    assert any(_is_the_nats_secret(source.get("secretRef", {}).get("name", "")) for source in nats["envFrom"])
    secrets = [s for s in objects(manifests, "Secret") if _is_the_nats_secret(s["metadata"]["name"])]
    if overlay == "dev":  # prod's is made outside git, with the keys deploy/README.md lists
        [secret] = secrets
        assert set(secret["data"]) == {environment_variable_for(user) for user in USERS}
    else:
        assert secrets == []


def test_prod_holds_diamonds_for_seven_days_and_dev_for_none() -> None:
    """Chargebacks arrive weeks after a purchase; production refuses a hold under a day unless told otherwise."""
    for overlay, hold in (("prod", "604800"), ("dev", None)):
        manifests = render(f"overlays/{overlay}")
        [payouts] = [
            c for _, c, service, migrate in service_containers(manifests) if (service, migrate) == ("payouts", False)
        ]
        env = container_environment(manifests, payouts)
        assert env.get("COINSTREAM_DIAMOND_HOLD_SECONDS") == hold, overlay
        assert "COINSTREAM_ALLOW_SHORT_DIAMOND_HOLD" not in env, overlay


def test_prod_scales_spreads_and_keeps_a_quorum() -> None:
    manifests = render("overlays/prod")
    for service in SETTINGS:
        deployment = named(manifests, "Deployment", service)
        assert "replicas" not in deployment["spec"]  # the autoscaler's
        autoscaler = named(manifests, "HorizontalPodAutoscaler", service)
        assert autoscaler["spec"]["minReplicas"] == 3 and autoscaler["spec"]["scaleTargetRef"]["name"] == service
        budget = named(manifests, "PodDisruptionBudget", service)
        assert budget["spec"]["minAvailable"] == 2
        assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
        assert all("app.kubernetes.io/name" in c["matchLabelKeys"] for c in spread)
        assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    nats = named(manifests, "StatefulSet", "nats")
    assert nats["spec"]["replicas"] == 3
    assert named(manifests, "PodDisruptionBudget", "nats")["spec"]["minAvailable"] == 2
    common = config_map_data(manifests, _config_name(manifests, "coinstream-common"))
    assert common["COINSTREAM_NATS_STREAM_REPLICAS"] == "3"
    assert len(common["COINSTREAM_NATS_URL"].split(",")) == 3
    cluster = named(manifests, "Cluster", "coinstream-db")
    assert cluster["spec"]["instances"] == 3
    assert cluster["spec"]["postgresql"]["synchronous"]["number"] >= 1
    assert objects(manifests, "ScheduledBackup") and objects(manifests, "ObjectStore")


def _config_name(manifests: list[Manifest], prefix: str) -> str:
    names = [m["metadata"]["name"] for m in objects(manifests, "ConfigMap")]
    found = [n for n in names if n.startswith(prefix + "-") and n.removeprefix(prefix + "-").isalnum()]  # + hash
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_namespace_enforces_pod_security_restricted_and_every_pod_complies(overlay: str) -> None:
    manifests = render(f"overlays/{overlay}")
    namespace = named(manifests, "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {m["metadata"].get("namespace") for m in manifests if m["kind"] != "Namespace"} == {NAMESPACE}
    for workload, pod in pod_templates(manifests):
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, workload["metadata"]["name"]
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec.get("automountServiceAccountToken") is False
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]


def test_gifts_reaches_every_wallet_pod_through_the_headless_service() -> None:
    manifests = render("overlays/prod")
    headless = named(manifests, "Service", "wallet-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == named(manifests, "Deployment", "wallet")["spec"]["selector"]["matchLabels"]
    gifts = config_map_data(manifests, _config_name(manifests, "coinstream-gifts"))
    assert gifts["COINSTREAM_GIFTS_WALLET_ADDRESS"] == f"dns:///wallet-headless.{NAMESPACE}.svc.cluster.local:50051"
    wallet_names = named(manifests, "Certificate", "wallet-tls")["spec"]["dnsNames"]
    assert f"wallet-headless.{NAMESPACE}.svc.cluster.local" in wallet_names  # the name gifts verifies


# ---- NetworkPolicies (prod): default deny, and a small evaluator for the flows that must and must not pass.


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        if expression["operator"] == "In" and value not in expression["values"]:
            return False
        if expression["operator"] == "NotIn" and value in expression["values"]:
            return False
        if expression["operator"] == "Exists" and value is None:
            return False
    return True


Pod = tuple[str, dict[str, str], dict[str, int]]  # namespace, labels, named ports


def _peer_matches(peer: dict, pod: Pod) -> bool:
    namespace, labels, _ = pod
    if "ipBlock" in peer:
        return namespace == "outside"
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace}):
            return False
    elif namespace != NAMESPACE:
        return False
    return _selects(peer.get("podSelector", {}), labels)


def _port_matches(rule_ports: list[dict] | None, port: int, target: Pod) -> bool:
    if not rule_ports:
        return True
    return any(p["port"] == port or target[2].get(str(p["port"])) == port for p in rule_ports)


def _allowed(policies: list[Manifest], direction: str, subject: Pod, peer: Pod, port: int, port_owner: Pod) -> bool:
    kind, rules_key, peers_key = {"in": ("Ingress", "ingress", "from"), "out": ("Egress", "egress", "to")}[direction]
    if subject[0] != NAMESPACE:
        return True  # another namespace's policies are not ours to check
    applying = [
        p for p in policies if _selects(p["spec"]["podSelector"], subject[1]) and kind in p["spec"]["policyTypes"]
    ]
    return any(
        any(_peer_matches(peer_rule, peer) for peer_rule in rule.get(peers_key, [{}]))
        and _port_matches(rule.get("ports"), port, port_owner)
        for policy in applying
        for rule in policy["spec"].get(rules_key, [])
    )


def test_network_policies_cover_every_pod_and_allow_exactly_the_needed_flows() -> None:
    manifests = render("overlays/prod")
    policies = objects(manifests, "NetworkPolicy")
    deny = named(manifests, "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"} and "ingress" not in deny
    pods: dict[str, Pod] = {}
    for workload, pod in pod_templates(manifests):
        ports = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        pods[workload["metadata"]["name"]] = (NAMESPACE, pod["metadata"]["labels"], ports)
    pods["postgres"] = (NAMESPACE, {"cnpg.io/cluster": "coinstream-db"}, {})  # CloudNativePG's instances
    for name, (_, labels, _) in pods.items():
        own = [p for p in policies if p["spec"]["podSelector"] != {} and _selects(p["spec"]["podSelector"], labels)]
        assert own, f"no NetworkPolicy of its own selects {name}"
    caller = ("backend", {}, {})
    monitoring = ("monitoring", {}, {})
    stranger = ("elsewhere", {}, {})

    def flows(source: Pod, target: Pod, port: int) -> bool:
        return _allowed(policies, "out", source, target, port, target) and _allowed(
            policies, "in", target, source, port, target
        )

    must = [
        ("gifts", "wallet", 50051),
        *[(s, "nats", 4222) for s in ("wallet", "gifts", "payouts")],
        ("nats", "nats", 6222),
        *[(s, "postgres", 5432) for s in ("wallet", "gifts", "payouts", "wallet-migrate", "gifts-migrate")],
    ]
    for source, target, port in must:
        assert flows(pods[source], pods[target], port), f"{source} -> {target}:{port} refused"
    for service, port in (("wallet", 50051), ("gifts", 50052), ("payouts", 50053)):
        assert flows(caller, pods[service], port), f"API caller -> {service} refused"
        assert flows(monitoring, pods[service], 9090)
        assert not flows(stranger, pods[service], port), f"any namespace -> {service}"
    must_not = [
        ("payouts", "wallet", 50051),
        ("wallet", "gifts", 50052),
        *[(f"{s}-migrate", "nats", 4222) for s in ("wallet", "gifts", "payouts")],
        ("gifts", "postgres", 8000),
    ]
    for source, target, port in must_not:
        assert not flows(pods[source], pods[target], port), f"{source} -> {target}:{port} allowed"
    assert not flows(caller, pods["postgres"], 5432) and not flows(caller, pods["nats"], 4222)
    # The providers' notifications reach the wallet's and payouts' http ports through the Ingress controller only.
    ingress_controller = ("ingress-nginx", {}, {})
    for service, port in (("wallet", 50061), ("payouts", 50063)):
        assert flows(ingress_controller, pods[service], port), f"Ingress controller -> {service} refused"
        assert not flows(stranger, pods[service], port) and not flows(caller, pods[service], port)
    # Out of the cluster: only the wallet and payouts, to their providers' HTTPS APIs; never gifts, never elsewhere.
    outside = ("outside", {}, {})
    assert flows(pods["wallet"], outside, 443) and flows(pods["payouts"], outside, 443)
    assert not flows(pods["gifts"], outside, 443)
    assert flows(pods["wallet"], outside, 80)  # Apple's OCSP responder is plain HTTP
    assert not flows(pods["payouts"], outside, 80) and not flows(pods["payouts"], outside, 5432)
