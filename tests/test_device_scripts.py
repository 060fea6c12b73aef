"""The device scripts (experiments/device/*.sh) parse, and every chain plan.sh documents is a function it exports:
a syntax slip or a chain left out of `export -f` would otherwise cost a GPU call to find."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEVICE = ROOT / "experiments" / "device"


def test_device_scripts_parse():
    for script in ("call.sh", "plan.sh"):
        p = subprocess.run(["bash", "-n", str(DEVICE / script)], capture_output=True, text=True)
        assert p.returncode == 0, f"{script}: {p.stderr}"


def test_plan_exports_every_documented_chain_and_refuses_an_unknown_command():
    text = (DEVICE / "plan.sh").read_text()
    header = text.split("set -u", 1)[0]
    documented = set(re.findall(r"^#   (\w+) +(?:issue|the same)", header, re.M))
    defined = set(re.findall(r"^(\w+)\(\) \{", text, re.M)) - {"stage"}
    exported = set(re.search(r"export -f ([\w ]+)", text).group(1).split()) - {"stage"}
    assert documented == defined == exported and {"e2e", "probe", "probecodec", "c3", "search"} <= exported
    p = subprocess.run(["bash", str(DEVICE / "plan.sh"), "bogus"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and p.stdout.startswith("usage: plan.sh")
