"""`GpuInstanceGroup` on Kubernetes: the replicas of one service as a Deployment + headless Service.

Children (logical names `<service>-<role>`):

- `<service>-env` Secret: the env values that are secrets (from the deploying environment or
  `serveform:secrets`), passed as a Pulumi secret and read by the container through `envFrom`,
  so no secret value appears in the Deployment;
- `<service>-registry` Secret (`kubernetes.io/dockerconfigjson`): the registry credentials,
  referenced as the pod's `imagePullSecrets`;
- `<service>-deployment` Deployment (named `<service>` in the cluster): `replicas` pods of the service's image with its commands, env, port,
  GPU limits (`nvidia.com/gpu`, `amd.com/gpu`, ...), a toleration of the GPU taint, a node
  selector for GPU nodes (and affinity to the accepted GPU models), shm as a memory `emptyDir`
  on `/dev/shm`, and the volume claims mounted where the service wants them;
- `<service>-code` Secret (named `<service>-code-<sha256 prefix>`, immutable): the service's code
  archive (`ServicePlan.code`), checked and unpacked by the pod's `code` init container into an
  emptyDir mounted at `/workflow` (and at each `files` target elsewhere); the pod template
  carries the digest as `serveform.dev/code-sha256`, so a code change rolls the pods and an
  unchanged tree changes nothing;
- `<service>-service` Service (named `<service>`): headless, so the cluster's DNS answers `<service>.<namespace>.svc` with
  the address of every ready pod (and SRV `_http._tcp.<service>...`). The gateway's Caddy
  resolves it on every request batch, so it follows the Deployment as it scales;
- `<service>-network` NetworkPolicy: the replicas accept connections on their port from the
  stack's gateway pods only (no other pod in the cluster reaches them directly).

The container's securityContext follows the namespace's Pod Security level (`_security`):
no privilege escalation and RuntimeDefault seccomp by default, the full restricted context at
`restricted`, privileged only for a service the stack's policy allows it.

The Secrets have generated names and are replaced when their contents change; the Deployment
refers to the new name, so a changed secret rolls the pods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from serveform.translator.plan import ServicePlan

from . import _code, _pod, _security

__all__ = ["GPU_INSTANCE_GROUP_TYPE", "GpuInstanceGroup", "GpuInstanceGroupArgs"]

GPU_INSTANCE_GROUP_TYPE = "serveform:k8s:GpuInstanceGroup"
# The readiness probe's period and timeout when the service declares no probe of its own.
DEFAULT_PROBE_PERIOD_SECONDS = 10
DEFAULT_PROBE_TIMEOUT_SECONDS = 5
# Named port of every replica; the gateway's SRV lookups use it (`_http._tcp.<service>...`).
PORT_NAME = "http"


@dataclass(frozen=True, kw_only=True)
class GpuInstanceGroupArgs:
    """Inputs of a Kubernetes `GpuInstanceGroup`."""

    plan: ServicePlan
    """The compiled service: image, commands, env, port, resources, probes."""
    replicas: int
    """Pods to run; the caller has clamped it to the plan's bounds."""
    namespace: pulumi.Input[str]
    """The namespace of every object."""
    stack: str
    """The stack name, part of every object's labels."""
    volume_claims: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    """Mount path → name of the PersistentVolumeClaim mounted there (network volumes)."""
    gpu_products: Sequence[str] = ()
    """Node product-label values the pods may run on (from the capacity pre-flight); empty = any GPU node."""
    rollout_timeout_seconds: int = 600
    """How long `up` waits for the Deployment's rollout before failing."""
    pod_security: _security.PodSecurityLevel = "baseline"
    """The namespace's Pod Security level; the replica's securityContext satisfies it."""
    image: str | None = None
    """The container image when it is not the plan's (`serveform:k8s.python_image`)."""
    cpu_request_fraction: float = 1.0
    """Share of the plan's minimum CPU count the pods request (`serveform:k8s.cpu_request_fraction`)."""
    code_image: str | None = None
    """The image of the init container that unpacks the plan's code archive (serveform's image: sh, sha256sum, tar)."""


