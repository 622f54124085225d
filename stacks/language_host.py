"""A Python language host for plain `pulumi preview|up|destroy` in the project directory.

The official `pulumi-language-python` is a Go binary that the module proxy does not serve, so
tools/setup.sh installs `.venv/bin/pulumi-language-python` as a shim that runs this module,
unless an official host is already on PATH (then that one is used).

It is built on the language-runtime service and server that the `pulumi` Python package ships
(`pulumi.automation._server.LanguageServer`, the same server the Automation API uses for inline
programs): the only difference is that `Run` executes the project's program file (`__main__.py`
by default, or `main:` from Pulumi.yaml) instead of an in-process function.

Protocol, as the CLI expects of any language host: print the gRPC port on stdout, serve until
the CLI interrupts us, then exit quietly. The CLI passes the engine's address as the last
argument; flags before it (``-root``, ``-tracing``, ...) are accepted and ignored.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from concurrent import futures
from pathlib import Path

import grpc
from pulumi.automation._server import LanguageServer
from pulumi.runtime.proto import language_pb2
from pulumi.runtime.proto.language_pb2_grpc import add_LanguageRuntimeServicer_to_server

__all__ = ["main"]

# The engine sends whole resource graphs over this channel; gRPC's 4 MiB default is too small.
_MAX_MESSAGE_BYTES = 400 * 1024 * 1024


class _ProgramHost(LanguageServer):
    """Runs the project's program file for each `Run` request."""

    def __init__(self, engine_address: str) -> None:
        super().__init__(program=self._run_program)
        self._engine_address = engine_address
        self._program_path: Path | None = None

    def Run(self, request, context):  # noqa: N802 (gRPC method name)
        info = request.info
        directory = Path(info.program_directory or request.pwd or os.getcwd())
        entry = info.entry_point or "."
        program = (directory / entry).resolve()
        self._program_path = program / "__main__.py" if program.is_dir() else program
        if request.pwd:
            os.chdir(request.pwd)
        os.environ.setdefault("SERVEFORM_PROJECT_DIR", str(Path(info.root_directory or directory).resolve()))
        # The shared server reads the engine's address from the program arguments, where the
        # Automation API puts it; a language host receives it on its own command line instead.
        forwarded = language_pb2.RunRequest()
        forwarded.CopyFrom(request)
        del forwarded.args[:]
        forwarded.args.append(self._engine_address)
        return super().Run(forwarded, context)

    def _run_program(self) -> None:
        assert self._program_path is not None
        program_dir = str(self._program_path.parent)
        if program_dir not in sys.path:
            sys.path.insert(0, program_dir)
        runpy.run_path(str(self._program_path), run_name="__main__")


def main(argv: list[str] | None = None) -> int:
    args = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    engine_address = args[-1] if args else ""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ],
    )
    add_LanguageRuntimeServicer_to_server(_ProgramHost(engine_address), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    # The CLI ends the host with an interrupt once it is done with it.
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
