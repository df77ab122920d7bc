"""Boot diagnosis on boot logs as Ubuntu 24.04 on EC2 prints them: the lines quoted are the ones that say why."""

from __future__ import annotations

import base64
import re

from edx_remote_cache.domain.boot import (
    BootLedger,
    decode_console_output,
    diagnose,
    meaningful_lines,
    render_boot_log_script,
    split_boot_log,
)

# GetConsoleOutput of a cache host whose memcached found its port taken (serial console: kernel stamps, the
# cloud-init lines systemd forwards, ANSI colour in the [FAILED] line)
CONSOLE_PORT_TAKEN = """\
[    0.000000] Linux version 6.8.0-1012-aws (buildd@lcy02-amd64-036) (x86_64-linux-gnu-gcc-13 (Ubuntu 13.2.0)
[    0.000000] Command line: BOOT_IMAGE=/vmlinuz-6.8.0-1012-aws root=PARTUUID=1c3e console=tty1 console=ttyS0
[    5.912345] cloud-init[512]: Cloud-init v. 24.1.3-0ubuntu3.3 running 'init' at Mon, 01 Jul 2024 10:00:01 +0000.
[    6.100000] cloud-init[512]: ci-info: +++++++++++++++++++++++Net device info++++++++++++++++++++++++
[    6.100001] cloud-init[512]: ci-info: | ens5 | True | 10.0.1.5 | 255.255.255.0 | global | 0a:1b:2c:3d:4e:5f |
[   14.200000] cloud-init[987]: Hit:1 http://us-east-1.ec2.archive.ubuntu.com/ubuntu noble InRelease
[   18.300000] cloud-init[987]: Setting up memcached (1.6.24-1build3) ...
[   18.400000] cloud-init[987]: Created symlink /etc/systemd/system/multi-user.target.wants/memcached.service.
[   19.000000] cloud-init[987]: Job for memcached.service failed because the control process exited with error code.
[\x1b[0;1;31mFAILED\x1b[0m] Failed to start \x1b[0;1;39mmemcached.service\x1b[0m - memcached daemon.
[   19.100000] cloud-init[987]: 2024-07-01 10:00:19,101 - cc_scripts_user.py[WARNING]: Failed to run module scripts_user (scripts in /var/lib/cloud/instance/scripts)
[   19.200000] cloud-init[987]: Cloud-init v. 24.1.3-0ubuntu3.3 finished at Mon, 01 Jul 2024 10:00:19 +0000. Up 19.20 seconds
"""

JOURNAL_PORT_TAKEN = """\
Jul 01 10:00:18 ip-10-0-1-5 systemd[1]: Started memcached.service - memcached daemon.
Jul 01 10:00:18 ip-10-0-1-5 systemd-memcached-wrapper[1203]: failed to listen on one of interface(s) 10.0.1.5: Address already in use
Jul 01 10:00:18 ip-10-0-1-5 systemd[1]: memcached.service: Main process exited, code=exited, status=71/OSERR
Jul 01 10:00:18 ip-10-0-1-5 systemd[1]: memcached.service: Failed with result 'exit-code'.
"""

# a private subnet with no NAT gateway: apt never reaches the mirror, memcached is never installed
CLOUD_INIT_NO_MIRROR = """\
Cloud-init v. 24.1.3-0ubuntu3.3 running 'modules:final' at Mon, 01 Jul 2024 10:00:05 +0000. Up 9.80 seconds.
Ign:1 http://us-east-1.ec2.archive.ubuntu.com/ubuntu noble InRelease
Err:1 http://us-east-1.ec2.archive.ubuntu.com/ubuntu noble InRelease
  Could not connect to us-east-1.ec2.archive.ubuntu.com:80 (52.0.0.10), connection timed out
Err:2 http://security.ubuntu.com/ubuntu noble-security InRelease
  Temporary failure resolving 'security.ubuntu.com'
Reading package lists...
W: Failed to fetch http://security.ubuntu.com/ubuntu/dists/noble-security/InRelease  Temporary failure resolving 'security.ubuntu.com'
W: Some index files failed to download. They have been ignored, or old ones used instead.
Reading package lists...
Building dependency tree...
E: Unable to locate package memcached
E: Unable to locate package libmemcached-tools
2024-07-01 10:02:11,410 - cc_scripts_user.py[WARNING]: Failed to run module scripts_user (scripts in /var/lib/cloud/instance/scripts)
Cloud-init v. 24.1.3-0ubuntu3.3 finished at Mon, 01 Jul 2024 10:02:11 +0000. Datasource DataSourceEc2Local.  Up 131.4 seconds
"""


