"""Run by dstack's own interpreter (bench/translator.py's environment): parse each file the way
`dstack apply` does and print {file: normalised dump | {"error": ...}} as JSON."""

import json
import sys

import yaml
from dstack._internal.core.models.configurations import parse_apply_configuration

result = {}
for path in sys.argv[1:]:
    try:
        with open(path) as f:
            result[path] = parse_apply_configuration(yaml.safe_load(f)).model_dump(mode="json")
    except Exception as exc:  # every rejection counts the same here
        result[path] = {"error": f"{type(exc).__name__}: {exc}"}
print(json.dumps(result))
