"""moto's server mode with a log of every AWS call it answers, one `CLIENT service:Action` per line.

Run with moto's own interpreter (tools/k8s/build.sh moto): `python _moto_logged.py HOST PORT LOG`.
The boot test lists, from this log, exactly what the gateway VM called (its role's grants).
"""

from __future__ import annotations

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


def main() -> None:
    host, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    app = DomainDispatcherApplication(create_backend_app)

    def logged(environ, start_response):
        line = _call(environ)
        if line.split(":", 1)[1].startswith("POST") and environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
            # Query APIs (EC2, Auto Scaling, STS) carry Action in a form body: peek without consuming it.
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            import io

            environ["wsgi.input"] = io.BytesIO(body)
            action = urllib.parse.parse_qs(body.decode(errors="replace")).get("Action")
            if action:
                line = line.split(":", 1)[0] + ":" + action[0]
        with _LOCK, open(log, "a") as out:
            out.write(environ.get("REMOTE_ADDR", "?") + " " + line + "\n")
        return app(environ, start_response)

    run_simple(host, port, logged, threaded=True)


if __name__ == "__main__":
    main()
