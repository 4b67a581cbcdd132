"""Build a Kubernetes API client from a kubeconfig file or the pod's service account."""

from __future__ import annotations

from pathlib import Path

from kubernetes import client, config


class ClusterConfigError(RuntimeError):
    """Neither a usable kubeconfig nor an in-cluster service account was found."""


def api_client(*, kubeconfig: Path | None = None, in_cluster: bool = False) -> client.ApiClient:
    """An ApiClient for `--kubeconfig FILE` or `--in-cluster`; exactly one must be chosen by the caller."""
    try:
        if in_cluster:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
        else:
            configuration = client.Configuration()
            config.load_kube_config(
                config_file=str(kubeconfig) if kubeconfig else None, client_configuration=configuration
            )
    except config.ConfigException as error:
        where = "in-cluster service account" if in_cluster else f"kubeconfig {kubeconfig or '~/.kube/config'}"
        raise ClusterConfigError(f"cannot load the {where}: {error}") from None
    return client.ApiClient(configuration)
