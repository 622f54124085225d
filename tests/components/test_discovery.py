"""Replica discovery against fake cloud APIs on loopback, publishing into a real gateway state dir.

Each fake serves the few endpoints one cloud module calls (metadata service, then the compute
API) and checks the request the way the cloud would: the AWS fake verifies the SigV4
signature, the GCP and Azure fakes the bearer token. The signer itself is checked against
AWS's published Signature Version 4 test vectors.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from serveform.components.discovery import discover
from serveform.components.discovery.aws import sign

Handler = Callable[[BaseHTTPRequestHandler], tuple[int, bytes]]


class _Fake:
    """A loopback HTTP server answering with ``handler(request) -> (status, body)``."""

    def __init__(self, handler: Handler) -> None:
        fake = self

        class _H(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.body = self.rfile.read(length) if length else b""
                fake.requests.append((self.command, self.path))
                status, body = handler(self)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        self.requests: list[tuple[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fakes():
    made: list[_Fake] = []

    def make(handler: Handler) -> _Fake:
        made.append(_Fake(handler))
        return made[-1]

    yield make
    for fake in made:
        fake.close()


def _published(state: Path, service: str) -> list[str]:
    return json.loads((state / "replicas" / f"{service}.json").read_text())["addresses"]


def test_sigv4_matches_aws_published_vectors():
    common = dict(region="us-east-1", service="service", access_key="AKIDEXAMPLE",
                  secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", now=dt.datetime(2015, 8, 30, 12, 36, 0))
    vanilla = sign(method="GET", url="https://example.amazonaws.com/", **common)
    assert vanilla["Authorization"].endswith("Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
    query = sign(method="GET", url="https://example.amazonaws.com/?Param2=value2&Param1=value1", **common)
    assert query["Authorization"].endswith("Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500")


_EC2_XML = """<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <reservationSet><item><instancesSet>
    <item><instanceId>i-1</instanceId><privateIpAddress>10.0.1.7</privateIpAddress></item>
    <item><instanceId>i-2</instanceId><privateIpAddress>10.0.2.9</privateIpAddress></item>
  </instancesSet></item></reservationSet>
</DescribeInstancesResponse>"""


_ASG_XML = """<?xml version="1.0" encoding="UTF-8"?>
<DescribeAutoScalingGroupsResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">
  <DescribeAutoScalingGroupsResult><AutoScalingGroups><member>
    <AutoScalingGroupName>serveform-dev-chat</AutoScalingGroupName>
    <Instances>
      <member><InstanceId>i-2</InstanceId><LifecycleState>InService</LifecycleState></member>
      <member><InstanceId>i-1</InstanceId><LifecycleState>InService</LifecycleState></member>
      <member><InstanceId>i-3</InstanceId><LifecycleState>Terminating</LifecycleState></member>
      <member><InstanceId>i-4</InstanceId><LifecycleState>Standby</LifecycleState></member>
    </Instances>
  </member></AutoScalingGroups></DescribeAutoScalingGroupsResult>