class GpuInstanceGroup(pulumi.ComponentResource):
    """The replicas of one service on Kubernetes."""

    deployment_name: pulumi.Output[str]
    """Name of the Deployment (the service's name)."""
    service_name: pulumi.Output[str]
    """Name of the headless Service."""
    dns_name: pulumi.Output[str]
    """`<service>.<namespace>.svc.cluster.local`: one A record per ready replica."""
    port: int
    """The replicas' port."""
    replicas: int
    """The Deployment's replica count."""

    def __init__(self, name: str, args: GpuInstanceGroupArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(GPU_INSTANCE_GROUP_TYPE, name, None, opts)
        plan = args.plan
        group = plan.replica_group
        child = pulumi.ResourceOptions(parent=self)
        labels = _pod.labels(args.stack, plan.name, "replica")
        plain_env, secret_env = _pod.split_env(plan)
        gpu = _pod.gpu_request(plan)

        env_from = []
        if secret_env:
            env_secret = k8s.core.v1.Secret(
                f"{name}-env",
                metadata=k8s.meta.v1.ObjectMetaArgs(namespace=args.namespace, labels=labels),
                type="Opaque",
                string_data=pulumi.Output.secret(secret_env),
                opts=pulumi.ResourceOptions.merge(
                    child, pulumi.ResourceOptions(replace_on_changes=["stringData", "data"], delete_before_replace=False)
                ),
            )
            env_from.append(
                k8s.core.v1.EnvFromSourceArgs(secret_ref=k8s.core.v1.SecretEnvSourceArgs(name=env_secret.metadata.name))
            )

        image_pull_secrets = None
        auth = group.registry_auth
        if auth is not None:
            registry = _pod.image_registry(group.image)
            config_json = pulumi.Output.secret(auth.password.get_secret_value()).apply(
                lambda password: _pod.docker_config_json(registry, auth.username, password)
            )
            registry_secret = k8s.core.v1.Secret(
                f"{name}-registry",
                metadata=k8s.meta.v1.ObjectMetaArgs(namespace=args.namespace, labels=labels),
                type="kubernetes.io/dockerconfigjson",
                string_data={".dockerconfigjson": config_json},
                opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(replace_on_changes=["stringData", "data"])),
            )
            image_pull_secrets = [k8s.core.v1.LocalObjectReferenceArgs(name=registry_secret.metadata.name)]

        volumes: list[k8s.core.v1.VolumeArgs] = []
        mounts: list[k8s.core.v1.VolumeMountArgs] = []
        for index, (mount_path, claim) in enumerate(sorted(args.volume_claims.items())):
            volumes.append(
                k8s.core.v1.VolumeArgs(
                    name=f"volume-{index}",
                    persistent_volume_claim=k8s.core.v1.PersistentVolumeClaimVolumeSourceArgs(claim_name=claim),
                )
            )
            mounts.append(k8s.core.v1.VolumeMountArgs(name=f"volume-{index}", mount_path=mount_path))
        for index, volume in enumerate(v for v in plan.volumes if v.kind == "instance"):
            volumes.append(
                k8s.core.v1.VolumeArgs(
                    name=f"instance-{index}",
                    host_path=k8s.core.v1.HostPathVolumeSourceArgs(path=volume.instance_path, type="DirectoryOrCreate"),
                )
            )
            mounts.append(k8s.core.v1.VolumeMountArgs(name=f"instance-{index}", mount_path=volume.path))
        shm = group.resources.shm_size_gb
        if shm:
            # Containers get a 64 MiB /dev/shm by default; NCCL and dataloaders need more.
            volumes.append(
                k8s.core.v1.VolumeArgs(
                    name="shm", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(medium="Memory", size_limit=_pod.quantity_gb(shm))
                )
            )
            mounts.append(k8s.core.v1.VolumeMountArgs(name="shm", mount_path="/dev/shm"))

        init_containers = None
        annotations = None
        workdir = _pod.workdir(group)
        if plan.code is not None:
            _code.check_size(plan)
            code_secret = k8s.core.v1.Secret(
                f"{name}-code",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=_code.secret_name(plan), namespace=args.namespace, labels=labels),
                type="Opaque",
                immutable=True,
                data=_code.secret_data(plan),
                # The name is the digest: stored bytes can only be these (a scale update has none to send).
                opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(ignore_changes=["data"])),
            )
            volumes.append(
                k8s.core.v1.VolumeArgs(
                    name="code-archive",
                    secret=k8s.core.v1.SecretVolumeSourceArgs(secret_name=code_secret.metadata.name, default_mode=0o444),
                )
            )
            volumes.append(k8s.core.v1.VolumeArgs(name="code", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs()))
            mounts.extend(k8s.core.v1.VolumeMountArgs(**m) for m in _code.container_mounts(plan, "code"))
            init_containers = [
                k8s.core.v1.ContainerArgs(
                    name="code",
                    image=args.code_image or args.image or group.image,
                    command=["/bin/sh", "-c", _code.init_script(plan)],
                    volume_mounts=[
                        k8s.core.v1.VolumeMountArgs(name="code-archive", mount_path=_code.ARCHIVE_MOUNT, read_only=True),
                        k8s.core.v1.VolumeMountArgs(name="code", mount_path=_code.UNPACK_MOUNT),
                    ],
                    resources=k8s.core.v1.ResourceRequirementsArgs(
                        requests={"cpu": "50m", "memory": "64Mi"}, limits={"memory": "256Mi"}
                    ),
                    security_context=_security.restricted_container_context(),
                )
            ]
            annotations = {_code.CODE_ANNOTATION: plan.code.sha256}
            workdir = plan.code.workdir

        res = group.resources
        cpu = str(res.cpu_min) if args.cpu_request_fraction == 1 else f"{round(res.cpu_min * 1000 * args.cpu_request_fraction)}m"
        requests = {"cpu": cpu, "memory": _pod.quantity_gb(res.memory_min_gb)}
        limits: dict[str, str] = {}
        if res.memory_max_gb is not None:
            limits["memory"] = _pod.quantity_gb(res.memory_max_gb)
        if res.cpu_max is not None:
            limits["cpu"] = str(res.cpu_max)
        node_selector = None
        tolerations = None
        affinity = None
        if gpu.resource is not None:
            # Extended resources are requested through limits (requests default to them).
            limits[gpu.resource] = str(gpu.count)
            tolerations = [k8s.core.v1.TolerationArgs(key=gpu.resource, operator="Exists", effect="NoSchedule")]
            present = _pod.GPU_PRESENT_LABEL.get(gpu.vendor or "")
            if present:
                node_selector = {present: "true"}
            product_label = _pod.GPU_PRODUCT_LABEL.get(gpu.vendor or "")
            if args.gpu_products and product_label:
                affinity = k8s.core.v1.AffinityArgs(
                    node_affinity=k8s.core.v1.NodeAffinityArgs(
                        required_during_scheduling_ignored_during_execution=k8s.core.v1.NodeSelectorArgs(
                            node_selector_terms=[
                                k8s.core.v1.NodeSelectorTermArgs(
                                    match_expressions=[
                                        k8s.core.v1.NodeSelectorRequirementArgs(
                                            key=product_label, operator="In", values=sorted(args.gpu_products)
                                        )
                                    ]
                                )
                            ]
                        )
                    )
                )

        command, container_args = _pod.command_and_args(group)
        env = [
            k8s.core.v1.EnvVarArgs(name=key, value=value)
            for key, value in sorted(
                {"DSTACK_RUN_NAME": plan.name, "DSTACK_GPUS_NUM": str(group.gpus_num), **plain_env}.items()
            )
        ]
        # Which replica answered (as the local backend sets it): the pod's name, since every
        # container has pid 1 in its own namespace.
        env.append(
            k8s.core.v1.EnvVarArgs(
                name="SERVEFORM_REPLICA_ID",
                value_from=k8s.core.v1.EnvVarSourceArgs(
                    field_ref=k8s.core.v1.ObjectFieldSelectorArgs(field_path="metadata.name")
                ),
            )
        )
        container = k8s.core.v1.ContainerArgs(
            name="replica",
            image=args.image or group.image,
            command=command,
            args=container_args,
            working_dir=workdir,
            env=env,
            env_from=env_from or None,
            ports=[k8s.core.v1.ContainerPortArgs(name=PORT_NAME, container_port=group.container_port)],
            resources=k8s.core.v1.ResourceRequirementsArgs(requests=requests, limits=limits or None),
            readiness_probe=_readiness_probe(plan),
            security_context=_security.replica_container_context(privileged=group.privileged, level=args.pod_security),
            volume_mounts=mounts or None,
        )
        timeout = f"{args.rollout_timeout_seconds}s"
        deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=plan.name, namespace=args.namespace, labels=labels),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=args.replicas,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=labels),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels, annotations=annotations),
                    spec=k8s.core.v1.PodSpecArgs(
                        init_containers=init_containers,
                        containers=[container],
                        image_pull_secrets=image_pull_secrets,
                        volumes=volumes or None,
                        node_selector=node_selector,
                        tolerations=tolerations,
                        affinity=affinity,
                    ),
                ),
            ),
            opts=pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(custom_timeouts=pulumi.CustomTimeouts(create=timeout, update=timeout))
            ),
        )
        service = k8s.core.v1.Service(
            f"{name}-service",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=plan.name, namespace=args.namespace, labels=labels),
            spec=k8s.core.v1.ServiceSpecArgs(
                cluster_ip="None",
                selector=labels,
                ports=[k8s.core.v1.ServicePortArgs(name=PORT_NAME, port=group.container_port, target_port=PORT_NAME)],
            ),
            # Headless: Pulumi does not wait for endpoints, so a group scaled to zero deploys too.
            opts=child,
        )
        k8s.networking.v1.NetworkPolicy(
            f"{name}-network",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=plan.name, namespace=args.namespace, labels=labels),
            spec=_security.replica_network_policy_spec(labels, _pod.labels(args.stack, "gateway", "gateway"), PORT_NAME),
            opts=child,
        )
        self.deployment_name = deployment.metadata.name
        self.service_name = service.metadata.name
        self.dns_name = pulumi.Output.concat(service.metadata.name, ".", service.metadata.namespace, ".svc.cluster.local")
        self.port = group.container_port
        self.replicas = args.replicas
        self.register_outputs(
            {"deployment_name": self.deployment_name, "service_name": self.service_name, "dns_name": self.dns_name}
        )


