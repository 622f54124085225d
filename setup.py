"""Maps the repository root to the `serveform` package.

Each top-level folder installs as `serveform.<folder>` (with all its subpackages),
so the project's import names are the folder tree and nothing generic such as
`translator` lands in site-packages. Listing subpackages here, instead of by hand
in pyproject.toml, keeps a new `components/<backend>/` from being left out.
"""

from setuptools import find_packages, setup

_FOLDERS = ["translator", "bundle", "components", "gateway", "scaler", "stacks", "image", "aws"]

setup(
    package_dir={"serveform": "."},
    packages=["serveform"]
    + [f"serveform.{p}" for p in find_packages(include=[f for name in _FOLDERS for f in (name, f"{name}.*")])],
)