</DescribeAutoScalingGroupsResponse>"""


def test_aws_lists_the_groups_in_service_instances_with_signed_requests(fakes, tmp_path):
    creds = {"AccessKeyId": "ASIAMOCK", "SecretAccessKey": "mock/secret", "Token": "session-token"}

    def imds(req):
        if req.command == "PUT" and req.path == "/latest/api/token":
            return 200, b"imds-token"
        if req.headers.get("X-aws-ec2-metadata-token") != "imds-token":
            return 401, b""
        if req.path == "/latest/meta-data/iam/security-credentials/":
            return 200, b"serveform-dev-gateway-role"
        if req.path == "/latest/meta-data/iam/security-credentials/serveform-dev-gateway-role":
            return 200, json.dumps(creds).encode()
        return 404, b""

    def signed(req, service):
        expected = sign(method="GET", url=f"http://{req.headers['Host']}{req.path}", region="us-east-1", service=service,
                        access_key=creds["AccessKeyId"], secret_key=creds["SecretAccessKey"], session_token=creds["Token"],
                        now=dt.datetime.strptime(req.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
        return req.headers.get("Authorization") == expected["Authorization"]

    def autoscaling(req):
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(req.path).query))
        if not signed(req, "autoscaling"):
            return 403, b"<Error>SignatureDoesNotMatch</Error>"
        assert (query["Action"], query["AutoScalingGroupNames.member.1"]) == ("DescribeAutoScalingGroups", "serveform-dev-chat")
        return 200, _ASG_XML.encode()

    def ec2(req):
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(req.path).query))
        if not signed(req, "ec2"):
            return 403, b"<Error>SignatureDoesNotMatch</Error>"
        assert query["Action"] == "DescribeInstances"
        # Exactly the in-service instances: not the one scale-in terminates, nor the one in Standby.
        assert sorted(v for k, v in query.items() if k.startswith("InstanceId.")) == ["i-1", "i-2"]
        assert (query["Filter.1.Name"], query["Filter.1.Value.1"]) == ("instance-state-name", "running")
        return 200, _EC2_XML.encode()

    meta, groups, api = fakes(imds), fakes(autoscaling), fakes(ec2)
    config = {"stack": "dev", "endpoints": {"imds": meta.url, "autoscaling": groups.url, "ec2": api.url},
              "targets": [{"service": "chat", "port": 8000, "cloud": "aws", "group": "serveform-dev-chat", "region": "us-east-1"}]}
    assert discover(config, str(tmp_path)) == []
    assert _published(tmp_path, "chat") == ["10.0.1.7:8000", "10.0.2.9:8000"]


def test_aws_publishes_no_replica_while_no_instance_is_in_service(fakes, tmp_path):
    creds = {"AccessKeyId": "ASIAMOCK", "SecretAccessKey": "mock/secret", "Token": "t"}

    def imds(req):
        if req.command == "PUT":
            return 200, b"imds-token"
        if req.path.endswith("/security-credentials/"):
            return 200, b"role"
        return 200, json.dumps(creds).encode()

    def autoscaling(req):
        return 200, _ASG_XML.replace("InService", "Pending").encode()

    def ec2(req):
        return 500, b""

    meta, groups, api = fakes(imds), fakes(autoscaling), fakes(ec2)
    config = {"stack": "dev", "endpoints": {"imds": meta.url, "autoscaling": groups.url, "ec2": api.url},
              "targets": [{"service": "chat", "port": 8000, "cloud": "aws", "group": "serveform-dev-chat", "region": "us-east-1"}]}
    assert discover(config, str(tmp_path)) == []
    assert _published(tmp_path, "chat") == []
    assert api.requests == []  # EC2 is not asked about a group with no instance in service


def test_gcp_pages_through_labelled_running_instances(fakes, tmp_path):
    def metadata(req):
        assert req.headers["Metadata-Flavor"] == "Google"
        return 200, json.dumps({"access_token": "gcp-token", "expires_in": 3599}).encode()

    def compute(req):
        if req.headers.get("Authorization") != "Bearer gcp-token":
            return 401, b"{}"
        parts = urllib.parse.urlsplit(req.path)
        assert parts.path == "/compute/v1/projects/acme/zones/us-central1-a/instances"
        query = dict(urllib.parse.parse_qsl(parts.query))
        assert 'labels.serveform-service = "llm"' in query["filter"] and 'labels.serveform-stack = "prod"' in query["filter"]
        if "pageToken" not in query:
            items = [{"status": "RUNNING", "networkInterfaces": [{"networkIP": "10.128.0.5"}]}]
            return 200, json.dumps({"items": items, "nextPageToken": "p2"}).encode()
        assert query["pageToken"] == "p2"
        items = [{"status": "RUNNING", "networkInterfaces": [{"networkIP": "10.128.0.6"}]},
                 {"status": "STOPPING", "networkInterfaces": [{"networkIP": "10.128.0.9"}]}]
        return 200, json.dumps({"items": items}).encode()

    meta, api = fakes(metadata), fakes(compute)
    config = {"stack": "prod", "endpoints": {"metadata": meta.url, "compute": api.url},
              "targets": [{"service": "llm", "port": 8080, "cloud": "gcp", "group": "serveform-prod-llm",
                           "region": "us-central1-a", "project": "acme"}]}
    assert discover(config, str(tmp_path)) == []
    assert _published(tmp_path, "llm") == ["10.128.0.5:8080", "10.128.0.6:8080"]


def test_azure_reads_the_scale_sets_network_interfaces(fakes, tmp_path):
    def imds(req):
        assert req.headers["Metadata"] == "true"
        if req.path.startswith("/metadata/identity/oauth2/token"):
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(req.path).query))
            assert query["client_id"] == "gateway-client-id"
            return 200, json.dumps({"access_token": "arm-token"}).encode()
        if req.path.startswith("/metadata/instance/compute/subscriptionId"):
            return 200, b"sub-123"
        return 404, b""

    def arm(req):
        if req.headers.get("Authorization") != "Bearer arm-token":
            return 401, b"{}"
        assert req.path.startswith(
            "/subscriptions/sub-123/resourceGroups/serveform-dev/providers/Microsoft.Compute/virtualMachineScaleSets/serveform-dev-tgi/networkInterfaces"
        )
        nic = lambda ip: {"properties": {"ipConfigurations": [{"properties": {"privateIPAddress": ip}}]}}  # noqa: E731
        return 200, json.dumps({"value": [nic("10.42.1.4"), nic("10.42.1.5")]}).encode()

    meta, api = fakes(imds), fakes(arm)
    config = {"stack": "dev", "azure_client_id": "gateway-client-id", "endpoints": {"imds": meta.url, "arm": api.url},
              "targets": [{"service": "tgi", "port": 80, "cloud": "azure", "group": "serveform-dev-tgi", "resource_group": "serveform-dev"}]}
    assert discover(config, str(tmp_path)) == []
    assert _published(tmp_path, "tgi") == ["10.42.1.4:80", "10.42.1.5:80"]


def test_a_failing_lookup_keeps_the_last_published_addresses(fakes, tmp_path):
    healthy = {"on": True}

    def metadata(req):
        return 200, json.dumps({"access_token": "t"}).encode()

    def compute(req):
        if not healthy["on"]:
            return 503, b'{"error": "backendError"}'
        return 200, json.dumps({"items": [{"status": "RUNNING", "networkInterfaces": [{"networkIP": "10.0.0.2"}]}]}).encode()

    meta, api = fakes(metadata), fakes(compute)
    config = {"stack": "dev", "endpoints": {"metadata": meta.url, "compute": api.url},
              "targets": [{"service": "web", "port": 9000, "cloud": "gcp", "group": "g", "region": "z", "project": "p"}]}
    assert discover(config, str(tmp_path)) == []
    healthy["on"] = False
    assert discover(config, str(tmp_path)) == ["web"]
    assert _published(tmp_path, "web") == ["10.0.0.2:9000"]
