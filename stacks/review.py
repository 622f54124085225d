"""`serveform plan --base GIT_REF`: what a change would add, change and remove, offline.

For reviewers of a pull request that has no access to the stack (a fork, a laptop without
cloud credentials): the program runs under Pulumi's mock runtime, once for the base revision
and once for the working tree, and the two resource graphs are compared by URN.

- The base revision is exported with ``git archive`` into a temporary directory; each tree runs
  *its own* serveform code (a child process whose ``serveform`` package is that tree), so code
  changes show up as resource changes, not only config changes.
- Nothing is decrypted and nothing is called: secure stack config values become placeholders,
  env values that would come from the deploying environment become placeholders, cloud
  functions (AMI or subnet look-ups) answer fixed stand-ins, and values that only the cloud
  knows (IDs, addresses) are shown as ``<computed>`` — as in a real preview.
- Secret inputs are shown as ``[secret]``; the report never holds a secret value.

Exit status: 0 (whatever the diff), 1 when a tree cannot be rendered, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Change", "GraphDiff", "add_parsers", "diff_graphs", "format_diff", "render_graph"]

SECRET_MARK = "[secret]"
COMPUTED_MARK = "<computed>"
# A valid bearer token / env value that stands in for every secret the reviewer cannot decrypt.
OFFLINE_PLACEHOLDER = "serveform-offline-placeholder-0000000000"
WORKER_TIMEOUT_SECONDS = 600
# Cloud functions the program calls, answered offline with fixed stand-ins.
OFFLINE_INVOKES: dict[str, dict[str, Any]] = {
    "aws:ec2/getAmi:getAmi": {"id": "ami-offline", "name": "offline"},
    "aws:ec2/getVpc:getVpc": {"id": "vpc-offline", "cidrBlock": "10.0.0.0/16"},
    "aws:ec2/getSubnets:getSubnets": {"id": "offline", "ids": ["subnet-offline"]},
    "aws:ec2/getSubnet:getSubnet": {"id": "subnet-offline", "availabilityZone": "offline-zone"},
    "azure-native:authorization:getClientConfig": {
        "subscriptionId": "00000000-0000-0000-0000-000000000000",
        "tenantId": "00000000-0000-0000-0000-000000000000",
        "clientId": "00000000-0000-0000-0000-000000000000",
        "objectId": "00000000-0000-0000-0000-000000000000",
    },
}
# Outputs that only the cloud knows and that programs commonly read, answered with stand-ins.
_STAND_IN_OUTPUTS = (
    "arn", "selfLink", "selfLinkUnique", "email", "member", "publicIp", "address", "ipAddress",
    "clientId", "principalId", "fqdn", "availabilityZone", "bucket",
)
# Inputs that only say how a provider is implemented (dynamic providers pickle their code), and
# uploaded files (`source` assets: the object's key carries the file's sha256, so it shows a change).
_IGNORED_INPUTS = frozenset({"__provider", "source"})


@dataclass(frozen=True)
class Change:
    """One resource that differs between the graphs."""

    op: str
    """`+` added, `-` removed, `~` changed."""
    urn: str
    type: str
    name: str
    fields: tuple[str, ...] = ()
    """For `~`: the dotted input paths that differ."""


@dataclass(frozen=True)
class GraphDiff:
    stack: str
    changes: tuple[Change, ...] = ()
    unchanged: int = 0

    def count(self, op: str) -> int:
        return sum(1 for c in self.changes if c.op == op)


# --- the worker: runs inside a tree, with that tree's `serveform` on sys.path ------------------


def _scrub(value: Any) -> Any:
    """Stack config value with every `secure:` value replaced by the placeholder."""
    if isinstance(value, Mapping):
        if set(value) == {"secure"}:
            return OFFLINE_PLACEHOLDER
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _worker(tree: Path, stack: str) -> dict[str, Any]:
    """The resource graph of one tree's program for one stack (runs in a child process)."""
    import pulumi
    import yaml
    from pulumi.runtime import mocks, rpc
    from pulumi.runtime.settings import SETTINGS
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await
    from pydantic import SecretStr

    from serveform.components import program  # the tree's own code
    from serveform.stacks.settings import StackSettings
    from serveform.translator import CompileContext, TranslatorError, compile_file

    project = yaml.safe_load((tree / "Pulumi.yaml").read_text())
    config_dir = tree / project.get("stackConfigDir", ".")
    stack_file = config_dir / f"Pulumi.{stack}.yaml"
    document = yaml.safe_load(stack_file.read_text()) or {}
    config = _scrub(document.get("config") or {})
    settings = StackSettings.from_config(config, stack=stack, project_dir=tree)

    try:
        context = CompileContext(
            backend=settings.backend, domain=settings.domain, regions=settings.regions, environ={},
            stack_secrets={k: v.get_secret_value() for k, v in settings.secrets.items()}, require_env=False,
        )
    except TypeError:  # an older translator without require_env
        context = CompileContext(backend=settings.backend, domain=settings.domain, regions=settings.regions)
    plans = []
    for path in settings.service_paths:
        try:
            plan = compile_file(path, context=context).plan
        except TranslatorError as exc:
            raise SystemExit(f"{stack}: {exc}") from None
        env = {
            k: (v.model_copy(update={"value": SecretStr(OFFLINE_PLACEHOLDER)}) if v.value is None else v)
            for k, v in plan.replica_group.env.items()
        }
        plans.append(plan.model_copy(update={"replica_group": plan.replica_group.model_copy(update={"env": env})}))

    resources: list[dict[str, Any]] = []

    from pulumi.output import Unknown

    tree_text = str(tree)

    def readable(value: Any) -> Any:
        if rpc.is_rpc_secret(value):
            return SECRET_MARK
        if isinstance(value, Unknown) or value == rpc.UNKNOWN:
            return COMPUTED_MARK
        if isinstance(value, str) and tree_text in value:
            # Paths inside the project read the same in both trees.
            return value.replace(tree_text, "<project>")
        if isinstance(value, dict):
            return {k: readable(v) for k, v in value.items() if k not in _IGNORED_INPUTS}
        if isinstance(value, list):
            return [readable(v) for v in value]
        return value

    class _Mocks(mocks.Mocks):
        def new_resource(self, args: mocks.MockResourceArgs) -> tuple[str, dict]:
            # Stand-ins named after the resource for the attributes programs commonly read, so
            # the values derived from them (policies, boot documents) render and compare.
            state: dict[str, Any] = {key: f"offline:{args.name}:{key}" for key in _STAND_IN_OUTPUTS}
            state["name"] = args.inputs.get("name") or args.name
            return f"offline:{args.name}:id", state

        def call(self, args: mocks.MockCallArgs) -> tuple[dict, list]:
            return dict(OFFLINE_INVOKES.get(args.token, {})), []

    class _Monitor(mocks.MockMonitor):
        def RegisterResource(self, request):  # noqa: N802 (gRPC method name)
            response = super().RegisterResource(request)
            if request.type != "pulumi:pulumi:Stack":
                inputs = rpc.deserialize_properties(request.object, keep_unknowns=True)
                resources.append(
                    {"urn": response.urn, "type": request.type, "name": request.name, "parent": request.parent,
                     "inputs": readable(inputs)}
                )
            return response

    SETTINGS.rpc_manager.clear()
    SETTINGS.outputs.clear()
    pulumi.runtime.set_mocks(
        _Mocks(), project=project.get("name", "serveform"), stack=stack, preview=True, monitor=_Monitor(_Mocks())
    )
    _sync_await(run_pulumi_func(lambda: program.build(settings, plans)))
    return {"stack": stack, "resources": sorted(resources, key=lambda r: r["urn"])}