def test_memcached_own_error_is_quoted_first_from_its_journal() -> None:
    found = diagnose("i-0abc", console=CONSOLE_PORT_TAKEN, journal=JOURNAL_PORT_TAKEN, cloud_init="")
    assert found.cause == "memcached"
    assert found.lines[0] == "failed to listen on one of interface(s) 10.0.1.5: Address already in use"
    message = found.message("10.0.1.5:11211", 95)
    assert "memcached refused to start" in message
    assert "Address already in use" in message
    assert "95 s" in message
    assert found.conclusive, "memcached itself refused: no grace period to wait out"


def test_the_console_alone_names_the_failed_unit_without_kernel_noise() -> None:
    found = diagnose("i-0abc", console=CONSOLE_PORT_TAKEN, journal=None, ssm_unavailable="SSM agent offline")
    assert found.cause == "memcached-unit"
    assert "[FAILED] Failed to start memcached.service - memcached daemon." in found.lines
    assert not any("Linux version" in line or "ci-info" in line or "Hit:1" in line for line in found.lines)
    assert not any(re.match(r"\[\s*\d", line) or "\x1b" in line for line in found.lines), "stamps, colour"
    assert "journal and cloud-init log: SSM agent offline" in found.message("10.0.1.5:11211", 60)


def test_no_route_to_a_package_mirror_is_named_with_apts_own_words() -> None:
    found = diagnose("i-0abc", console="", journal="-- No entries --", cloud_init=CLOUD_INIT_NO_MIRROR)
    assert found.cause == "package-mirror"
    assert "E: Unable to locate package libmemcached-tools" in found.lines
    message = found.message("10.0.1.5:11211", 300)
    assert "could not reach a package mirror" in message and "NAT gateway" in message
    assert "console output: not available yet" in message
    assert found.conclusive, "cloud-init finished with the failure"
    still_booting = CLOUD_INIT_NO_MIRROR.split("Reading package lists...")[0]
    early = diagnose("i-0abc", console=still_booting)
    assert early.cause == "package-mirror" and not early.conclusive, "another mirror may still answer"


def test_console_output_is_base64_and_may_be_missing() -> None:
    encoded = base64.b64encode(CONSOLE_PORT_TAKEN.encode()).decode()
    assert decode_console_output(encoded) == CONSOLE_PORT_TAKEN
    assert decode_console_output(None) == ""
    assert decode_console_output("") == ""
    empty = diagnose("i-0abc", console=decode_console_output(None))
    assert empty.lines == () and empty.cause == ""
    assert "say nothing about memcached" in empty.message("10.0.1.5:11211", 600)


def test_a_healthy_boot_yields_nothing_to_quote() -> None:
    healthy = CONSOLE_PORT_TAKEN.split("[   19.000000]")[0]
    assert meaningful_lines(healthy) == []


def test_the_diagnosis_script_is_bounded_and_read_only_and_its_output_splits() -> None:
    script = render_boot_log_script()
    assert "journalctl -u memcached -n 50 --no-pager" in script
    assert "tail -n 50 /var/log/cloud-init-output.log" in script
    assert script.count("tail -c") == 2
    assert not any(word in script for word in ("rm ", "systemctl", "> ", "/edx/"))
    journal, cloud_init = split_boot_log(
        f"ERC-JOURNAL\n{JOURNAL_PORT_TAKEN}ERC-CLOUD-INIT\n{CLOUD_INIT_NO_MIRROR}ERC-END\n"
    )
    assert journal is not None and "Address already in use" in journal
    assert cloud_init is not None and "Unable to locate package" in cloud_init
    assert split_boot_log("ERC-JOURNAL\nx\n") == ("x", None), "cut short: the missing part is None"


def test_one_replacement_per_spec_generation() -> None:
    ledger = BootLedger.of({})
    assert ledger.may_replace(3)
    ledger = ledger.after_replacing("i-01", 3)
    assert not ledger.may_replace(3), "a new instance from the same spec fails the same way"
    assert ledger.may_replace(4), "a new generation (the spec was fixed) gets a fresh attempt"
    assert BootLedger.of({"boot": ledger.to_status()}) == ledger, "kept across an operator restart"
    assert ledger.after_replacing("i-02", 4) == BootLedger(4, ("i-02",))
    assert BootLedger().to_status() is None
