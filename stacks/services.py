"""A stack's service files, compiled together: the one place stack settings become a CompileContext."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from serveform.translator import CompileContext, CompileResult, TranslatorError, compile_file

from .settings import CONFIG_NAMESPACE, StackSettings

__all__ = ["compile_services"]


def compile_services(settings: StackSettings, environ: Mapping[str, str]) -> tuple[list[CompileResult], list[str]]:
    """Compile every service file of the stack; returns the results and every problem report at once.

    `environ` is the deploying environment, where bare env names (`env: [HF_TOKEN]`) find their
    values when the stack's `serveform:secrets` has none.
    """
    context = CompileContext(
        backend=settings.backend,
        domain=settings.domain,
        regions=settings.regions,
        environ=dict(environ),
        stack_secrets={k: v.get_secret_value() for k, v in settings.secrets.items()},
        offers_catalog=Path(settings.offers_catalog) if settings.offers_catalog else None,
    )
    results: list[CompileResult] = []
    reports: list[str] = []
    for path in settings.service_paths:
        try:
            results.append(compile_file(path, context=context))
        except TranslatorError as exc:
            reports.append(str(exc))
    names = [r.plan.name for r in results]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        reports.append(f"{CONFIG_NAMESPACE}:services: two service files share the name(s) {', '.join(duplicates)}")
    return results, reports
