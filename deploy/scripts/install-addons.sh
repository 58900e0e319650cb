#!/usr/bin/env bash
# Install the cluster add-ons radforge runs on, at pinned chart versions:
#   - the KubeRay operator (CRDs RayCluster, RayJob, RayService) in namespace ray-system;
#   - kube-prometheus-stack (Prometheus Operator with the PodMonitor/PrometheusRule CRDs,
#     Prometheus, Alertmanager, Grafana with its dashboard sidecar) in namespace monitoring.
# Idempotent (helm upgrade --install). Needs helm 3 and a kubectl context for the target cluster.
#
#   deploy/scripts/install-addons.sh            # both
#   KUBERAY_VERSION=1.7.0 deploy/scripts/install-addons.sh kuberay
set -euo pipefail

KUBERAY_VERSION="${KUBERAY_VERSION:-1.7.0}"
PROMETHEUS_STACK_VERSION="${PROMETHEUS_STACK_VERSION:-93.1.1}"
# deploy/monitoring labels its PodMonitors and rules with release=<this name>
PROMETHEUS_RELEASE="kube-prometheus-stack"

install_kuberay() {
    helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update >/dev/null
    helm upgrade --install kuberay-operator kuberay/kuberay-operator \
        --version "${KUBERAY_VERSION}" --namespace ray-system --create-namespace --wait
}

install_prometheus_stack() {
    helm repo add prometheus-community https://prometheus-community.github.io/helm-charts \
        --force-update >/dev/null
    # Grafana's sidecar loads dashboards labelled grafana_dashboard=1 from every namespace
    helm upgrade --install "${PROMETHEUS_RELEASE}" prometheus-community/kube-prometheus-stack \
        --version "${PROMETHEUS_STACK_VERSION}" --namespace monitoring --create-namespace --wait \
        --set grafana.sidecar.dashboards.enabled=true \
        --set grafana.sidecar.dashboards.label=grafana_dashboard \
        --set grafana.sidecar.dashboards.searchNamespace=ALL
}

main() {
    local what="${1:-all}"
    case "${what}" in
        kuberay) install_kuberay ;;
        prometheus) install_prometheus_stack ;;
        all)
            install_kuberay
            install_prometheus_stack
            ;;
        *)
            echo "usage: $0 [all|kuberay|prometheus]" >&2
            return 2
            ;;
    esac
    kubectl get crd rayclusters.ray.io rayjobs.ray.io podmonitors.monitoring.coreos.com \
        prometheusrules.monitoring.coreos.com
}

main "$@"
