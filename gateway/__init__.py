"""serveform.gateway."""
