"""Example services of the seed documents as ServicePlans for the VM backends' tests.

Each mirrors one example of dstack's `service` reference (the seeds): a plain Python server,
a gated model with a secret env (HF_TOKEN) and autoscaling, a private-registry image, a TGI
model with a chat template, a two-GPU server with a big disk, and a service with a network
volume on spot capacity. Offers are what the translator would pick from the catalog.
"""

from __future__ import annotations

from pydantic import SecretStr

from serveform.translator.plan import (
    EnvValue,
    GatewayRoutePlan,
    ModelPlan,
    OfferPlan,
    RegistryAuthPlan,
    ReplicaBounds,
    ReplicaGroupPlan,
    ResourcesPlan,
    ScalingPlan,
    ServicePlan,
    VolumePlan,
)

HF_TOKEN = "hf_SECRET_d0_not_leak_7f3a"
REGISTRY_PASSWORD = "registry-pa$$word-'\"-9c1e"

# Instance types per cloud with (gpu name, count, price on-demand, price spot).
_TYPES = {
    "aws": {
        None: [("m6i.large", None, 0, 0.096, 0.04), ("t3.large", None, 0, 0.083, 0.03)],
        "A10G": [("g5.xlarge", "A10G", 1, 1.006, 0.45), ("g5.2xlarge", "A10G", 1, 1.212, 0.5)],
        "A100x2": [("p4d.24xlarge", "A100", 8, 32.77, 11.0)],
        "L4": [("g6.xlarge", "L4", 1, 0.805, 0.3)],
    },
    "gcp": {
        None: [("e2-standard-2", None, 0, 0.067, 0.02)],
        "A10G": [("g2-standard-4", "L4", 1, 0.71, 0.28), ("n1-standard-8", "T4", 1, 0.73, 0.3)],
        "A100x2": [("a2-ultragpu-2g", "A100", 2, 10.1, 4.0)],
        "L4": [("g2-standard-8", "L4", 1, 0.85, 0.34)],
    },
    "azure": {
        None: [("Standard_D2s_v5", None, 0, 0.096, 0.02)],
        "A10G": [("Standard_NV36ads_A10_v5", "A10", 1, 3.2, 1.1), ("Standard_NC4as_T4_v3", "T4", 1, 0.53, 0.2)],
        "A100x2": [("Standard_NC48ads_A100_v4", "A100", 2, 7.35, 2.9)],
        "L4": [("Standard_NC4as_T4_v3", "T4", 1, 0.53, 0.2)],
    },
}
_REGION = {"aws": "us-east-1", "gcp": "us-central1", "azure": "eastus"}


def _offers(backend: str, kind: str | None, *, spot: bool | None = None) -> tuple[OfferPlan, ...]:
    offers = []
    for itype, gpu, count, price, spot_price in _TYPES[backend][kind]:
        for is_spot, p in ((False, price), (True, spot_price)):
            if spot is not None and is_spot != spot:
                continue
            offers.append(
                OfferPlan(
                    backend=backend, region=_REGION[backend], instance_type=itype, price_per_hour=p, spot=is_spot,
                    cpus=4, memory_gb=16, gpu_vendor="nvidia" if gpu else None, gpu_name=gpu, gpu_count=count,
                    gpu_memory_gb=24 if gpu else None,
                )
            )
    return tuple(sorted(offers, key=lambda o: o.price_per_hour))


def _resources(**kw) -> ResourcesPlan:
    base = dict(cpu_min=2, memory_min_gb=8, disk_min_gb=100)
    base.update(kw)
    return ResourcesPlan(**base)


