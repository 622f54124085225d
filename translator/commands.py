"""`serveform compile`, `serveform validate`, `serveform schema`: thin wrappers over the library.

Exit status: 0 when every file compiles, 2 when any has an error (all files are still checked,
every problem printed). Diagnostics go to stderr as `file:line:col: severity: field: message`;
secret values are never printed (they appear as `**********`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parsers", "load_stack_context"]

EXIT_BAD_INPUT = 2


def add_parsers(subparsers: Any) -> None:
    compile_parser = subparsers.add_parser(
        "compile",
        help="compile service files and print the normalised service and deployment plan",
        description="Compile .dstack.yml service files: print each normalised service and its deployment plan.",
    )
    _common(compile_parser)
    compile_parser.add_argument("--json", action="store_true", help='print a JSON array of {"file", "name", "spec", "plan", "warnings"}')
    compile_parser.set_defaults(func=_compile)

    validate_parser = subparsers.add_parser(
        "validate", help="check service files", description="Check .dstack.yml service files; print every problem."
    )
    _common(validate_parser)
    validate_parser.set_defaults(func=_validate)

    schema_parser = subparsers.add_parser(
        "schema",
        help="print the JSON Schema of service files",
        description="Print the JSON Schema of `type: service` files, for editors and CI linters.",
    )
    schema_parser.add_argument("--indent", type=int, default=2, help="indentation (default 2)")
    schema_parser.set_defaults(func=_schema)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="*", metavar="FILE", help="service files, `-` for standard input (default with --stack: the stack's serveform:services)"
    )
    parser.add_argument("--stack", metavar="ENV", help="take backend, domain and regions from stacks/Pulumi.<ENV>.yaml")
    parser.add_argument("--backend", choices=("local", "aws", "gcp", "azure", "k8s"), help="the backend to compile for (default: the stack's, else local)")
    parser.add_argument("--project-dir", type=Path, default=None, help="the project root (default: the nearest folder with Pulumi.yaml)")
    parser.add_argument("--offers-catalog", type=Path, default=None, help="a gpuhunt offers CSV to match instead of the shipped snapshot")


def _project_dir(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / "Pulumi.yaml").is_file():
            return folder
    return here


def load_stack_context(project_dir: Path, stack: str) -> tuple[dict[str, Any], list[str]]:
    """The compile settings of a stack, read from `stacks/Pulumi.<stack>.yaml` as plain YAML.

    Returns (CompileContext keyword arguments, service files). Secret values (`secure:`) are
    not decrypted here: compiling for review needs no secrets, and deploying reads them from
    Pulumi.
    """
    import yaml

    path = project_dir / "stacks" / f"Pulumi.{stack}.yaml"
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise _StackError(f"{path}: cannot read the stack config: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise _StackError(f"{path}: invalid YAML: {exc}") from None
    config = document.get("config") if isinstance(document, dict) else None
    if not isinstance(config, dict):
        config = {}
    kwargs: dict[str, Any] = {}
    backend = config.get("serveform:backend")
    if backend is not None:
        if backend not in ("local", "aws", "gcp", "azure", "k8s"):
            raise _StackError(f"{path}: serveform:backend: expected one of local, aws, gcp, azure, k8s, got {backend!r}")
        kwargs["backend"] = backend
    domain = config.get("serveform:domain")
    if domain is not None:
        if not isinstance(domain, str):
            raise _StackError(f"{path}: serveform:domain: expected a domain name")
        kwargs["domain"] = domain
    regions = config.get("serveform:regions")
    if regions is not None:
        if isinstance(regions, str):
            regions = [regions]
        if not isinstance(regions, list) or not all(isinstance(r, str) for r in regions):
            raise _StackError(f"{path}: serveform:regions: expected a list of region names")
        kwargs["regions"] = tuple(regions)
    catalog = config.get("serveform:offersCatalog")
    if catalog is not None:
        if not isinstance(catalog, str):
            raise _StackError(f"{path}: serveform:offersCatalog: expected a path to a gpuhunt catalog")
        kwargs["offers_catalog"] = project_dir / catalog
    services = config.get("serveform:services") or []
    if not isinstance(services, list) or not all(isinstance(s, str) for s in services):
        raise _StackError(f"{path}: serveform:services: expected a list of service file paths")
    return kwargs, [_display_path(project_dir / s) for s in services]


def _display_path(path: Path) -> str:
    """The path relative to the working directory when it is below it (shorter diagnostics)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class _StackError(Exception):
    pass


def _run(args: argparse.Namespace) -> tuple[list[Any], bool]:
    """Compile every file; print diagnostics to stderr; return (results, any_error)."""
    from . import CompileContext, TranslatorError, compile_file, compile_text

    project = _project_dir(args.project_dir)
    kwargs: dict[str, Any] = {}
    files = list(args.files)
    if args.stack:
        try:
            kwargs, stack_files = load_stack_context(project, args.stack)
        except _StackError as exc:
            print(f"serveform: error: {exc}", file=sys.stderr)
            return [], True
        if not files:
            files = stack_files
    if args.backend:
        kwargs["backend"] = args.backend
    if args.offers_catalog:
        kwargs["offers_catalog"] = args.offers_catalog
    if not files:
        print("serveform: error: no service files given (pass FILE... or --stack ENV)", file=sys.stderr)
        return [], True
    # A preview needs no secrets: a bare env name without a value is reported as a warning.
    import os

    context = CompileContext(environ=dict(os.environ), require_env=False, **kwargs)
    results = []
    failed = False
    for file in files:
        try:
            result = compile_text(sys.stdin.read(), "<stdin>", context) if file == "-" else compile_file(file, context)
        except TranslatorError as exc:
            print(exc.report(), file=sys.stderr)
            failed = True
            continue
        for warning in result.warnings:
            print(warning.format(), file=sys.stderr)
        results.append(result)
    return results, failed


def _compile(args: argparse.Namespace) -> int:
    results, failed = _run(args)
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    else:
        import yaml

        for result in results:
            data = result.to_json()
            print(f"# {data['file']}: service `{data['name']}`")
            print(yaml.safe_dump({"spec": data["spec"], "plan": data["plan"]}, sort_keys=False, width=100), end="")
            print("---") if result is not results[-1] else None
    return EXIT_BAD_INPUT if failed else 0


def _validate(args: argparse.Namespace) -> int:
    results, failed = _run(args)
    for result in results:
        count = len(result.warnings)
        print(f"{result.plan.file}: ok: service `{result.plan.name}`" + (f" ({count} warning{'s' if count != 1 else ''})" if count else ""))
    return EXIT_BAD_INPUT if failed else 0


def _schema(args: argparse.Namespace) -> int:
    from .schema import service_json_schema

    print(json.dumps(service_json_schema(), indent=args.indent or None))
    return 0
