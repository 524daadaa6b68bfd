"""What a release promises: its licence, its changelog, one version everywhere, and the uvicorn it is tested with."""

from __future__ import annotations

import hashlib
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import uvicorn

import bankgate
from bankgate.uvicorn_range import UntestedUvicorn, check_uvicorn
from bankgate.uvicorn_range import tested_range as range_of_uvicorn
from conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: SHA-256 of https://www.apache.org/licenses/LICENSE-2.0.txt, the standard text with its appendix.
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def test_license_is_the_whole_apache_2_text() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.lstrip().startswith("Apache License\n                           Version 2.0, January 2004")
    sections = re.findall(r"^\s+(\d+)\. (Definitions|Grant of Copyright License|Grant of Patent License|"
                          r"Redistribution|Submission of Contributions|Trademarks|Disclaimer of Warranty|"
                          r"Limitation of Liability|Accepting Warranty or Additional Liability)\.", text, re.M)
    assert [int(number) for number, _ in sections] == list(range(1, 10))
    assert "END OF TERMS AND CONDITIONS" in text
    assert "APPENDIX: How to apply the Apache License to your work." in text
    assert hashlib.sha256((ROOT / "LICENSE").read_bytes()).hexdigest() == APACHE_2_SHA256


def test_the_package_declares_its_license_and_ships_the_file() -> None:
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    info = metadata.metadata("bankgate")
    assert info["License-Expression"] == "Apache-2.0"
    assert info.get_all("License-File") == ["LICENSE"]


def test_the_changelog_has_an_unreleased_section_and_the_current_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "https://keepachangelog.com/en/1.1.0/" in text
    headings = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.M)
    assert headings[0] == ("Unreleased", "")
    assert headings[1][0] == bankgate.__version__ and headings[1][1], "the current version needs a dated section"
    # Keep a Changelog's link references: every version heading links somewhere.
    for version, _ in headings:
        assert re.search(rf"^\[{re.escape(version)}\]: https://", text, re.M), version


def test_security_policy_says_how_to_report_and_what_is_covered() -> None:
    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    for heading in ("## Reporting a vulnerability", "## Scope", "## Out of scope", "## Supported versions",
                    "## Response times"):
        assert heading in text
    assert "security/advisories/new" in text


def test_the_version_has_one_home_and_everyone_reads_it() -> None:
    assert "version" not in PYPROJECT["project"]
    assert "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "bankgate.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", bankgate.__version__)
    printed = run_cli("--version").stdout
    assert printed == f"bankgate {bankgate.__version__}\n"
    assert metadata.version("bankgate") == bankgate.__version__, (
        "the installed metadata is stale: reinstall (pip install -e '.[server,test]')")


def test_the_package_metadata_names_its_project() -> None:
    project = PYPROJECT["project"]
    assert {"Homepage", "Documentation", "Changelog", "Issues"} <= set(project["urls"])
    classifiers = project["classifiers"]
    for prefix in ("Development Status ::", "Framework :: AsyncIO", "Intended Audience ::",
                   "Operating System ::", "Programming Language :: Python :: 3.11", "Topic :: Security",
                   "Topic :: Internet :: WWW/HTTP"):
        assert any(c.startswith(prefix) for c in classifiers), prefix
    # With a licence expression, a `License ::` classifier is refused by the build backend.
    assert not any(c.startswith("License ::") for c in classifiers)
    assert "oauth2" in project["keywords"]


# -- the uvicorn range -------------------------------------------------------------------------------------------


def test_the_uvicorn_range_lives_in_pyproject_and_the_installed_uvicorn_is_in_it() -> None:
    [requirement] = [r for r in PYPROJECT["project"]["optional-dependencies"]["server"] if r.startswith("uvicorn")]
    low, high = range_of_uvicorn()
    assert requirement == f"uvicorn[standard]>={low},<{high}", "reinstall: the metadata differs from pyproject"
    try:
        check_uvicorn()
    except UntestedUvicorn as exc:
        pytest.fail(f"{exc}\nOr, after the whole suite passes on uvicorn {uvicorn.__version__}, widen the range in "
                    "pyproject.toml's `server` extra.")


@pytest.mark.parametrize("version", ["0.55.0", "0.55", "0.55.9", "0.55.1.post1", "0.55.2rc1"])
def test_a_version_inside_the_range_passes(version: str) -> None:
    assert range_of_uvicorn() == ("0.55", "0.56")
    assert check_uvicorn(version) == version


@pytest.mark.parametrize("version", ["0.54.9", "0.30.0", "0.56.0", "0.56", "0.56.0rc1", "0.100.0", "1.0.0"])
def test_a_version_outside_the_range_is_refused_with_what_to_do(version: str) -> None:
    with pytest.raises(UntestedUvicorn) as refused:
        check_uvicorn(version)
    message = str(refused.value)
    assert f"uvicorn {version} is installed" in message
    assert ">=0.55,<0.56" in message
    assert "pip install 'uvicorn[standard]>=0.55,<0.56'" in message


def test_the_range_is_read_from_requires_dist_in_either_order() -> None:
    assert range_of_uvicorn(['httpx>=0.27', 'uvicorn[standard]<0.56,>=0.55; extra == "server"']) == ("0.55", "0.56")
    assert range_of_uvicorn(["uvicorn-worker>=1", "uvicorn >= 0.55 , < 0.56"]) == ("0.55", "0.56")


@pytest.mark.parametrize("requirements", [
    ['uvicorn[standard]>=0.30; extra == "server"'],  # metadata installed before the range existed
    ['uvicorn[standard]~=0.55; extra == "server"'],
    ["httpx>=0.27"],
    [],
])
def test_metadata_without_a_tested_range_is_refused_with_the_reinstall(requirements: list[str]) -> None:
    with pytest.raises(UntestedUvicorn, match=r"reinstall") as refused:
        range_of_uvicorn(requirements)
    assert "bankgate[server]" in str(refused.value)


def test_serve_and_quickstart_refuse_an_untested_uvicorn_before_writing_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uvicorn, "__version__", "0.99.0")
    for command in ("serve", "quickstart"):
        data = tmp_path / command
        result = run_cli(command, "--data-dir", str(data), "--port", "1", check=False)
        assert result.returncode == 1, result.stderr
        assert "uvicorn 0.99.0 is installed" in result.stderr and ">=0.55,<0.56" in result.stderr
        assert "Traceback" not in result.stderr
        assert not data.exists()


def test_the_server_itself_refuses_an_untested_uvicorn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bankgate.config import Settings
    from bankgate.server import serve

    monkeypatch.setattr(uvicorn, "__version__", "0.56.0")
    with pytest.raises(UntestedUvicorn, match=r"uvicorn 0.56.0 is installed"):
        serve(Settings(data_dir=tmp_path / "d", port=1))
    assert not (tmp_path / "d").exists()
