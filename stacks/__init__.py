"""serveform.stacks."""
