"""Write ``offers-2026-11.csv``: the offers snapshot, in gpuhunt's catalog item format.

    python translator/catalog/_build.py

The table below is the whole source. On-demand prices are the providers' published hourly
Linux list prices for the first region of each provider (AWS us-east-1, GCP us-central1,
Azure eastus) as collected for this snapshot; other regions apply the regional factor, and
spot prices apply the family's typical spot discount. Both factors are estimates: for
decisions that depend on exact prices, point serveform at a fresh gpuhunt catalog.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import gpuhunt
from gpuhunt._internal.storage import CATALOG_V2_FIELDS, item_to_row

OUT = Path(__file__).with_name("offers-2026-11.csv")

# instance, vCPUs, RAM GB, GPU name (None = CPU only), GPU count, GPU memory GB, on-demand $/h, spot factor, regions
_AWS_ALL = ("us-east-1", "us-east-2", "us-west-2", "eu-west-1", "eu-central-1", "ap-northeast-1")
_AWS_BIG = ("us-east-1", "us-west-2")
AWS = [
    ("g4dn.xlarge", 4, 16, "T4", 1, 16, 0.526, 0.35, _AWS_ALL),
    ("g4dn.2xlarge", 8, 32, "T4", 1, 16, 0.752, 0.35, _AWS_ALL),
    ("g4dn.4xlarge", 16, 64, "T4", 1, 16, 1.204, 0.35, _AWS_ALL),
    ("g4dn.8xlarge", 32, 128, "T4", 1, 16, 2.176, 0.35, _AWS_ALL),
    ("g4dn.12xlarge", 48, 192, "T4", 4, 16, 3.912, 0.35, _AWS_ALL),
    ("g4dn.16xlarge", 64, 256, "T4", 1, 16, 4.352, 0.35, _AWS_ALL),
    ("g4dn.metal", 96, 384, "T4", 8, 16, 7.824, 0.35, _AWS_ALL),
    ("g5.xlarge", 4, 16, "A10G", 1, 24, 1.006, 0.40, _AWS_ALL),
    ("g5.2xlarge", 8, 32, "A10G", 1, 24, 1.212, 0.40, _AWS_ALL),
    ("g5.4xlarge", 16, 64, "A10G", 1, 24, 1.624, 0.40, _AWS_ALL),
    ("g5.8xlarge", 32, 128, "A10G", 1, 24, 2.448, 0.40, _AWS_ALL),
    ("g5.12xlarge", 48, 192, "A10G", 4, 24, 5.672, 0.40, _AWS_ALL),
    ("g5.16xlarge", 64, 256, "A10G", 1, 24, 4.096, 0.40, _AWS_ALL),
    ("g5.24xlarge", 96, 384, "A10G", 4, 24, 8.144, 0.40, _AWS_ALL),
    ("g5.48xlarge", 192, 768, "A10G", 8, 24, 16.288, 0.40, _AWS_ALL),
    ("g6.xlarge", 4, 16, "L4", 1, 24, 0.805, 0.45, _AWS_ALL),
    ("g6.2xlarge", 8, 32, "L4", 1, 24, 0.978, 0.45, _AWS_ALL),
    ("g6.4xlarge", 16, 64, "L4", 1, 24, 1.323, 0.45, _AWS_ALL),
    ("g6.8xlarge", 32, 128, "L4", 1, 24, 2.014, 0.45, _AWS_ALL),
    ("g6.12xlarge", 48, 192, "L4", 4, 24, 4.602, 0.45, _AWS_ALL),
    ("g6.24xlarge", 96, 384, "L4", 4, 24, 6.675, 0.45, _AWS_ALL),
    ("g6.48xlarge", 192, 768, "L4", 8, 24, 13.35, 0.45, _AWS_ALL),
    ("g6e.xlarge", 4, 32, "L40S", 1, 48, 1.861, 0.50, _AWS_ALL[:4]),
    ("g6e.2xlarge", 8, 64, "L40S", 1, 48, 2.242, 0.50, _AWS_ALL[:4]),
    ("g6e.12xlarge", 48, 384, "L40S", 4, 48, 10.493, 0.50, _AWS_ALL[:4]),
    ("g6e.48xlarge", 192, 1536, "L40S", 8, 48, 30.131, 0.50, _AWS_ALL[:4]),
    ("p3.2xlarge", 8, 61, "V100", 1, 16, 3.06, 0.35, ("us-east-1", "us-west-2", "eu-west-1", "ap-northeast-1")),
    ("p3.8xlarge", 32, 244, "V100", 4, 16, 12.24, 0.35, ("us-east-1", "us-west-2", "eu-west-1", "ap-northeast-1")),
    ("p3.16xlarge", 64, 488, "V100", 8, 16, 24.48, 0.35, ("us-east-1", "us-west-2", "eu-west-1", "ap-northeast-1")),
    ("p4d.24xlarge", 96, 1152, "A100", 8, 40, 32.7726, 0.45, _AWS_BIG),
    ("p4de.24xlarge", 96, 1152, "A100", 8, 80, 40.9657, 0.45, ("us-east-1",)),
    ("p5.48xlarge", 192, 2048, "H100", 8, 80, 98.32, 0.55, _AWS_BIG),
    ("t3.xlarge", 4, 16, None, 0, None, 0.1664, 0.35, _AWS_ALL),
    ("m5.large", 2, 8, None, 0, None, 0.096, 0.35, _AWS_ALL),
    ("m5.xlarge", 4, 16, None, 0, None, 0.192, 0.35, _AWS_ALL),
    ("m5.2xlarge", 8, 32, None, 0, None, 0.384, 0.35, _AWS_ALL),
    ("m5.4xlarge", 16, 64, None, 0, None, 0.768, 0.35, _AWS_ALL),
    ("c5.2xlarge", 8, 16, None, 0, None, 0.34, 0.35, _AWS_ALL),
    ("r5.xlarge", 4, 32, None, 0, None, 0.252, 0.35, _AWS_ALL),
]
AWS_REGION_FACTOR = {"us-east-1": 1.0, "us-east-2": 1.0, "us-west-2": 1.0, "eu-west-1": 1.1, "eu-central-1": 1.18, "ap-northeast-1": 1.25}

# GCP offers are per zone, as in gpuhunt's GCP catalog.
_GCP_ALL = ("us-central1-a", "us-central1-c", "us-east4-c", "europe-west4-a", "asia-northeast1-a")
_GCP_BIG = ("us-central1-a", "europe-west4-a")
GCP = [
    ("g2-standard-4", 4, 16, "L4", 1, 24, 0.7069, 0.33, _GCP_ALL),
    ("g2-standard-8", 8, 32, "L4", 1, 24, 0.8536, 0.33, _GCP_ALL),
    ("g2-standard-12", 12, 48, "L4", 1, 24, 1.0002, 0.33, _GCP_ALL),
    ("g2-standard-16", 16, 64, "L4", 1, 24, 1.1469, 0.33, _GCP_ALL),
    ("g2-standard-24", 24, 96, "L4", 2, 24, 2.0004, 0.33, _GCP_ALL),
    ("g2-standard-48", 48, 192, "L4", 4, 24, 4.0008, 0.33, _GCP_ALL),
    ("g2-standard-96", 96, 384, "L4", 8, 24, 8.0016, 0.33, _GCP_ALL),
    ("a2-highgpu-1g", 12, 85, "A100", 1, 40, 3.673, 0.32, _GCP_ALL[:4]),
    ("a2-highgpu-2g", 24, 170, "A100", 2, 40, 7.346, 0.32, _GCP_ALL[:4]),
    ("a2-highgpu-4g", 48, 340, "A100", 4, 40, 14.692, 0.32, _GCP_ALL[:4]),
    ("a2-highgpu-8g", 96, 680, "A100", 8, 40, 29.384, 0.32, _GCP_ALL[:4]),
    ("a2-ultragpu-1g", 12, 170, "A100", 1, 80, 5.0688, 0.35, _GCP_BIG),
    ("a2-ultragpu-2g", 24, 340, "A100", 2, 80, 10.1376, 0.35, _GCP_BIG),
    ("a2-ultragpu-4g", 48, 680, "A100", 4, 80, 20.2752, 0.35, _GCP_BIG),
    ("a2-ultragpu-8g", 96, 1360, "A100", 8, 80, 40.5504, 0.35, _GCP_BIG),
    ("a3-highgpu-8g", 208, 1872, "H100", 8, 80, 88.2539, 0.40, _GCP_BIG),
    ("n1-standard-4", 4, 15, "T4", 1, 16, 0.54, 0.30, _GCP_ALL),
    ("n1-standard-8", 8, 30, "T4", 1, 16, 0.73, 0.30, _GCP_ALL),
    ("n1-standard-16", 16, 60, "T4", 2, 16, 1.46, 0.30, _GCP_ALL),
    ("n1-standard-8", 8, 30, "V100", 1, 16, 2.86, 0.30, _GCP_ALL[:4]),
    ("n1-standard-32", 32, 120, "V100", 4, 16, 11.44, 0.30, _GCP_ALL[:4]),
    ("e2-standard-2", 2, 8, None, 0, None, 0.067, 0.30, _GCP_ALL),
    ("e2-standard-4", 4, 16, None, 0, None, 0.134, 0.30, _GCP_ALL),
    ("n2-standard-4", 4, 16, None, 0, None, 0.1942, 0.30, _GCP_ALL),
    ("n2-standard-8", 8, 32, None, 0, None, 0.3885, 0.30, _GCP_ALL),
]
GCP_REGION_FACTOR = {"us-central1": 1.0, "us-east4": 1.12, "europe-west4": 1.1, "asia-northeast1": 1.25}

_AZ_ALL = ("eastus", "eastus2", "westus2", "westus3", "westeurope", "northeurope")
AZURE = [
    ("Standard_NC4as_T4_v3", 4, 28, "T4", 1, 16, 0.526, 0.35, _AZ_ALL),
    ("Standard_NC8as_T4_v3", 8, 56, "T4", 1, 16, 0.752, 0.35, _AZ_ALL),
    ("Standard_NC16as_T4_v3", 16, 110, "T4", 1, 16, 1.204, 0.35, _AZ_ALL),
    ("Standard_NC64as_T4_v3", 64, 440, "T4", 4, 16, 4.352, 0.35, _AZ_ALL),
    ("Standard_NV36ads_A10_v5", 36, 440, "A10", 1, 24, 3.2, 0.40, _AZ_ALL),
    ("Standard_NC24ads_A100_v4", 24, 220, "A100", 1, 80, 3.673, 0.40, _AZ_ALL),
    ("Standard_NC48ads_A100_v4", 48, 440, "A100", 2, 80, 7.346, 0.40, _AZ_ALL),
    ("Standard_NC96ads_A100_v4", 96, 880, "A100", 4, 80, 14.692, 0.40, _AZ_ALL),
    ("Standard_ND96asr_v4", 96, 900, "A100", 8, 40, 27.197, 0.40, ("eastus", "westus2", "westeurope")),
    ("Standard_ND96amsr_A100_v4", 96, 1900, "A100", 8, 80, 32.77, 0.40, ("eastus", "westus3", "westeurope")),
    ("Standard_NC6s_v3", 6, 112, "V100", 1, 16, 3.06, 0.35, _AZ_ALL),
    ("Standard_NC24s_v3", 24, 448, "V100", 4, 16, 12.24, 0.35, _AZ_ALL),
    ("Standard_NC40ads_H100_v5", 40, 320, "H100NVL", 1, 94, 6.98, 0.45, ("eastus", "westus3", "westeurope")),
    ("Standard_ND96isr_H100_v5", 96, 1900, "H100", 8, 80, 98.32, 0.45, ("eastus", "westus3")),
    ("Standard_D2s_v5", 2, 8, None, 0, None, 0.096, 0.30, _AZ_ALL),
    ("Standard_D4s_v5", 4, 16, None, 0, None, 0.192, 0.30, _AZ_ALL),
    ("Standard_D8s_v5", 8, 32, None, 0, None, 0.384, 0.30, _AZ_ALL),
]
AZURE_REGION_FACTOR = {"eastus": 1.0, "eastus2": 1.0, "westus2": 1.0, "westus3": 1.0, "westeurope": 1.12, "northeurope": 1.08}


def _items() -> list[gpuhunt.CatalogItem]:
    items = []
    for provider, table, factors in (("aws", AWS, AWS_REGION_FACTOR), ("gcp", GCP, GCP_REGION_FACTOR), ("azure", AZURE, AZURE_REGION_FACTOR)):
        for name, cpus, memory, gpu, count, gpu_memory, price, spot_factor, locations in table:
            for location in locations:
                region = location.rsplit("-", 1)[0] if provider == "gcp" else location
                on_demand = round(price * factors[region], 4)
                for spot in (False, True):
                    items.append(
                        gpuhunt.CatalogItem(
                            provider=provider,
                            instance_name=name,
                            location=location,
                            price=round(on_demand * spot_factor, 4) if spot else on_demand,
                            cpu=cpus,
                            memory=float(memory),
                            gpu_count=count,
                            gpu_name=gpu,
                            gpu_memory=float(gpu_memory) if gpu_memory else None,
                            spot=spot,
                            disk_size=None,
                            gpu_vendor=gpuhunt.AcceleratorVendor.NVIDIA if gpu else None,
                        )
                    )
    return items


def main() -> None:
    with open(OUT, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["provider", *CATALOG_V2_FIELDS], lineterminator="\n")
        writer.writeheader()
        for item in _items():
            writer.writerow({"provider": item.provider, **item_to_row(item)})
    print(f"{OUT}: {sum(1 for _ in open(OUT)) - 1} offers; {json.dumps(sorted({i.provider for i in _items()}))}")


if __name__ == "__main__":
    main()
