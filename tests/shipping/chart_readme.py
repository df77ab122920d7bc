"""Generates charts/edx-remote-cache/README.md from values.schema.json (descriptions) and values.yaml (defaults).

One source per fact: a value's meaning is written once, in the schema Helm validates with, and its default once,
in values.yaml. `make chart-readme` rewrites the README; test_chart checks that it is up to date.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "edx-remote-cache"

INTRO = """\
# edx-remote-cache Helm chart

<!-- Generated from values.schema.json and values.yaml by `make chart-readme`; do not edit by hand. -->

{description}

```sh
helm install edx-remote-cache charts/edx-remote-cache --namespace edx-remote-cache --create-namespace \\
  --set serviceAccount.roleArn=arn:aws:iam::111122223333:role/edx-remote-cache-operator
```

The CRDs are in `crds/` (Helm installs them once and never upgrades them; `NOTES.txt` says how to upgrade
them). Helm checks every value against `values.schema.json`: a misspelled key or a wrong type is refused before
anything is rendered. The whole install guide, with the kustomize and GitOps variants, is docs/install.md.

## Values

| Key | Type | Default | Description |
| --- | --- | --- | --- |
"""


def _rows(schema: Mapping[str, Any], values: Any, prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    for key, sub in schema.get("properties", {}).items():
        if key == "global":
            continue
        dotted = f"{prefix}{key}"
        default = values.get(key) if isinstance(values, Mapping) else None
        if "properties" in sub:
            yield from _rows(sub, default or {}, f"{dotted}.")
            continue
        kind = sub.get("type", "any")
        kind = " or ".join(kind) if isinstance(kind, list) else kind
        yield dotted, kind, json.dumps(default), sub.get("description", "")


def generate_readme() -> str:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    lines = [INTRO.format(description=chart["description"] + ".")]
    for key, kind, default, description in _rows(schema, values):
        cell = description.replace("|", "\\|")
        lines.append(f"| `{key}` | {kind} | `{default}` | {cell} |\n")
    return "".join(lines)


if __name__ == "__main__":
    target = CHART / "README.md"
    target.write_text(generate_readme(), encoding="utf-8")
    sys.stdout.write(f"wrote {target}\n")
