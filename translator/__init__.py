"""serveform.translator."""
