"""serveform.aws: AWS's HTTP APIs with Python's standard library (`client`).

Shared by the AWS VMs' boot fetcher (before serveform is installed: the user data writes
`client.py` beside it), the gateway's replica discovery and the scaler's Auto Scaling applier.
It imports neither Pulumi nor the components, so every side of the data flow may use it.
"""

from .client import (
    AUTOSCALING_API_VERSION,
    EC2_API_VERSION,
    AwsError,
    Credentials,
    default_credentials,
    instance_credentials,
    json_call,
    query_call,
    sign,
)

__all__ = [
    "AUTOSCALING_API_VERSION",
    "AwsError",
    "Credentials",
    "EC2_API_VERSION",
    "default_credentials",
    "instance_credentials",
    "json_call",
    "query_call",
    "sign",
]
