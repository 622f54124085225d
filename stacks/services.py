"""A stack's service files, compiled together: the one place stack settings become a CompileContext.

Each compiled service also gets its code archive (`serveform.bundle`): its repository and
`files`, written under `serveform:code.dir` and named in the plan's `code` by SHA-256. A cap
or listing problem is reported with the translator's problems, before anything deploys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from serveform.bundle import CodeArchiveError, archive_service
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
            result = compile_file(path, context=context)
        except TranslatorError as exc:
            reports.append(str(exc))
            continue
        try:
            code, _ = archive_service(
                result.plan, out_dir=settings.code_dir, max_bytes=settings.code.max_bytes, project_dir=Path(settings.project_dir)
            )
        except (CodeArchiveError, OSError) as exc:
            reports.append(str(exc))
            continue
        results.append(dataclasses.replace(result, plan=result.plan.model_copy(update={"code": code})))
    names = [r.plan.name for r in results]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        reports.append(f"{CONFIG_NAMESPACE}:services: two service files share the name(s) {', '.join(duplicates)}")
    return results, reports
