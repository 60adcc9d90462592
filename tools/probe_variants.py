"""What the probes in tools/ share: each variant runs `python SCRIPT child ARGUMENT VARIANT` in a
fresh process (so every one pays the driver's first-use costs), and its JSON line, or its
error's tail, is printed as it comes."""

from __future__ import annotations

import json
import subprocess
import sys


def print_variants(script: str, argument: str, variants: list[str]) -> None:
    for variant in variants:
        done = subprocess.run([sys.executable, script, "child", argument, variant], capture_output=True, text=True)
        if done.returncode:
            print(json.dumps({"variant": variant, "error": done.stderr[-3000:]}), flush=True)
        else:
            print(done.stdout.strip().splitlines()[-1], flush=True)