def _readiness_probe(plan: ServicePlan) -> k8s.core.v1.ProbeArgs:
    """The service's first plain GET probe as an HTTP probe, else a TCP check of its port.

    Only ready pods appear in the headless Service's DNS answers, so the gateway never routes to
    a replica that does not listen yet. Probes with a method or body a kubelet cannot send (a
    one-token chat completion, dstack's default for models) stay with the gateway's prober.
    """
    gets = [p for p in plan.route.probes if p.method == "get" and not p.body]
    if not gets:
        return k8s.core.v1.ProbeArgs(
            tcp_socket=k8s.core.v1.TCPSocketActionArgs(port=PORT_NAME),
            period_seconds=DEFAULT_PROBE_PERIOD_SECONDS,
            timeout_seconds=DEFAULT_PROBE_TIMEOUT_SECONDS,
        )
    probe = gets[0]
    # Header values that are secrets would land in the pod spec in plain text: leave them out.
    headers = [
        k8s.core.v1.HTTPHeaderArgs(name=key, value=value)
        for key, value in sorted(probe.headers.items())
        if isinstance(value, str)
    ]
    return k8s.core.v1.ProbeArgs(
        http_get=k8s.core.v1.HTTPGetActionArgs(path=probe.url, port=PORT_NAME, http_headers=headers or None),
        period_seconds=probe.interval_seconds,
        timeout_seconds=probe.timeout_seconds,
        success_threshold=1,
        failure_threshold=3,
    )
