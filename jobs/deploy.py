"""Deployment jobs: thin wrappers over the deploy, reconcile and server-process services (the worker
provides the app context)."""

from llmapp.services import deployments, hosts, reconcile, replicas, server_processes, stops


def deploy_application(application_id: str, deploy_id: str, release: int | None = None) -> str:
    return deployments.run_deploy(application_id, deploy_id, release)


def resume_deploy(application_id: str, deploy_id: str) -> str:
    return deployments.run_deploy(application_id, deploy_id, resumed=True)


def retire_replicas(application_id: str, replica_ids: list[str]) -> str:
    return replicas.run_retire(application_id, replica_ids)


def stop_application(application_id: str) -> str:
    return stops.run_stop(application_id)


def reconcile_host(host: str) -> dict:
    return reconcile.reconcile(host)


def recover_hosts() -> dict:
    return hosts.recover_locked()


def kill_process(pid: int, application_id: str) -> None:
    server_processes.kill_orphan(pid, application_id)
