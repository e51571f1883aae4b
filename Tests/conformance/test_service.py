"""The systemd unit: `systemd-analyze verify` accepts it, and it runs what the README says."""

import re
import shutil
import subprocess

import loader_support as support

UNIT = support.REPO_ROOT / "systemd" / "nb-serve.service"


def test_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (scripts/setup.sh installs systemd)"
    binary = support.require_binary()
    # verify checks that ExecStart's program exists: point it at the build.
    unit = tmp_path / "nb-serve.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/nb-serve", str(binary)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "nb-serve.service" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


# README "Running as a service" documents this score; a change to the unit must not make it worse.
DOCUMENTED_EXPOSURE = 1.2


def test_unit_security_exposure_is_not_worse_than_documented(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (scripts/setup.sh installs systemd)"
    binary = support.require_binary()
    unit = tmp_path / "nb-serve.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/nb-serve", str(binary)))
    result = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(unit)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for nb-serve\.service: (\d+\.\d+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= DOCUMENTED_EXPOSURE, result.stdout
    readme = (support.REPO_ROOT / "README.md").read_text()
    assert f"scores **{DOCUMENTED_EXPOSURE}**" in readme, "README states another score"


def test_unit_is_notify_with_sandboxing():
    text = UNIT.read_text()
    for line in ("Type=notify", "ExecStart=/usr/local/bin/nb-serve run --config /etc/nb-serve/nb-serve.yaml",
                 "RuntimeDirectory=nb-serve", "StateDirectory=nb-serve", "ProtectSystem=strict",
                 "NoNewPrivileges=yes", "PrivateTmp=yes", "Restart=on-failure"):
        assert line in text.splitlines(), line


def test_example_config_matches_the_unit():
    binary = support.require_binary()
    config = support.REPO_ROOT / "config" / "sampleset_v1.yaml"
    # The config parses (plan only needs the split, not the files).
    result = support.run(binary, "plan", "--config", str(config), "--epoch", "0")
    assert result.returncode == 0, result.describe()
    assert len(result.stdout.splitlines()) == (1024 - 51) // 8 * 64
