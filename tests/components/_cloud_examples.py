"""Example services of the seed documents as ServicePlans for the VM backends' tests.

Each is one example of dstack's `service` reference (the seeds), compiled by the translator
for the backend: a plain Python server, a gated model with a secret env (HF_TOKEN) and
autoscaling, a private-registry image, a TGI model with a chat template, a multi-GPU server
with a big disk and shared memory, and a service with a network volume on spot capacity.
`hostile_plan` is built by hand: values no service file should carry, to test quoting.
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


# The seed documents' service examples (dstack's `service` reference), as .dstack.yml text.
SEEDS = {
"http-server-service": '''type: service
name: http-server-service
python: "3.10"
commands:
  - python3 -m http.server
port: 8000
auth: false
''',
"llama31-service": '''type: service
name: llama31-service
python: "3.10"
env:
  - HF_TOKEN
commands:
  - pip install vllm
  - vllm serve meta-llama/Meta-Llama-3.1-8B-Instruct --max-model-len 4096
port: 8000
resources:
  gpu: 24GB
replicas: 1..4
scaling:
  metric: rps
  target: 10
model: meta-llama/Meta-Llama-3.1-8B-Instruct
''',
"private-image": '''type: service
name: private-image
image: ghcr.io/peterschmidt85/base:py3.13-0.6-cuda-12.1
registry_auth:
  username: peterschmidt85
  password: ${{ secrets.REGISTRY_PASSWORD }}
commands:
  - python3 -m http.server
port: 8000
''',
"llama2-tgi": '''type: service
name: llama2-tgi
image: ghcr.io/huggingface/text-generation-inference:latest
env:
  - MODEL_ID=TheBloke/Llama-2-13B-chat-GPTQ
commands:
  - text-generation-launcher --port 8000 --trust-remote-code --quantize gptq
port: 8000
resources:
  gpu: 80GB
model:
  type: chat
  name: TheBloke/Llama-2-13B-chat-GPTQ
  format: tgi
  chat_template: "{% for message in messages %}{{ message['content'] }}{% endfor %}"
  eos_token: "</s>"
''',
"mixtral": '''type: service
name: mixtral
python: "3.10"
nvcc: true
commands:
  - pip install vllm
  - python -m vllm.entrypoints.openai.api_server
    --model mistralai/Mixtral-8X7B-Instruct-v0.1
    --host 0.0.0.0
    --tensor-parallel-size $DSTACK_GPUS_NUM
port: 8000
resources:
  gpu: 80GB:2
  disk: 200GB
  shm_size: 16GB
''',
"volume-service": '''type: service
name: volume-service
commands:
  - python3 -m http.server --directory /volume_data
port: 8000
spot_policy: auto
max_price: 0.5
replicas: 0..2
scaling:
  metric: rps
  target: 5
volumes:
  - name: my-new-volume
    path: /volume_data
  - /mnt/cache:/root/.cache
''',
}
# AWS sells 80 GB GPUs only eight to an instance: the two-GPU example asks for 24 GB GPUs there.
_BACKEND_OVERRIDES = {("aws", "mixtral"): ("gpu: 80GB:2", "gpu: 24GB:4")}
REGIONS = {"aws": ("us-east-1",), "gcp": ("us-central1",), "azure": ("eastus",)}
STACK_SECRETS = {"HF_TOKEN": HF_TOKEN, "REGISTRY_PASSWORD": REGISTRY_PASSWORD}


def example_plans(backend: str) -> dict[str, ServicePlan]:
    """The seed examples compiled by the translator for ``backend`` (name → plan)."""
    from serveform.translator import CompileContext, compile_text

    context = CompileContext(backend=backend, domain="example.com", regions=REGIONS[backend], stack_secrets=STACK_SECRETS)
    plans = {}
    for name, text in SEEDS.items():
        old, new = _BACKEND_OVERRIDES.get((backend, name), ("", ""))
        plans[name] = compile_text(text.replace(old, new), file=f"services/{name}.dstack.yml", context=context).plan
    return plans


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


def fake_gateway_artifacts(folder):
    """Small stand-ins for the AWS gateway's artifacts (`serveform.image.vm.gateway_artifacts`):
    component tests run under mocks and need files with digests, not the real builds."""
    import hashlib
    from pathlib import Path

    from serveform.image.vm import VmArtifact

    artifacts = []
    for name in ("wheelhouse", "caddy", "pulumi"):
        path = Path(folder) / name
        path.write_bytes(f"fake {name}\n".encode())
        artifacts.append(VmArtifact(name=name, path=path, sha256=hashlib.sha256(path.read_bytes()).hexdigest()))
    return tuple(artifacts)
