"""What the runtime image's tag is derived from: the checkout's code, not its per-environment stack files."""

from __future__ import annotations

import subprocess
from pathlib import Path

from serveform.image.build import image_tag, project_files


def _repo(root: Path) -> Path:
    files = {
        "Pulumi.yaml": "name: serveform\n",
        "gateway/router.py": "ROUTES = 1\n",
        "stacks/Pulumi.k8s.yaml": "config:\n  serveform:retainVolumes: false\n",
        "stacks/examples/chat.dstack.yml": "type: service\n",
        "tests/test_x.py": "def test_x(): pass\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "."], check=True)
    return root


def test_stack_files_and_tests_are_not_image_inputs(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    assert project_files(root) == ["Pulumi.yaml", "gateway/router.py", "stacks/examples/chat.dstack.yml"]


def test_a_first_up_rewriting_the_stack_file_keeps_the_tag_and_a_code_change_moves_it(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    before = image_tag(root)
    # What Pulumi does to a stack file at the first `up` with a passphrase: quotes values, adds the salt.
    (root / "stacks/Pulumi.k8s.yaml").write_text('config:\n  serveform:retainVolumes: "false"\nencryptionsalt: v1:abc\n')
    assert image_tag(root) == before
    (root / "gateway/router.py").write_text("ROUTES = 2\n")
    assert image_tag(root) != before
