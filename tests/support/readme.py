"""What the README shows, for the tests that run it as a user would."""

from __future__ import annotations

import re

from tests.support.stack import REPO_ROOT


def readme_example() -> str:
    """The example test of "Testing your backend against coinstream"."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Testing your backend against coinstream", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert example is not None, "the README's section has no example"
    return example.group(1)
