"""serveform.scaler."""
