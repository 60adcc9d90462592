"""What the probes in tools/ share: each variant runs `python SCRIPT child ARGUMENT VARIANT` in a
fresh process (so every one pays the driver's first-use costs), with the environment variables
the variant names, and its JSON line, or its error's tail, is printed as it comes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping


def print_variants(script: str, argument: str, variants: list[str], environments: Mapping[str, Mapping[str, str]] = {}) -> None:  # noqa: B006 - read only
    """`environments`: extra environment variables of a variant's process, by variant."""
    for variant in variants:
        environment = {**os.environ, **environments.get(variant, {})}
        done = subprocess.run([sys.executable, script, "child", argument, variant], capture_output=True, text=True, env=environment)
        if done.returncode:
            print(json.dumps({"variant": variant, "error": done.stderr[-3000:]}), flush=True)
        else:
            print(done.stdout.strip().splitlines()[-1], flush=True)
