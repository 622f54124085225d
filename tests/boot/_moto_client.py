"""Runs a batch of boto3 calls against moto (with moto's own interpreter, which has boto3).

stdin: {"url": ..., "calls": [[service, method, kwargs], ...]}; a kwargs value {"file": PATH}
is sent as that file's bytes. stdout: the JSON results, one per call.
"""

from __future__ import annotations

import json
import sys

import boto3


def main() -> None:
    request = json.load(sys.stdin)
    clients: dict[str, object] = {}
    results = []
    for service, method, kwargs in request["calls"]:
        client = clients.setdefault(
            service,
            boto3.client(service, endpoint_url=request["url"], region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"),
        )
        handles = []
        for key, value in list(kwargs.items()):
            if isinstance(value, dict) and set(value) == {"file"}:
                handles.append(open(value["file"], "rb"))
                kwargs[key] = handles[-1]
        result = getattr(client, method)(**kwargs)
        for handle in handles:
            handle.close()
        result.pop("ResponseMetadata", None)
        results.append(result)
    json.dump(results, sys.stdout, default=str)


if __name__ == "__main__":
    main()
