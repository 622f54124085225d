"""serveform.stacks: per-environment stack config and the engine that applies it.

`StackSettings` is the validated `serveform:*` config of one stack. The engine
(`serveform.stacks.engine`) drives the real Pulumi CLI through the Automation API.
"""

from .settings import GatewayConfig, StackConfigError, StackSettings

__all__ = ["GatewayConfig", "StackConfigError", "StackSettings"]
