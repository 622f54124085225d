"""Programs a VM runs at boot before serveform is installed (standard library only).

`aws_fetch.py` is written verbatim into the AWS gateway's user data as
/opt/serveform/bin/serveform-fetch; it is a module here so that tests can import it.
"""

__all__: list[str] = []
