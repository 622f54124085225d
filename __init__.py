"""serveform: dstack-style service files, deployed with Pulumi.

The repository root is this package; each folder is one concern:

- ``serveform.translator``: ``.dstack.yml`` → validated model → deployment plan (no Pulumi, Caddy or scaler).
- ``serveform.components``: Pulumi ComponentResources, one module per backend, wiring a plan into resources.
- ``serveform.gateway``: Caddy templates and the OpenAI-compatible router.
- ``serveform.scaler``: the daemon that turns Caddy's request rates into replica counts.
- ``serveform.stacks``: per-environment stack config and the engine that applies it.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
