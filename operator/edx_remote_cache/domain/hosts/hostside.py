"""The host's half of a push: the program the read and apply scripts run there, after ``locate.py``.

Why it exists: the config files hold the site's secrets, and whatever a command prints stays in SSM's
invocation history (and in any S3/CloudWatch output delivery the account configured). So the host parses its
own files with the rewrite engine's locator and prints only each file's sha256, owner, mode and, per memcached
value node, its byte range and text; the operator sends back byte splices, and this program applies them with
compare-and-swap, re-parses the result and checks that exactly the planned nodes changed, or changes nothing.

How it travels: :func:`edx_remote_cache.domain.hosts.read.host_program` concatenates
``domain/rewrite/locate.py`` and this file VERBATIM (minus the two lines marked ``# erc: not on the host``), so
the host runs the same node-locating code as the operator. Hence the rules of locate.py apply here too: stdlib
and PyYAML only, Python >= 3.8, and nothing that prints file content. Every exception is caught and reported
by type and line number only (PyYAML's messages quote the offending line).

Modes (one base64 JSON argument each): ``read`` (metadata and nodes), ``apply`` (CAS, splice, check, backup,
rename), ``restore`` (put backups back), ``prune`` (keep the newest backups).
"""

from __future__ import annotations  # erc: not on the host

import base64
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile

from edx_remote_cache.domain.rewrite.locate import LocateError, locate  # erc: not on the host

ERC_QUOTED = re.compile(r"'[^']{3,}'|\"[^\"]{3,}\"")


def erc_b64(text):
    return base64.b64encode(str(text).encode("utf-8", "replace")).decode("ascii")


def erc_say(*words):
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")


def erc_redact(problem):
    """Quoted text in a parse error is file content (PyYAML quotes tokens, the locator scalars): drop it."""
    return ERC_QUOTED.sub("'…'", str(problem))


def erc_sha(data):
    return hashlib.sha256(data).hexdigest()


class ErcRefused(Exception):
    """A file this program will not touch; the message names why (never its content)."""


