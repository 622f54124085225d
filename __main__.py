"""The Pulumi program of this project (Pulumi.yaml `main:`); see serveform.components.program."""

from serveform.components.program import run

run()
