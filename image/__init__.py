"""serveform's runtime image: one OCI image for the gateway, the scaler and CPU example services.

`serveform image build` (`make image`) assembles it from a Debian bookworm root
(debootstrap from the mirror apt uses), a virtualenv with serveform and its pinned
dependencies (`runtime-requirements.txt`), and the project's own Caddy, Pulumi CLI and Pulumi
Kubernetes provider builds from ~/.cache/serveform. Nothing is downloaded outside the package
registries. The result is an OCI archive in `~/.cache/serveform/images/` with a manifest of its
contents beside it; `serveform image push REGISTRY` copies it to a registry (skopeo).

The image runs as the non-root user 10001 and needs nothing writable but `/tmp` (HOME and
PULUMI_HOME live there), so pods can run it with a read-only root filesystem and an emptyDir on
/tmp.
"""

from .build import IMAGE_NAME, ImageBuildError, build, image_ref, image_tag

__all__ = ["IMAGE_NAME", "ImageBuildError", "build", "image_ref", "image_tag"]