def erc_open(path, max_bytes):
    """(the file to edit, its bytes, its stat): a symlink is followed to its target, which is edited in place."""
    try:
        link = os.lstat(path)
    except FileNotFoundError:
        return None
    real = path
    if stat.S_ISLNK(link.st_mode):
        real = os.path.realpath(path)
        if not os.path.lexists(real):
            raise ErcRefused("is a symbolic link to a missing file")
    info = os.stat(real)
    if not stat.S_ISREG(info.st_mode):
        raise ErcRefused("is not a regular file")
    if info.st_size > max_bytes:
        raise ErcRefused(f"is {info.st_size} bytes, more than the {max_bytes} bytes a config file may have")
    with open(real, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ErcRefused(f"grew past {max_bytes} bytes while being read")
    return real, data, info


def erc_locate(data):
    """(targets with BYTE offsets, skipped); raises LocateError or ErcRefused (not UTF-8)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ErcRefused(f"is not UTF-8 (byte {exc.start}); refusing to rewrite it") from None
    bom = 0
    if text.startswith("\ufeff"):
        text, bom = text[1:], 3
    located = locate(text)
    nodes = []
    for t in located.targets:
        start = bom + len(text[: t.start].encode("utf-8"))
        end = start + len(t.source.encode("utf-8"))
        nodes.append(
            {
                "paths": list(t.paths),
                "key_lines": list(t.key_lines),
                "kind": t.kind,
                "shape": t.shape,
                "start": start,
                "end": end,
                "line": t.line,
                "column": t.column,
                "source": t.source,
                "entries": list(t.entries),
            }
        )
    skipped = [{"path": s.path, "line": s.line, "reason": s.reason} for s in located.skipped]
    return nodes, skipped


def erc_read(spec):
    for i, path in enumerate(spec["paths"]):
        try:
            found = erc_open(path, spec["max_bytes"])
            if found is None:
                erc_say("ERC-MISSING", i)
                continue
            real, data, info = found
            nodes, skipped = erc_locate(data)
        except ErcRefused as exc:
            erc_say("ERC-ERROR", i, erc_b64(exc))
            continue
        except LocateError as exc:
            line, column = exc.line or 0, exc.column or 0
            erc_say("ERC-PARSE", i, line, column, erc_b64(erc_redact(exc.problem)))
            continue
        except OSError as exc:
            erc_say("ERC-ERROR", i, erc_b64(f"cannot read: {exc.strerror or type(exc).__name__}"))
            continue
        owner = f"{info.st_uid}:{info.st_gid}"
        mode = f"{stat.S_IMODE(info.st_mode):o}"
        erc_say("ERC-FILE", i, erc_sha(data), owner, mode, len(data))
        if real != path:
            erc_say("ERC-LINK", i, erc_b64(real))
        for node in nodes:
            erc_say("ERC-NODE", i, erc_b64(json.dumps(node, sort_keys=True)))
        for item in skipped:
            erc_say("ERC-SKIP", i, erc_b64(json.dumps(item, sort_keys=True)))


def erc_spliced(data, splices):
    """The new bytes, or ErcRefused when a splice's old text is not what the file holds there."""
    out, pos = [], 0
    for start, end, old, new in sorted(splices, key=lambda s: s[0]):
        if start < pos or end < start or data[start:end] != old.encode("utf-8"):
            raise ErcRefused(f"bytes {start}-{end} do not hold the value that was read")
        out += [data[pos:start], new.encode("utf-8")]
        pos = end
    out.append(data[pos:])
    return b"".join(out)


def erc_check(old_data, new_data, splices):
    """Re-parse both versions: the same nodes, each spliced one now holding the planned text, no other change."""
    old_nodes, old_skipped = erc_locate(old_data)
    try:
        new_nodes, new_skipped = erc_locate(new_data)
    except LocateError as exc:
        raise ErcRefused(f"the new file would not parse (line {exc.line})") from None
    planned = {(s[0], s[1]): s[3] for s in splices}
    same_skipped = [s["path"] for s in old_skipped] == [s["path"] for s in new_skipped]  # lines may shift
    if [n["paths"] for n in old_nodes] != [n["paths"] for n in new_nodes] or not same_skipped:
        raise ErcRefused("the new file would not have the same cache settings")
    used = 0
    for old, new in zip(old_nodes, new_nodes):
        want = planned.get((old["start"], old["end"]), old["source"])
        used += (old["start"], old["end"]) in planned
        if new["source"] != want:
            raise ErcRefused("{} would not hold the planned value".format(old["paths"][0]))
    if used != len(planned):
        raise ErcRefused("a splice is not exactly one cache value")


def erc_sha_of(path):
    try:
        with open(path, "rb") as handle:
            return erc_sha(handle.read())
    except OSError:
        return "missing"


def erc_apply(spec):
    """Compare-and-swap every file, or none: 3 conflict, 1 failed, 4 rolled back, 0 written."""
    files = spec["files"]
    built = []
    conflict = False
    for i, f in enumerate(files):  # 1. every file is still what was read, before any is touched
        try:
            found = erc_open(f["path"], spec["max_bytes"])
        except (ErcRefused, OSError) as exc:
            erc_say("ERC-CONFLICT", i, erc_b64(exc))
            conflict = True
            continue
        real = found[0] if found else None
        if found is None or erc_sha(found[1]) != f["sha256"] or real != (f.get("target") or f["path"]):
            now = "missing" if found is None else erc_sha(found[1])
            erc_say(
                "ERC-CONFLICT", i, erc_b64(now if real == (f.get("target") or f["path"]) else "re-linked")
            )
            conflict = True
            continue
        built.append(found)
    if conflict:
        return 3
    tmps, staged = [], []
    try:
        for i, (f, (real, data, info)) in enumerate(zip(files, built)):  # 2. build and check each new file
            try:
                new = erc_spliced(data, f["splices"])
                erc_check(data, new, f["splices"])
            except (ErcRefused, LocateError) as exc:
                erc_say("ERC-CONFLICT", i, erc_b64(erc_redact(exc)))
                return 3
            fd, tmp = tempfile.mkstemp(prefix=os.path.basename(real) + ".erc-tmp.", dir=os.path.dirname(real))
            tmps.append(tmp)
            with os.fdopen(fd, "wb") as handle:
                handle.write(new)
                handle.flush()
                os.fsync(handle.fileno())
            os.chown(tmp, info.st_uid, info.st_gid)
            os.chmod(tmp, stat.S_IMODE(info.st_mode))
            if erc_sha_of(tmp) != erc_sha(new):
                erc_say("ERC-FAIL", erc_b64("the new {} did not read back as written".format(f["path"])))
                return 1
            staged.append((i, real, tmp, erc_sha(new)))
        for i, real, _tmp, _sha in staged:  # 3. last look, back up, rename into place
            if erc_sha_of(real) != files[i]["sha256"]:
                erc_say("ERC-CONFLICT", i, erc_b64("changed"))
                return 3
        backups = []
        for i, real, _tmp, _sha in staged:
            backup, n = real + spec["suffix"] + spec["ts"], 0
            while os.path.lexists(backup):
                n += 1
                backup = "{}{}{}.{}".format(real, spec["suffix"], spec["ts"], n)
            try:
                os.link(real, backup)
            except OSError:
                shutil.copy2(real, backup)
            backups.append((i, real, backup))
            erc_say("ERC-BACKUP", i, erc_b64(backup))
        swapped: list = []  # type: ignore[type-arg]
        for (i, real, tmp, sha), (_i, _real, backup) in zip(staged, backups):
            try:
                os.replace(tmp, real)
            except OSError as exc:
                erc_say("ERC-FAIL", erc_b64(f"cannot rename the new {real} into place: {exc.strerror}"))
                ok = erc_restore_all(swapped)
                return 4 if ok else 5
            swapped.append([real, backup, files[i]["sha256"]])
            erc_say("ERC-SWAPPED", erc_b64(json.dumps([real, backup, files[i]["sha256"]])))
            erc_say("ERC-NEWSHA", i, sha)
        erc_say("ERC-WROTE", len(swapped))
        return 0
    finally:
        for tmp in tmps:
            if os.path.lexists(tmp):
                os.unlink(tmp)


def erc_restore_all(swapped):
    ok = True
    for real, backup, sha in swapped:
        try:
            fd, tmp = tempfile.mkstemp(prefix=os.path.basename(real) + ".erc-tmp.", dir=os.path.dirname(real))
            os.close(fd)
            shutil.copy2(backup, tmp)
            info = os.stat(backup)
            os.chown(tmp, info.st_uid, info.st_gid)
            os.replace(tmp, real)
            if erc_sha_of(real) != sha:
                raise OSError(0, "restored bytes differ")
        except OSError:
            erc_say("ERC-FAIL", erc_b64(f"could not restore {real}"))
            ok = False
    return ok


def erc_prune(spec, swapped):
    for real, _backup, _sha in swapped:
        prefix = os.path.basename(real) + spec["suffix"]
        folder = os.path.dirname(real)
        found = sorted(n for n in os.listdir(folder) if n.startswith(prefix))
        for name in found[: max(0, len(found) - spec["keep"])]:
            os.unlink(os.path.join(folder, name))


def erc_main(argv):
    mode = argv[1]
    try:
        spec = json.loads(base64.b64decode(argv[2]).decode("utf-8")) if mode != "restore" else {}
        swapped = [json.loads(base64.b64decode(a).decode("utf-8")) for a in argv[2 + (mode != "restore") :]]
        if mode == "read":
            erc_read(spec)
            return 0
        if mode == "apply":
            return erc_apply(spec)
        if mode == "restore":
            return 0 if erc_restore_all(swapped) else 1
        if mode == "prune":
            erc_prune(spec, swapped)
            return 0
        erc_say("ERC-FAIL", erc_b64("unknown mode " + mode))
        return 2
    except Exception as exc:  # never a traceback: PyYAML's messages quote file content
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = tb.tb_lineno if tb is not None else 0
        erc_say("ERC-FAIL", erc_b64(f"host program error: {type(exc).__name__} at line {where}"))
        return 1


if __name__ == "__main__":
    sys.exit(erc_main(sys.argv))