def _worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", required=True)
    parser.add_argument("--stack", required=True)
    args = parser.parse_args(argv)
    tree = Path(args.tree).resolve()
    os.chdir(tree)
    graph = _worker(tree, args.stack)
    sys.stdout.write(json.dumps(graph, sort_keys=True, default=str))
    return 0


# --- the driver --------------------------------------------------------------------------------


def render_graph(tree: Path, stack: str) -> dict[str, Any]:
    """Run ``tree``'s own program for ``stack`` under the mock runtime in a child process."""
    with tempfile.TemporaryDirectory(prefix="serveform-plan-") as link_dir:
        # The child imports `serveform` from the tree: a folder named `serveform` that is the tree.
        os.symlink(tree.resolve(), Path(link_dir) / "serveform")
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
        env["PYTHONPATH"] = link_dir
        env["PULUMI_SKIP_UPDATE_CHECK"] = "1"
        result = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--tree", str(tree), "--stack", stack],
            capture_output=True, text=True, env=env, timeout=WORKER_TIMEOUT_SECONDS, cwd=tree,
        )
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(f"cannot render stack {stack!r} of {tree}: " + "\n".join(lines[-15:]))
    return json.loads(result.stdout)


def _differences(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            sub = f"{path}.{key}" if path else key
            if key not in old or key not in new:
                out.append(sub)
            else:
                out += _differences(old[key], new[key], sub)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [p for i, (a, b) in enumerate(zip(old, new)) for p in _differences(a, b, f"{path}[{i}]")]
    return [] if old == new else [path or "."]


def diff_graphs(stack: str, base: Mapping[str, Any], head: Mapping[str, Any]) -> GraphDiff:
    """Compare two rendered graphs by URN."""
    old = {r["urn"]: r for r in base["resources"]}
    new = {r["urn"]: r for r in head["resources"]}
    changes: list[Change] = []
    unchanged = 0
    for urn in sorted(set(old) | set(new)):
        if urn not in old:
            changes.append(Change("+", urn, new[urn]["type"], new[urn]["name"]))
        elif urn not in new:
            changes.append(Change("-", urn, old[urn]["type"], old[urn]["name"]))
        else:
            fields = _differences(old[urn]["inputs"], new[urn]["inputs"])
            if fields:
                changes.append(Change("~", urn, new[urn]["type"], new[urn]["name"], tuple(fields)))
            else:
                unchanged += 1
    return GraphDiff(stack=stack, changes=tuple(changes), unchanged=unchanged)


def format_diff(diff: GraphDiff) -> str:
    lines = [
        f"stack {diff.stack}: {diff.count('+')} to add, {diff.count('~')} to change, {diff.count('-')} to remove, "
        f"{diff.unchanged} unchanged"
    ]
    order = {"+": 0, "~": 1, "-": 2}
    for change in sorted(diff.changes, key=lambda c: (order[c.op], c.urn)):
        line = f"  {change.op} {change.type}  {change.name}"
        if change.fields:
            shown = ", ".join(change.fields[:6]) + (f", … ({len(change.fields)} fields)" if len(change.fields) > 6 else "")
            line += f"  ({shown})"
        lines.append(line)
    return "\n".join(lines)


def _git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _export(repo: Path, ref: str, into: Path) -> None:
    archive = into.parent / "base.tar"
    with open(archive, "wb") as out:
        result = subprocess.run(["git", "archive", "--format=tar", ref], cwd=repo, stdout=out, stderr=subprocess.PIPE)
    if result.returncode != 0:
        raise RuntimeError(f"git archive {ref}: {result.stderr.decode(errors='replace').strip()}")
    into.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")


def _stacks(tree: Path) -> list[str]:
    import yaml

    project = yaml.safe_load((tree / "Pulumi.yaml").read_text())
    folder = tree / project.get("stackConfigDir", ".")
    return sorted(p.name[len("Pulumi."):-len(".yaml")] for p in folder.glob("Pulumi.*.yaml"))


def plan(project_dir: Path, base: str, stacks: Sequence[str] = ()) -> list[GraphDiff]:
    """The diff of every (or each named) stack between ``base`` and the working tree."""
    repo = Path(_git(project_dir, "rev-parse", "--show-toplevel").strip())
    _git(repo, "rev-parse", "--verify", f"{base}^{{commit}}")
    relative = project_dir.resolve().relative_to(repo.resolve())
    with tempfile.TemporaryDirectory(prefix="serveform-base-") as tmp:
        base_root = Path(tmp) / "tree"
        _export(repo, base, base_root)
        base_dir = base_root / relative
        names = list(stacks) or sorted(set(_stacks(project_dir)) | (set(_stacks(base_dir)) if (base_dir / "Pulumi.yaml").exists() else set()))
        diffs = []
        for stack in names:
            empty = {"resources": []}
            head_has = (project_dir / "stacks" / f"Pulumi.{stack}.yaml").exists() or stack in _stacks(project_dir)
            base_has = (base_dir / "Pulumi.yaml").exists() and stack in _stacks(base_dir)
            head_graph = render_graph(project_dir, stack) if head_has else empty
            base_graph = render_graph(base_dir, stack) if base_has else empty
            diffs.append(diff_graphs(stack, base_graph, head_graph))
    return diffs


def _run(args: argparse.Namespace) -> int:
    project_dir = Path(args.project_dir).resolve()
    try:
        diffs = plan(project_dir, args.base, args.stack or ())
    except RuntimeError as exc:
        print(f"serveform plan: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([{"stack": d.stack, "unchanged": d.unchanged, "changes": [c.__dict__ for c in d.changes]} for d in diffs], indent=2))
    else:
        print("\n\n".join(format_diff(d) for d in diffs))
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register `serveform plan`."""
    parser = subparsers.add_parser(
        "plan",
        help="offline: resources a change would add, change and remove (no credentials)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--base", required=True, metavar="GIT_REF", help="the revision to compare the working tree with")
    parser.add_argument("--stack", action="append", metavar="NAME", help="a stack to compare (repeatable; default: every stack)")
    parser.add_argument("--project-dir", default=".", help="the directory holding Pulumi.yaml (default: .)")
    parser.add_argument("--json", action="store_true", help="print the diff as JSON")
    parser.set_defaults(func=_run)


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