def example_plans(backend: str) -> dict[str, ServicePlan]:
    """The seed examples compiled for ``backend`` (name → plan)."""
    file = "services/{}.dstack.yml"
    plans = [
        ServicePlan(
            file=file.format("http-server"), name="http-server-service", backend=backend,
            replica_group=ReplicaGroupPlan(
                image="dstackai/base:py3.10-0.6-cuda-12.1", python="3.10",
                commands=("python3 -m http.server",), container_port=8000, resources=_resources(),
            ),
            offers=_offers(backend, None, spot=False), replicas=ReplicaBounds(min=1, max=1, initial=1),
            route=GatewayRoutePlan(subdomain="http-server-service", auth=False),
        ),
        ServicePlan(
            file=file.format("llama31"), name="llama31-service", backend=backend,
            replica_group=ReplicaGroupPlan(
                image="dstackai/base:py3.10-0.6-cuda-12.1", python="3.10",
                env={"HF_TOKEN": EnvValue(value=SecretStr(HF_TOKEN), secret=True, source="stack")},
                commands=("pip install vllm", "vllm serve meta-llama/Meta-Llama-3.1-8B-Instruct --max-model-len 4096"),
                container_port=8000, gpus_num=1,
                resources=_resources(gpu_vendor="nvidia", gpu_count_min=1, gpu_count_max=1, gpu_memory_min_gb=24),
            ),
            offers=_offers(backend, "A10G", spot=False), replicas=ReplicaBounds(min=1, max=4, initial=1),
            scaling=ScalingPlan(target=10),
            route=GatewayRoutePlan(subdomain="llama31-service", model=ModelPlan(name="meta-llama/Meta-Llama-3.1-8B-Instruct")),
        ),
        ServicePlan(
            file=file.format("private-registry"), name="private-image", backend=backend,
            replica_group=ReplicaGroupPlan(
                image="ghcr.io/peterschmidt85/base:py3.13-0.6-cuda-12.1", image_from="image",
                registry_auth=RegistryAuthPlan(username="peterschmidt85", password=SecretStr(REGISTRY_PASSWORD)),
                commands=("python3 -m http.server",), container_port=8000, resources=_resources(),
            ),
            offers=_offers(backend, None, spot=False), replicas=ReplicaBounds(min=1, max=1, initial=1),
            route=GatewayRoutePlan(subdomain="private-image"),
        ),
        ServicePlan(
            file=file.format("tgi"), name="llama2-tgi", backend=backend,
            replica_group=ReplicaGroupPlan(
                image="ghcr.io/huggingface/text-generation-inference:latest", image_from="image",
                env={"MODEL_ID": EnvValue(value="TheBloke/Llama-2-13B-chat-GPTQ")},
                commands=("text-generation-launcher --port 8000 --trust-remote-code --quantize gptq",),
                container_port=8000, gpus_num=1,
                resources=_resources(gpu_vendor="nvidia", gpu_count_min=1, gpu_count_max=1, gpu_memory_min_gb=24),
            ),
            offers=_offers(backend, "L4", spot=False), replicas=ReplicaBounds(min=1, max=1, initial=1),
            route=GatewayRoutePlan(
                subdomain="llama2-tgi",
                model=ModelPlan(name="TheBloke/Llama-2-13B-chat-GPTQ", format="tgi", chat_template="{{ messages }}", eos_token="</s>"),
            ),
        ),
        ServicePlan(
            file=file.format("mixtral"), name="mixtral", backend=backend,
            replica_group=ReplicaGroupPlan(
                image="dstackai/base:py3.10-0.6-cuda-12.1", python="3.10", nvcc=True,
                commands=(
                    "pip install vllm",
                    "python -m vllm.entrypoints.openai.api_server --model mistralai/Mixtral-8X7B-Instruct-v0.1 "
                    "--host 0.0.0.0 --tensor-parallel-size $DSTACK_GPUS_NUM",
                ),
                container_port=8000, gpus_num=2,
                resources=_resources(gpu_vendor="nvidia", gpu_count_min=2, gpu_count_max=2, gpu_memory_min_gb=80,
                                     disk_min_gb=200, shm_size_gb=16),
            ),
            offers=_offers(backend, "A100x2", spot=False), replicas=ReplicaBounds(min=1, max=1, initial=1),
            route=GatewayRoutePlan(subdomain="mixtral"),
        ),
        ServicePlan(
            file=file.format("volume"), name="volume-service", backend=backend,
            replica_group=ReplicaGroupPlan(
                image="dstackai/base:py3.10-0.6-cuda-12.1", python="3.10",
                commands=("python3 -m http.server --directory /volume_data",), container_port=8000,
                resources=_resources(disk_min_gb=50),
            ),
            offers=_offers(backend, None), spot_policy="auto", max_price=0.5,
            replicas=ReplicaBounds(min=0, max=2, initial=1), scaling=ScalingPlan(target=5),
            volumes=(
                VolumePlan(kind="network", names=("my-new-volume",), path="/volume_data"),
                VolumePlan(kind="instance", instance_path="/mnt/cache", path="/root/.cache"),
            ),
            route=GatewayRoutePlan(subdomain="volume-service"),
        ),
    ]
    return {p.name: p for p in plans}


def hostile_plan(backend: str, instance_dir: str = "/mnt/it's here") -> ServicePlan:
    """A plan whose env values and commands carry quotes, newlines and `$`."""
    return ServicePlan(
        file="services/hostile.dstack.yml", name="hostile", backend=backend,
        replica_group=ReplicaGroupPlan(
            image="ghcr.io/acme/app:1", image_from="image",
            registry_auth=RegistryAuthPlan(username="o'brien\"$(id)", password=SecretStr("p'w\n$(reboot)`x`")),
            env={
                "PLAIN": EnvValue(value="a'b\"c $HOME `id` $(reboot)\nsecond line\\n \u2028 end"),
                "SECRET_TOKEN": EnvValue(value=SecretStr("s3cr3t'\"$(rm -rf /)\nEOF"), secret=True, source="stack"),
            },
            setup=("echo \"setup $HOME\"",),
            commands=("echo 'it''s' \"$DSTACK_GPUS_NUM\" && printf '%s\\n' \"a\nb\"", "exec python3 -c 'print(\"}}{{ \")'"),
            entrypoint="/bin/bash -c",
            working_dir="sub dir/'x'",
            container_port=8080, resources=_resources(),
        ),
        offers=_offers(backend, None, spot=False), replicas=ReplicaBounds(min=1, max=3, initial=2),
        scaling=ScalingPlan(target=3),
        volumes=(VolumePlan(kind="instance", instance_path=instance_dir, path="/data/$HOME"),),
        route=GatewayRoutePlan(subdomain="hostile"),
    )
