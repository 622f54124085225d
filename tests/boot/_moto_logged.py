"""moto's server mode with a log of every AWS call it answers, one `CLIENT service:Action` per line.

Run with moto's own interpreter (tools/k8s/build.sh moto): `python _moto_logged.py HOST PORT LOG`.
The boot test lists, from this log, exactly what the gateway VM called (its role's grants).
`LOG.jsonl` has the same calls with what each names, for checking them against a policy's
resources: `{"client", "call", "resource"}` (an S3 object's `BUCKET/KEY`, a secret's ID, an auto
scaling group's name; null when the call names none).
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.parse

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

_LOCK = threading.Lock()


def _call(environ) -> str:
    path = environ.get("PATH_INFO", "")
    if path.startswith("/latest/"):
        return "imds:" + environ.get("REQUEST_METHOD", "") + " " + path
    auth = environ.get("HTTP_AUTHORIZATION", "")
    service = auth.split("Credential=", 1)[1].split("/")[3] if "Credential=" in auth else "?"
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return f"{service}:{target.rsplit('.', 1)[-1]}"
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    if "Action" in query:
        return f"{service}:{query['Action'][0]}"
    if service == "s3":
        return f"s3:{environ.get('REQUEST_METHOD')} {path}"
    return f"{service}:{environ.get('REQUEST_METHOD')} {path}"


def _resource(line: str, form: dict[str, list[str]], body: bytes) -> str | None:
    call = line.split(":", 1)[1]
    if line.startswith("s3:") and " " in call:
        return call.split(" ", 1)[1].lstrip("/")
    for key in ("AutoScalingGroupName", "AutoScalingGroupNames.member.1"):
        if key in form:
            return form[key][0]
    if body.startswith(b"{"):
        try:
            return json.loads(body).get("SecretId")
        except ValueError:
            return None
    return None


def main() -> None:
    host, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    app = DomainDispatcherApplication(create_backend_app)

    def logged(environ, start_response):
        line = _call(environ)
        form: dict[str, list[str]] = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        body = b""
        if environ.get("REQUEST_METHOD") == "POST":
            # Query APIs (EC2, Auto Scaling, STS) carry Action in a form body, JSON APIs the
            # SecretId in theirs: peek without consuming it.
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            import io

            environ["wsgi.input"] = io.BytesIO(body)
        if line.split(":", 1)[1].startswith("POST") and environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
            form = urllib.parse.parse_qs(body.decode(errors="replace"))
            action = form.get("Action")
            if action:
                line = line.split(":", 1)[0] + ":" + action[0]
        client = environ.get("REMOTE_ADDR", "?")
        record = {"client": client, "call": line, "resource": _resource(line, form, body)}
        with _LOCK, open(log, "a") as out, open(log + ".jsonl", "a") as records:
            out.write(client + " " + line + "\n")
            records.write(json.dumps(record) + "\n")
        return app(environ, start_response)

    run_simple(host, port, logged, threaded=True)


if __name__ == "__main__":
    main()
