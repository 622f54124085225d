"""serveform.components."""
