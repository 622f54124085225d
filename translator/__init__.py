"""serveform.translator: `.dstack.yml` service files → validated spec → deployment plan.

    from serveform.translator import compile_file, CompileContext
    result = compile_file("serve.dstack.yml", CompileContext(backend="aws", domain="example.com"))
    result.plan       # ServicePlan, what the components deploy
    result.spec       # ServiceSpec, the normalised configuration (dstack's shape)
    result.warnings   # fields the backend cannot honour, ...

Bad input raises :class:`TranslatorError`, whose ``.diagnostics`` lists every problem with
file, line, column and field. The translator imports nothing of Pulumi, the gateway, the
scaler or the components.
"""

from .compiler import CompileContext, CompileResult, compile_file, compile_text
from .diagnostics import Diagnostic, TranslatorError
from .plan import ServicePlan
from .spec import ServiceSpec

__all__ = [
    "CompileContext",
    "CompileResult",
    "Diagnostic",
    "ServicePlan",
    "ServiceSpec",
    "TranslatorError",
    "compile_file",
    "compile_text",
]
