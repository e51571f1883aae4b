"""A PEP 517 build backend for nbserve that needs nothing but the standard library.

nbserve is pure Python, so its wheel is a zip of the package plus the metadata files. Building it here means
`pip install ./clients/python` works offline, with or without build isolation: there is no build requirement
to download, and old setuptools (which cannot build a wheel without the separate `wheel` package) is not
involved. The metadata comes from pyproject.toml's [project] table.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "nbserve"


def _project() -> dict:
    path = os.path.join(ROOT, "pyproject.toml")
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ImportError:
            return _project_fallback(path)
    with open(path, "rb") as fh:
        return tomllib.load(fh)["project"]


def _project_fallback(path: str) -> dict:
    """Reads the few [project] keys this backend uses from the simple TOML pyproject.toml is written in."""
    import ast
    project: dict = {}
    table = None
    pending = ""
    for raw in open(path, encoding="utf-8"):
        line = raw.split("#", 1)[0].strip() if not pending else raw.strip()
        if not line:
            continue
        if line.startswith("[") and not pending:
            table = line.strip("[]").strip()
            continue
        if table not in ("project", "project.optional-dependencies", "project.scripts"):
            continue
        text = pending + line
        key, _, value = text.partition("=")
        if value.count("[") > value.count("]"):
            pending = text + " "
            continue
        pending = ""
        key, value = key.strip().strip('"'), ast.literal_eval(value.strip().replace("true", "True").replace("false", "False"))
        if table == "project":
            project[key] = value
        else:
            project.setdefault(table.split(".", 1)[1], {})[key] = value
    return project


def _metadata(project: dict) -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {project['version']}",
        f"Summary: {project.get('description', '')}",
    ]
    if "requires-python" in project:
        lines.append(f"Requires-Python: {project['requires-python']}")
    if "license" in project and isinstance(project["license"], dict) and "text" in project["license"]:
        lines.append(f"License: {project['license']['text']}")
    for requirement in project.get("dependencies", []):
        lines.append(f"Requires-Dist: {requirement}")
    for extra, requirements in project.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        for requirement in requirements:
            lines.append(f'Requires-Dist: {requirement}; extra == "{extra}"')
    return "\n".join(lines) + "\n"


def _entry_points(project: dict) -> str:
    scripts = project.get("scripts", {})
    if not scripts:
        return ""
    return "[console_scripts]\n" + "".join(f"{name} = {target}\n" for name, target in scripts.items())


def _dist_name(project: dict) -> str:
    return f"{project['name'].replace('-', '_')}-{project['version']}"


def _package_files():
    base = os.path.join(ROOT, PACKAGE)
    for directory, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".py", ".typed")):
                path = os.path.join(directory, name)
                yield path, os.path.relpath(path, ROOT).replace(os.sep, "/")


def _write_wheel(wheel_directory: str, extra_files: list[tuple[str, bytes]], editable: bool) -> str:
    project = _project()
    dist = _dist_name(project)
    info = f"{dist}.dist-info"
    wheel_name = f"{dist}-py3-none-any.whl"
    records = []
    stamp = (1980, 1, 1, 0, 0, 0)

    def add(archive: zipfile.ZipFile, name: str, data: bytes):
        entry = zipfile.ZipInfo(name, stamp)
        entry.external_attr = 0o644 << 16
        entry.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(entry, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        records.append(f"{name},sha256={digest},{len(data)}")

    with zipfile.ZipFile(os.path.join(wheel_directory, wheel_name), "w") as archive:
        if not editable:
            for path, name in _package_files():
                with open(path, "rb") as fh:
                    add(archive, name, fh.read())
        for name, data in extra_files:
            add(archive, name, data)
        add(archive, f"{info}/METADATA", _metadata(project).encode())
        add(archive, f"{info}/WHEEL", (
            "Wheel-Version: 1.0\nGenerator: nbserve_build\nRoot-Is-Purelib: true\nTag: py3-none-any\n").encode())
        entry_points = _entry_points(project)
        if entry_points:
            add(archive, f"{info}/entry_points.txt", entry_points.encode())
        add(archive, f"{info}/top_level.txt", f"{PACKAGE}\n".encode())
        records.append(f"{info}/RECORD,,")
        archive.writestr(zipfile.ZipInfo(f"{info}/RECORD", stamp), "\n".join(records) + "\n")
    return wheel_name


# -- PEP 517

def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return _write_wheel(wheel_directory, [], editable=False)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    # PEP 660: a .pth file puts this source directory on sys.path.
    return _write_wheel(wheel_directory, [(f"__editable__.{PACKAGE}.pth", (ROOT + "\n").encode())], editable=True)


def build_sdist(sdist_directory, config_settings=None):
    project = _project()
    dist = _dist_name(project)
    name = f"{dist}.tar.gz"
    members = [(os.path.join(ROOT, "pyproject.toml"), "pyproject.toml"),
               (os.path.abspath(__file__), "_build/nbserve_build.py")]
    members += list(_package_files())
    for extra in ("README.md", "SWITCHING.md"):
        if os.path.exists(os.path.join(ROOT, extra)):
            members.append((os.path.join(ROOT, extra), extra))
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz", format=tarfile.PAX_FORMAT) as archive:
        def add_bytes(arcname: str, data: bytes):
            entry = tarfile.TarInfo(f"{dist}/{arcname}")
            entry.size, entry.mtime, entry.mode = len(data), int(time.time()), 0o644
            archive.addfile(entry, io.BytesIO(data))
        for path, arcname in members:
            with open(path, "rb") as fh:
                add_bytes(arcname, fh.read())
        add_bytes("PKG-INFO", _metadata(project).encode())
    return name
