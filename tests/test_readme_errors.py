"""Every error code the service can answer with is listed in the README's Errors section."""

from __future__ import annotations

import inspect
import re

from service.gallery import errors as gallery_errors
from service.vision import errors as vision_errors
from tests.conftest import REPO


def test_every_error_code_is_in_the_readme():
    text = (REPO / "README.md").read_text()
    section = text.split("## Errors", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`([a-z_]+)`", section))
    codes = {"no_image_enrolled"}
    for module in (vision_errors, gallery_errors):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            code = cls.__dict__.get("code")
            if isinstance(code, str) and code not in ("error", "gallery_error"):
                codes.add(code)
    assert codes - listed == set()
